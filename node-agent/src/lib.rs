//! overlay-agent: converges one host's kernel toward the desired state the controller
//! streams for it.
//!
//! Pure parts, tested without root: [`spec`] (parsing and validating the desired state),
//! [`kernel`] (a snapshot of kernel state), [`plan`] (the diff). I/O: [`netlink`] (dumps and
//! changes over rtnetlink), [`netns`] (running netlink inside a workload namespace),
//! [`reconcile`] (one convergence pass), [`session`] (the controller connection).

pub mod audit;
pub mod dns;
pub mod endpoint;
pub mod firewall;
pub mod kernel;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod plan;
pub mod probe;
pub mod reconcile;
pub mod session;
pub mod spec;
