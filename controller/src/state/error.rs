//! Why a command was refused, and the coarse kinds the API maps onto status codes.

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

/// Why a command was refused. Each message is one line that names the cause.
#[derive(thiserror::Error, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: String,
        value: String,
        reason: String,
    },
    #[error("network {0:?} already exists")]
    DuplicateNetwork(String),
    #[error("subnet {cidr} overlaps network {other:?} ({other_cidr})")]
    Overlap {
        cidr: String,
        other: String,
        other_cidr: String,
    },
    #[error("VNI {vni} is already used by network {network:?}")]
    VniInUse { vni: u32, network: String },
    #[error("no free VNI left")]
    VniExhausted,
    #[error("network {name:?} still has {count} endpoint(s); detach them or use --force")]
    NetworkHasEndpoints { name: String, count: u32 },
    #[error("unknown network {0:?}")]
    UnknownNetwork(String),
    #[error("unknown host {0:?}")]
    UnknownHost(String),
    #[error("no endpoint of network {network:?} on host {host:?} in namespace {netns:?}")]
    UnknownEndpoint {
        network: String,
        host: String,
        netns: String,
    },
    #[error(
        "network {network:?} has no free /{host_prefix} subnet for host {host:?} (all {capacity} in use)"
    )]
    SubnetPoolExhausted {
        network: String,
        host: String,
        host_prefix: u8,
        capacity: u64,
    },
    #[error("network {network:?} has no free address in {range} (all {capacity} in use)")]
    AddressPoolExhausted {
        network: String,
        range: String,
        capacity: u64,
    },
    #[error("address {ip} is already used in network {network:?}")]
    AddressInUse { ip: Ipv4Addr, network: String },
    #[error("address {ip} is not available to endpoints of network {network:?} on host {host:?} ({reason})")]
    AddressNotAllowed {
        ip: Ipv4Addr,
        network: String,
        host: String,
        reason: String,
    },
    #[error("namespace {netns:?} on host {host:?} is already attached to network {network:?}")]
    EndpointExists {
        network: String,
        host: String,
        netns: String,
    },
    #[error(
        "interface {ifname:?} in namespace {netns:?} on host {host:?} is already used by network {network:?}"
    )]
    IfnameInUse {
        host: String,
        netns: String,
        ifname: String,
        network: String,
    },
    #[error("macvlan passthru network {network:?} already has its one endpoint on host {host:?}")]
    PassthruTaken { network: String, host: String },
    #[error("port {port} is already published on host {host:?} (by endpoint {holder:?})")]
    PortInUse {
        host: String,
        port: String,
        holder: String,
    },
    #[error(
        "host {host:?} is held by another agent (instance {holder}, underlay {underlay_ip}, last seen {}s ago); stop that agent, wait until it has been silent for {}s, or remove the host (`overlayctl host rm {host} --force`)",
        silent_ms / 1000,
        timeout_ms / 1000
    )]
    HostClaimed {
        host: String,
        /// Short form of the holder's instance id (never the whole id).
        holder: String,
        underlay_ip: IpAddr,
        silent_ms: i64,
        timeout_ms: i64,
    },
}

/// Coarse kind of a [`StateError`], for mapping onto gRPC codes and exit messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    AlreadyExists,
    NotFound,
    FailedPrecondition,
    ResourceExhausted,
    PermissionDenied,
}

impl StateError {
    pub fn kind(&self) -> ErrorKind {
        use StateError::*;
        match self {
            Invalid { .. } | AddressNotAllowed { .. } => ErrorKind::InvalidArgument,
            DuplicateNetwork(_)
            | Overlap { .. }
            | VniInUse { .. }
            | AddressInUse { .. }
            | EndpointExists { .. }
            | IfnameInUse { .. }
            | PortInUse { .. } => ErrorKind::AlreadyExists,
            UnknownNetwork(_) | UnknownHost(_) | UnknownEndpoint { .. } => ErrorKind::NotFound,
            NetworkHasEndpoints { .. } | PassthruTaken { .. } | HostClaimed { .. } => {
                ErrorKind::FailedPrecondition
            }
            VniExhausted | SubnetPoolExhausted { .. } | AddressPoolExhausted { .. } => {
                ErrorKind::ResourceExhausted
            }
        }
    }
}

/// The common refusal: `what` `value` is not acceptable, because `reason`. Shared with
/// [`crate::modes`], whose checks refuse in the same words.
pub(crate) fn invalid(what: &str, value: impl ToString, reason: impl Into<String>) -> StateError {
    StateError::Invalid {
        what: what.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}
