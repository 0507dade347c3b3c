//! Endpoints in the replicated state: what hosts report they hold, and what was asked for
//! through the controller.
//!
//! An address inside a host's lease is that host's to hand out (DESIGN.md, replicated state):
//! its agent allocates it, stores it durably and reports it here with
//! [`Command::SyncEndpoints`](super::Command::SyncEndpoints). The state machine does not pick
//! those addresses; it checks every report (the network exists, the address lies in the
//! reporting host's lease and no other endpoint holds it) and records it, so `endpoint ls`,
//! `doctor`, DNS and the Watch stream see every endpoint. Two things are still decided here:
//!
//! - macvlan addresses: one range shared by every host, so a host asks for each one
//!   ([`Command::AllocateAddress`](super::Command::AllocateAddress)); allocated in `apply`,
//!   like leases and VNIs, so no two hosts ever get the same;
//! - requests: `overlayctl endpoint attach` records an endpoint without an address
//!   ([`Endpoint::is_request`]), keyed `req-<id>`, for the host's agent to carry out through
//!   the same path as a local attach. A detach through the controller drops the record; the
//!   agent sees its reported endpoint gone from the controller's list and removes it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{ClusterState, EndpointEvent, StateError, invalid, validate_ifname, validate_netns};
use crate::ipam;
use crate::model::{Endpoint, EndpointStatus, HostEndpoint, MacvlanMode, Mode, PublishedPort};
use crate::modes::{self, Pool};

/// Longest endpoint key: CNI container ids are up to 256 characters (`<id>/<ifname>`).
pub const MAX_KEY_LEN: usize = 300;
/// Most names one endpoint answers to (each one DNS label: `validate::endpoint_name`).
pub const MAX_NAMES: usize = overlay_proto::validate::MAX_ENDPOINT_NAMES;
/// Most endpoints one host may hold in the records: bounds what one agent certificate can make
/// every replica store.
pub const MAX_HOST_ENDPOINTS: usize = 16_384;

/// How long an allocated macvlan address survives full reports that do not hold it yet.
pub const UNREPORTED_GRACE_MS: i64 = 60_000;

/// The key of a request's endpoint.
pub fn request_key(id: u64) -> String {
    format!("req-{id}")
}

/// What [`ClusterState::sync_endpoints`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub changed: u32,
    pub refused: Vec<(String, String)>,
}

fn check_key(key: &str) -> Result<(), StateError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(invalid(
            "endpoint key",
            key.chars().take(64).collect::<String>(),
            format!("must be 1 to {MAX_KEY_LEN} characters"),
        ));
    }
    if key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            "endpoint key",
            key.chars().take(64).collect::<String>(),
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// Names are DNS labels (letters, digits, '-', '_'), at most [`MAX_NAMES`].
pub fn check_names(names: &[String]) -> Result<(), StateError> {
    if names.len() > MAX_NAMES {
        return Err(invalid(
            "names",
            names.len(),
            format!("at most {MAX_NAMES} per endpoint"),
        ));
    }
    for n in names {
        overlay_proto::validate::endpoint_name(n)
            .map_err(|why| invalid("name", n.chars().take(64).collect::<String>(), why))?;
    }
    Ok(())
}

fn check_owner(owner: &str) -> Result<(), StateError> {
    if owner.len() > 32 || owner.chars().any(|c| !c.is_ascii_alphanumeric() && c != '-') {
        return Err(invalid(
            "endpoint owner",
            owner.chars().take(32).collect::<String>(),
            "must be up to 32 letters, digits or '-'",
        ));
    }
    Ok(())
}

impl ClusterState {
    // ------------------------------------------------------------------ indices

