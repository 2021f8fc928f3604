//! The controller: syncs the catalog from the platform, validates it, places every run
//! inside its spread window, keeps a timer per schedule and publishes one job message per
//! due run. It never runs a query.

pub mod admin_api;
pub mod app;
pub mod bench;
pub mod catalog;
pub mod catchup;
pub mod durations;
pub mod fairness;
pub mod metrics;
pub mod pauses;
pub mod placement;
pub mod plan;
pub mod platform;
pub mod publisher;
pub mod schedule;
pub mod settings;
pub mod shards;
pub mod state;
pub mod sync;
pub mod timer;

pub use app::Application;
pub use settings::Settings;
