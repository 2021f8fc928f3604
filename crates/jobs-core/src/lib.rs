//! Message schemas shared by the controller and the worker: the job message, the result
//! event, their versioning and the deterministic job id. Serde only, no I/O.

pub mod attributes;
pub mod job;
pub mod job_id;
pub mod names;
pub mod result;
pub mod signing;
pub mod trace;
pub mod version;

pub use job::{JobMessage, Overlap, Trigger};
pub use job_id::JobId;
pub use result::{ErrorClass, ResultEvent, RunStatus};
pub use trace::TraceParent;
pub use version::DecodeError;
