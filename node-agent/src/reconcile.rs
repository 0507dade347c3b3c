//! One convergence pass: dump, plan, apply, in three rounds (links, entries, endpoints), then
//! the firewall and sysctls. Level-triggered: it only looks at the desired state and the
//! kernel, never at what the previous pass did, so a missed update or a change made behind
//! the agent's back is repaired by the next pass. (The look at the kernel may be the last
//! dump, while nothing has changed since: see `Snapshot`.)
//!
//! What it does remember is about endpoints: which namespace each was first wired into
//! ([`Pins`]), and which ones lost it. An endpoint whose namespace is gone (not found, or
//! another namespace in its place) is not wired anywhere; each pass only looks (cheaply,
//! without entering anything) whether the same namespace came back. After the grace period
//! it is listed in [`PassReport::expired`], for the session to release it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnetwork::Ipv4Network;

use crate::endpoint::{self, Checked, EndpointError};
use crate::firewall::{Converged, Firewall, FirewallSpec};
use crate::kernel::{Kernel, MacvlanRecord};
use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{self, Namespace};
use crate::pins::{Pins, Verdict};
use crate::plan::{self, EndpointOp, EntryOp, LinkOp};
use crate::spec::{EndpointSpec, HostSpec, NetnsRef};

/// How long an endpoint whose namespace is gone keeps its address, by default.
pub const DEFAULT_GONE_GRACE: Duration = Duration::from_secs(30);

/// Netlink requests for entries kept in flight at once.
const ENTRIES_IN_FLIGHT: usize = 128;

/// The underlay interface VXLAN sends through.
#[derive(Clone, Debug)]
pub struct Underlay {
    pub iface: String,
    /// IPv4 or IPv6: what VXLAN is sent from and peers send to.
    pub ip: std::net::IpAddr,
    pub mtu: u32,
}

/// Endpoint id → `Ok` (wired and checked) or the reason it is not.
pub type EndpointStatuses = BTreeMap<u64, Result<(), String>>;

/// Kernel objects a pass changed, by what it did to them (for the metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    /// Devices and endpoints made.
    pub created: u64,
    /// Devices, endpoints and the firewall table changed in place.
    pub updated: u64,
    /// Devices, entries and endpoints removed.
    pub deleted: u64,
    /// Addresses, neighbours, FDB entries and routes added or replaced (netlink replace).
    pub set: u64,
}

/// What a pass did, for logs, metrics and the status report.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    pub revision: u64,
    /// The [`HostSpec::generation`] the pass converged to.
    pub generation: u64,
    /// Every change, whatever its kind.
    pub changes: usize,
    pub objects: ObjectCounts,
    pub errors: Vec<String>,
    pub endpoints: EndpointStatuses,
    /// Endpoints (also in `endpoints`, as errors) whose namespace is gone: why.
    pub gone: BTreeMap<u64, String>,
    /// Gone endpoints past the grace period: to be released.
    pub expired: Vec<u64>,
    pub took: Duration,
    /// The pass wrote overlay's nftables table (so the kernel's copy is now the agent's own).
    pub firewall_rebuilt: bool,
    /// The pass planned from the last dump instead of a new one (see [`Snapshot`]).
    pub snapshot_reused: bool,
}

pub struct Reconciler {
    nl: Netlink,
    underlay: Underlay,
    /// What is known of the nftables tables (taken out while a blocking task works on it).
    firewall: Firewall,
    /// Controller addresses, which workloads must not reach even through NAT egress.
    control_plane: BTreeSet<Ipv4Addr>,
    /// Why the pins could not be saved after the last pass (reported by the next one).
    pins_error: Option<String>,
    forwarding_on: bool,
    forwarding6_on: bool,
    /// A network of the spec being programmed has IPv6: dumps read the IPv6 half too.
    dual_stack: bool,
    /// Macvlan endpoints this agent put into namespaces, mirrored to `records_path`.
    macvlans: BTreeMap<u64, MacvlanRecord>,
    records_path: Option<PathBuf>,
    /// The namespace each endpoint was first wired into, mirrored to the state directory.
    pins: Pins,
    /// Endpoints whose namespace is gone: since when, and why.
    gone: BTreeMap<u64, Gone>,
    gone_grace: Duration,
    /// Endpoint id → whether its namespace side was last configured holding the default route.
    routes: BTreeMap<u64, bool>,
    /// The last dump, for a pass that follows it with nothing changed in between.
    snapshot: Option<Snapshot>,
    /// The count of kernel notifications concerning overlay (`None`: not subscribed, every
    /// pass dumps).
    kernel_changes: Option<Arc<AtomicU64>>,
}

