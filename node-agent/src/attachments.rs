//! This host's endpoints, whoever asks for them: the local API (CNI plugin, Docker plugin), and
//! requests made through the controller (`overlayctl endpoint attach`), all through
//! [`Attachments::attach`] and [`Attachments::detach`].
//!
//! The [`Book`] is the authority for them: an attach allocates (from the host's lease, or from
//! the controller for macvlan), commits the record, publishes a new [`HostSpec`] and waits for
//! the reconcile pass that wires it; a failed wiring rolls the record back. The controller
//! learns of the book asynchronously ([`crate::sync`]), so a vxlan or nat attach needs no
//! controller at all.
//!
//! The desired state from the Watch stream tells the rest: the networks and leases, which of
//! this host's endpoints the controller has recorded (an endpoint it recorded and then dropped
//! was detached through it), the requests to carry out, and, for a store that is new (a lost
//! state dir), the records to rebuild it from before any address is handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use overlay_proto::connect::Controllers;
use overlay_proto::local_socket::ErrorKind;
use overlay_proto::modes::Mode;
use overlay_proto::ports::Protocol;
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use tokio::sync::watch;

mod runtime;

pub use runtime::LeasedNetwork;

use crate::book::{Book, BookError, Commit, Lease, NewEndpoint};
use crate::dns::Zone;
use crate::reconcile::PassReport;
use crate::spec::{HostSpec, NetnsRef};
use crate::store::{Record, StoreError};

/// How long an attach waits for the pass that wires its endpoint.
const WIRING_WAIT: Duration = Duration::from_secs(30);
/// How long a detach waits for the pass that removes the endpoint's devices.
const UNWIRING_WAIT: Duration = Duration::from_secs(10);
/// The owner of endpoints attached on the controller's request (`overlayctl endpoint attach`):
/// their caller waits for this host's report (see [`crate::sync`]).
pub const REQUESTED_OWNER: &str = "overlayctl";

/// Why an attach or detach failed, in the local API's vocabulary.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AttachError {
    pub kind: ErrorKind,
    pub message: String,
}

impl AttachError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn status(&self) -> tonic::Status {
        self.kind.status(self.message.clone())
    }
}

impl From<BookError> for AttachError {
    fn from(e: BookError) -> Self {
        let kind = match &e {
            BookError::InUse(_) | BookError::AddressRefused(_) => ErrorKind::AddressRefused,
            BookError::PoolExhausted { .. } => ErrorKind::PoolExhausted,
            BookError::PortInUse(_) => ErrorKind::PortInUse,
            BookError::Store(_) => ErrorKind::Internal,
        };
        Self::new(kind, e.to_string())
    }
}

impl From<StoreError> for AttachError {
    fn from(e: StoreError) -> Self {
        Self::new(ErrorKind::Internal, e.to_string())
    }
}

/// How this agent speaks for its host to the controller (macvlan addresses).
#[derive(Clone)]
pub struct ControllerLink {
    pub controllers: Arc<Controllers>,
    pub host: String,
    pub instance: Arc<str>,
}

struct Inner {
    book: Book,
    /// The latest desired state, and whether it came from a live Watch stream (not the copy
    /// persisted on disk, which may be older than what the book has reported).
    desired: Option<pb::HostDesiredState>,
    live: bool,
    generation: u64,
    /// Requests (keys) being carried out, and those that failed (why), reported to the
    /// controller until it withdraws them.
    requests_running: BTreeSet<String>,
    requests_failed: BTreeMap<String, String>,
}

pub struct Attachments {
    inner: Mutex<Inner>,
    underlay_ip: std::net::IpAddr,
    spec_tx: watch::Sender<Option<Arc<HostSpec>>>,
    report_rx: watch::Receiver<Option<Arc<PassReport>>>,
    /// Bumped whenever what the controller should hear of changes (book, statuses, failed
    /// requests): the sync loop's wake-up.
    changed: watch::Sender<u64>,
    controller: ControllerLink,
    /// Ports of this host that overlay itself uses (VXLAN, a controller or metrics listening
    /// here): publishing one would hand overlay's own traffic to a workload.
    reserved_ports: BTreeSet<(Protocol, u16)>,
    /// What the DNS server answers, rebuilt with every spec (see [`crate::dns::feed`]).
    zones: watch::Sender<Arc<Vec<Zone>>>,
    /// Whether a DNS server answers on the gateways (workloads are then pointed at it).
    dns_served: std::sync::atomic::AtomicBool,
    /// Held by the reconcile loop for each look or pass, and by whoever writes the kernel
    /// outside a pass (the Docker plugin's veth pairs) until the spec that wants the write is
    /// published: no pass plans from a spec older than a device it then sees.
    kernel_gate: Arc<tokio::sync::Mutex<()>>,
}

