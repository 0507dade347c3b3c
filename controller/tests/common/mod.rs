//! Shared by the controller's process-level tests: the API calls live in the lab library.

use std::time::Duration;

pub use overlay_lab::api::*;

/// Upper bound for an election in these tests (generous: a loaded 2-core machine).
pub const ELECTION: Duration = Duration::from_secs(20);
