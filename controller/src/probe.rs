//! `overlayctl probe NETWORK`: every host of a network pings every other host's gateway over
//! the overlay, with a small and an MTU-sized packet, and the results come back as a matrix.
//!
//! Orders travel to agents on their Watch streams (whichever replica they watch: the replica
//! that takes the request passes the orders to its peers); agents report to the replica they
//! talk to, and the requesting replica gathers the reports from all of them.

use std::collections::HashMap;
use std::sync::Mutex;

use overlay_proto::v1 as pb;
use tokio::sync::broadcast;

use crate::ipam::subnet_gateway;
use crate::state::ClusterState;

/// ICMP payload of the small probe (the classic 64-byte ping: 84-byte packet).
pub const SMALL_PAYLOAD: u32 = 56;
/// Per-echo wait for a reply.
pub const ECHO_TIMEOUT_MS: u32 = 700;

/// Orders on their way to this replica's Watch streams, and the reports that came back.
pub struct ProbeHub {
    orders: broadcast::Sender<pb::HostProbeOrder>,
    reports: Mutex<HashMap<String, Vec<pb::ProbeReport>>>,
}

impl Default for ProbeHub {
    fn default() -> Self {
        Self {
            orders: broadcast::channel(256).0,
            reports: Mutex::default(),
        }
    }
}

impl ProbeHub {
    pub fn publish(&self, orders: &[pb::HostProbeOrder]) {
        for o in orders {
            // No receiver means no agent watches this replica right now: nothing to do.
            let _ = self.orders.send(o.clone());
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<pb::HostProbeOrder> {
        self.orders.subscribe()
    }

    pub fn record(&self, report: pb::ProbeReport) {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        // Keep the memory bounded: only recent probes matter.
        if reports.len() > 64 && !reports.contains_key(&report.id) {
            reports.clear();
        }
        reports.entry(report.id.clone()).or_default().push(report);
    }

    pub fn reports(&self, id: &str) -> Vec<pb::ProbeReport> {
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.get(id).cloned().unwrap_or_default()
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
    let members: Vec<(String, String)> = n
        .leases
        .iter()
        .map(|(host, lease)| (host.clone(), subnet_gateway(lease.subnet).to_string()))
        .collect();
    if members.len() < 2 {
        return Err(format!(
            "network {network:?} spans {} host(s): nothing to probe between",
            members.len()
        ));
    }
    let orders = members
        .iter()
        .map(|(host, _)| pb::HostProbeOrder {
            host: host.clone(),
            order: Some(pb::ProbeOrder {
                id: id.to_string(),
                network: network.to_string(),
                targets: members
                    .iter()
                    .filter(|(h, _)| h != host)
                    .map(|(h, a)| pb::ProbeTarget {
                        host: h.clone(),
                        address: a.clone(),
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
    Ok((orders, members.into_iter().map(|(h, _)| h).collect()))
}