/// The address range of `network` this host hands out, from the desired state.
fn lease_of(n: &pb::NetworkState) -> Option<Lease> {
    Some(Lease {
        subnet: n.subnet.parse::<Ipv4Network>().ok()?,
        gateway: n.gateway.parse().ok()?,
    })
}

/// The controller's view of one of this host's endpoints, as a record (to rebuild a store).
fn record_of(network: &str, e: &pb::LocalEndpoint) -> Option<Record> {
    let address: Ipv4Network = e.address.parse().ok()?;
    Some(Record {
        key: e.key.clone(),
        id: e.host_id,
        network: network.to_string(),
        netns: e.netns.clone(),
        ifname: e.ifname.clone(),
        ip: address.ip(),
        prefix_len: address.prefix(),
        gateway: e.gateway.parse().ok()?,
        mac: e.mac.parse().ok()?,
        names: e.names.clone(),
        ports: overlay_proto::ports::from_wire(&e.ports).ok()?,
        owner: e.owner.clone(),
        default_route: e.default_route.unwrap_or(true),
        created_ms: 0,
        reported: true,
        // Docker moved its interface itself: never re-wired by the agent.
        runtime: (e.owner == "docker").then(|| crate::store::RuntimeLink {
            endpoint_id: String::new(),
            joined: true,
        }),
    })
}

/// The IPv6 address (with the host subnet's prefix) and gateway that pair with IPv4 `ip` in
/// dual-stack network `n` (see [`overlay_proto::ipam::paired_v6`]); `None` for an IPv4-only
/// network, or a desired state whose parts do not parse (the spec parser reports those).
pub fn address6_of(
    n: &pb::NetworkState,
    ip: std::net::Ipv4Addr,
) -> Option<(ipnetwork::Ipv6Network, std::net::Ipv6Addr)> {
    if n.subnet6.is_empty() {
        return None;
    }
    let subnet: Ipv4Network = n.subnet.parse().ok()?;
    let subnet6: ipnetwork::Ipv6Network = n.subnet6.parse().ok()?;
    let ip6 = overlay_proto::ipam::paired_v6(subnet, subnet6, ip)?;
    Some((
        ipnetwork::Ipv6Network::new(ip6, subnet6.prefix()).ok()?,
        n.gateway6.parse().ok()?,
    ))
}

