//! The commands that change the cluster, as the Raft log stores them, and what applying one
//! returns. Serialized into the log: variants and fields keep their names and order.

use std::net::{IpAddr, Ipv4Addr};

use overlay_proto::ports::PublishedPort;
use serde::{Deserialize, Serialize};

use super::StateError;
use crate::model::{Endpoint, Host, HostEndpoint, Network, NetworkSpec};

/// A change to the cluster, as stored in the Raft log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Command {
    CreateNetwork {
        spec: NetworkSpec,
        now_ms: i64,
    },
    /// Live-safe changes: NAT egress on/off, MTU. `None` keeps the current value.
    UpdateNetwork {
        name: String,
        nat_egress: Option<bool>,
        mtu: Option<MtuSetting>,
        /// Absent in log entries written before the option existed.
        #[serde(default)]
        direct_routing: Option<bool>,
    },
    DeleteNetwork {
        name: String,
        force: bool,
    },
    RegisterHost {
        name: String,
        /// Either family; entries from before IPv6 underlays hold an IPv4 string, read alike.
        underlay_ip: IpAddr,
        underlay_iface: String,
        underlay_mtu: u32,
        now_ms: i64,
        /// The registering agent's instance id ("" = a client without one).
        #[serde(default)]
        instance: String,
        /// Another instance may take the name over once the holder's `last_seen` is this old
        /// (0 = never by silence). In the command, so every replica decides alike.
        #[serde(default)]
        claim_timeout_ms: i64,
    },
    Heartbeat {
        name: String,
        now_ms: i64,
        /// Only the holder's heartbeats count.
        #[serde(default)]
        instance: String,
    },
    RemoveHost {
        name: String,
    },
    /// `overlayctl endpoint attach`: asks the host's agent for an endpoint. The agent allocates
    /// the address from its lease (or asks for a macvlan one), wires it and reports it back
    /// with [`Command::SyncEndpoints`] under the request's key, `req-<id>`.
    RequestEndpoint {
        network: String,
        host: String,
        netns: String,
        ifname: String,
        ip: Option<Ipv4Addr>,
        /// Take the namespace's default route (`--default-route`).
        default_route: bool,
        names: Vec<String>,
        /// `--publish`: checked against the host's other endpoints here, carried out by its agent.
        #[serde(default)]
        ports: Vec<PublishedPort>,
        now_ms: i64,
    },
    /// `overlayctl endpoint detach`: drops the record (or the request); the agent sees its
    /// endpoint gone from the controller's list and removes it.
    DetachEndpoint {
        network: String,
        host: String,
        netns: String,
    },
    /// An address of a macvlan network's shared range for one of `host`'s endpoints
    /// (idempotent: the same key gets the same address).
    AllocateAddress {
        host: String,
        endpoint: HostEndpoint,
        /// Requested address (`endpoint.ip` is ignored).
        ip: Option<Ipv4Addr>,
        now_ms: i64,
    },
    /// An agent's endpoints as its store holds them: `full` replaces every record of the host
    /// (requests excepted); otherwise `upsert` adds or updates and `remove` drops by key.
    /// `failed`: requests the agent could not carry out (key, why).
    SyncEndpoints {
        host: String,
        full: bool,
        upsert: Vec<HostEndpoint>,
        remove: Vec<String>,
        failed: Vec<(String, String)>,
        now_ms: i64,
    },
    /// Commands proposed together as one log entry (see `node::Batcher`), applied in order.
    Batch(Vec<Command>),
}

impl Command {
    /// Whether the command changes what some agent must program. Heartbeats do not, and do
    /// not bump the revision, so watchers are not woken by them.
    pub fn bumps_revision(&self) -> bool {
        !matches!(self, Command::Heartbeat { .. } | Command::Batch(_))
    }
}

/// A network's MTU setting. (Not `Option<Option<u32>>`: JSON, the log's encoding, cannot tell
/// `Some(None)` from `None`.)
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtuSetting {
    /// Derived from the hosts' underlay MTU.
    Auto,
    Fixed(u32),
}

/// Successful outcome of a command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Response {
    Network(Network),
    NetworkDeleted {
        removed_endpoints: u32,
    },
    Host(Host),
    HostRemoved {
        removed_endpoints: u32,
        released_leases: u32,
    },
    Endpoint(Endpoint),
    EndpointDetached(Endpoint),
    Heartbeat,
    /// What a [`Command::SyncEndpoints`] did: records changed, and the endpoints it would
    /// not record (key, why).
    Synced {
        changed: u32,
        refused: Vec<(String, String)>,
    },
    /// Raft-internal entries (blank, membership) that carry no command.
    Noop,
    /// One reply per command of a [`Command::Batch`], in order.
    Batch(Vec<Reply>),
}

/// What the state machine returns for each log entry: the result and the revision after it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Reply {
    pub revision: u64,
    pub result: Result<Response, StateError>,
}
