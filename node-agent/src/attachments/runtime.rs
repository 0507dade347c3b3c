//! Endpoints a container runtime wires itself (Docker's network plugin API), through the same
//! book as every other endpoint.
//!
//! Docker asks in three steps, and the book follows them:
//! 1. IPAM `RequestAddress`: an address of the host's lease is held ([`Attachments::reserve`]),
//!    durably, before the endpoint exists (Docker names it only later);
//! 2. `CreateEndpoint`: the held address gets Docker's endpoint id ([`Attachments::link_runtime`]);
//! 3. `Join`: the agent creates the veth pair in its own namespace, its host end on the
//!    network's bridge, and hands the workload end (`ovr-<id>`) to Docker, which moves it into
//!    the sandbox and configures it ([`Attachments::join_runtime`]). From then on the reconcile
//!    loop keeps the host end (and the firewall's view of the port); a pair gone means the
//!    sandbox is gone, and the endpoint is released after the grace period.
//!
//! Docker undoes them in reverse (`DeleteEndpoint`, `ReleaseAddress`); each step is idempotent,
//! so a retried or repeated call changes nothing.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use overlay_proto::local_socket::ErrorKind;
use overlay_proto::modes::Mode;
use overlay_proto::ports::PublishedPort;

use super::{AttachError, Attachments, UNWIRING_WAIT, WIRING_WAIT, lease_of, now_ms};
use crate::book::{Lease, reservation_key};
use crate::netlink::Netlink;
use crate::store::Record;

/// A network of this host with a lease, as a runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasedNetwork {
    pub name: String,
    /// The whole network, e.g. 10.1.0.0/16.
    pub cidr: Ipv4Network,
    /// This host's part of it and the gateway there.
    pub lease: Lease,
    pub mtu: u32,
}

impl Attachments {
    /// Network `name` if this host holds a lease in it (vxlan and nat networks).
    pub fn leased_network(&self, name: &str) -> Result<LeasedNetwork, AttachError> {
        let inner = self.lock();
        if inner.desired.is_none() {
            return Err(AttachError::new(
                ErrorKind::NotReady,
                "the agent has no desired state yet (no controller has answered since it started)",
            ));
        }
        let n = Self::network(&inner, name).ok_or_else(|| {
            AttachError::new(
                ErrorKind::UnknownNetwork,
                format!("unknown overlay network {name:?} (not among this host's networks)"),
            )
        })?;
        match Mode::from_wire(n.mode) {
            Ok(m) if m.has_bridge() => {}
            _ => {
                return Err(AttachError::new(
                    ErrorKind::BadRequest,
                    format!(
                        "overlay network {name:?} is a macvlan network: its workloads sit on the LAN, not behind this host"
                    ),
                ));
            }
        }
        let lease = lease_of(n).ok_or_else(|| {
            AttachError::new(
                ErrorKind::NotReady,
                format!("this host holds no lease in network {name:?} yet"),
            )
        })?;
        let cidr = n.cidr.parse().map_err(|_| {
            AttachError::new(
                ErrorKind::Internal,
                format!("network {name:?} has CIDR {:?}", n.cidr),
            )
        })?;
        Ok(LeasedNetwork {
            name: name.to_string(),
            cidr,
            lease,
            mtu: n.mtu,
        })
    }

    /// The network of this host whose CIDR holds `subnet` (Docker's `--subnet`).
    pub fn network_holding(&self, subnet: Ipv4Network) -> Option<String> {
        let inner = self.lock();
        inner.desired.as_ref()?.networks.iter().find_map(|n| {
            let cidr: Ipv4Network = n.cidr.parse().ok()?;
            (cidr.contains(subnet.network()) && cidr.prefix() <= subnet.prefix()).then(|| n.name.clone())
        })
    }

