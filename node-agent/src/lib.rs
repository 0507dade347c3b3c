//! overlay-agent: converges one host's kernel toward the desired state the controller
//! streams for it.
//!
//! Pure parts, tested without root: [`spec`] (parsing and validating the desired state),
//! [`kernel`] (a snapshot of kernel state), [`plan`] (the diff). I/O: [`netlink`] (dumps and
//! changes over rtnetlink), [`netns`] (finding and entering a workload namespace safely),
//! [`pins`] (which namespace each endpoint belongs to),
//! [`reconcile`] (one convergence pass), [`events`] (kernel notifications that trigger repairs),
//! [`session`] (the controller connection and the reconcile loop).

pub mod attachments;
pub mod audit;
pub mod book;
pub mod dns;
pub mod docker;
pub mod endpoint;
pub mod events;
pub mod firewall;
pub mod identity;
pub mod kernel;
pub mod local_api;
pub mod local_socket;
pub mod metrics;
pub mod modes;
pub mod netlink;
pub mod netns;
pub mod pins;
pub mod plan;
pub mod probe;
pub mod reconcile;
pub mod session;
pub mod spec;
pub mod store;
pub mod sync;
