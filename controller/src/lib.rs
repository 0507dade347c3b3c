//! overlay-controller: the Raft-replicated control plane of overlay.
//!
//! Pure logic, tested without a network or root: [`model`] (records), [`ipam`] (address
//! arithmetic), [`modes`] (each network mode's rules), [`state`] (the state machine and its
//! commands), [`desired`] (what each host must program). I/O around it: [`raft`] (openraft storage on redb and the gRPC transport),
//! [`node`] (a running replica: writes, linearizable reads, forwarding to the leader) and
//! [`api`] (the public gRPC services).

pub mod desired;
/// Address arithmetic lives in the proto crate: the agent allocates from its leases with it too.
pub use overlay_proto::ipam;
pub mod model;
pub mod modes;
pub mod probe;
pub mod state;

pub mod api;
pub mod auth;
pub mod metrics;
pub mod node;
pub mod preface;
pub mod raft;
pub mod server;