    /// Holds an address of `network` for `owner` (see the module docs): `wanted`, or the next
    /// free one. Asking again for an address `owner` already holds gives it back unchanged.
    pub fn reserve(
        &self,
        network: &str,
        wanted: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Record, AttachError> {
        let n = self.leased_network(network)?;
        let mut inner = self.lock();
        if inner.book.needs_import() {
            return Err(AttachError::new(
                ErrorKind::NotReady,
                "this host's endpoint store is new (state directory lost?) and no controller has told it which addresses are in use yet",
            ));
        }
        if let Some(ip) = wanted
            && let Some(held) = inner.book.get(&reservation_key(owner, network, ip))
            && held.is_reservation()
            && held.runtime.as_ref().is_some_and(|l| l.endpoint_id.is_empty())
        {
            return Ok(held.clone());
        }
        let controller_used = Self::controller_used(&inner, network);
        let record = inner
            .book
            .reserve(network, wanted, n.lease, &controller_used, owner, now_ms())?;
        drop(inner);
        self.touch();
        Ok(record)
    }

    /// Gives back an address `owner` holds in `network` (Docker's `ReleaseAddress`); a joined
    /// endpoint still on it is taken down first. Unknown addresses are fine (already released).
    pub async fn release_reserved(
        &self,
        network: &str,
        ip: Ipv4Addr,
        owner: &str,
    ) -> Result<(), AttachError> {
        let key = reservation_key(owner, network, ip);
        let (removed, generation) = {
            let mut inner = self.lock();
            let removed = inner.book.remove(&key)?;
            (removed, self.publish(&mut inner))
        };
        if let Some(r) = removed
            && r.runtime.as_ref().is_some_and(|l| l.joined)
        {
            let _ = self.wait_pass(r.id, generation, UNWIRING_WAIT).await;
        }
        Ok(())
    }

    /// Names the endpoint on a held address (Docker's `CreateEndpoint`); the record.
    pub fn link_runtime(
        &self,
        network: &str,
        ip: Ipv4Addr,
        owner: &str,
        endpoint_id: &str,
    ) -> Result<Record, AttachError> {
        let key = reservation_key(owner, network, ip);
        let mut inner = self.lock();
        match inner.book.get(&key).and_then(|r| r.runtime.as_ref()) {
            None => {
                return Err(AttachError::new(
                    ErrorKind::UnknownEndpoint,
                    format!(
                        "address {ip} of network {network:?} is not held for an endpoint (ask IPAM for it first)"
                    ),
                ));
            }
            Some(l) if !l.endpoint_id.is_empty() && l.endpoint_id != endpoint_id => {
                return Err(AttachError::new(
                    ErrorKind::AddressRefused,
                    format!("address {ip} of network {network:?} belongs to another endpoint"),
                ));
            }
            Some(_) => {}
        }
        let record = inner.book.update_runtime(&key, |r| {
            if let Some(l) = r.runtime.as_mut() {
                l.endpoint_id = endpoint_id.to_string();
            }
        })?;
        Ok(record)
    }

    /// The record of runtime endpoint `endpoint_id`.
    pub fn runtime_endpoint(&self, endpoint_id: &str) -> Option<Record> {
        self.lock().book.by_runtime_id(endpoint_id).cloned()
    }

    /// Creates endpoint `endpoint_id`'s veth pair and hands its workload end over for sandbox
    /// `sandbox` (Docker's `Join`): the record and the name of the workload end, once the host
    /// end is on the bridge and the firewall knows the port.
    pub async fn join_runtime(
        &self,
        endpoint_id: &str,
        sandbox: &str,
    ) -> Result<(Record, String), AttachError> {
        overlay_proto::validate::netns(sandbox)
            .map_err(|r| AttachError::new(ErrorKind::BadRequest, format!("sandbox {sandbox:?}: {r}")))?;
        if !sandbox.starts_with('/') {
            return Err(AttachError::new(
                ErrorKind::BadRequest,
                format!("sandbox {sandbox:?} is not an absolute path"),
            ));
        }
        let record = self.runtime_endpoint(endpoint_id).ok_or_else(|| {
            AttachError::new(
                ErrorKind::UnknownEndpoint,
                format!("no endpoint {endpoint_id:?} on this host"),
            )
        })?;
        let network = self.leased_network(&record.network)?;
        let host = format!("{}{:x}", overlay_proto::names::ENDPOINT_PREFIX, record.id);
        let peer = format!("{}{:x}", overlay_proto::names::RUNTIME_PEER_PREFIX, record.id);
        if record.runtime.as_ref().is_some_and(|l| l.joined) {
            if record.netns == sandbox {
                // A retried Join: the same pair.
                return Ok((record, peer));
            }
            return Err(AttachError::new(
                ErrorKind::AddressRefused,
                format!(
                    "endpoint {endpoint_id:?} is already joined to sandbox {}",
                    record.netns
                ),
            ));
        }
        // No pass runs from making the pair to publishing the spec that wants it: one
        // planning from the older spec would delete the pair as a stray.
        let gate = self.kernel_gate.clone();
        let held = gate.lock().await;
        create_pair(&host, &peer, &record, network.mtu)
            .await
            .map_err(|e| AttachError::new(ErrorKind::WiringFailed, e))?;
        let (record, generation) = {
            let mut inner = self.lock();
            let record = inner.book.update_runtime(&record.key, |r| {
                r.netns = sandbox.to_string();
                r.ifname = peer.clone();
                if let Some(l) = r.runtime.as_mut() {
                    l.joined = true;
                }
            });
            let generation = self.publish(&mut inner);
            (record, generation)
        };
        drop(held);
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let _ = delete_pair(&host).await;
                return Err(e.into());
            }
        };
        match self.wait_pass(record.id, generation, WIRING_WAIT).await {
            Some(Ok(())) => Ok((record, peer)),
            outcome => {
                let why = match outcome {
                    Some(Err(e)) => e,
                    _ => format!("host end not ready within {}s", WIRING_WAIT.as_secs()),
                };
                let _ = self.unjoin(&record.key).await;
                Err(AttachError::new(ErrorKind::WiringFailed, why))
            }
        }
    }

    /// Takes endpoint `endpoint_id` down (Docker's `DeleteEndpoint`): the pair goes, the
    /// address stays held until it is released. Unknown endpoints are fine.
    pub async fn delete_runtime(&self, endpoint_id: &str) -> Result<(), AttachError> {
        let Some(record) = self.runtime_endpoint(endpoint_id) else {
            return Ok(());
        };
        self.unjoin(&record.key).await?;
        let mut inner = self.lock();
        inner.book.update_runtime(&record.key, |r| {
            if let Some(l) = r.runtime.as_mut() {
                l.endpoint_id.clear();
            }
        })?;
        drop(inner);
        self.touch();
        Ok(())
    }

    /// Back to a held address: no sandbox, no pair, nothing published.
    async fn unjoin(&self, key: &str) -> Result<(), AttachError> {
        let (record, generation) = {
            let mut inner = self.lock();
            let record = inner.book.update_runtime(key, |r| {
                r.netns.clear();
                r.ifname.clear();
                r.ports.clear();
                if let Some(l) = r.runtime.as_mut() {
                    l.joined = false;
                }
            })?;
            (record, self.publish(&mut inner))
        };
        // The reconcile pass deletes the host end (no longer desired), which takes the pair.
        let _ = self.wait_pass(record.id, generation, UNWIRING_WAIT).await;
        Ok(())
    }

    /// Records the names runtime endpoint `endpoint_id` answers to in its network's DNS (the
    /// container's name and aliases, learnt after it joined); the controller hears of them with
    /// the next sync, every other host with its Watch stream.
    pub fn set_runtime_names(&self, endpoint_id: &str, names: Vec<String>) -> Result<(), AttachError> {
        let mut inner = self.lock();
        let key = inner
            .book
            .by_runtime_id(endpoint_id)
            .map(|r| r.key.clone())
            .ok_or_else(|| {
                AttachError::new(
                    ErrorKind::UnknownEndpoint,
                    format!("no endpoint {endpoint_id:?} on this host"),
                )
            })?;
        inner.book.update_runtime(&key, |r| r.names = names)?;
        self.publish(&mut inner);
        Ok(())
    }

    /// Publishes `ports` for runtime endpoint `endpoint_id` (Docker's external connectivity),
    /// replacing what it published; once the rules are in.
    pub async fn set_runtime_ports(
        &self,
        endpoint_id: &str,
        ports: Vec<PublishedPort>,
    ) -> Result<(), AttachError> {
        let record = self.runtime_endpoint(endpoint_id).ok_or_else(|| {
            AttachError::new(
                ErrorKind::UnknownEndpoint,
                format!("no endpoint {endpoint_id:?} on this host"),
            )
        })?;
        if let Some(p) = ports
            .iter()
            .find(|p| self.reserved_ports.contains(&(p.protocol, p.host_port)))
        {
            return Err(AttachError::new(
                ErrorKind::PortInUse,
                format!(
                    "port {}/{} of this host is overlay's own (VXLAN, a controller or metrics): publish another",
                    p.host_port,
                    p.protocol.as_str()
                ),
            ));
        }
        let (record, generation) = {
            let mut inner = self.lock();
            let record = inner.book.update_runtime(&record.key, |r| r.ports = ports)?;
            (record, self.publish(&mut inner))
        };
        if !record.runtime.as_ref().is_some_and(|l| l.joined) {
            // Programmed when it joins a sandbox.
            return Ok(());
        }
        match self.wait_pass(record.id, generation, WIRING_WAIT).await {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(AttachError::new(ErrorKind::WiringFailed, e)),
            None => Err(AttachError::new(
                ErrorKind::WiringFailed,
                format!("rules not written within {}s", WIRING_WAIT.as_secs()),
            )),
        }
    }
}

