//! `overlayctl probe NETWORK`: every host of a network pings every other host's gateway over
//! the overlay, with a small and an MTU-sized packet, and the results come back as a matrix.
//!
//! Orders travel to agents on their Watch streams (whichever replica they watch: the replica
//! that takes the request passes the orders to its peers); agents report to the replica they
//! talk to, and the requesting replica gathers the reports from all of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use overlay_proto::v1 as pb;
use tokio::sync::broadcast;

use crate::ipam::subnet_gateway;
use crate::state::ClusterState;

/// ICMP payload of the small probe (the classic 64-byte ping: 84-byte packet).
pub const SMALL_PAYLOAD: u32 = 56;
/// Per-echo wait for a reply.
pub const ECHO_TIMEOUT_MS: u32 = 700;

/// Probes a replica remembers (orders and reports); the oldest is forgotten first.
pub const MAX_PROBES: usize = 64;
/// Longest probe id: a replica makes them as `<node>-<ms>-<seq>`.
pub const MAX_PROBE_ID: usize = 64;
/// What an agent may say in one result's error text.
pub const MAX_RESULT_ERROR: usize = 1024;

/// Why a probe report was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefused {
    #[error("probe id of {0} bytes (at most {MAX_PROBE_ID})")]
    IdTooLong(usize),
    #[error("no probe {id:?} was ordered from host {host:?} on this replica, or its report is in already")]
    NotOrdered { id: String, host: String },
    #[error(
        "probe report of host {host:?} with {got} results; its order allows {allowed} (two sizes per target and family)"
    )]
    TooManyResults {
        host: String,
        got: usize,
        allowed: usize,
    },
    #[error("probe report of host {host:?} has a result for {to:?}, which it was not asked to probe")]
    NotATarget { host: String, to: String },
}

/// One probe as this replica knows it.
#[derive(Default)]
struct Probe {
    /// Hosts whose report is still awaited, with the targets each was ordered to probe. A
    /// report removes its host: one report per host and probe.
    awaited: BTreeMap<String, BTreeSet<String>>,
    reports: Vec<pb::ProbeReport>,
}

/// Probes by id, in the order they were issued (ids sort by issue time only per replica).
#[derive(Default)]
struct Probes {
    by_id: BTreeMap<String, Probe>,
    order: std::collections::VecDeque<String>,
}

/// Orders on their way to this replica's Watch streams, and the reports that came back. A
/// report is accepted only for a probe ordered from its host here and not yet answered, and
/// only with results for the targets it was given, so the memory an agent can fill is the
/// size of the probe it was asked to run.
pub struct ProbeHub {
    orders: broadcast::Sender<pb::HostProbeOrder>,
    probes: Mutex<Probes>,
}

impl Default for ProbeHub {
    fn default() -> Self {
        Self {
            orders: broadcast::channel(256).0,
            probes: Mutex::default(),
        }
    }
}

