//! One convergence pass: dump, plan, apply, in three rounds (links, entries, endpoints), then
//! the firewall and sysctls. Level-triggered: it only looks at the desired state and the
//! kernel, never at what the previous pass did, so a missed update or a change made behind
//! the agent's back is repaired by the next pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::endpoint::{self, Checked};
use crate::firewall::{Converged, Firewall, FirewallSpec};
use crate::kernel::MacvlanRecord;
use crate::netlink::{Netlink, NetlinkError};
use crate::plan::{self, EndpointOp, EntryOp, LinkOp};
use crate::spec::{EndpointSpec, HostSpec};

/// Netlink requests for entries kept in flight at once.
const ENTRIES_IN_FLIGHT: usize = 128;

/// The underlay interface VXLAN sends through.
#[derive(Clone, Debug)]
pub struct Underlay {
    pub iface: String,
    pub ip: std::net::Ipv4Addr,
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
    /// Every change, whatever its kind.
    pub changes: usize,
    pub objects: ObjectCounts,
    pub errors: Vec<String>,
    pub endpoints: EndpointStatuses,
    pub took: Duration,
}

pub struct Reconciler {
    nl: Netlink,
    underlay: Underlay,
    /// What is known of the nftables tables (taken out while a blocking task works on it).
    firewall: Firewall,
    /// Controller addresses, which workloads must not reach even through NAT egress.
    control_plane: BTreeSet<Ipv4Addr>,
    forwarding_on: bool,
    /// Macvlan endpoints this agent put into namespaces, mirrored to `records_path`.
    macvlans: BTreeMap<u64, MacvlanRecord>,
    records_path: Option<PathBuf>,
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
            forwarding_on: false,
            macvlans,
            records_path,
        }
    }

    /// Controller addresses to keep out of NAT egress (see [`crate::firewall::rules`]).
    pub fn with_control_plane(mut self, addresses: BTreeSet<Ipv4Addr>) -> Self {
        self.control_plane = addresses;
        self
    }

    fn firewall_spec(&self, spec: &HostSpec) -> (FirewallSpec, Vec<String>) {
        FirewallSpec::from_host(spec, &self.underlay.iface, self.underlay.ip, &self.control_plane)
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

    /// Where the kernel differs from `spec`, without changing anything (see [`crate::audit`]).
    pub async fn audit(&mut self, spec: &HostSpec) -> Result<Vec<String>, ReconcileError> {
        let kernel = self.nl.dump().await?;
        let underlay_index = kernel
            .link(&self.underlay.iface)
            .map(|l| l.index)
            .ok_or_else(|| ReconcileError::NoUnderlay(self.underlay.iface.clone()))?;
        let mut drift = crate::audit::drift(spec, &kernel, underlay_index, &self.macvlans);
        let (wanted, problems) = self.firewall_spec(spec);
        drift.extend(problems);
        match self.with_firewall(move |fw| fw.audit(&wanted)).await {
            Ok(found) => drift.extend(found),
            Err(e) => drift.push(e),
        }
        Ok(drift)
    }

    /// Converges the kernel to `spec`. `deep` also checks every endpoint inside its namespace.
    pub async fn pass(&mut self, spec: &HostSpec, deep: bool) -> Result<PassReport, ReconcileError> {
        let started = Instant::now();
        let mut report = PassReport {
            revision: spec.revision,
            ..Default::default()
        };

        let mut kernel = self.nl.dump().await?;
        let underlay_index = kernel
            .link(&self.underlay.iface)
            .map(|l| l.index)
            .ok_or_else(|| ReconcileError::NoUnderlay(self.underlay.iface.clone()))?;

        let link_ops = plan::links(spec, &kernel, underlay_index);
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
            kernel = self.nl.dump().await?;
        }

        let entry_ops = plan::entries(spec, &kernel);
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
        for op in plan::endpoints(spec, &kernel, deep, &records_before) {
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
                report.endpoints.insert(id, result);
            }
        }
        if self.macvlans != records_before
            && let Err(e) = self.save_records()
        {
            report.errors.push(e);
        }
        // Endpoints that needed no work are fine.
        for ep in spec.endpoints() {
            report.endpoints.entry(ep.id).or_insert(Ok(()));
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
        self.converge_firewall(spec, &mut report).await;
        report.took = started.elapsed();
        Ok(report)
    }

    /// Rebuilds the nftables tables when what they depend on changed or the kernel's copy
    /// drifted (one netlink round trip when neither happened).
    async fn converge_firewall(&mut self, spec: &HostSpec, report: &mut PassReport) {
        let (wanted, problems) = self.firewall_spec(spec);
        report.errors.extend(problems);
        let (networks, endpoints) = (wanted.networks.len(), wanted.endpoints.len());
        let started = Instant::now();
        match self.with_firewall(move |fw| fw.converge(&wanted)).await {
            Ok(Ok(Converged::Unchanged)) => return,
            Ok(Ok(Converged::Written)) => {
                let took_us = started.elapsed().as_micros() as u64;
                tracing::info!(networks, endpoints, took_us, "firewall rules written");
            }
            Ok(Ok(Converged::Repaired(drift))) => {
                let took_us = started.elapsed().as_micros() as u64;
                tracing::warn!(items = drift.len(), first = %drift[0], took_us, "firewall rules drifted; rewritten");
            }
            Ok(Err(e)) => return report.errors.push(e.to_string()),
            Err(e) => return report.errors.push(e),
        }
        report.changes += 1;
        report.objects.updated += 1;
    }

    /// Carries out one endpoint operation; returns the endpoint's status if it concerns a
    /// desired endpoint.
    async fn endpoint(
        &mut self,
        op: EndpointOp,
        report: &mut PassReport,
    ) -> Option<(u64, Result<(), String>)> {
        match op {
            EndpointOp::Wire {
                spec,
                stale,
                bridge_index,
            } => {
                let started = Instant::now();
                let result = endpoint::wire(&self.nl, &spec, &stale, bridge_index).await;
                log_wired(&spec, &result, report, started);
                Some((spec.id, result))
            }
            EndpointOp::FixHostSide { spec, index, master } => {
                let result = endpoint::attach_host_side(&self.nl, &spec, index, master).await;
                if result.is_ok() {
                    report.changes += 1;
                    report.objects.updated += 1;
                }
                Some((spec.id, result))
            }
            EndpointOp::Verify {
                spec,
                stale,
                bridge_index,
            } => match endpoint::verify(&spec).await {
                Ok(Checked::Fine(n)) => {
                    log_repairs(&spec, n, report);
                    Some((spec.id, Ok(())))
                }
                Ok(Checked::Missing) => {
                    // The workload end is gone from the namespace: rebuild the pair.
                    let started = Instant::now();
                    let result = endpoint::wire(&self.nl, &spec, &stale, bridge_index).await;
                    log_wired(&spec, &result, report, started);
                    Some((spec.id, result))
                }
                Err(e) => Some((spec.id, Err(e))),
            },
            EndpointOp::VerifyMacvlan { spec, parent_index } => {
                let checked = if self.macvlans.contains_key(&spec.id) {
                    endpoint::verify(&spec).await
                } else {
                    Ok(Checked::Missing)
                };
                match checked {
                    Ok(Checked::Fine(n)) => {
                        log_repairs(&spec, n, report);
                        Some((spec.id, Ok(())))
                    }
                    Ok(Checked::Missing) => {
                        let started = Instant::now();
                        let result = endpoint::wire_macvlan(&self.nl, &spec, parent_index).await;
                        let status = result.map(|record| {
                            self.macvlans.insert(record.id, record);
                        });
                        log_wired(&spec, &status, report, started);
                        Some((spec.id, status))
                    }
                    Err(e) => Some((spec.id, Err(e))),
                }
            }
            EndpointOp::RemoveMacvlan { record } => {
                match endpoint::remove_macvlan(&record).await {
                    Ok(()) => {
                        report.changes += 1;
                        report.objects.deleted += 1;
                        tracing::info!(id = record.id, netns = %record.netns, "macvlan endpoint removed");
                        self.macvlans.remove(&record.id);
                    }
                    Err(e) => tracing::warn!(id = record.id, error = %e, "cannot remove macvlan endpoint"),
                }
                None
            }
            EndpointOp::Blocked { id, reason, .. } => Some((id, Err(reason))),
        }
    }
}

fn log_wired(spec: &EndpointSpec, result: &Result<(), String>, report: &mut PassReport, started: Instant) {
    match result {
        Ok(()) => {
            report.changes += 1;
            report.objects.created += 1;
            let took_us = started.elapsed().as_micros() as u64;
            tracing::info!(id = spec.id, netns = %spec.netns, address = %spec.address, took_us, "endpoint wired");
        }
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
        LinkOp::CreateBridge { name, mtu } => tracing::info!(%name, mtu, "bridge created"),
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
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}{v}"))
        .collect::<Vec<_>>()
        .join(" ")
}
