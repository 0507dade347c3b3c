//! The replicated state machine: cluster state, the commands that change it, and `apply`.
//!
//! `apply` is the only place where anything is allocated (VNI, host subnet, endpoint address,
//! MAC). It runs on every replica, in log order, from the same input, so all replicas agree
//! and two requests can never receive the same address however they race at the API.
//!
//! Every command either succeeds, or fails with a [`StateError`] and leaves the state exactly
//! as it was: all checks run before the first mutation.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::{Endpoint, Host, Network};

/// Hosts without a heartbeat for this long are shown as down. Their entries stay in place:
/// an agent that is down does not mean a datapath that is down.
pub const HOST_DOWN_AFTER_MS: i64 = 30_000;

/// Longest network name: it appears in tables and logs, never in device names.
pub const MAX_NAME_LEN: usize = 64;

/// The whole replicated state. Indices marked `serde(skip)` are derived and rebuilt after a
/// snapshot is loaded, so a snapshot holds each fact once.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ClusterState {
    /// Bumped by every command that changes desired state.
    pub revision: u64,
    pub networks: BTreeMap<String, Network>,
    pub hosts: BTreeMap<String, Host>,
    pub endpoints: BTreeMap<u64, Endpoint>,
    next_network_id: u32,
    next_endpoint_id: u64,
    /// Network → address → endpoint id.
    #[serde(skip)]
    addresses: BTreeMap<String, BTreeMap<Ipv4Addr, u64>>,
    /// (host, key) → endpoint id: a key names one endpoint of its host.
    #[serde(skip)]
    by_host_key: BTreeMap<(String, String), u64>,
    /// (network, host) → its endpoint ids.
    #[serde(skip)]
    by_place: BTreeMap<(String, String), BTreeSet<u64>>,
    /// Where each part last changed, for incremental readers.
    #[serde(skip)]
    pub marks: ChangeMarks,
}

impl PartialEq for ClusterState {
    fn eq(&self, other: &Self) -> bool {
        self.revision == other.revision
            && self.networks == other.networks
            && self.hosts == other.hosts
            && self.endpoints == other.endpoints
            && self.next_network_id == other.next_network_id
            && self.next_endpoint_id == other.next_endpoint_id
    }
}

impl ClusterState {
    /// Restores the derived indices; call after deserializing.
    pub fn rebuild_indices(&mut self) {
        // A process-wide counter: a state replaced by a snapshot must never share an epoch with
        // the one it replaces, or readers would trust marks that describe another history.
        static EPOCHS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let epoch = EPOCHS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.marks = ChangeMarks {
            epoch,
            ..ChangeMarks::default()
        };
        self.rebuild_endpoint_indices();
    }