/// The veth pair of a runtime endpoint, both ends in the agent's namespace: the host end
/// (down until the reconcile pass puts it on the bridge) and the workload end with the
/// endpoint's MAC, for the runtime to move.
async fn create_pair(host: &str, peer: &str, record: &Record, mtu: u32) -> Result<(), String> {
    let made = make_pair(host, peer, record, mtu).await;
    crate::kernel::wrote_outside_a_pass();
    made
}

async fn make_pair(host: &str, peer: &str, record: &Record, mtu: u32) -> Result<(), String> {
    let nl = Netlink::connect().map_err(|e| e.to_string())?;
    for stale in [host, peer] {
        if let Ok(Some(old)) = nl.link_by_name(stale).await {
            nl.delete_link(&old.name, old.index)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    nl.create_veth(host, peer, mtu).await.map_err(|e| e.to_string())?;
    let set_mac = async {
        let link = nl
            .link_by_name(peer)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("veth end {peer} vanished"))?;
        nl.set_link(
            rtnetlink::LinkUnspec::new_with_index(link.index).address(record.mac.0.to_vec()),
            &format!("set the MAC of {peer}"),
        )
        .await
        .map_err(|e| e.to_string())
    }
    .await;
    if set_mac.is_err() {
        let _ = delete_pair(host).await;
    }
    set_mac
}

async fn delete_pair(host: &str) -> Result<(), String> {
    let deleted = async {
        let nl = Netlink::connect().map_err(|e| e.to_string())?;
        if let Some(link) = nl.link_by_name(host).await.map_err(|e| e.to_string())? {
            nl.delete_link(&link.name, link.index)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    .await;
    crate::kernel::wrote_outside_a_pass();
    deleted
}