    /// Adds `ep` to the records and indices, logged for Watch readers.
    fn insert_endpoint(&mut self, ep: Endpoint) {
        if !ep.is_request() {
            self.addresses
                .entry(ep.network.clone())
                .or_default()
                .insert(ep.ip, ep.id);
        }
        self.by_host_key.insert((ep.host.clone(), ep.key.clone()), ep.id);
        self.by_place
            .entry((ep.network.clone(), ep.host.clone()))
            .or_default()
            .insert(ep.id);
        self.log_list_change(&ep.network, &ep.host, ep.id, true);
        self.endpoints.insert(ep.id, ep);
    }

    /// Removes endpoint `id` from the records and indices, logged for Watch readers.
    pub(super) fn forget_endpoint(&mut self, id: u64) -> Option<Endpoint> {
        let ep = self.endpoints.remove(&id)?;
        if let Some(addrs) = self.addresses.get_mut(&ep.network)
            && addrs.get(&ep.ip) == Some(&id)
        {
            addrs.remove(&ep.ip);
        }
        self.by_host_key.remove(&(ep.host.clone(), ep.key.clone()));
        let place = (ep.network.clone(), ep.host.clone());
        if let Some(ids) = self.by_place.get_mut(&place) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_place.remove(&place);
            }
        }
        self.log_list_change(&ep.network, &ep.host, id, false);
        Some(ep)
    }

    /// Replaces the record of endpoint `ep.id` (same id, network and host): logged as leaving
    /// and arriving again, so Watch readers that patch their lists pick up the new record.
    fn replace_endpoint(&mut self, ep: Endpoint) {
        if self.forget_endpoint(ep.id).is_some() {
            self.insert_endpoint(ep);
        }
    }

    fn log_list_change(&mut self, network: &str, host: &str, id: u64, added: bool) {
        let revision = self.revision + 1;
        self.marks.log_endpoint(EndpointEvent {
            revision,
            network: network.to_string(),
            host: host.to_string(),
            id,
            added,
        });
        self.marks
            .endpoints
            .insert((network.to_string(), host.to_string()), revision);
    }

    pub(super) fn rebuild_endpoint_indices(&mut self) {
        self.addresses = self
            .networks
            .keys()
            .map(|n| (n.clone(), BTreeMap::new()))
            .collect();
        self.by_host_key.clear();
        self.by_place.clear();
        for ep in self.endpoints.values() {
            if !ep.is_request() {
                self.addresses
                    .entry(ep.network.clone())
                    .or_default()
                    .insert(ep.ip, ep.id);
            }
            self.by_host_key.insert((ep.host.clone(), ep.key.clone()), ep.id);
            self.by_place
                .entry((ep.network.clone(), ep.host.clone()))
                .or_default()
                .insert(ep.id);
        }
    }

    // ------------------------------------------------------------------ queries

    /// Endpoints (and requests) of one host in one network, by id.
    pub fn endpoints_of<'a>(&'a self, network: &str, host: &str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.by_place
            .get(&(network.to_string(), host.to_string()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.endpoints.get(id))
    }

    /// Endpoints (and requests) of one network, by host and id.
    pub fn network_endpoints<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.by_place
            .range((network.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == network)
            .flat_map(|(_, ids)| ids.iter())
            .filter_map(|id| self.endpoints.get(id))
    }

    /// The record of `host`'s endpoint `key`.
    pub fn endpoint_by_host_key(&self, host: &str, key: &str) -> Option<&Endpoint> {
        let id = self.by_host_key.get(&(host.to_string(), key.to_string()))?;
        self.endpoints.get(id)
    }

    /// The endpoints of `network` on `host` in namespace `netns` (as it was given).
    fn in_namespace(&self, network: &str, host: &str, netns: &str) -> Vec<u64> {
        self.endpoints_of(network, host)
            .filter(|e| e.netns == netns)
            .map(|e| e.id)
            .collect()
    }

    /// The endpoint addresses `host` may hand out in lease-based `network`: its lease's range
    /// and gateway, or why there are none.
    fn lease_range(&self, network: &str, host: &str) -> Result<(Ipv4Addr, Ipv4Addr, Ipv4Addr, u8), String> {
        let n = self
            .networks
            .get(network)
            .ok_or_else(|| format!("unknown network {network:?}"))?;
        let lease = n
            .leases
            .get(host)
            .ok_or_else(|| format!("host {host:?} holds no lease in network {network:?}"))?;
        let (first, last) = ipam::endpoint_range(lease.subnet)
            .ok_or_else(|| format!("lease {} has no room for endpoints", lease.subnet))?;
        Ok((
            first,
            last,
            ipam::subnet_gateway(lease.subnet),
            lease.subnet.prefix(),
        ))
    }

    // ------------------------------------------------------------------ requests

    /// Records a request for an endpoint (no address yet; see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn request_endpoint(
        &mut self,
        network: String,
        host: String,
        netns: String,
        ifname: String,
        ip: Option<Ipv4Addr>,
        default_route: bool,
        names: Vec<String>,
        ports: Vec<PublishedPort>,
        now_ms: i64,
    ) -> Result<Endpoint, StateError> {
        validate_netns(&netns)?;
        validate_ifname("interface name", &ifname)?;
        check_names(&names)?;
        let n = self
            .networks
            .get(&network)
            .ok_or_else(|| StateError::UnknownNetwork(network.clone()))?;
        if !self.hosts.contains_key(&host) {
            return Err(StateError::UnknownHost(host));
        }
        self.check_ports(&host, None, n.mode, &ports)?;
        if !self.in_namespace(&network, &host, &netns).is_empty() {
            return Err(StateError::EndpointExists { network, host, netns });
        }
        if n.mode.uses_leases() && !n.leases.contains_key(&host) {
            // Every host gets a lease when it registers or the network is created, as far as
            // the pool goes: this one was left without.
            return Err(StateError::SubnetPoolExhausted {
                network,
                host,
                host_prefix: n.host_prefix,
                capacity: ipam::subnet_count(n.cidr, n.host_prefix),
            });
        }
        let taken = self
            .endpoints_of_host(&host)
            .find(|e| e.netns == netns && e.ifname == ifname)
            .map(|other| other.network.clone());
        if let Some(network) = taken {
            return Err(StateError::IfnameInUse {
                host,
                netns,
                ifname,
                network,
            });
        }
        if let Some(ip) = ip {
            // Checked now as far as the controller can (the host decides in the end).
            let (first, last, gateway) = match modes::rules(n.mode).facts().pool {
                Pool::HostLeases => {
                    let (first, last, gateway, _) = self.lease_range(&network, &host).map_err(|reason| {
                        StateError::AddressNotAllowed {
                            ip,
                            network: network.clone(),
                            host: host.clone(),
                            reason,
                        }
                    })?;
                    (first, last, gateway)
                }
                Pool::SharedRange => {
                    let m = n
                        .macvlan
                        .as_ref()
                        .ok_or_else(|| invalid("network", &network, "macvlan options missing"))?;
                    let (first, last) = modes::shared_range(n.cidr, m.ip_range);
                    (first, last, m.gateway)
                }
            };
            if !(first..=last).contains(&ip) || ip == gateway {
                return Err(StateError::AddressNotAllowed {
                    ip,
                    network,
                    host,
                    reason: format!("allowed: {first} to {last}, except {gateway}"),
                });
            }
            if self.addresses.get(&network).is_some_and(|a| a.contains_key(&ip)) {
                return Err(StateError::AddressInUse { ip, network });
            }
        }
        self.next_endpoint_id += 1;
        let id = self.next_endpoint_id;
        let ep = Endpoint {
            id,
            network,
            host,
            netns,
            ifname,
            ip: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Ipv4Addr::UNSPECIFIED,
            mac: overlay_proto::mac::MacAddr([0; 6]),
            status: EndpointStatus::Requested,
            created_ms: now_ms,
            default_route,
            key: request_key(id),
            host_id: 0,
            owner: "overlayctl".into(),
            names,
            requested_ip: ip,
            ports,
            v6: None,
        };
        self.insert_endpoint(ep.clone());
        Ok(ep)
    }

    /// `ports` may be published by endpoint `key` (`None`: a new one) of a `mode` network on
    /// `host`: a valid list, on a network with a bridge, and no host port another endpoint of
    /// the host holds.
    fn check_ports(
        &self,
        host: &str,
        key: Option<&str>,
        mode: Mode,
        ports: &[PublishedPort],
    ) -> Result<(), StateError> {
        if ports.is_empty() {
            return Ok(());
        }
        overlay_proto::ports::check_list(ports)
            .map_err(|why| invalid("published ports", ports.len(), why))?;
        if !mode.publishes_ports() {
            return Err(invalid(
                "published ports",
                ports.len(),
                "a macvlan endpoint is a machine on the LAN: reach it at its own address",
            ));
        }
        let others = self
            .endpoints_of_host(host)
            .filter(|e| Some(e.key.as_str()) != key);
        for other in others {
            if let Some((wanted, _)) = overlay_proto::ports::first_clash(ports, &other.ports) {
                return Err(StateError::PortInUse {
                    host: host.to_string(),
                    port: wanted.to_string(),
                    holder: format!("{} in {}", other.network, other.netns),
                });
            }
        }
        Ok(())
    }

    fn endpoints_of_host<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.by_host_key
            .range((host.to_string(), String::new())..)
            .take_while(move |((h, _), _)| h == host)
            .filter_map(|(_, id)| self.endpoints.get(id))
    }

    /// Drops the endpoint (or request) of `network` on `host` in `netns`.
    pub(super) fn detach_endpoint(
        &mut self,
        network: &str,
        host: &str,
        netns: &str,
    ) -> Result<Endpoint, StateError> {
        if !self.networks.contains_key(network) {
            return Err(StateError::UnknownNetwork(network.to_string()));
        }
        let unknown = || StateError::UnknownEndpoint {
            network: network.to_string(),
            host: host.to_string(),
            netns: netns.to_string(),
        };
        let ids = self.in_namespace(network, host, netns);
        let [id] = ids.as_slice() else {
            return Err(match ids.len() {
                0 => unknown(),
                n => invalid(
                    "namespace",
                    netns,
                    format!(
                        "holds {n} endpoints of network {network:?}; detach them through the runtime that attached them"
                    ),
                ),
            });
        };
        self.forget_endpoint(*id).ok_or_else(unknown)
    }

    // ------------------------------------------------------------------ macvlan addresses

    /// An address of macvlan network `endpoint.network` for `host`'s endpoint `endpoint.key`:
    /// the one it already has, or the next free one (or `ip`, if free).
    pub(super) fn allocate_address(
        &mut self,
        host: &str,
        endpoint: HostEndpoint,
        ip: Option<Ipv4Addr>,
        now_ms: i64,
    ) -> Result<Endpoint, StateError> {
        check_key(&endpoint.key)?;
        check_names(&endpoint.names)?;
        check_owner(&endpoint.owner)?;
        validate_netns(&endpoint.netns)?;
        validate_ifname("interface name", &endpoint.ifname)?;
        if !endpoint.ports.is_empty() {
            return Err(invalid(
                "published ports",
                endpoint.ports.len(),
                "a macvlan endpoint is a machine on the LAN: reach it at its own address",
            ));
        }
        let network_name = endpoint.network.clone();
        let n = self
            .networks
            .get(&network_name)
            .ok_or_else(|| StateError::UnknownNetwork(network_name.clone()))?;
        if !self.hosts.contains_key(host) {
            return Err(StateError::UnknownHost(host.to_string()));
        }
        // A request made through the controller is carried out under its own key: it gets its
        // address in place (same id).
        let mut request = None;
        if let Some(existing) = self.endpoint_by_host_key(host, &endpoint.key) {
            if existing.network != network_name {
                return Err(invalid(
                    "endpoint key",
                    &endpoint.key,
                    format!(
                        "is already used on host {host:?} for network {:?}",
                        existing.network
                    ),
                ));
            }
            if !existing.is_request() {
                return Ok(existing.clone());
            }
            request = Some((existing.id, existing.created_ms, existing.requested_ip));
        }
        let ip = ip.or(request.and_then(|(_, _, wanted)| wanted));
        let m = match (modes::rules(n.mode).facts().pool, n.macvlan.as_ref()) {
            (Pool::SharedRange, Some(m)) => m.clone(),
            (Pool::SharedRange, None) | (Pool::HostLeases, _) => {
                return Err(invalid(
                    "network",
                    &network_name,
                    format!(
                        "is a {} network: its hosts allocate addresses from their own leases",
                        n.mode
                    ),
                ));
            }
        };
        if request.is_none() && self.endpoints_of_host(host).count() >= MAX_HOST_ENDPOINTS {
            return Err(invalid(
                "host",
                host,
                format!("holds {MAX_HOST_ENDPOINTS} endpoints already"),
            ));
        }
        if m.mode == MacvlanMode::Passthru && self.endpoints_of(&network_name, host).any(|e| !e.is_request())
        {
            return Err(StateError::PassthruTaken {
                network: network_name,
                host: host.to_string(),
            });
        }
        let (first, last) = modes::shared_range(n.cidr, m.ip_range);
        let no_addresses = BTreeMap::new();
        let used = self.addresses.get(&network_name).unwrap_or(&no_addresses);
        let reserved = [m.gateway];
        let ip = match ip {
            Some(ip) => {
                if !(first..=last).contains(&ip) || ip == m.gateway {
                    return Err(StateError::AddressNotAllowed {
                        ip,
                        network: network_name,
                        host: host.to_string(),
                        reason: format!("allowed: {first} to {last}, except {}", m.gateway),
                    });
                }
                if used.contains_key(&ip) {
                    return Err(StateError::AddressInUse {
                        ip,
                        network: network_name,
                    });
                }
                ip
            }
            None => ipam::next_free_ip(first, last, n.cursor, used, &reserved).ok_or_else(|| {
                StateError::AddressPoolExhausted {
                    network: network_name.clone(),
                    range: format!("{first}-{last}"),
                    capacity: ipam::range_len(first, last)
                        - reserved.iter().filter(|g| (first..=last).contains(*g)).count() as u64,
                }
            })?,
        };
        let prefix_len = n.cidr.prefix();
        if let Some(n) = self.networks.get_mut(&network_name) {
            n.cursor = Some(ip);
        }
        let (id, created_ms) = match request {
            // Dated from the allocation: what the grace for unreported allocations counts from.
            Some((id, _, _)) => {
                self.forget_endpoint(id);
                (id, now_ms)
            }
            None => {
                self.next_endpoint_id += 1;
                (self.next_endpoint_id, now_ms)
            }
        };
        let ep = Endpoint {
            id,
            network: network_name,
            host: host.to_string(),
            netns: endpoint.netns,
            ifname: endpoint.ifname,
            ip,
            prefix_len,
            gateway: m.gateway,
            mac: ipam::mac_from_ip(ip),
            status: EndpointStatus::Pending,
            created_ms,
            default_route: endpoint.default_route,
            key: endpoint.key,
            host_id: endpoint.host_id,
            owner: endpoint.owner,
            names: endpoint.names,
            requested_ip: None,
            ports: Vec::new(),
            v6: None,
        };
        self.insert_endpoint(ep.clone());
        Ok(ep)
    }

    // ------------------------------------------------------------------ host reports

    /// Records what `host`'s agent holds (see [`Command::SyncEndpoints`](super::Command)).
    /// Each endpoint is checked on its own: one that cannot be recorded is refused with the
    /// reason and the others still are.
    pub(super) fn sync_endpoints(
        &mut self,
        host: &str,
        full: bool,
        upsert: Vec<HostEndpoint>,
        remove: Vec<String>,
        failed: Vec<(String, String)>,
        now_ms: i64,
    ) -> Result<Synced, StateError> {
        if !self.hosts.contains_key(host) {
            return Err(StateError::UnknownHost(host.to_string()));
        }
        if upsert.len() > MAX_HOST_ENDPOINTS
            || remove.len() > MAX_HOST_ENDPOINTS
            || failed.len() > MAX_HOST_ENDPOINTS
        {
            return Err(invalid(
                "endpoint report",
                upsert.len() + remove.len() + failed.len(),
                format!("at most {MAX_HOST_ENDPOINTS} endpoints per report"),
            ));
        }
        let mut out = Synced::default();
        let reported: BTreeSet<String> = upsert.iter().map(|e| e.key.clone()).collect();
        for e in upsert {
            let key = e.key.clone();
            match self.record_reported(host, e, now_ms) {
                Ok(true) => out.changed += 1,
                Ok(false) => {}
                Err(why) => out.refused.push((key, why)),
            }
        }
        // A request the agent could not carry out is reported failed, and its endpoint (which the
        // agent rolled back) removed, in the same report: the failure wins, so the request stays
        // for `overlayctl` to read the reason.
        let failed_keys: BTreeSet<&str> = failed.iter().map(|(k, _)| k.as_str()).collect();
        for key in remove {
            if failed_keys.contains(key.as_str()) {
                continue;
            }
            if let Some(id) = self.by_host_key.get(&(host.to_string(), key)).copied() {
                self.forget_endpoint(id);
                out.changed += 1;
            }
        }
        for (key, why) in failed {
            if let Some(id) = self.by_host_key.get(&(host.to_string(), key)).copied()
                && let Some(ep) = self.endpoints.get(&id)
                && ep.key == request_key(ep.id)
            {
                let why: String = why.chars().take(1024).collect();
                if ep.status != EndpointStatus::Failed(why.clone()) || !ep.is_request() {
                    let mut ep = ep.clone();
                    ep.status = EndpointStatus::Failed(why);
                    // A macvlan request the controller had filled gives its address back: the
                    // agent rolled the endpoint back.
                    ep.ip = Ipv4Addr::UNSPECIFIED;
                    ep.prefix_len = 0;
                    ep.gateway = Ipv4Addr::UNSPECIFIED;
                    ep.mac = overlay_proto::mac::MacAddr([0; 6]);
                    ep.v6 = None;
                    self.replace_endpoint(ep);
                    out.changed += 1;
                }
            }
        }
        if full {
            // A macvlan address allocated moments ago may not be in the agent's store yet when
            // a full report it sent meanwhile arrives: such an allocation (not reported yet,
            // `host_id` 0) is kept for a grace period, so its address is never handed to
            // another host while this one wires it. Past the grace, the agent lost it.
            let fresh =
                |e: &Endpoint| e.host_id == 0 && now_ms.saturating_sub(e.created_ms) < UNREPORTED_GRACE_MS;
            let stale: Vec<u64> = self
                .endpoints_of_host(host)
                .filter(|e| !e.is_request() && !reported.contains(&e.key) && !fresh(e))
                .map(|e| e.id)
                .collect();
            for id in stale {
                self.forget_endpoint(id);
                out.changed += 1;
            }
        }
        Ok(out)
    }

    /// Records one reported endpoint; `Ok(true)` if the records changed.
    fn record_reported(&mut self, host: &str, e: HostEndpoint, now_ms: i64) -> Result<bool, String> {
        check_key(&e.key).map_err(|err| err.to_string())?;
        check_names(&e.names).map_err(|err| err.to_string())?;
        check_owner(&e.owner).map_err(|err| err.to_string())?;
        validate_netns(&e.netns).map_err(|err| err.to_string())?;
        validate_ifname("interface name", &e.ifname).map_err(|err| err.to_string())?;
        if matches!(e.status, EndpointStatus::Requested) {
            return Err("an agent reports endpoints, not requests".into());
        }
        let n = self
            .networks
            .get(&e.network)
            .ok_or_else(|| format!("unknown network {:?}", e.network))?;
        let mode = n.mode;
        let existing = self.endpoint_by_host_key(host, &e.key).cloned();
        if let Some(old) = &existing
            && old.network != e.network
        {
            return Err(format!(
                "key {:?} is recorded for network {:?}, not {:?}",
                e.key, old.network, e.network
            ));
        }
        let (prefix_len, gateway) = match modes::rules(mode).facts().pool {
            Pool::HostLeases => {
                let (first, last, gateway, prefix) = self.lease_range(&e.network, host)?;
                if !(first..=last).contains(&e.ip) || e.ip == gateway {
                    return Err(format!(
                        "address {} is outside host {host:?}'s lease of network {:?} ({first} to {last}, except {gateway})",
                        e.ip, e.network
                    ));
                }
                (prefix, gateway)
            }
            Pool::SharedRange => {
                // Allocated here (AllocateAddress): the report must match the allocation.
                match &existing {
                    Some(old) if !old.is_request() && old.ip == e.ip => (old.prefix_len, old.gateway),
                    _ => {
                        return Err(format!(
                            "address {} of macvlan network {:?} was not allocated to key {:?} of host {host:?}",
                            e.ip, e.network, e.key
                        ));
                    }
                }
            }
        };
        if let Some(holder) = self.addresses.get(&e.network).and_then(|a| a.get(&e.ip))
            && existing.as_ref().is_none_or(|old| old.id != *holder)
        {
            let other = self.endpoints.get(holder);
            return Err(format!(
                "address {} of network {:?} is held by endpoint {} of host {:?}",
                e.ip,
                e.network,
                holder,
                other.map(|o| o.host.as_str()).unwrap_or("?")
            ));
        }
        if let Some(old) = &existing
            && !old.is_request()
            && old.ip != e.ip
        {
            return Err(format!(
                "key {:?} is recorded with address {}, not {}",
                e.key, old.ip, e.ip
            ));
        }
        if existing.is_none() && self.endpoints_of_host(host).count() >= MAX_HOST_ENDPOINTS {
            return Err(format!(
                "host {host:?} holds {MAX_HOST_ENDPOINTS} endpoints already"
            ));
        }
        self.check_ports(host, Some(&e.key), mode, &e.ports)
            .map_err(|err| err.to_string())?;
        let v6 = n.address6(host, e.ip);
        let record = Endpoint {
            id: existing.as_ref().map(|o| o.id).unwrap_or(0),
            network: e.network,
            host: host.to_string(),
            netns: e.netns,
            ifname: e.ifname,
            ip: e.ip,
            prefix_len,
            gateway,
            mac: ipam::mac_from_ip(e.ip),
            status: e.status,
            created_ms: existing.as_ref().map(|o| o.created_ms).unwrap_or(now_ms),
            default_route: e.default_route,
            key: e.key,
            host_id: e.host_id,
            owner: e.owner,
            names: e.names,
            requested_ip: None,
            ports: e.ports,
            v6,
        };
        match existing {
            Some(old) if old == record => Ok(false),
            // Only the status changed: not part of any host's desired state, so not logged
            // for Watch readers.
            Some(old)
                if Endpoint {
                    status: old.status.clone(),
                    ..record.clone()
                } == old =>
            {
                if let Some(ep) = self.endpoints.get_mut(&old.id) {
                    ep.status = record.status;
                }
                Ok(true)
            }
            Some(_) => {
                self.replace_endpoint(record);
                Ok(true)
            }
            None => {
                self.next_endpoint_id += 1;
                let record = Endpoint {
                    id: self.next_endpoint_id,
                    ..record
                };
                self.insert_endpoint(record);
                Ok(true)
            }
        }
    }
}
