//! The replicated state machine: cluster state, the commands that change it, and `apply`.
//!
//! `apply` is the only place where anything is allocated (VNI, host subnet, endpoint address,
//! MAC). It runs on every replica, in log order, from the same input, so all replicas agree
//! and two requests can never receive the same address however they race at the API.
//!
//! Every command either succeeds, or fails with a [`StateError`] and leaves the state exactly
//! as it was: all checks run before the first mutation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use overlay_proto::limits;
use overlay_proto::ports::PublishedPort;
use serde::{Deserialize, Serialize};

use crate::ipam;
use crate::model::{Endpoint, Host, HostEndpoint, Lease, MacAddr, Mode, Network, NetworkSpec};

/// Hosts without a heartbeat for this long are shown as down. Their entries stay in place:
/// an agent that is down does not mean a datapath that is down.
pub const HOST_DOWN_AFTER_MS: i64 = 30_000;

/// Default host prefix for vxlan/nat networks (flannel's SubnetLen).
pub const DEFAULT_HOST_PREFIX: u8 = 24;

/// Longest network name: it appears in tables and logs, never in device names.
pub const MAX_NAME_LEN: usize = 64;

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
    },
    DeleteNetwork {
        name: String,
        force: bool,
    },
    RegisterHost {
        name: String,
        underlay_ip: Ipv4Addr,
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
        underlay_ip: Ipv4Addr,
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

fn invalid(what: &str, value: impl ToString, reason: impl Into<String>) -> StateError {
    StateError::Invalid {
        what: what.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// The whole replicated state. Indices marked `serde(skip)` are derived and rebuilt after a
/// snapshot is loaded, so a snapshot holds each fact once.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ClusterState {
    /// Bumped by every command that changes desired state.
    pub revision: u64,
    pub networks: BTreeMap<String, Network>,
    pub hosts: BTreeMap<String, Host>,
    pub endpoints: BTreeMap<u64, Endpoint>,
    next_network_id: u32,
    next_endpoint_id: u64,
    /// Network → address → endpoint id.
    #[serde(skip)]
    addresses: BTreeMap<String, BTreeMap<Ipv4Addr, u64>>,
    /// (host, key) → endpoint id: a key names one endpoint of its host.
    #[serde(skip)]
    by_host_key: BTreeMap<(String, String), u64>,
    /// (network, host) → its endpoint ids.
    #[serde(skip)]
    by_place: BTreeMap<(String, String), BTreeSet<u64>>,
    /// Where each part last changed, for incremental readers.
    #[serde(skip)]
    pub marks: ChangeMarks,
}

/// The revision at which each part of the desired state last changed, so the Watch model can
/// rebuild only what changed instead of everything on every revision. Local bookkeeping, not
/// replicated: a new `epoch` (after a snapshot is loaded) tells readers to start over.
#[derive(Clone, Debug, Default)]
pub struct ChangeMarks {
    pub epoch: u64,
    /// Host records (address, MTU, VTEP MAC, the set of hosts).
    pub hosts: u64,
    /// A network's own settings or its leases.
    pub networks: BTreeMap<String, u64>,
    /// The endpoint list of one host in one network.
    pub endpoints: BTreeMap<(String, String), u64>,
    /// Recent endpoint arrivals and departures, oldest first, so a reader can patch the lists
    /// it has instead of rebuilding them. Bounded; see `log_dropped_upto`.
    pub endpoint_log: std::collections::VecDeque<EndpointEvent>,
    /// Highest revision of an event dropped from `endpoint_log`: a reader older than this
    /// must rebuild.
    pub log_dropped_upto: u64,
}

/// One endpoint appearing (`added`) or going away, at `revision`.
#[derive(Clone, Debug)]
pub struct EndpointEvent {
    pub revision: u64,
    pub network: String,
    pub host: String,
    pub id: u64,
    pub added: bool,
}

/// How many endpoint events [`ChangeMarks`] keeps.
const ENDPOINT_LOG_LEN: usize = 65_536;

impl ChangeMarks {
    fn log_endpoint(&mut self, event: EndpointEvent) {
        if self.endpoint_log.len() == ENDPOINT_LOG_LEN
            && let Some(old) = self.endpoint_log.pop_front()
        {
            self.log_dropped_upto = self.log_dropped_upto.max(old.revision);
        }
        self.endpoint_log.push_back(event);
    }
}

/// What a command may change, noted before it runs.
enum Touch {
    Nothing,
    Network(String),
    /// Host records changed; `Some(name)`: that host (and with it its endpoints) went away.
    Hosts(Option<String>),
}

impl PartialEq for ClusterState {
    fn eq(&self, other: &Self) -> bool {
        self.revision == other.revision
            && self.networks == other.networks
            && self.hosts == other.hosts
            && self.endpoints == other.endpoints
            && self.next_network_id == other.next_network_id
            && self.next_endpoint_id == other.next_endpoint_id
    }
}

impl ClusterState {
    /// Restores the derived indices; call after deserializing.
    pub fn rebuild_indices(&mut self) {
        // A process-wide counter: a state replaced by a snapshot must never share an epoch with
        // the one it replaces, or readers would trust marks that describe another history.
        static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let epoch = EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.marks = ChangeMarks {
            epoch,
            ..ChangeMarks::default()
        };
        self.rebuild_endpoint_indices();
    }

    pub fn from_snapshot_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut state: ClusterState = serde_json::from_slice(bytes)?;
        state.rebuild_indices();
        Ok(state)
    }

    /// Applies one command. On error nothing has changed, the revision included.
    pub fn apply(&mut self, cmd: Command) -> Reply {
        if let Command::Batch(commands) = cmd {
            // Exactly as if each had its own log entry: one revision per change, in order.
            let replies = commands.into_iter().map(|c| self.apply(c)).collect();
            return Reply {
                revision: self.revision,
                result: Ok(Response::Batch(replies)),
            };
        }
        let bumps = cmd.bumps_revision();
        let touch = self.touch(&cmd);
        let result = match cmd {
            Command::CreateNetwork { spec, now_ms } => {
                self.create_network(spec, now_ms).map(Response::Network)
            }
            Command::UpdateNetwork {
                name,
                nat_egress,
                mtu,
            } => self.update_network(&name, nat_egress, mtu).map(Response::Network),
            Command::DeleteNetwork { name, force } => self
                .delete_network(&name, force)
                .map(|removed_endpoints| Response::NetworkDeleted { removed_endpoints }),
            Command::RegisterHost {
                name,
                underlay_ip,
                underlay_iface,
                underlay_mtu,
                now_ms,
                instance,
                claim_timeout_ms,
            } => self
                .register_host(
                    name,
                    underlay_ip,
                    underlay_iface,
                    underlay_mtu,
                    Claim {
                        instance,
                        now_ms,
                        timeout_ms: claim_timeout_ms,
                    },
                )
                .map(Response::Host),
            Command::Heartbeat {
                name,
                now_ms,
                instance,
            } => self
                .heartbeat(&name, now_ms, &instance)
                .map(|()| Response::Heartbeat),
            Command::RemoveHost { name } => {
                self.remove_host(&name)
                    .map(|(removed_endpoints, released_leases)| Response::HostRemoved {
                        removed_endpoints,
                        released_leases,
                    })
            }
            Command::RequestEndpoint {
                network,
                host,
                netns,
                ifname,
                ip,
                default_route,
                names,
                ports,
                now_ms,
            } => self
                .request_endpoint(
                    network,
                    host,
                    netns,
                    ifname,
                    ip,
                    default_route,
                    names,
                    ports,
                    now_ms,
                )
                .map(Response::Endpoint),
            Command::DetachEndpoint { network, host, netns } => self
                .detach_endpoint(&network, &host, &netns)
                .map(Response::EndpointDetached),
            Command::AllocateAddress {
                host,
                endpoint,
                ip,
                now_ms,
            } => self
                .allocate_address(&host, endpoint, ip, now_ms)
                .map(Response::Endpoint),
            Command::SyncEndpoints {
                host,
                full,
                upsert,
                remove,
                failed,
                now_ms,
            } => self
                .sync_endpoints(&host, full, upsert, remove, failed, now_ms)
                .map(|done| Response::Synced {
                    changed: done.changed,
                    refused: done.refused,
                }),
            // Taken apart above; this arm is never reached.
            Command::Batch(_) => Ok(Response::Noop),
        };
        // A report that changed nothing is not a new revision (nobody needs waking).
        let bumps = bumps && !matches!(&result, Ok(Response::Synced { changed: 0, .. }));
        if result.is_ok() && bumps {
            self.revision += 1;
            self.mark(touch);
        }
        Reply {
            revision: self.revision,
            result,
        }
    }

    fn touch(&self, cmd: &Command) -> Touch {
        match cmd {
            Command::CreateNetwork { spec, .. } => Touch::Network(spec.name.clone()),
            Command::UpdateNetwork { name, .. } | Command::DeleteNetwork { name, .. } => {
                Touch::Network(name.clone())
            }
            Command::RegisterHost { .. } => Touch::Hosts(None),
            Command::RemoveHost { name } => Touch::Hosts(Some(name.clone())),
            // Endpoint commands mark the lists they change themselves (see `state::endpoints`).
            Command::RequestEndpoint { .. }
            | Command::DetachEndpoint { .. }
            | Command::AllocateAddress { .. }
            | Command::SyncEndpoints { .. }
            | Command::Heartbeat { .. }
            | Command::Batch(_) => Touch::Nothing,
        }
    }

    fn mark(&mut self, touch: Touch) {
        let rev = self.revision;
        match touch {
            Touch::Nothing => {}
            Touch::Network(name) => {
                self.marks.networks.insert(name, rev);
            }
            Touch::Hosts(removed) => {
                // Hosts are members of networks (leases, peers, MTU): every network is affected.
                // Rare next to endpoint churn.
                self.marks.hosts = rev;
                for name in self.networks.keys() {
                    self.marks.networks.insert(name.clone(), rev);
                    if let Some(host) = &removed {
                        self.marks.endpoints.insert((name.clone(), host.clone()), rev);
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ networks

    fn create_network(&mut self, spec: NetworkSpec, now_ms: i64) -> Result<Network, StateError> {
        validate_name("network name", &spec.name)?;
        if self.networks.contains_key(&spec.name) {
            return Err(StateError::DuplicateNetwork(spec.name));
        }
        let cidr = spec.cidr;
        if cidr.network() != cidr.ip() {
            return Err(invalid(
                "subnet",
                cidr,
                format!(
                    "host bits are set; did you mean {}/{}?",
                    cidr.network(),
                    cidr.prefix()
                ),
            ));
        }
        if cidr.prefix() < 8 || cidr.prefix() > 30 {
            return Err(invalid(
                "subnet",
                cidr,
                "prefix length must be between /8 and /30",
            ));
        }
        if let Some(other) = self.networks.values().find(|n| n.cidr.overlaps(cidr)) {
            return Err(StateError::Overlap {
                cidr: cidr.to_string(),
                other: other.name.clone(),
                other_cidr: other.cidr.to_string(),
            });
        }
        if let Some(mtu) = spec.mtu {
            limits::mtu(mtu).map_err(|why| invalid("MTU", mtu, why))?;
        }
        let host_prefix = match spec.mode {
            Mode::Vxlan | Mode::Route | Mode::Nat => {
                let hp = spec.host_prefix.unwrap_or(DEFAULT_HOST_PREFIX);
                if hp <= cidr.prefix() {
                    return Err(invalid(
                        "host prefix",
                        format!("/{hp}"),
                        format!("must be longer than the network prefix /{}", cidr.prefix()),
                    ));
                }
                if hp > 30 {
                    return Err(invalid(
                        "host prefix",
                        format!("/{hp}"),
                        "must be /30 or shorter (room for a gateway and an endpoint)",
                    ));
                }
                hp
            }
            Mode::Macvlan => {
                if spec.host_prefix.is_some() {
                    return Err(invalid(
                        "host prefix",
                        "set",
                        "macvlan networks have no per-host subnets",
                    ));
                }
                cidr.prefix()
            }
        };
        let vni = match spec.mode {
            Mode::Vxlan => Some(self.choose_vni(spec.vni)?),
            Mode::Route | Mode::Macvlan | Mode::Nat => {
                if spec.vni.is_some() {
                    return Err(invalid(
                        "VNI",
                        spec.vni.unwrap_or_default(),
                        format!("{} networks have no VNI", spec.mode),
                    ));
                }
                None
            }
        };
        let nat_egress = match spec.mode {
            Mode::Nat => true,
            Mode::Vxlan | Mode::Route => spec.nat_egress,
            Mode::Macvlan if spec.nat_egress => {
                return Err(invalid(
                    "option",
                    "--nat-egress",
                    "macvlan workloads egress through the LAN gateway",
                ));
            }
            Mode::Macvlan => false,
        };
        let macvlan = match (spec.mode, spec.macvlan) {
            (Mode::Macvlan, Some(m)) => {
                validate_ifname("macvlan parent", &m.parent)?;
                if !cidr.contains(m.gateway) || m.gateway == cidr.network() || m.gateway == cidr.broadcast() {
                    return Err(invalid(
                        "gateway",
                        m.gateway,
                        format!("must be a host address of {cidr}"),
                    ));
                }
                if !(cidr.contains(m.ip_range.network()) && m.ip_range.prefix() >= cidr.prefix()) {
                    return Err(invalid("ip range", m.ip_range, format!("must lie inside {cidr}")));
                }
                if m.ip_range.network() != m.ip_range.ip() {
                    return Err(invalid("ip range", m.ip_range, "host bits are set"));
                }
                Some(m)
            }
            (Mode::Macvlan, None) => {
                return Err(invalid(
                    "option",
                    "--parent",
                    "macvlan networks need a parent interface and a gateway",
                ));
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "option",
                    "--parent",
                    format!("only macvlan networks take macvlan options, not {}", spec.mode),
                ));
            }
            (_, None) => None,
        };

        self.next_network_id += 1;
        let mut network = Network {
            name: spec.name.clone(),
            id: self.next_network_id,
            mode: spec.mode,
            cidr,
            host_prefix,
            vni,
            mtu: spec.mtu,
            nat_egress,
            macvlan,
            created_ms: now_ms,
            leases: BTreeMap::new(),
            cursor: None,
        };
        if network.mode.uses_leases() {
            // Every registered host gets its slice now, in name order, as far as the pool goes;
            // a host left without one gets a clear error when it first attaches an endpoint.
            let hosts: Vec<String> = self.hosts.keys().cloned().collect();
            for host in hosts {
                if let Some(subnet) = free_subnet(&network) {
                    network.leases.insert(host, Lease { subnet, cursor: None });
                }
            }
        }
        self.addresses.insert(spec.name.clone(), BTreeMap::new());
        self.networks.insert(spec.name, network.clone());
        Ok(network)
    }

    fn choose_vni(&self, requested: Option<u32>) -> Result<u32, StateError> {
        let used: BTreeSet<u32> = self.networks.values().filter_map(|n| n.vni).collect();
        match requested {
            Some(v) if v == 0 || v > ipam::VNI_MAX => Err(invalid(
                "VNI",
                v,
                format!("must be between 1 and {}", ipam::VNI_MAX),
            )),
            Some(v) => match self.networks.values().find(|n| n.vni == Some(v)) {
                Some(n) => Err(StateError::VniInUse {
                    vni: v,
                    network: n.name.clone(),
                }),
                None => Ok(v),
            },
            None => ipam::first_free_vni(&used).ok_or(StateError::VniExhausted),
        }
    }

    fn update_network(
        &mut self,
        name: &str,
        nat_egress: Option<bool>,
        mtu: Option<MtuSetting>,
    ) -> Result<Network, StateError> {
        let network = self
            .networks
            .get(name)
            .ok_or_else(|| StateError::UnknownNetwork(name.to_string()))?;
        // Only vxlan and route networks choose; the others' egress is their mode's.
        let fixed_egress = match network.mode {
            Mode::Vxlan | Mode::Route => None,
            Mode::Nat => Some("nat networks always masquerade"),
            Mode::Macvlan => Some("macvlan workloads egress through the LAN gateway"),
        };
        if let (Some(nat), Some(why)) = (nat_egress, fixed_egress)
            && nat != network.nat_egress
        {
            return Err(invalid("option", "--nat-egress", why));
        }
        if let Some(MtuSetting::Fixed(m)) = mtu {
            limits::mtu(m).map_err(|why| invalid("MTU", m, why))?;
        }
        let network = self.networks.get_mut(name).expect("checked above");
        if let Some(nat) = nat_egress {
            network.nat_egress = nat;
        }
        match mtu {
            Some(MtuSetting::Auto) => network.mtu = None,
            Some(MtuSetting::Fixed(m)) => network.mtu = Some(m),
            None => {}
        }
        Ok(network.clone())
    }

    fn delete_network(&mut self, name: &str, force: bool) -> Result<u32, StateError> {
        if !self.networks.contains_key(name) {
            return Err(StateError::UnknownNetwork(name.to_string()));
        }
        let ids: Vec<u64> = self.network_endpoints(name).map(|e| e.id).collect();
        if !ids.is_empty() && !force {
            return Err(StateError::NetworkHasEndpoints {
                name: name.to_string(),
                count: ids.len() as u32,
            });
        }
        for id in &ids {
            self.forget_endpoint(*id);
        }
        self.networks.remove(name);
        self.addresses.remove(name);
        Ok(ids.len() as u32)
    }

    // ------------------------------------------------------------------ hosts

    fn register_host(
        &mut self,
        name: String,
        underlay_ip: Ipv4Addr,
        underlay_iface: String,
        underlay_mtu: u32,
        claim: Claim,
    ) -> Result<Host, StateError> {
        let now_ms = claim.now_ms;
        validate_name("host name", &name)?;
        validate_ifname("underlay interface", &underlay_iface)?;
        if underlay_ip.is_unspecified() || underlay_ip.is_multicast() || underlay_ip.is_broadcast() {
            return Err(invalid("underlay IP", underlay_ip, "must be a unicast address"));
        }
        limits::underlay_mtu(underlay_mtu).map_err(|why| invalid("underlay MTU", underlay_mtu, why))?;
        if let Some(existing) = self.hosts.get(&name)
            && !claim.may_take(existing)
        {
            return Err(claimed(existing, now_ms, claim.timeout_ms));
        }
        if let Some(other) = self
            .hosts
            .values()
            .find(|h| h.underlay_ip == underlay_ip && h.name != name)
        {
            return Err(invalid(
                "underlay IP",
                underlay_ip,
                format!("already registered by host {:?}", other.name),
            ));
        }
        let host = match self.hosts.get(&name) {
            // Re-registration (agent restart, new address, or a replacement machine taking the
            // name over): keep the VTEP MAC and the leases.
            Some(existing) => Host {
                underlay_ip,
                underlay_iface,
                underlay_mtu,
                last_seen_ms: now_ms,
                claimant: claim.instance,
                ..existing.clone()
            },
            None => {
                let taken: BTreeSet<MacAddr> = self.hosts.values().map(|h| h.vtep_mac).collect();
                Host {
                    vtep_mac: ipam::vtep_mac(&name, &taken),
                    name: name.clone(),
                    underlay_ip,
                    underlay_iface,
                    underlay_mtu,
                    registered_ms: now_ms,
                    last_seen_ms: now_ms,
                    claimant: claim.instance,
                }
            }
        };
        for network in self.networks.values_mut().filter(|n| n.mode.uses_leases()) {
            if !network.leases.contains_key(&name)
                && let Some(subnet) = free_subnet(network)
            {
                network
                    .leases
                    .insert(name.clone(), Lease { subnet, cursor: None });
            }
        }
        self.hosts.insert(name, host.clone());
        Ok(host)
    }

    fn heartbeat(&mut self, name: &str, now_ms: i64, instance: &str) -> Result<(), StateError> {
        self.holder(name, instance, now_ms, 0)?;
        let host = self
            .hosts
            .get_mut(name)
            .ok_or_else(|| StateError::UnknownHost(name.to_string()))?;
        host.last_seen_ms = host.last_seen_ms.max(now_ms);
        Ok(())
    }

    /// The record of host `name` if the agent `instance` holds it: what every agent call but
    /// Register requires (a non-holder may only claim the name, by registering).
    /// `timeout_ms` only completes the refusal's message.
    pub fn holder(
        &self,
        name: &str,
        instance: &str,
        now_ms: i64,
        timeout_ms: i64,
    ) -> Result<&Host, StateError> {
        let host = self
            .hosts
            .get(name)
            .ok_or_else(|| StateError::UnknownHost(name.to_string()))?;
        if host.claimant.is_empty() || host.claimant == instance {
            Ok(host)
        } else {
            Err(claimed(host, now_ms, timeout_ms))
        }
    }

    fn remove_host(&mut self, name: &str) -> Result<(u32, u32), StateError> {
        if self.hosts.remove(name).is_none() {
            return Err(StateError::UnknownHost(name.to_string()));
        }
        let ids: Vec<u64> = self
            .endpoints
            .values()
            .filter(|e| e.host == name)
            .map(|e| e.id)
            .collect();
        for id in &ids {
            self.forget_endpoint(*id);
        }
        let mut released = 0;
        for network in self.networks.values_mut() {
            released += network.leases.remove(name).is_some() as u32;
        }
        Ok((ids.len() as u32, released))
    }

    // ------------------------------------------------------------------ queries

    /// How many host subnets (vxlan/nat) or addresses (macvlan) a network can hold.
    pub fn capacity(network: &Network) -> u64 {
        match (&network.mode, &network.macvlan) {
            (Mode::Macvlan, Some(m)) => {
                let (first, last) = macvlan_range(network.cidr, m.ip_range);
                let gateway_inside = (first..=last).contains(&m.gateway) as u64;
                ipam::range_len(first, last).saturating_sub(gateway_inside)
            }
            _ => ipam::subnet_count(network.cidr, network.host_prefix),
        }
    }
}

/// A registration's claim on a host name.
struct Claim {
    instance: String,
    now_ms: i64,
    timeout_ms: i64,
}

impl Claim {
    /// Whether this claim may (re)take `host`: it holds it already, nobody does, or the holder
    /// has been silent for the timeout. Decided from the command and the state alone.
    fn may_take(&self, host: &Host) -> bool {
        host.claimant.is_empty()
            || host.claimant == self.instance
            || (self.timeout_ms > 0 && self.now_ms - host.last_seen_ms >= self.timeout_ms)
    }
}

fn claimed(host: &Host, now_ms: i64, timeout_ms: i64) -> StateError {
    StateError::HostClaimed {
        host: host.name.clone(),
        holder: overlay_proto::instance::short(&host.claimant).to_string(),
        underlay_ip: host.underlay_ip,
        silent_ms: (now_ms - host.last_seen_ms).max(0),
        timeout_ms,
    }
}

/// The macvlan allocation range clipped to the subnet's host addresses.
fn macvlan_range(cidr: Ipv4Network, ip_range: Ipv4Network) -> (Ipv4Addr, Ipv4Addr) {
    let first = u32::from(ip_range.network()).max(u32::from(cidr.network()) + 1);
    let last = u32::from(ip_range.broadcast()).min(u32::from(cidr.broadcast()) - 1);
    (Ipv4Addr::from(first), Ipv4Addr::from(last))
}

fn free_subnet(network: &Network) -> Option<Ipv4Network> {
    ipam::first_free_subnet(
        network.cidr,
        network.host_prefix,
        network.leases.values().map(|l| l.subnet),
    )
}

/// Names of networks and hosts: what people type and read; letters, digits, `-`, `_`, `.`.
pub fn validate_name(what: &str, name: &str) -> Result<(), StateError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(
            what,
            name,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok_first
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            what,
            name,
            "use letters, digits, '-', '_' and '.', starting with a letter or digit",
        ));
    }
    Ok(())
}

/// A Linux interface name (see [`overlay_proto::validate::ifname`]).
pub fn validate_ifname(what: &str, name: &str) -> Result<(), StateError> {
    overlay_proto::validate::ifname(name).map_err(|reason| invalid(what, name, reason))
}

/// A network namespace reference (see [`overlay_proto::validate::netns`]).
pub fn validate_netns(netns: &str) -> Result<(), StateError> {
    overlay_proto::validate::netns(netns).map_err(|reason| invalid("namespace", netns, reason))
}

mod endpoints;
pub use endpoints::{MAX_HOST_ENDPOINTS, UNREPORTED_GRACE_MS, check_names, request_key};

#[cfg(test)]
pub(crate) mod tests;
