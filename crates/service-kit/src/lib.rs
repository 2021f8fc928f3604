//! Service plumbing shared by the controller and the worker: layered configuration,
//! telemetry, the admin HTTP server (`/livez`, `/readyz`, `/metrics`), secrets that never
//! print, signal handling and named-task supervision.

pub mod admin;
pub mod launch;
pub mod secret;
pub mod settings;
pub mod supervisor;
pub mod telemetry;

pub use admin::{AdminState, Readiness};
pub use secret::Secret;
pub use supervisor::Supervisor;