    pub fn from_snapshot_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let mut state: ClusterState = serde_json::from_slice(bytes)?;
        state.rebuild_indices();
        Ok(state)
    }

    /// Applies one command. On error nothing has changed, the revision included.
    pub fn apply(&mut self, cmd: Command) -> Reply {
        if let Command::Batch(commands) = cmd {
            // Exactly as if each had its own log entry: one revision per change, in order.
            let replies = commands.into_iter().map(|c| self.apply(c)).collect();
            return Reply {
                revision: self.revision,
                result: Ok(Response::Batch(replies)),
            };
        }
        let bumps = cmd.bumps_revision();
        let touch = self.touch(&cmd);
        let result = match cmd {
            Command::CreateNetwork { spec, now_ms } => {
                self.create_network(spec, now_ms).map(Response::Network)
            }
            Command::UpdateNetwork {
                name,
                nat_egress,
                mtu,
                direct_routing,
            } => self
                .update_network(&name, nat_egress, mtu, direct_routing)
                .map(Response::Network),
            Command::DeleteNetwork { name, force } => self
                .delete_network(&name, force)
                .map(|removed_endpoints| Response::NetworkDeleted { removed_endpoints }),
            Command::RegisterHost {
                name,
                underlay_ip,
                underlay_iface,
                underlay_mtu,
                now_ms,
                instance,
                claim_timeout_ms,
            } => self
                .register_host(
                    name,
                    underlay_ip,
                    underlay_iface,
                    underlay_mtu,
                    Claim {
                        instance,
                        now_ms,
                        timeout_ms: claim_timeout_ms,
                    },
                )
                .map(Response::Host),
            Command::Heartbeat {
                name,
                now_ms,
                instance,
            } => self
                .heartbeat(&name, now_ms, &instance)
                .map(|()| Response::Heartbeat),
            Command::RemoveHost { name } => {
                self.remove_host(&name)
                    .map(|(removed_endpoints, released_leases)| Response::HostRemoved {
                        removed_endpoints,
                        released_leases,
                    })
            }
            Command::RequestEndpoint {
                network,
                host,
                netns,
                ifname,
                ip,
                default_route,
                names,
                ports,
                now_ms,
            } => self
                .request_endpoint(
                    network,
                    host,
                    netns,
                    ifname,
                    ip,
                    default_route,
                    names,
                    ports,
                    now_ms,
                )
                .map(Response::Endpoint),
            Command::DetachEndpoint { network, host, netns } => self
                .detach_endpoint(&network, &host, &netns)
                .map(Response::EndpointDetached),
            Command::AllocateAddress {
                host,
                endpoint,
                ip,
                now_ms,
            } => self
                .allocate_address(&host, endpoint, ip, now_ms)
                .map(Response::Endpoint),
            Command::SyncEndpoints {
                host,
                full,
                upsert,
                remove,
                failed,
                now_ms,
            } => self
                .sync_endpoints(&host, full, upsert, remove, failed, now_ms)
                .map(|done| Response::Synced {
                    changed: done.changed,
                    refused: done.refused,
                }),
            // Taken apart above; this arm is never reached.
            Command::Batch(_) => Ok(Response::Noop),
        };
        // A report that changed nothing is not a new revision (nobody needs waking).
        let bumps = bumps && !matches!(&result, Ok(Response::Synced { changed: 0, .. }));
        if result.is_ok() && bumps {
            self.revision += 1;
            self.mark(touch);
        }
        Reply {
            revision: self.revision,
            result,
        }
    }
}

/// Names of networks and hosts: what people type and read; letters, digits, `-`, `_`, `.`.
pub fn validate_name(what: &str, name: &str) -> Result<(), StateError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(invalid(
            what,
            name,
            format!("must be 1 to {MAX_NAME_LEN} characters"),
        ));
    }
    let ok_first = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok_first
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            what,
            name,
            "use letters, digits, '-', '_' and '.', starting with a letter or digit",
        ));
    }
    Ok(())
}

/// A Linux interface name (see [`overlay_proto::validate::ifname`]).
pub fn validate_ifname(what: &str, name: &str) -> Result<(), StateError> {
    overlay_proto::validate::ifname(name).map_err(|reason| invalid(what, name, reason))
}

/// A network namespace reference (see [`overlay_proto::validate::netns`]).
pub fn validate_netns(netns: &str) -> Result<(), StateError> {
    overlay_proto::validate::netns(netns).map_err(|reason| invalid("namespace", netns, reason))
}

mod command;
mod endpoints;
mod error;
mod hosts;
mod marks;
mod networks;

pub use crate::modes::DEFAULT_HOST_PREFIX;
pub use command::{Command, MtuSetting, Reply, Response};
pub use endpoints::{MAX_HOST_ENDPOINTS, UNREPORTED_GRACE_MS, check_names, request_key};
pub(crate) use error::invalid;
pub use error::{ErrorKind, StateError};
use hosts::Claim;
pub use marks::{ChangeMarks, EndpointEvent};

#[cfg(test)]
pub(crate) mod tests;
