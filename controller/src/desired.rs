//! Desired state per host, and the Watch events that carry it.
//!
//! [`Model`] is built once per revision from the cluster state and shared (behind `Arc`) by
//! every Watch stream of a replica. Parts that did not change keep the previous revision's
//! `Arc`, so telling what changed for one host is mostly pointer comparisons: a change that
//! concerns every host (a peer joins) costs each stream a small delta, not a rebuild and
//! resend of its whole state.
//!
//! Pure: no I/O. The agent never sees other hosts' endpoints, only the peers it needs tunnel
//! entries for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use overlay_proto::v1::{self as pb, watch_event};

use crate::model::Network;
use crate::modes::{self, Member};
use crate::state::ClusterState;

/// The MTU `network ls` shows (see [`modes::effective_mtu`]).
pub use crate::modes::effective_mtu;

pub use overlay_proto::limits::{VXLAN_OVERHEAD, VXLAN6_OVERHEAD};

pub fn bridge_name(network_id: u32) -> String {
    format!("{}{network_id}", overlay_proto::names::BRIDGE_PREFIX)
}

pub fn vxlan_name(network_id: u32) -> String {
    format!("{}{network_id}", overlay_proto::names::VXLAN_PREFIX)
}

/// Host side of an endpoint's veth (or the macvlan before it moves): unique per endpoint.
pub fn host_ifname(endpoint_id: u64) -> String {
    format!("{}{endpoint_id:x}", overlay_proto::names::ENDPOINT_PREFIX)
}

/// A host's own record, as its agent sees it.
#[derive(Debug, PartialEq, Eq)]
struct HostRecord {
    underlay_ip: String,
    vtep_mac: String,
}

type Members = BTreeMap<String, Arc<Member>>;
/// (network, host) → endpoint ids that appeared (`true`) or went away, in order.
type Patches<'a> = BTreeMap<(&'a str, &'a str), Vec<(u64, bool)>>;
/// Host → its endpoints in a network, by id. What an agent programs of an endpoint changes only
/// when the namespace's default route moves to or from it (status is not part of the desired
/// state), so each keeps its `Arc` until then.
type EndpointLists = BTreeMap<String, Arc<Vec<Arc<pb::LocalEndpoint>>>>;

/// One network at one revision.
#[derive(Debug)]
struct NetModel {
    /// Everything but the per-host fields (subnet, gateway, MTU), peers and endpoints.
    base: pb::NetworkState,
    members: Arc<Members>,
    /// Host → its endpoints in this network, by id.
    endpoints: Arc<EndpointLists>,
}

/// What every host must program, at one revision.
#[derive(Debug, Default)]
pub struct Model {
    pub revision: u64,
    /// The state's [`ChangeMarks`](crate::state::ChangeMarks) epoch this model was built in.
    epoch: u64,
    hosts: Arc<BTreeMap<String, Arc<HostRecord>>>,
    networks: BTreeMap<String, Arc<NetModel>>,
}

/// `new`, or `old` when they are equal: unchanged parts keep their identity across revisions.
fn reuse<T: PartialEq>(old: Option<&Arc<T>>, new: T) -> Arc<T> {
    match old {
        Some(o) if **o == new => o.clone(),
        _ => Arc::new(new),
    }
}

fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

