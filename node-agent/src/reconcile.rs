//! One convergence pass: dump, plan, apply, in three rounds (links, entries, endpoints), then
//! the firewall and sysctls. Level-triggered: it only looks at the desired state and the
//! kernel, never at what the previous pass did, so a missed update or a change made behind
//! the agent's back is repaired by the next pass.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::endpoint::{self, Checked};
use crate::firewall::{self, FirewallSpec};
use crate::netlink::{Netlink, NetlinkError};
use crate::plan::{self, EndpointOp, EntryOp, LinkOp};
use crate::spec::HostSpec;

/// The underlay interface VXLAN sends through.
#[derive(Clone, Debug)]
pub struct Underlay {
    pub iface: String,
    pub ip: std::net::Ipv4Addr,
    pub mtu: u32,
}

/// Endpoint id → `Ok` (wired and checked) or the reason it is not.
pub type EndpointStatuses = BTreeMap<u64, Result<(), String>>;

/// What a pass did, for logs, metrics and the status report.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    pub revision: u64,
    pub changes: usize,
    pub errors: Vec<String>,
    pub endpoints: EndpointStatuses,
    pub took: Duration,
}

pub struct Reconciler {
    nl: Netlink,
    underlay: Underlay,
    firewall: Option<FirewallSpec>,
    forwarding_on: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("underlay interface {0} not found")]
    NoUnderlay(String),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

impl Reconciler {
    pub fn new(nl: Netlink, underlay: Underlay) -> Self {
        Self {
            nl,
            underlay,
            firewall: None,
            forwarding_on: false,
        }
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
        for op in &link_ops {
            match self.nl.apply_link(op).await {
                Ok(()) => {
                    report.changes += 1;
                    log_link(op);
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        if !link_ops.is_empty() {
            kernel = self.nl.dump().await?;
        }

        let entry_ops = plan::entries(spec, &kernel);
        for op in &entry_ops {
            match self.nl.apply_entry(op).await {
                Ok(()) => {
                    report.changes += 1;
                    tracing::debug!(?op, "entry");
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        if !entry_ops.is_empty() {
            tracing::info!(count = entry_ops.len(), summary = %summarize(&entry_ops), "entries programmed");
        }

        for op in plan::endpoints(spec, &kernel, deep) {
            let (id, result) = self.endpoint(op, &kernel, &mut report.changes).await;
            report.endpoints.insert(id, result);
        }
        // Endpoints needing no work are fine; ones the plan could not reach (bridge missing)
        // are reported as such.
        for ep in spec.endpoints() {
            report.endpoints.entry(ep.id).or_insert_with(|| {
                if kernel.link(&ep.bridge).is_some() {
                    Ok(())
                } else {
                    Err(format!("bridge {} is missing", ep.bridge))
                }
            });
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
        let wanted = FirewallSpec::from_host(spec, &self.underlay.iface);
        if self.firewall.as_ref() != Some(&wanted) {
            let spec = wanted.clone();
            match tokio::task::spawn_blocking(move || firewall::apply(&spec)).await {
                Ok(Ok(())) => {
                    tracing::info!(networks = wanted.networks.len(), "firewall table rebuilt");
                    self.firewall = Some(wanted);
                    report.changes += 1;
                }
                Ok(Err(e)) => report.errors.push(e.to_string()),
                Err(e) => report.errors.push(format!("firewall task: {e}")),
            }
        }
        report.took = started.elapsed();
        Ok(report)
    }

    async fn endpoint(
        &self,
        op: EndpointOp,
        kernel: &crate::kernel::Kernel,
        changes: &mut usize,
    ) -> (u64, Result<(), String>) {
        let bridge_index = |name: &str| kernel.link(name).map(|l| l.index).unwrap_or(0);
        match op {
            EndpointOp::Wire { spec, stale } => {
                let result = endpoint::wire(&self.nl, &spec, &stale, bridge_index(&spec.bridge)).await;
                match &result {
                    Ok(()) => {
                        *changes += 1;
                        tracing::info!(id = spec.id, netns = %spec.netns, address = %spec.address, "endpoint wired");
                    }
                    Err(e) => {
                        tracing::warn!(id = spec.id, netns = %spec.netns, error = %e, "endpoint not wired")
                    }
                }
                (spec.id, result)
            }
            EndpointOp::FixHostSide { spec, index, master } => {
                let result = endpoint::attach_host_side(&self.nl, &spec, index, master).await;
                if result.is_ok() {
                    *changes += 1;
                }
                (spec.id, result)
            }
            EndpointOp::Verify { spec } => match endpoint::verify(&spec).await {
                Ok(Checked::Fine(0)) => (spec.id, Ok(())),
                Ok(Checked::Fine(n)) => {
                    *changes += n;
                    tracing::info!(id = spec.id, netns = %spec.netns, repairs = n, "endpoint repaired");
                    (spec.id, Ok(()))
                }
                Ok(Checked::Missing) => {
                    // The workload end is gone from the namespace: rebuild the pair.
                    let stale: Vec<(String, u32)> = kernel
                        .link(&spec.host_ifname)
                        .map(|l| (l.name.clone(), l.index))
                        .into_iter()
                        .collect();
                    let result = endpoint::wire(&self.nl, &spec, &stale, bridge_index(&spec.bridge)).await;
                    if result.is_ok() {
                        *changes += 1;
                    }
                    (spec.id, result)
                }
                Err(e) => (spec.id, Err(e)),
            },
        }
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