impl ProbeHub {
    /// Remembers `orders` as awaited, then passes them to the Watch streams.
    pub fn publish(&self, orders: &[pb::HostProbeOrder]) {
        {
            let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
            for o in orders {
                let Some(order) = &o.order else { continue };
                if order.id.len() > MAX_PROBE_ID {
                    continue;
                }
                if !probes.by_id.contains_key(&order.id) {
                    if probes.order.len() >= MAX_PROBES
                        && let Some(oldest) = probes.order.pop_front()
                    {
                        probes.by_id.remove(&oldest);
                    }
                    probes.order.push_back(order.id.clone());
                }
                let targets = order.targets.iter().map(|t| t.host.clone()).collect();
                probes
                    .by_id
                    .entry(order.id.clone())
                    .or_default()
                    .awaited
                    .insert(o.host.clone(), targets);
            }
        }
        for o in orders {
            // No receiver means no agent watches this replica right now: nothing to do.
            let _ = self.orders.send(o.clone());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::HostProbeOrder> {
        self.orders.subscribe()
    }

    /// Keeps `report` if it answers an awaited order (see [`ProbeHub`]); error texts are
    /// clipped to [`MAX_RESULT_ERROR`].
    pub fn record(&self, mut report: pb::ProbeReport) -> Result<(), ReportRefused> {
        if report.id.len() > MAX_PROBE_ID {
            return Err(ReportRefused::IdTooLong(report.id.len()));
        }
        let mut probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        let not_ordered = || ReportRefused::NotOrdered {
            id: report.id.clone(),
            host: report.host.clone(),
        };
        let probe = probes.by_id.get_mut(&report.id).ok_or_else(not_ordered)?;
        let targets = probe.awaited.get(&report.host).ok_or_else(not_ordered)?;
        // Two sizes per target, over IPv4 and (dual-stack networks) IPv6 too.
        let allowed = 4 * targets.len();
        if report.results.len() > allowed {
            return Err(ReportRefused::TooManyResults {
                host: report.host.clone(),
                got: report.results.len(),
                allowed,
            });
        }
        if let Some(r) = report.results.iter().find(|r| !targets.contains(&r.to)) {
            return Err(ReportRefused::NotATarget {
                host: report.host.clone(),
                to: r.to.chars().take(64).collect(),
            });
        }
        for r in &mut report.results {
            if let Some((at, _)) = r.error.char_indices().nth(MAX_RESULT_ERROR) {
                r.error.truncate(at);
            }
        }
        probe.awaited.remove(&report.host);
        probe.reports.push(report);
        Ok(())
    }

    pub fn reports(&self, id: &str) -> Vec<pb::ProbeReport> {
        let probes = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        probes
            .by_id
            .get(id)
            .map(|p| p.reports.clone())
            .unwrap_or_default()
    }
}

/// One order per host of `network` (each probes all the others' gateways); the hosts in order.
pub fn orders(
    state: &ClusterState,
    network: &str,
    count: u32,
    id: &str,
) -> Result<(Vec<pb::HostProbeOrder>, Vec<String>), String> {
    let n = state
        .networks
        .get(network)
        .ok_or_else(|| format!("unknown network {network:?}"))?;
    if !n.mode.uses_leases() {
        return Err(format!(
            "network {network:?} is {}: probe works on vxlan and nat networks (hosts' gateways)",
            n.mode
        ));
    }
    let members: Vec<(String, String, String)> = n
        .leases
        .iter()
        .map(|(host, lease)| {
            let gateway6 = lease.subnet6.map(|s| subnet_gateway(s).to_string());
            (
                host.clone(),
                subnet_gateway(lease.subnet).to_string(),
                gateway6.unwrap_or_default(),
            )
        })
        .collect();
    if members.len() < 2 {
        return Err(format!(
            "network {network:?} spans {} host(s): nothing to probe between",
            members.len()
        ));
    }
    let orders = members
        .iter()
        .map(|(host, _, _)| pb::HostProbeOrder {
            host: host.clone(),
            order: Some(pb::ProbeOrder {
                id: id.to_string(),
                network: network.to_string(),
                targets: members
                    .iter()
                    .filter(|(h, _, _)| h != host)
                    .map(|(h, a, a6)| pb::ProbeTarget {
                        host: h.clone(),
                        address: a.clone(),
                        address6: a6.clone(),
                    })
                    .collect(),
                count,
                small_payload: SMALL_PAYLOAD,
                // The agent fills the network's MTU.
                big_payload: 0,
                timeout_ms: ECHO_TIMEOUT_MS,
            }),
        })
        .collect();
    Ok((orders, members.into_iter().map(|(h, _, _)| h).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, host: &str, targets: &[&str]) -> pb::HostProbeOrder {
        pb::HostProbeOrder {
            host: host.into(),
            order: Some(pb::ProbeOrder {
                id: id.into(),
                targets: targets
                    .iter()
                    .map(|t| pb::ProbeTarget {
                        host: t.to_string(),
                        address: "10.0.0.1".into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        }
    }

    fn report(id: &str, host: &str, to: &[&str]) -> pb::ProbeReport {
        pb::ProbeReport {
            id: id.into(),
            host: host.into(),
            results: to
                .iter()
                .map(|t| pb::ProbeResult {
                    from: host.into(),
                    to: t.to_string(),
                    error: "x".repeat(5000),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_awaited_reports_are_kept_once_and_bounded() {
        let hub = ProbeHub::default();
        // Nothing ordered: refused.
        assert!(matches!(
            hub.record(report("p1", "h1", &["h2"])),
            Err(ReportRefused::NotOrdered { .. })
        ));
        hub.publish(&[order("p1", "h1", &["h2", "h3"]), order("p1", "h2", &["h1", "h3"])]);
        // Another host's order, too many results, a target it was not given.
        assert!(hub.record(report("p1", "h3", &["h1"])).is_err());
        assert!(matches!(
            hub.record(report("p1", "h1", &["h2"; 9])),
            Err(ReportRefused::TooManyResults { allowed: 8, .. })
        ));
        assert!(matches!(
            hub.record(report("p1", "h1", &["h9"])),
            Err(ReportRefused::NotATarget { .. })
        ));
        assert_eq!(hub.record(report("p1", "h1", &["h2", "h2", "h3", "h3"])), Ok(()));
        // One report per host and probe.
        assert!(hub.record(report("p1", "h1", &["h2"])).is_err());
        let kept = hub.reports("p1");
        assert_eq!(kept.len(), 1);
        assert!(kept[0].results.iter().all(|r| r.error.len() == MAX_RESULT_ERROR));
        assert!(matches!(
            hub.record(report(&"p".repeat(MAX_PROBE_ID + 1), "h1", &[])),
            Err(ReportRefused::IdTooLong(_))
        ));
        // Old probes are forgotten, the newest kept.
        for i in 0..MAX_PROBES + 10 {
            hub.publish(&[order(&format!("q{i}"), "h1", &["h2"])]);
        }
        assert!(hub.reports("p1").is_empty());
        let probes = hub.probes.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!((probes.by_id.len(), probes.order.len()), (MAX_PROBES, MAX_PROBES));
    }
}