impl Model {
    /// Builds the model of `state`, sharing whatever did not change with `prev`. Guided by the
    /// state's change marks, only the parts that changed since `prev` are rebuilt: an endpoint
    /// attach costs one host's endpoint list, not the whole network.
    pub fn build(state: &ClusterState, prev: Option<&Model>) -> Model {
        let marks = &state.marks;
        // Marks are comparable only within one epoch.
        let prev = prev.filter(|p| p.epoch == marks.epoch);
        let since = |rev: u64| prev.is_none_or(|p| rev > p.revision);
        let hosts = match prev {
            Some(p) if !since(marks.hosts) => p.hosts.clone(),
            _ => Arc::new(
                state
                    .hosts
                    .iter()
                    .map(|(name, h)| {
                        let record = HostRecord {
                            underlay_ip: h.underlay_ip.to_string(),
                            vtep_mac: h.vtep_mac.to_string(),
                        };
                        (name.clone(), reuse(prev.and_then(|p| p.hosts.get(name)), record))
                    })
                    .collect(),
            ),
        };
        // Endpoint arrivals and departures since `prev`, when the log still covers them.
        let patches: Option<Patches> = prev.filter(|p| p.revision >= marks.log_dropped_upto).map(|p| {
            let log = &marks.endpoint_log;
            let start = log.partition_point(|e| e.revision <= p.revision);
            let mut patches: Patches = BTreeMap::new();
            for e in log.range(start..) {
                patches
                    .entry((e.network.as_str(), e.host.as_str()))
                    .or_default()
                    .push((e.id, e.added));
            }
            patches
        });
        let networks = state
            .networks
            .values()
            .map(|n| {
                let old = prev.and_then(|p| p.networks.get(&n.name));
                let settings_changed = since(marks.networks.get(&n.name).copied().unwrap_or(0));
                let lists_changed: Vec<&String> = marks
                    .endpoints
                    .range((n.name.clone(), String::new())..)
                    .take_while(|((net, _), _)| *net == n.name)
                    .filter(|(_, rev)| since(**rev))
                    .map(|((_, host), _)| host)
                    .collect();
                let model = match old {
                    Some(o) if !settings_changed && lists_changed.is_empty() => o.clone(),
                    _ => net_model(state, n, old, settings_changed, &lists_changed, patches.as_ref()),
                };
                (n.name.clone(), model)
            })
            .collect();
        Model {
            revision: state.revision,
            epoch: marks.epoch,
            hosts,
            networks,
        }
    }

    pub fn has_host(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
    }

    /// The full desired state of `host`, or `None` if it is not registered.
    pub fn full(&self, host: &str) -> Option<pb::HostDesiredState> {
        let h = self.hosts.get(host)?;
        let networks = self
            .networks
            .values()
            .filter(|n| n.members.contains_key(host))
            .map(|n| n.view_for(host))
            .collect();
        Some(pb::HostDesiredState {
            revision: self.revision,
            host_name: host.to_string(),
            underlay_ip: h.underlay_ip.clone(),
            vtep_mac: h.vtep_mac.clone(),
            networks,
        })
    }

    /// What changed for `host` since `prev` (the model it last received), as a delta; `None`
    /// when nothing that host programs changed. `host` must be registered in `self`.
    pub fn delta(&self, prev: &Model, host: &str) -> Option<pb::WatchEvent> {
        let now = self.hosts.get(host)?;
        let mut d = pb::DesiredDelta {
            base_revision: prev.revision,
            ..Default::default()
        };
        if !prev.hosts.get(host).is_some_and(|p| same(p, now)) {
            d.underlay_ip = now.underlay_ip.clone();
            d.vtep_mac = now.vtep_mac.clone();
        }
        let names: BTreeSet<&String> = prev.networks.keys().chain(self.networks.keys()).collect();
        for name in names {
            let old = prev.networks.get(name).filter(|n| n.members.contains_key(host));
            let new = self.networks.get(name).filter(|n| n.members.contains_key(host));
            match (old, new) {
                (None, None) => {}
                (Some(_), None) => d.remove_networks.push(name.clone()),
                (None, Some(n)) => d.upsert_networks.push(n.view_for(host)),
                (Some(o), Some(n)) if Arc::ptr_eq(o, n) => {}
                (Some(o), Some(n)) => {
                    if o.base != n.base || !same(&o.members[host], &n.members[host]) {
                        d.upsert_networks.push(n.view_for(host));
                        continue;
                    }
                    let peers = peer_changes(name, o, n, host);
                    if !peers.upsert.is_empty() || !peers.remove.is_empty() {
                        d.peer_changes.push(peers);
                    }
                    let changes = endpoint_changes(name, o.endpoints.get(host), n.endpoints.get(host));
                    if !changes.upsert.is_empty() || !changes.remove.is_empty() {
                        d.endpoint_changes.push(changes);
                    }
                    let names = directory_changes(name, &o.endpoints, &n.endpoints);
                    if !names.upsert.is_empty() || !names.remove.is_empty() {
                        d.directory_changes.push(names);
                    }
                }
            }
        }
        let empty = d.underlay_ip.is_empty()
            && d.upsert_networks.is_empty()
            && d.remove_networks.is_empty()
            && d.peer_changes.is_empty()
            && d.endpoint_changes.is_empty()
            && d.directory_changes.is_empty();
        if empty {
            return None;
        }
        Some(pb::WatchEvent {
            revision: self.revision,
            event: Some(watch_event::Event::Delta(d)),
        })
    }