/// A record as the desired state's `LocalEndpoint`, which the spec parser checks like any
/// other input before anything is programmed.
fn local_endpoint(n: &pb::NetworkState, r: &Record) -> pb::LocalEndpoint {
    let v6 = address6_of(n, r.ip);
    pb::LocalEndpoint {
        id: r.id,
        netns: r.netns.clone(),
        ifname: r.ifname.clone(),
        address: format!("{}/{}", r.ip, r.prefix_len),
        mac: r.mac.to_string(),
        gateway: r.gateway.to_string(),
        host_ifname: format!("{}{:x}", overlay_proto::names::ENDPOINT_PREFIX, r.id),
        default_route: Some(r.default_route),
        key: r.key.clone(),
        host_id: r.id,
        owner: r.owner.clone(),
        names: r.names.clone(),
        requested: false,
        requested_ip: String::new(),
        ports: overlay_proto::ports::to_wire(&r.ports),
        runtime_wired: r.runtime.as_ref().is_some_and(|l| l.joined),
        address6: v6.map(|(a, _)| a.to_string()).unwrap_or_default(),
        gateway6: v6.map(|(_, g)| g.to_string()).unwrap_or_default(),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `/proc/<pid>/ns/net` as CNI runtimes may pass it: the pid (which [`crate::netns`] resolves
/// safely), since /proc's namespace links are not followed as paths.
pub fn netns_reference(text: &str) -> Result<NetnsRef, String> {
    if let Some(pid) = text
        .strip_prefix("/proc/")
        .and_then(|rest| rest.strip_suffix("/ns/net"))
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return NetnsRef::parse(pid);
    }
    NetnsRef::parse(text)
}

impl Attachments {
    pub fn new(
        book: Book,
        underlay_ip: std::net::IpAddr,
        spec_tx: watch::Sender<Option<Arc<HostSpec>>>,
        report_rx: watch::Receiver<Option<Arc<PassReport>>>,
        controller: ControllerLink,
        reserved_ports: BTreeSet<(Protocol, u16)>,
    ) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                book,
                desired: None,
                live: false,
                generation: 0,
                requests_running: BTreeSet::new(),
                requests_failed: BTreeMap::new(),
            }),
            underlay_ip,
            spec_tx,
            report_rx,
            changed: watch::channel(0).0,
            controller,
            reserved_ports,
            zones: watch::channel(Arc::new(Vec::new())).0,
            dns_served: std::sync::atomic::AtomicBool::new(false),
            kernel_gate: Arc::default(),
        })
    }

    /// Says that the DNS server runs: from now on [`Attachments::dns_of`] points workloads at it.
    pub fn serve_dns(&self) {
        self.dns_served.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where a workload of `network` resolves names: its gateway and the network's domain
    /// (without the trailing dot); `None` without a DNS server or for a network it does not
    /// serve (macvlan).
    pub fn dns_of(&self, network: &str) -> Option<(Ipv4Addr, String)> {
        if !self.dns_served.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let zones = self.zones.borrow();
        let z = zones.iter().find(|z| z.network == network)?;
        Some((z.gateway, z.domain.trim_end_matches('.').to_string()))
    }

    /// Each network's names as the DNS server should answer them; changes with the desired
    /// state and with this host's own endpoints.
    pub fn zones(&self) -> watch::Receiver<Arc<Vec<Zone>>> {
        self.zones.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes up whoever reports to the controller.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn touch(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Builds and publishes the spec of `inner`'s desired state and book; its generation.
    fn publish(&self, inner: &mut Inner) -> u64 {
        inner.generation += 1;
        let generation = inner.generation;
        let Some(desired) = &inner.desired else {
            return generation;
        };
        let mut d = desired.clone();
        for n in &mut d.networks {
            let endpoints = inner
                .book
                .records()
                .filter(|r| r.network == n.name && !r.is_reservation())
                .map(|r| local_endpoint(n, r))
                .collect();
            n.endpoints = endpoints;
        }
        let mut spec = HostSpec::from_proto(&d, self.underlay_ip);
        spec.generation = generation;
        self.spec_tx.send_replace(Some(Arc::new(spec)));
        let zones = crate::dns::feed::zones_of(&d);
        self.zones.send_if_modified(|z| {
            let changed = **z != zones;
            if changed {
                *z = Arc::new(zones);
            }
            changed
        });
        self.touch();
        generation
    }

    /// A new desired state. `live`: from a Watch stream (the persisted copy at an offline
    /// start is only programmed). Returns the requests to carry out now.
    pub fn set_desired(&self, desired: pb::HostDesiredState, live: bool) -> Vec<(String, pb::LocalEndpoint)> {
        let mut inner = self.lock();
        let mut todo = Vec::new();
        if live && let Err(e) = self.follow_controller(&mut inner, &desired, &mut todo) {
            tracing::error!(error = %e, "endpoint store");
        }
        inner.desired = Some(desired);
        inner.live |= live;
        self.publish(&mut inner);
        todo
    }

    /// Brings the book in line with what the controller says of this host's endpoints (see
    /// the module docs), and lists the requests to carry out.
    fn follow_controller(
        &self,
        inner: &mut Inner,
        desired: &pb::HostDesiredState,
        todo: &mut Vec<(String, pb::LocalEndpoint)>,
    ) -> Result<(), StoreError> {
        let mut recorded: BTreeMap<&str, (&str, &pb::LocalEndpoint)> = BTreeMap::new();
        let mut requested: BTreeSet<&str> = BTreeSet::new();
        for n in &desired.networks {
            for e in &n.endpoints {
                if e.requested {
                    requested.insert(&e.key);
                    if inner.book.get(&e.key).is_none()
                        && !inner.requests_running.contains(&e.key)
                        && !inner.requests_failed.contains_key(&e.key)
                    {
                        todo.push((n.name.clone(), e.clone()));
                    }
                } else if !e.address.is_empty() {
                    recorded.insert(&e.key, (&n.name, e));
                }
            }
        }
        // A failed request the controller withdrew is no longer reported. One it still lists
        // with an address (a macvlan request it filled before the wiring failed) is not
        // withdrawn: its failure is what gives that address back.
        inner
            .requests_failed
            .retain(|k, _| requested.contains(k.as_str()) || recorded.contains_key(k.as_str()));
        for (_, e) in todo.iter() {
            inner.requests_running.insert(e.key.clone());
        }
        if inner.book.needs_import() {
            let records: Vec<Record> = recorded
                .values()
                .filter_map(|(net, e)| record_of(net, e))
                .collect();
            let added = inner.book.import(records)?;
            tracing::warn!(
                endpoints = added,
                "endpoint store was new: rebuilt from the controller's records of this host"
            );
        }
        let keys: Vec<(String, bool, bool)> = inner
            .book
            .records()
            .map(|r| {
                let known = recorded.get(r.key.as_str()).is_some_and(|(net, e)| {
                    *net == r.network && e.address.starts_with(&format!("{}/", r.ip))
                });
                (r.key.clone(), r.reported, known)
            })
            .collect();
        for (key, reported, known) in keys {
            match (reported, known) {
                (false, true) => inner.book.set_reported(&key, true)?,
                // Recorded before, dropped since: detached through the controller (or its
                // network or host removed there).
                (true, false) => {
                    if let Some(r) = inner.book.remove(&key)? {
                        tracing::info!(%key, network = %r.network, address = %r.ip, "endpoint detached through the controller");
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The desired state's network `name`, if this host is in it.
    fn network<'a>(inner: &'a Inner, name: &str) -> Option<&'a pb::NetworkState> {
        inner.desired.as_ref()?.networks.iter().find(|n| n.name == name)
    }

    /// The addresses the controller has recorded for this host in `network`: never handed
    /// out again, even by a book rebuilt without them.
    fn controller_used(inner: &Inner, network: &str) -> BTreeSet<Ipv4Addr> {
        Self::network(inner, network)
            .map(|n| {
                n.endpoints
                    .iter()
                    .filter_map(|e| e.address.parse::<Ipv4Network>().ok())
                    .map(|a| a.ip())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The Docker plugin's networks (see [`crate::docker`]).
    pub fn docker_networks(&self) -> Result<Vec<(String, String)>, AttachError> {
        Ok(self.lock().book.docker_networks()?)
    }

    /// See the field: the reconcile loop's side of it.
    pub fn kernel_gate(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.kernel_gate.clone()
    }

    pub fn put_docker_network(&self, id: &str, network: &str) -> Result<(), AttachError> {
        Ok(self.lock().book.put_docker_network(id, network)?)
    }

    pub fn remove_docker_network(&self, id: &str) -> Result<(), AttachError> {
        Ok(self.lock().book.remove_docker_network(id)?)
    }

    /// Attaches an endpoint (see the module docs): the record once it is wired.
    pub async fn attach(&self, req: NewEndpoint) -> Result<Record, AttachError> {
        let started = std::time::Instant::now();
        let reference =
            netns_reference(&req.netns).map_err(|e| AttachError::new(ErrorKind::BadRequest, e))?;
        overlay_proto::validate::ifname(&req.ifname).map_err(|r| {
            AttachError::new(
                ErrorKind::BadRequest,
                format!("interface name {:?}: {r}", req.ifname),
            )
        })?;
        if let Some(p) = req
            .ports
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
        // The namespace first: a path that is no network namespace, or the host's own, is
        // refused before anything is allocated.
        crate::netns::open(&reference)
            .map_err(|e| AttachError::new(ErrorKind::NamespaceRefused, e.to_string()))?;
        let retried = self.lock().book.get(&req.key).cloned();
        if let Some(existing) = retried
            && existing.network == req.network
            && existing.netns == req.netns
            && existing.ifname == req.ifname
        {
            // A retried attach: the same endpoint.
            return self.wired(existing).await;
        }
        let mode = {
            let inner = self.lock();
            if let Some(existing) = inner.book.get(&req.key) {
                return Err(AttachError::new(
                    ErrorKind::AddressRefused,
                    format!(
                        "key {:?} is already attached to network {:?} ({} {})",
                        req.key, existing.network, existing.netns, existing.ifname
                    ),
                ));
            }
            let network = match Self::network(&inner, &req.network) {
                Some(n) => n,
                None if inner.desired.is_none() => {
                    return Err(AttachError::new(
                        ErrorKind::NotReady,
                        "the agent has no desired state yet (no controller has answered since it started)",
                    ));
                }
                None => {
                    return Err(AttachError::new(
                        ErrorKind::UnknownNetwork,
                        format!(
                            "unknown network {:?} (not among this host's networks)",
                            req.network
                        ),
                    ));
                }
            };
            if inner.book.needs_import() {
                return Err(AttachError::new(
                    ErrorKind::NotReady,
                    "this host's endpoint store is new (state directory lost?) and no controller has told it which addresses are in use yet",
                ));
            }
            Mode::from_wire(network.mode).map_err(|e| AttachError::new(ErrorKind::Internal, e))?
        };
        // Lease-based records are staged: their seal (the fsync) runs while the pass wires
        // them, and the attach answers once both are done.
        let mut seal = None;
        let record = match mode {
            Mode::Vxlan | Mode::Route | Mode::Nat => {
                let mut inner = self.lock();
                let network = Self::network(&inner, &req.network).ok_or_else(|| {
                    AttachError::new(
                        ErrorKind::UnknownNetwork,
                        format!("unknown network {:?}", req.network),
                    )
                })?;
                let lease = lease_of(network).ok_or_else(|| {
                    AttachError::new(
                        ErrorKind::NotReady,
                        format!("this host holds no lease in network {:?} yet", req.network),
                    )
                })?;
                let controller_used = Self::controller_used(&inner, &network.name);
                let record =
                    inner
                        .book
                        .add_from_lease(req, lease, &controller_used, now_ms(), Commit::Staged)?;
                seal = Some(inner.book.sealer());
                record
            }
            Mode::Macvlan => self.attach_macvlan(req).await?,
        };
        let stored_us = started.elapsed().as_micros() as u64;
        let generation = {
            let mut inner = self.lock();
            self.publish(&mut inner)
        };
        let sealing = async {
            let Some(sealer) = seal else { return Ok(()) };
            let sealed = tokio::task::spawn_blocking(move || sealer.seal())
                .await
                .unwrap_or_else(|e| Err(StoreError::Interrupted(e.to_string())));
            if sealed.is_ok() {
                self.lock().book.sealed(&record.key);
                // Now the controller may hear of it.
                self.touch();
            }
            sealed
        };
        let (sealed, wired) = tokio::join!(sealing, self.wait_pass(record.id, generation, WIRING_WAIT));
        if let Err(e) = sealed {
            // Wired or not, an endpoint the store cannot keep is not handed out: it would be
            // forgotten by a restart. The pass after the removal takes its devices down.
            let mut inner = self.lock();
            if let Err(removed) = inner.book.discard_staged(&record.key) {
                tracing::warn!(key = %record.key, error = %removed, "cannot remove the unsealed record from the store");
            }
            self.publish(&mut inner);
            return Err(AttachError::new(
                ErrorKind::Internal,
                format!("cannot store the endpoint durably: {e}"),
            ));
        }
        match wired {
            Some(Ok(())) => {
                // Where an attach spends its time: everything up to the durable record,
                // then the reconcile pass that wires it.
                let took_us = started.elapsed().as_micros() as u64;
                tracing::info!(key = %record.key, address = %record.ip, stored_us, took_us, "endpoint attached");
                Ok(record)
            }
            outcome => {
                // Not wired: nothing stays behind.
                let why = match outcome {
                    Some(Err(e)) => e,
                    _ => format!("not wired within {}s", WIRING_WAIT.as_secs()),
                };
                let mut inner = self.lock();
                inner.book.remove(&record.key)?;
                // A request's failure is recorded with the removal, under one lock: a report
                // that no longer holds the endpoint then always says why, and the controller
                // tells `overlayctl` the reason instead of "detached while being wired".
                if inner.requests_running.contains(&record.key) {
                    inner.requests_failed.insert(record.key.clone(), why.clone());
                }
                self.publish(&mut inner);
                Err(AttachError::new(ErrorKind::WiringFailed, why))
            }
        }
    }

    /// A macvlan address from the controller (one range for every host), then recorded.
    async fn attach_macvlan(&self, req: NewEndpoint) -> Result<Record, AttachError> {
        let ask = pb::AllocateAddressRequest {
            host_name: self.controller.host.clone(),
            instance_id: self.controller.instance.to_string(),
            network: req.network.clone(),
            key: req.key.clone(),
            host_id: 0,
            netns: req.netns.clone(),
            ifname: req.ifname.clone(),
            ip: req.ip.map(|i| i.to_string()).unwrap_or_default(),
            owner: req.owner.clone(),
            names: req.names.clone(),
            default_route: req.default_route,
        };
        let answer = self
            .controller
            .controllers
            .call(|ch| {
                let ask = ask.clone();
                async move { AgentClient::new(ch).allocate_address(ask).await }
            })
            .await
            .map_err(|s| {
                let kind = match s.code() {
                    tonic::Code::ResourceExhausted => ErrorKind::PoolExhausted,
                    tonic::Code::InvalidArgument | tonic::Code::AlreadyExists => ErrorKind::AddressRefused,
                    tonic::Code::NotFound => ErrorKind::UnknownNetwork,
                    _ => ErrorKind::NotReady,
                };
                AttachError::new(
                    kind,
                    format!(
                        "macvlan addresses come from the controller: {}",
                        s.message().lines().next().unwrap_or("no answer")
                    ),
                )
            })?
            .into_inner();
        let ep = answer.endpoint.ok_or_else(|| {
            AttachError::new(ErrorKind::Internal, "controller answered without an endpoint")
        })?;
        let address: Ipv4Network = ep
            .address
            .parse()
            .map_err(|_| AttachError::new(ErrorKind::Internal, format!("bad address {:?}", ep.address)))?;
        let gateway: Ipv4Addr = ep
            .gateway
            .parse()
            .map_err(|_| AttachError::new(ErrorKind::Internal, format!("bad gateway {:?}", ep.gateway)))?;
        let mut inner = self.lock();
        Ok(inner
            .book
            .add_allocated(req, address.ip(), address.prefix(), gateway, now_ms())?)
    }

    /// Waits for a pass at `generation` or later and returns its verdict on endpoint `id`.
    async fn wait_pass(&self, id: u64, generation: u64, within: Duration) -> Option<Result<(), String>> {
        let mut reports = self.report_rx.clone();
        let outcome = tokio::time::timeout(within, async {
            loop {
                if let Some(r) = reports.borrow_and_update().as_ref()
                    && r.generation >= generation
                {
                    return r.endpoints.get(&id).cloned();
                }
                if reports.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        outcome.ok().flatten()
    }

    /// `existing` once the current spec's pass has it wired.
    async fn wired(&self, existing: Record) -> Result<Record, AttachError> {
        let (generation, staged) = {
            let inner = self.lock();
            let staged = inner.book.is_staged(&existing.key).then(|| inner.book.sealer());
            (inner.generation, staged)
        };
        if let Some(sealer) = staged {
            // The first attach is still sealing it: this answer, too, waits for the disk.
            tokio::task::spawn_blocking(move || sealer.seal())
                .await
                .unwrap_or_else(|e| Err(StoreError::Interrupted(e.to_string())))?;
        }
        match self.wait_pass(existing.id, generation, WIRING_WAIT).await {
            Some(Ok(())) => Ok(existing),
            Some(Err(e)) => Err(AttachError::new(ErrorKind::WiringFailed, e)),
            None => Err(AttachError::new(
                ErrorKind::WiringFailed,
                format!("not wired within {}s", WIRING_WAIT.as_secs()),
            )),
        }
    }

    /// Detaches `key` (of `network`, when given). Idempotent: `Ok(None)` when there was none.
    pub async fn detach(&self, key: &str, network: Option<&str>) -> Result<Option<Record>, AttachError> {
        let (removed, generation) = {
            let mut inner = self.lock();
            match inner.book.get(key) {
                Some(r) if network.is_none_or(|n| n == r.network) => {}
                _ => return Ok(None),
            }
            let removed = inner.book.remove(key)?;
            (removed, self.publish(&mut inner))
        };
        if let Some(r) = &removed {
            // Wait for the pass that takes its devices away, so the caller finds them gone.
            let _ = self.wait_pass(r.id, generation, UNWIRING_WAIT).await;
        }
        Ok(removed)
    }

    /// Carries out a request made through the controller; a failure is reported back.
    pub async fn carry_out(self: Arc<Self>, network: String, e: pb::LocalEndpoint) {
        let ports = match overlay_proto::ports::from_wire(&e.ports) {
            Ok(ports) => ports,
            Err(why) => {
                let mut inner = self.lock();
                inner.requests_running.remove(&e.key);
                inner
                    .requests_failed
                    .insert(e.key.clone(), format!("published ports: {why}"));
                drop(inner);
                self.touch();
                return;
            }
        };
        let req = NewEndpoint {
            key: e.key.clone(),
            network,
            netns: e.netns.clone(),
            ifname: e.ifname.clone(),
            ip: e.requested_ip.parse().ok(),
            names: e.names.clone(),
            ports,
            owner: REQUESTED_OWNER.into(),
            default_route: e.default_route.unwrap_or(false),
        };
        let outcome = self.attach(req).await;
        {
            let mut inner = self.lock();
            inner.requests_running.remove(&e.key);
            match outcome {
                Ok(r) => tracing::info!(key = %e.key, address = %r.ip, "request carried out"),
                Err(err) => {
                    tracing::warn!(key = %e.key, error = %err, "request refused");
                    inner.requests_failed.insert(e.key.clone(), err.message);
                }
            }
        }
        self.touch();
    }

    /// Releases the endpoints whose namespace has been gone for the grace period (host ids,
    /// from a pass report).
    pub fn expire(&self, ids: &[u64]) {
        if ids.is_empty() {
            return;
        }
        let mut inner = self.lock();
        let mut any = false;
        for id in ids {
            let Some(key) = inner.book.by_id(*id).map(|r| r.key.clone()) else {
                continue;
            };
            match inner.book.remove(&key) {
                Ok(Some(r)) => {
                    any = true;
                    tracing::info!(%key, netns = %r.netns, address = %r.ip, "gone endpoint released");
                }
                Ok(None) => {}
                Err(e) => tracing::error!(%key, error = %e, "cannot release gone endpoint"),
            }
        }
        if any {
            self.publish(&mut inner);
        }
    }

    /// Removes the endpoints of `owner` in `network` whose keys are not in `keep` (CNI GC).
    pub async fn gc(
        &self,
        network: &str,
        owner: &str,
        keep: &BTreeSet<String>,
    ) -> Result<Vec<String>, AttachError> {
        let stale: Vec<String> = self
            .lock()
            .book
            .records()
            .filter(|r| r.network == network && r.owner == owner && !keep.contains(&r.key))
            .map(|r| r.key.clone())
            .collect();
        for key in &stale {
            self.detach(key, Some(network)).await?;
        }
        Ok(stale)
    }

    pub fn get(&self, key: &str) -> Option<Record> {
        self.lock().book.get(key).cloned()
    }

    pub fn list(&self, network: &str) -> Vec<Record> {
        self.lock()
            .book
            .records()
            .filter(|r| network.is_empty() || r.network == network)
            .cloned()
            .collect()
    }

    /// Whether `network` can take attaches now (CNI STATUS), or why not.
    pub fn ready(&self, network: &str) -> Result<(), AttachError> {
        let inner = self.lock();
        if inner.book.needs_import() {
            return Err(AttachError::new(
                ErrorKind::NotReady,
                "the endpoint store is new and waits for the controller's records",
            ));
        }
        let Some(n) = Self::network(&inner, network) else {
            return Err(AttachError::new(
                if inner.desired.is_none() {
                    ErrorKind::NotReady
                } else {
                    ErrorKind::UnknownNetwork
                },
                format!("network {network:?} is not among this host's networks"),
            ));
        };
        match Mode::from_wire(n.mode) {
            Ok(m) if m.uses_leases() && lease_of(n).is_none() => Err(AttachError::new(
                ErrorKind::NotReady,
                format!("this host holds no lease in network {network:?}"),
            )),
            _ => Ok(()),
        }
    }

    /// What a caller is told of `network`: its MTU (0 = inherited) and its whole CIDR.
    pub fn network_view(&self, network: &str) -> (u32, String) {
        Self::network(&self.lock(), network)
            .map(|n| (n.mtu, n.cidr.clone()))
            .unwrap_or_default()
    }

    /// The IPv6 side of `network`'s endpoint with IPv4 `ip`: its address, gateway and the
    /// network's IPv6 CIDR (`None`: the network is IPv4 only).
    pub fn v6_view(
        &self,
        network: &str,
        ip: std::net::Ipv4Addr,
    ) -> Option<(ipnetwork::Ipv6Network, std::net::Ipv6Addr, String)> {
        let inner = self.lock();
        let n = Self::network(&inner, network)?;
        address6_of(n, ip).map(|(a, g)| (a, g, n.cidr6.clone()))
    }

    /// The latest verdict on endpoint `id` ("" when not wired yet).
    pub fn state_of(&self, id: u64) -> (String, String) {
        match self.report_rx.borrow().as_ref().and_then(|r| {
            let gone = r.gone.get(&id).cloned();
            r.endpoints.get(&id).cloned().map(|v| (v, gone))
        }) {
            Some((_, Some(why))) => ("gone".into(), why),
            Some((Ok(()), None)) => ("ready".into(), String::new()),
            Some((Err(e), None)) => ("failed".into(), e),
            None => ("pending".into(), String::new()),
        }
    }

    /// What the controller is to hear: every record with its status, and the failed requests.
    pub fn report(&self) -> (Vec<pb::HostEndpoint>, Vec<pb::FailedRequest>) {
        let report = self.report_rx.borrow().clone();
        let inner = self.lock();
        let endpoints = inner
            .book
            .records()
            // An address held for a runtime is this host's business until the runtime
            // joins it to a sandbox (a matter of moments): then it is an endpoint like any.
            // A record not yet on disk is reported once it is (its seal wakes the sync).
            .filter(|r| !r.is_reservation() && !inner.book.is_staged(&r.key))
            .map(|r| {
                let (report_kind, message) = match report.as_ref().and_then(|p| {
                    let gone = p.gone.get(&r.id).cloned();
                    p.endpoints.get(&r.id).cloned().map(|v| (v, gone))
                }) {
                    Some((_, Some(why))) => (pb::EndpointReport::Gone, why),
                    Some((Ok(()), None)) => (pb::EndpointReport::Ready, String::new()),
                    Some((Err(e), None)) => (pb::EndpointReport::Failed, e),
                    None => (pb::EndpointReport::Unspecified, String::new()),
                };
                pb::HostEndpoint {
                    key: r.key.clone(),
                    host_id: r.id,
                    network: r.network.clone(),
                    netns: r.netns.clone(),
                    ifname: r.ifname.clone(),
                    ip: r.ip.to_string(),
                    default_route: r.default_route,
                    owner: r.owner.clone(),
                    names: r.names.clone(),
                    report: report_kind as i32,
                    message,
                    ports: overlay_proto::ports::to_wire(&r.ports),
                }
            })
            .collect();
        let failed = inner
            .requests_failed
            .iter()
            .map(|(key, message)| pb::FailedRequest {
                key: key.clone(),
                message: message.clone(),
            })
            .collect();
        (endpoints, failed)
    }
}
