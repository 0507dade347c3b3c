//! Change marks: where each part of the state last changed, so readers (the Watch model)
//! rebuild only what changed. Local bookkeeping beside the replicated state, never in it.

use std::collections::BTreeMap;

use super::{ClusterState, Command};

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
    pub(super) fn log_endpoint(&mut self, event: EndpointEvent) {
        if self.endpoint_log.len() == ENDPOINT_LOG_LEN
            && let Some(old) = self.endpoint_log.pop_front()
        {
            self.log_dropped_upto = self.log_dropped_upto.max(old.revision);
        }
        self.endpoint_log.push_back(event);
    }
}

/// What a command may change, noted before it runs.
pub(super) enum Touch {
    Nothing,
    Network(String),
    /// Host records changed; `Some(name)`: that host (and with it its endpoints) went away.
    Hosts(Option<String>),
}

impl ClusterState {
    pub(super) fn touch(&self, cmd: &Command) -> Touch {
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

    pub(super) fn mark(&mut self, touch: Touch) {
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
}