    pub fn full_event(&self, host: &str) -> Option<pb::WatchEvent> {
        Some(pb::WatchEvent {
            revision: self.revision,
            event: Some(watch_event::Event::Full(self.full(host)?)),
        })
    }
}

/// Peers that joined, changed or left network `name` between `o` and `n`, as seen by `host`.
/// A merge of two sorted maps where unchanged entries are usually the same `Arc`.
fn peer_changes(name: &str, o: &NetModel, n: &NetModel, host: &str) -> pb::PeerChanges {
    let mut out = pb::PeerChanges {
        network: name.to_string(),
        ..Default::default()
    };
    if Arc::ptr_eq(&o.members, &n.members) {
        return out;
    }
    let mut a = o
        .members
        .iter()
        .filter(|(h, m)| *h != host && m.peer.is_some())
        .peekable();
    let mut b = n
        .members
        .iter()
        .filter(|(h, m)| *h != host && m.peer.is_some())
        .peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ha, _)), None) => {
                out.remove.push((*ha).clone());
                a.next();
            }
            (None, Some((_, mb))) => {
                out.upsert.extend(mb.peer.clone());
                b.next();
            }
            (Some((ha, ma)), Some((hb, mb))) => match ha.cmp(hb) {
                std::cmp::Ordering::Less => {
                    out.remove.push((*ha).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.upsert.extend(mb.peer.clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(ma, mb) && ma.peer != mb.peer {
                        out.upsert.extend(mb.peer.clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    out
}

/// Endpoints that appeared or went away between two lists (both sorted by id).
fn endpoint_changes(
    name: &str,
    old: Option<&Arc<Vec<Arc<pb::LocalEndpoint>>>>,
    new: Option<&Arc<Vec<Arc<pb::LocalEndpoint>>>>,
) -> pb::EndpointChanges {
    let mut out = pb::EndpointChanges {
        network: name.to_string(),
        ..Default::default()
    };
    if let (Some(a), Some(b)) = (old, new)
        && Arc::ptr_eq(a, b)
    {
        return out;
    }
    let empty = Vec::new();
    let (a, b) = (old.map_or(&empty, |v| &**v), new.map_or(&empty, |v| &**v));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x.id == y.id => {
                if !Arc::ptr_eq(x, y) && x != y {
                    out.upsert.push((**y).clone());
                }
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x.id < y.id => {
                out.remove.push(x.id);
                i += 1;
            }
            (Some(x), None) => {
                out.remove.push(x.id);
                i += 1;
            }
            (_, Some(y)) => {
                out.upsert.push((**y).clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// An endpoint's entry in its network's DNS: only endpoints with names and an address.
fn name_record(host: &str, e: &pb::LocalEndpoint) -> Option<pb::NameRecord> {
    if e.names.is_empty() || e.address.is_empty() {
        return None;
    }
    let address = e.address.split('/').next().unwrap_or_default();
    Some(pb::NameRecord {
        endpoint_id: e.id,
        host: host.to_string(),
        address: address.to_string(),
        names: e.names.clone(),
        address6: e.address6.split('/').next().unwrap_or_default().to_string(),
    })
}

/// Names that appeared, changed or went away between two models of a network, on any host.
/// Only the hosts whose endpoint list changed are compared (the others keep their `Arc`).
fn directory_changes(name: &str, old: &Arc<EndpointLists>, new: &Arc<EndpointLists>) -> pb::DirectoryChanges {
    let mut out = pb::DirectoryChanges {
        network: name.to_string(),
        ..Default::default()
    };
    if Arc::ptr_eq(old, new) {
        return out;
    }
    let hosts: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for host in hosts {
        let (a, b) = (old.get(host), new.get(host));
        if let (Some(a), Some(b)) = (a, b)
            && Arc::ptr_eq(a, b)
        {
            continue;
        }
        let records = |list: Option<&Arc<Vec<Arc<pb::LocalEndpoint>>>>| -> BTreeMap<u64, pb::NameRecord> {
            list.map(|l| {
                l.iter()
                    .filter_map(|e| name_record(host, e))
                    .map(|r| (r.endpoint_id, r))
                    .collect()
            })
            .unwrap_or_default()
        };
        let (before, after) = (records(a), records(b));
        out.remove
            .extend(before.keys().filter(|id| !after.contains_key(id)).copied());
        out.upsert.extend(
            after
                .into_iter()
                .filter(|(id, r)| before.get(id) != Some(r))
                .map(|(_, r)| r),
        );
    }
    out
}

impl NetModel {
    /// Every named endpoint of the network, on any host, by endpoint id.
    fn directory(&self) -> Vec<pb::NameRecord> {
        let mut out: Vec<pb::NameRecord> = self
            .endpoints
            .iter()
            .flat_map(|(host, list)| list.iter().filter_map(|e| name_record(host, e)))
            .collect();
        out.sort_by_key(|r| r.endpoint_id);
        out
    }

    /// The network as `host` (a member) must program it.
    fn view_for(&self, host: &str) -> pb::NetworkState {
        let me = &self.members[host];
        pb::NetworkState {
            subnet: me.subnet.clone(),
            gateway: me.gateway.clone(),
            subnet6: me.subnet6.clone(),
            gateway6: me.gateway6.clone(),
            mtu: me.mtu,
            peers: self
                .members
                .iter()
                .filter(|(h, _)| *h != host)
                .filter_map(|(_, m)| m.peer.clone())
                .collect(),
            endpoints: self
                .endpoints
                .get(host)
                .map(|v| v.iter().map(|e| (**e).clone()).collect())
                .unwrap_or_default(),
            directory: self.directory(),
            ..self.base.clone()
        }
    }
}

/// The model of network `n`. With an `old` model, only what changed is rebuilt: the settings
/// and members when `settings_changed`, and the endpoint lists of `lists_changed` hosts.
fn net_model(
    state: &ClusterState,
    n: &Network,
    old: Option<&Arc<NetModel>>,
    settings_changed: bool,
    lists_changed: &[&String],
    patches: Option<&Patches>,
) -> Arc<NetModel> {
    let (base, members) = match old {
        Some(o) if !settings_changed => (o.base.clone(), o.members.clone()),
        _ => (net_base(n), Arc::new(members(state, n, old))),
    };
    let endpoints = match old {
        Some(o) => {
            let mut lists = (*o.endpoints).clone();
            for host in lists_changed {
                let patch = patches.and_then(|p| p.get(&(n.name.as_str(), host.as_str())));
                let list = match (patch, o.endpoints.get(*host)) {
                    (Some(patch), Some(before)) => patched(state, before, patch),
                    (Some(patch), None) => patched(state, &Arc::new(Vec::new()), patch),
                    _ => endpoint_list(state.endpoints_of(&n.name, host), o.endpoints.get(*host)),
                };
                if list.is_empty() {
                    lists.remove(*host);
                } else {
                    lists.insert((*host).clone(), Arc::new(list));
                }
            }
            Arc::new(lists)
        }
        None => {
            let mut by_host: BTreeMap<String, Vec<&crate::model::Endpoint>> = BTreeMap::new();
            for e in state.network_endpoints(&n.name) {
                by_host.entry(e.host.clone()).or_default().push(e);
            }
            Arc::new(
                by_host
                    .into_iter()
                    .map(|(h, eps)| (h, Arc::new(endpoint_list(eps, None))))
                    .collect(),
            )
        }
    };
    Arc::new(NetModel {
        base,
        members,
        endpoints,
    })
}

fn net_base(n: &Network) -> pb::NetworkState {
    let mut base = pb::NetworkState {
        name: n.name.clone(),
        id: n.id,
        mode: n.mode.wire() as i32,
        cidr: n.cidr.to_string(),
        cidr6: n.cidr6.map(|c| c.to_string()).unwrap_or_default(),
        vni: n.vni.unwrap_or(0),
        nat_egress: n.nat_egress,
        ..Default::default()
    };
    modes::rules(n.mode).base(n, &mut base);
    base
}

/// Every host's place in `n` (its mode decides who and what), reusing `old` entries that did
/// not change.
fn members(state: &ClusterState, n: &Network, old: Option<&Arc<NetModel>>) -> Members {
    let old_member = |host: &str| old.and_then(|o| o.members.get(host));
    modes::rules(n.mode)
        .facts()
        .pool
        .members(state, n)
        .into_iter()
        .map(|(host, member)| {
            let member = reuse(old_member(&host), member);
            (host, member)
        })
        .collect()
}

/// `before` with the endpoints of `patch` added or removed (ids ascend, so additions append).
fn patched(
    state: &ClusterState,
    before: &Arc<Vec<Arc<pb::LocalEndpoint>>>,
    patch: &[(u64, bool)],
) -> Vec<Arc<pb::LocalEndpoint>> {
    let mut list = (**before).clone();
    for (id, added) in patch {
        match list.binary_search_by_key(id, |e| e.id) {
            Ok(at) if !added => {
                list.remove(at);
            }
            Err(at) if *added => {
                if let Some(e) = state.endpoints.get(id) {
                    list.insert(at, Arc::new(local_endpoint(e)));
                }
            }
            _ => {}
        }
    }
    list
}

fn local_endpoint(e: &crate::model::Endpoint) -> pb::LocalEndpoint {
    let request = e.is_request();
    pb::LocalEndpoint {
        id: e.id,
        netns: e.netns.clone(),
        ifname: e.ifname.clone(),
        address: match request {
            true => String::new(),
            false => format!("{}/{}", e.ip, e.prefix_len),
        },
        mac: match request {
            true => String::new(),
            false => e.mac.to_string(),
        },
        gateway: match request {
            true => String::new(),
            false => e.gateway.to_string(),
        },
        host_ifname: host_ifname(e.host_id),
        default_route: Some(e.default_route),
        key: e.key.clone(),
        host_id: e.host_id,
        owner: e.owner.clone(),
        names: e.names.clone(),
        // A request the agent could not carry out is no longer one to act on.
        requested: request && matches!(e.status, crate::model::EndpointStatus::Requested),
        requested_ip: e.requested_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        ports: overlay_proto::ports::to_wire(&e.ports),
        // The host's agent knows which of its endpoints a runtime wired; the controller's
        // list only tells it what it recorded.
        runtime_wired: false,
        address6: e
            .v6
            .map(|a| format!("{}/{}", a.ip, a.prefix_len))
            .unwrap_or_default(),
        gateway6: e.v6.map(|a| a.gateway.to_string()).unwrap_or_default(),
    }
}

/// A host's endpoints in a network, by id, reusing the entries of `old` that did not change.
fn endpoint_list<'a>(
    eps: impl IntoIterator<Item = &'a crate::model::Endpoint>,
    old: Option<&Arc<Vec<Arc<pb::LocalEndpoint>>>>,
) -> Vec<Arc<pb::LocalEndpoint>> {
    let old: BTreeMap<u64, &Arc<pb::LocalEndpoint>> = old
        .map(|v| v.iter().map(|e| (e.id, e)).collect())
        .unwrap_or_default();
    let mut list: Vec<Arc<pb::LocalEndpoint>> = eps
        .into_iter()
        .map(|e| match old.get(&e.id) {
            Some(known) => {
                let now = local_endpoint(e);
                if ***known == now {
                    Arc::clone(known)
                } else {
                    Arc::new(now)
                }
            }
            None => Arc::new(local_endpoint(e)),
        })
        .collect();
    list.sort_by_key(|e| e.id);
    list
}

/// The full desired state of `host` computed directly from the state (what a new Watch stream
/// starts with), or `None` if no such host is registered.
pub fn for_host(state: &ClusterState, host: &str) -> Option<pb::HostDesiredState> {
    Model::build(state, None).full(host)
}

#[cfg(test)]
mod tests;