/// A dump and the notification count read just before it was taken. While the count stays
/// the same no change to overlay's links, addresses, entries or routes has been heard of
/// since, so a pass may plan from it instead of dumping again: at a few hundred interfaces
/// the dump is most of what a pass that wires one endpoint costs. A change the reader has
/// not counted yet is missed by that pass the way a change right after a dump is: its
/// notification brings the look and the repair.
struct Snapshot {
    kernel: Arc<Kernel>,
    changes: u64,
    /// [`crate::kernel::outside_writes`] read before the dump, likewise.
    outside: u64,
    taken: Instant,
    /// Whether the dump read the IPv6 half: one without it serves no dual-stack spec.
    dual_stack: bool,
}

/// How long a snapshot serves. Devices that are not overlay's (the underlay, a NIC a later
/// VLAN parent is made on) raise no counted notification, so this bounds how stale what is
/// known of them can be.
const SNAPSHOT_TTL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
struct Gone {
    since: Instant,
    reason: String,
}

const MACVLAN_RECORDS: &str = "macvlan-endpoints.json";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("underlay interface {0} not found")]
    NoUnderlay(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl Reconciler {
    /// `state_dir` keeps the records of macvlan endpoints across restarts (`None`: memory only).
    pub fn new(nl: Netlink, underlay: Underlay, state_dir: Option<&Path>) -> Self {
        let records_path = state_dir.map(|d| d.join(MACVLAN_RECORDS));
        let macvlans = records_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice::<Vec<MacvlanRecord>>(&bytes).ok())
            .map(|v| v.into_iter().map(|r| (r.id, r)).collect())
            .unwrap_or_default();
        Self {
            nl,
            underlay,
            firewall: Firewall::default(),
            control_plane: BTreeSet::new(),
            pins_error: None,
            forwarding_on: false,
            forwarding6_on: false,
            dual_stack: false,
            macvlans,
            records_path,
            pins: Pins::load(state_dir),
            gone: BTreeMap::new(),
            gone_grace: DEFAULT_GONE_GRACE,
            routes: BTreeMap::new(),
            snapshot: None,
            kernel_changes: None,
        }
    }

    /// Lets passes reuse the last dump while `counter` (see
    /// [`crate::events::KernelEvents::rtnl_changes`]) has not moved.
    pub fn with_kernel_changes(mut self, counter: Arc<AtomicU64>) -> Self {
        self.kernel_changes = Some(counter);
        self
    }

    /// A dump, kept as the snapshot when notifications are counted.
    async fn dump_fresh(&mut self) -> Result<Arc<Kernel>, NetlinkError> {
        // Read before the dump: a change counted after it may or may not be in the dump, so
        // it makes the snapshot stale.
        let changes = self.kernel_changes.as_ref().map(|c| c.load(Ordering::Acquire));
        let outside = crate::kernel::outside_writes();
        let taken = Instant::now();
        let kernel = Arc::new(self.nl.dump(self.dual_stack).await?);
        self.snapshot = changes.map(|changes| Snapshot {
            kernel: kernel.clone(),
            changes,
            outside,
            taken,
            dual_stack: self.dual_stack,
        });
        Ok(kernel)
    }

    /// The kernel a pass starts from: the snapshot if nothing concerning overlay changed
    /// since it was taken, otherwise a new dump. Always a new dump for a deep pass, and on
    /// hosts whose plan reads what no counted notification covers: macvlan networks (their
    /// parents are NICs nobody reports on) and networks routed to peers (whether a peer is on
    /// the segment comes from the underlay's addresses).
    async fn dump_for_pass(
        &mut self,
        spec: &HostSpec,
        deep: bool,
    ) -> Result<(Arc<Kernel>, bool), NetlinkError> {
        let reusable = self.snapshot.as_ref().filter(|s| {
            !deep
                && spec.networks.iter().all(|n| !crate::modes::reads_outside(n))
                && s.taken.elapsed() < SNAPSHOT_TTL
                && s.outside == crate::kernel::outside_writes()
                && s.dual_stack == self.dual_stack
                && self
                    .kernel_changes
                    .as_ref()
                    .is_some_and(|c| c.load(Ordering::Acquire) == s.changes)
        });
        if let Some(kernel) = reusable.map(|s| s.kernel.clone()) {
            // The underlay is no device of overlay's: one lookup that it is still the same
            // (a failed lookup only costs the reuse).
            let now = self.nl.link_by_name(&self.underlay.iface).await.ok().flatten();
            let now = now.map(|l| l.index);
            if now.is_some() && now == kernel.link(&self.underlay.iface).map(|l| l.index) {
                return Ok((kernel, true));
            }
        }
        Ok((self.dump_fresh().await?, false))
    }

    /// How long an endpoint whose namespace is gone is kept before it is listed for release.
    pub fn with_gone_grace(mut self, grace: Duration) -> Self {
        self.gone_grace = grace;
        self
    }

    /// When the next gone endpoint reaches the end of its grace period, if any does: a pass
    /// then lists it for release.
    pub fn next_gone_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        self.gone
            .values()
            .map(|g| g.since + self.gone_grace)
            .filter(|at| *at > now)
            .min()
    }

    /// Controller addresses to keep out of NAT egress (see [`crate::firewall::rules`]).
    pub fn with_control_plane(mut self, addresses: BTreeSet<Ipv4Addr>) -> Self {
        self.control_plane = addresses;
        self
    }

    /// `direct`: per network, the peers' subnets this host routes through the underlay
    /// ([`plan::direct_subnets`], from the same look at the kernel the pass planned from).
    fn firewall_spec(
        &self,
        spec: &HostSpec,
        direct: &BTreeMap<String, BTreeSet<Ipv4Network>>,
    ) -> (FirewallSpec, Vec<String>) {
        FirewallSpec::from_host(
            spec,
            &self.underlay.iface,
            self.underlay.ip,
            &self.control_plane,
            direct,
        )
    }

    /// Runs `work` on the firewall state in a blocking task (it spawns `nft` and talks
    /// netlink). Should the task die, the state is forgotten and the next pass rewrites.
    async fn with_firewall<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Firewall) -> T + Send + 'static,
    ) -> Result<T, String> {
        let mut fw = std::mem::take(&mut self.firewall);
        let (fw, out) = tokio::task::spawn_blocking(move || {
            let out = work(&mut fw);
            (fw, out)
        })
        .await
        .map_err(|e| format!("firewall task: {e}"))?;
        self.firewall = fw;
        Ok(out)
    }

    fn save_records(&self) -> Result<(), String> {
        let Some(path) = &self.records_path else {
            return Ok(());
        };
        let records: Vec<&MacvlanRecord> = self.macvlans.values().collect();
        let bytes = serde_json::to_vec_pretty(&records).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("save {}: {e}", path.display()))
    }

    /// Makes the next pass rebuild the firewall table even though it believes the table is in
    /// place: the table was changed behind the agent's back (see [`crate::events`]).
    pub fn forget_firewall(&mut self) {
        self.firewall.invalidate();
    }

    /// Where the kernel differs from `spec`, without changing anything (see [`crate::audit`]).
    pub async fn audit(&mut self, spec: &HostSpec) -> Result<Vec<String>, ReconcileError> {
        self.dual_stack = spec.networks.iter().any(|n| n.cidr6.is_some());
        let kernel = self.dump_fresh().await?;
        let underlay_index = kernel
            .link(&self.underlay.iface)
            .map(|l| l.index)
            .ok_or_else(|| ReconcileError::NoUnderlay(self.underlay.iface.clone()))?;
        let mut drift = crate::audit::drift(spec, &kernel, underlay_index, &self.macvlans);
        // A gone endpoint is reported as gone, not also as missing on every audit.
        let gone: Vec<String> = spec
            .endpoints()
            .filter(|e| self.gone.contains_key(&e.id))
            .map(|e| format!("missing endpoint {} ", e.address))
            .collect();
        drift.retain(|line| !gone.iter().any(|g| line.starts_with(g.as_str())));
        let direct = plan::direct_subnets(spec, &kernel, underlay_index);
        let (wanted, problems) = self.firewall_spec(spec, &direct);
        drift.extend(problems);
        match self.with_firewall(move |fw| fw.audit(&wanted)).await {
            Ok(found) => drift.extend(found),
            Err(e) => drift.push(e),
        }
        Ok(drift)
    }

    /// Converges the kernel to `spec`. `deep` also checks every endpoint inside its namespace.
    pub async fn pass(&mut self, spec: &HostSpec, deep: bool) -> Result<PassReport, ReconcileError> {
        self.dual_stack = spec.networks.iter().any(|n| n.cidr6.is_some());
        let started = Instant::now();
        let mut report = PassReport {
            revision: spec.revision,
            generation: spec.generation,
            ..Default::default()
        };

        let (mut kernel, reused) = self.dump_for_pass(spec, deep).await?;
        report.snapshot_reused = reused;
        let underlay_index = kernel
            .link(&self.underlay.iface)
            .map(|l| l.index)
            .ok_or_else(|| ReconcileError::NoUnderlay(self.underlay.iface.clone()))?;

        let link_ops = plan::links(spec, &kernel, underlay_index);
        // Whatever this pass writes makes the snapshot stale, whether or not its
        // notifications have been counted yet.
        if !link_ops.is_empty() {
            self.snapshot = None;
        }
        // Devices that could not be created, so endpoints needing them say why.
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        for op in &link_ops {
            match self.nl.apply_link(op).await {
                Ok(()) => {
                    report.changes += 1;
                    match op {
                        LinkOp::CreateBridge { .. }
                        | LinkOp::CreateVxlan { .. }
                        | LinkOp::CreateVlan { .. } => report.objects.created += 1,
                        LinkOp::Delete { .. } => report.objects.deleted += 1,
                        _ => report.objects.updated += 1,
                    }
                    log_link(op);
                }
                Err(e) => {
                    if let LinkOp::CreateVlan { name, .. } | LinkOp::CreateBridge { name, .. } = op {
                        failed.insert(name.clone(), e.to_string());
                    }
                    report.errors.push(e.to_string());
                }
            }
        }
        if !link_ops.is_empty() {
            kernel = Arc::new(self.nl.dump(self.dual_stack).await?);
        }

        let entry_ops = plan::entries(spec, &kernel, underlay_index);
        if !entry_ops.is_empty() {
            self.snapshot = None;
        }
        // Removals first, then additions, each as many requests in flight as the socket takes:
        // the kernel handles them independently, and waiting for every ack in turn would make
        // a thousand peers cost a thousand round trips.
        let (removals, additions): (Vec<EntryOp>, Vec<EntryOp>) =
            entry_ops.iter().cloned().partition(|op| op.is_removal());
        for (removing, batch) in [(true, removals), (false, additions)] {
            let nl = self.nl.clone();
            let results: Vec<Result<(), NetlinkError>> = futures::stream::iter(batch)
                .map(move |op| {
                    let nl = nl.clone();
                    async move { nl.apply_entry(&op).await }
                })
                .buffer_unordered(ENTRIES_IN_FLIGHT)
                .collect()
                .await;
            for result in results {
                match result {
                    Ok(()) => {
                        report.changes += 1;
                        match removing {
                            true => report.objects.deleted += 1,
                            false => report.objects.set += 1,
                        }
                    }
                    Err(e) => report.errors.push(e.to_string()),
                }
            }
        }
        if !entry_ops.is_empty() {
            tracing::info!(count = entry_ops.len(), summary = %summarize(&entry_ops), "entries programmed");
        }

        let records_before = self.macvlans.clone();
        let routes_before = self.routes.clone();
        let known = plan::Known {
            macvlans: &records_before,
            routes: &routes_before,
        };
        for op in plan::endpoints(spec, &kernel, deep, known) {
            self.snapshot = None;
            let op = match op {
                EndpointOp::Blocked { id, device, reason } => match failed.get(&device) {
                    Some(err) => EndpointOp::Blocked {
                        id,
                        reason: err.clone(),
                        device,
                    },
                    None => EndpointOp::Blocked { id, device, reason },
                },
                other => other,
            };
            if let Some((id, result)) = self.endpoint(op, &mut report).await {
                self.outcome(id, result, &mut report);
            }
        }
        if self.macvlans != records_before
            && let Err(e) = self.save_records()
        {
            report.errors.push(e);
        }
        // Endpoints that needed no work are fine, unless their namespace is known to be gone.
        for ep in spec.endpoints() {
            if report.endpoints.contains_key(&ep.id) {
                continue;
            }
            match self.gone.get(&ep.id) {
                Some(g) => {
                    report.endpoints.insert(ep.id, Err(g.reason.clone()));
                    report.gone.insert(ep.id, g.reason.clone());
                }
                None => {
                    report.endpoints.insert(ep.id, Ok(()));
                }
            }
        }
        self.forget_undesired(spec, &mut report);
        if let Some(e) = &self.pins_error {
            report.errors.push(e.clone());
        }
        for (what, why) in &spec.rejected {
            report.errors.push(format!("{what}: {why}"));
        }

        if !spec.networks.is_empty() && !self.forwarding_on {
            match std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
                Ok(()) => self.forwarding_on = true,
                Err(e) => report.errors.push(format!("enable ip_forward: {e}")),
            }
        }
        // IPv6 forwarding only once a network has IPv6: with it on, the kernel ignores router
        // advertisements on interfaces whose accept_ra is 1, which an IPv4-only host that
        // takes its own IPv6 address by SLAAC must not be made to lose.
        if self.dual_stack && !self.forwarding6_on {
            match std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1") {
                Ok(()) => {
                    self.forwarding6_on = true;
                    tracing::info!(
                        "IPv6 forwarding enabled (a network is dual-stack); interfaces with accept_ra=1 now ignore router advertisements (set accept_ra=2 on the underlay if it configures itself by SLAAC)"
                    );
                }
                Err(e) => report.errors.push(format!("enable IPv6 forwarding: {e}")),
            }
        }
        let direct = plan::direct_subnets(spec, &kernel, underlay_index);
        if self.converge_firewall(spec, &direct, &mut report).await {
            report.firewall_rebuilt = true;
        }
        report.took = started.elapsed();
        Ok(report)
    }

    /// Rebuilds the nftables tables when what they depend on changed or the kernel's copy
    /// drifted (one netlink round trip when neither happened); whether it wrote them.
    async fn converge_firewall(
        &mut self,
        spec: &HostSpec,
        direct: &BTreeMap<String, BTreeSet<Ipv4Network>>,
        report: &mut PassReport,
    ) -> bool {
        let (wanted, problems) = self.firewall_spec(spec, direct);
        report.errors.extend(problems);
        let (networks, endpoints) = (wanted.networks.len(), wanted.endpoints.len());
        let started = Instant::now();
        match self.with_firewall(move |fw| fw.converge(&wanted)).await {
            Ok(Ok(Converged::Unchanged)) => return false,
            Ok(Ok(Converged::Written)) => {
                let took_us = started.elapsed().as_micros() as u64;
                tracing::info!(networks, endpoints, took_us, "firewall rules written");
            }
            Ok(Ok(Converged::Repaired(drift))) => {
                let took_us = started.elapsed().as_micros() as u64;
                tracing::warn!(items = drift.len(), first = %drift[0], took_us, "firewall rules drifted; rewritten");
            }
            Ok(Err(e)) => {
                report.errors.push(e.to_string());
                return false;
            }
            Err(e) => {
                report.errors.push(e);
                return false;
            }
        }
        report.changes += 1;
        report.objects.updated += 1;
        true
    }

    /// Carries out one endpoint operation; returns the endpoint's outcome if it concerns a
    /// desired endpoint.
    async fn endpoint(
        &mut self,
        op: EndpointOp,
        report: &mut PassReport,
    ) -> Option<(u64, Result<(), EndpointError>)> {
        match op {
            EndpointOp::Wire {
                spec,
                stale,
                bridge_index,
            } => {
                let result = match self.namespace_of(spec.id, &spec.netns) {
                    Ok((ns, cookie)) => self.wire(&spec, &ns, cookie, &stale, bridge_index, report).await,
                    Err(e) => Err(e),
                };
                Some((spec.id, result))
            }
            EndpointOp::FixHostSide { spec, index, master } => {
                let result = endpoint::attach_host_side(&self.nl, &spec, index, master).await;
                if result.is_ok() {
                    report.changes += 1;
                    report.objects.updated += 1;
                }
                Some((spec.id, result.map_err(EndpointError::from)))
            }
            EndpointOp::Verify {
                spec,
                stale,
                bridge_index,
            } => {
                let result = match self.namespace_of(spec.id, &spec.netns) {
                    Ok((ns, cookie)) => match endpoint::verify(&spec, &ns, cookie).await {
                        Ok((Checked::Fine(n), seen)) => {
                            log_repairs(&spec, n, report);
                            self.configured(&spec, seen);
                            Ok(())
                        }
                        // The workload end is gone from the namespace: rebuild the pair.
                        Ok((Checked::Missing, seen)) => {
                            self.pins.saw_cookie(spec.id, seen);
                            self.wire(&spec, &ns, cookie.or(seen), &stale, bridge_index, report)
                                .await
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                Some((spec.id, result))
            }
            EndpointOp::VerifyMacvlan { spec, parent_index } => {
                let (ns, cookie) = match self.namespace_of(spec.id, &spec.netns) {
                    Ok(found) => found,
                    Err(e) => return Some((spec.id, Err(e))),
                };
                let checked = if self.macvlans.contains_key(&spec.id) {
                    endpoint::verify(&spec, &ns, cookie).await
                } else {
                    Ok((Checked::Missing, None))
                };
                let result = match checked {
                    Ok((Checked::Fine(n), seen)) => {
                        log_repairs(&spec, n, report);
                        self.configured(&spec, seen);
                        Ok(())
                    }
                    Ok((Checked::Missing, _)) => {
                        let started = Instant::now();
                        let result = endpoint::wire_macvlan(&self.nl, &spec, &ns, cookie, parent_index).await;
                        let status = result.map(|(record, seen)| {
                            self.macvlans.insert(record.id, record);
                            self.configured(&spec, seen);
                        });
                        log_wired(&spec, &status, report, started);
                        status
                    }
                    Err(e) => Err(e),
                };
                Some((spec.id, result))
            }
            EndpointOp::RemoveMacvlan { record } => {
                match self.remove_macvlan(&record).await {
                    Ok(removed) => {
                        if removed {
                            report.changes += 1;
                            report.objects.deleted += 1;
                            tracing::info!(id = record.id, netns = %record.netns, "macvlan endpoint removed");
                        } else {
                            tracing::info!(id = record.id, netns = %record.netns, "macvlan endpoint went with its namespace");
                        }
                        self.macvlans.remove(&record.id);
                    }
                    Err(e) => tracing::warn!(id = record.id, error = %e, "cannot remove macvlan endpoint"),
                }
                None
            }
            EndpointOp::Blocked { id, reason, .. } => Some((id, Err(EndpointError::Failed(reason)))),
            EndpointOp::Gone { id, reason } => Some((id, Err(EndpointError::Gone(reason)))),
        }
    }

    /// Wires a veth endpoint into `ns`, already opened and checked against its pin.
    async fn wire(
        &mut self,
        spec: &EndpointSpec,
        ns: &Namespace,
        cookie: Option<u64>,
        stale: &[(String, u32)],
        bridge_index: u32,
        report: &mut PassReport,
    ) -> Result<(), EndpointError> {
        let started = Instant::now();
        let result = endpoint::wire(&self.nl, spec, ns, cookie, stale, bridge_index)
            .await
            .map(|seen| self.configured(spec, seen));
        log_wired(spec, &result, report, started);
        result
    }

    /// Notes what a successful wiring or check of `spec` found inside its namespace.
    fn configured(&mut self, spec: &EndpointSpec, cookie: Option<u64>) {
        self.pins.saw_cookie(spec.id, cookie);
        self.routes.insert(spec.id, spec.default_route);
    }

    /// Opens endpoint `id`'s namespace and holds it against the endpoint's pin: the first
    /// namespace found is pinned; after that, anything else found at the reference means the
    /// endpoint's namespace is gone. Returns the namespace and the cookie to expect inside.
    fn namespace_of(&mut self, id: u64, netns: &NetnsRef) -> Result<(Namespace, Option<u64>), EndpointError> {
        let text = netns.as_text();
        let ns = match netns::open(netns) {
            Ok(ns) => ns,
            // Whatever stands there now, it is not what the endpoint was wired into.
            Err(e) if !e.is_gone() && self.pins.is_pinned(id, &text) => {
                return Err(EndpointError::Gone(format!(
                    "{e}; it is not the namespace the endpoint was wired into"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        match self.pins.check(id, &text, ns.id()) {
            Verdict::New => {
                self.pins.pin(id, &text, ns.id());
                Ok((ns, None))
            }
            Verdict::Same { cookie } => Ok((ns, cookie)),
            Verdict::Replaced(why) => Err(EndpointError::Gone(format!(
                "{} ({why})",
                netns::NetnsError::Replaced(netns.to_string())
            ))),
        }
    }

    /// Removes a detached macvlan endpoint from the namespace it was wired into. `Ok(false)`:
    /// that namespace is gone (the interface went with it) or is not the one found now, so
    /// there is nothing this agent may delete.
    async fn remove_macvlan(&mut self, record: &MacvlanRecord) -> Result<bool, EndpointError> {
        let Ok(netns) = NetnsRef::parse(&record.netns) else {
            return Ok(false);
        };
        let ns = match netns::open(&netns) {
            Ok(ns) => ns,
            Err(_) => return Ok(false),
        };
        let cookie = match self.pins.check(record.id, &record.netns, ns.id()) {
            Verdict::Same { cookie } => cookie,
            // Records from before pins existed: the namespace found is the one it was moved to.
            Verdict::New => None,
            Verdict::Replaced(_) => return Ok(false),
        };
        match endpoint::remove_macvlan(record, &ns, cookie).await {
            Ok(()) => Ok(true),
            Err(EndpointError::Gone(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Files one endpoint's outcome in the report and tracks gone namespaces.
    fn outcome(&mut self, id: u64, result: Result<(), EndpointError>, report: &mut PassReport) {
        match result {
            Ok(()) => {
                if self.gone.remove(&id).is_some() {
                    tracing::info!(id, "endpoint's namespace is back; wired again");
                }
                report.endpoints.insert(id, Ok(()));
            }
            Err(EndpointError::Gone(reason)) => {
                let grace = self.gone_grace;
                let gone = self.gone.entry(id).or_insert_with(|| {
                    tracing::warn!(id, %reason, grace_secs = grace.as_secs_f64(), "endpoint's namespace is gone; not wired again, released after the grace period");
                    Gone {
                        since: Instant::now(),
                        reason: reason.clone(),
                    }
                });
                gone.reason.clone_from(&reason);
                report.endpoints.insert(id, Err(reason.clone()));
                report.gone.insert(id, reason);
            }
            Err(EndpointError::Failed(reason)) => {
                // The namespace is there (it was opened and matched): not gone.
                self.gone.remove(&id);
                report.endpoints.insert(id, Err(reason));
            }
        }
    }

    /// Drops what the agent remembers of endpoints no longer desired and lists the gone ones
    /// past their grace period. The pins are saved by [`Reconciler::save_pins`].
    fn forget_undesired(&mut self, spec: &HostSpec, report: &mut PassReport) {
        let desired: std::collections::BTreeSet<u64> = spec.endpoints().map(|e| e.id).collect();
        self.gone.retain(|id, _| desired.contains(id));
        self.routes.retain(|id, _| desired.contains(id));
        let macvlans = &self.macvlans;
        // A detached macvlan keeps its pin until it has been removed from its namespace.
        self.pins
            .retain(|id| desired.contains(&id) || macvlans.contains_key(&id));
        report.expired = self
            .gone
            .iter()
            .filter(|(_, g)| g.since.elapsed() >= self.gone_grace)
            .map(|(id, _)| *id)
            .collect();
    }

    /// Writes the namespace pins if a pass changed them. Called once the pass's report is
    /// out: the file write and rename (a few hundred microseconds) then no longer delay the
    /// answer to an attach. A crash in between loses only the newest pins, which the next
    /// pass takes again from the namespaces (as for any endpoint the agent has not pinned).
    /// A failure is also kept for the next pass's report, so `doctor` shows it.
    pub fn save_pins(&mut self) -> Result<(), String> {
        let saved = self.pins.save();
        self.pins_error = saved.as_ref().err().cloned();
        saved
    }
}

fn log_wired(
    spec: &EndpointSpec,
    result: &Result<(), EndpointError>,
    report: &mut PassReport,
    started: Instant,
) {
    match result {
        Ok(()) => {
            report.changes += 1;
            report.objects.created += 1;
            let took_us = started.elapsed().as_micros() as u64;
            tracing::info!(id = spec.id, netns = %spec.netns, address = %spec.address, took_us, "endpoint wired");
        }
        // Reported once, when first found (see `Reconciler::outcome`).
        Err(EndpointError::Gone(_)) => {}
        Err(e) => tracing::warn!(id = spec.id, netns = %spec.netns, error = %e, "endpoint not wired"),
    }
}

fn log_repairs(spec: &EndpointSpec, repairs: usize, report: &mut PassReport) {
    if repairs > 0 {
        report.changes += repairs;
        report.objects.updated += repairs as u64;
        tracing::info!(id = spec.id, netns = %spec.netns, repairs, "endpoint repaired");
    }
}

fn log_link(op: &LinkOp) {
    match op {
        LinkOp::CreateBridge { name, mtu, mac } => tracing::info!(%name, mtu, %mac, "bridge created"),
        LinkOp::CreateVxlan { spec, .. } => {
            tracing::info!(name = %spec.name, vni = spec.vni, local = %spec.local, mtu = spec.mtu, "vxlan created")
        }
        LinkOp::Delete { name, why, .. } => tracing::info!(%name, %why, "device deleted"),
        other => tracing::info!(?other, "device changed"),
    }
}

fn summarize(ops: &[EntryOp]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for op in ops {
        let key = match op {
            EntryOp::AddAddress { .. } => "address+",
            EntryOp::DelAddress { .. } => "address-",
            EntryOp::SetNeighbour { .. } => "neigh+",
            EntryOp::DelNeighbour { .. } => "neigh-",
            EntryOp::SetFdb { .. } => "fdb+",
            EntryOp::DelFdb { .. } => "fdb-",
            EntryOp::SetRoute { .. } => "route+",
            EntryOp::DelRoute { .. } => "route-",
            EntryOp::AddAddress6 { .. } => "address6+",
            EntryOp::DelAddress6 { .. } => "address6-",
            EntryOp::SetNeighbour6 { .. } => "neigh6+",
            EntryOp::DelNeighbour6 { .. } => "neigh6-",
            EntryOp::SetRoute6 { .. } => "route6+",
            EntryOp::DelRoute6 { .. } => "route6-",
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}
