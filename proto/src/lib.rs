//! Wire types of overlay: the public API (`Overlay` for people and scripts, `Agent` for node
//! agents), the replica-to-replica `Raft` service, and [`connect::Controllers`], the fail-over
//! connector every client uses to reach "any replica".

#![allow(clippy::large_enum_variant)]

pub mod v1 {
    tonic::include_proto!("overlay.v1");
}

pub mod raft {
    tonic::include_proto!("overlay.raft.v1");
}

/// The agent's host-local endpoint API (unix socket), for the CNI and Docker plugins.
pub mod local {
    tonic::include_proto!("overlay.local.v1");
}

pub mod connect;
pub mod daemon;
pub mod error_line;
pub mod instance;
pub mod ipam;
pub mod limits;
pub mod local_socket;
pub mod mac;
pub mod metrics_http;
pub mod modes;
pub mod names;
pub mod ports;
pub mod sd_notify;
pub mod tls;
pub mod validate;
pub mod watch;

pub use v1::*;
