//! Hosts in the replicated state: registration (and who holds a host name), heartbeats and
//! removal.

use std::collections::BTreeSet;
use std::net::IpAddr;

use overlay_proto::limits;

use super::networks::free_lease;
use super::{ClusterState, StateError, invalid, validate_ifname, validate_name};
use crate::ipam;
use crate::model::{Host, MacAddr};

impl ClusterState {
    pub(super) fn register_host(
        &mut self,
        name: String,
        underlay_ip: IpAddr,
        underlay_iface: String,
        underlay_mtu: u32,
        claim: Claim,
    ) -> Result<Host, StateError> {
        let now_ms = claim.now_ms;
        validate_name("host name", &name)?;
        validate_ifname("underlay interface", &underlay_iface)?;
        if let Some(why) = underlay_refusal(underlay_ip) {
            return Err(invalid("underlay IP", underlay_ip, why));
        }
        limits::underlay_mtu(underlay_mtu).map_err(|why| invalid("underlay MTU", underlay_mtu, why))?;
        if let Some(existing) = self.hosts.get(&name)
            && !claim.may_take(existing)
        {
            return Err(claimed(existing, now_ms, claim.timeout_ms));
        }
        if let Some(other) = self
            .hosts
            .values()
            .find(|h| h.underlay_ip == underlay_ip && h.name != name)
        {
            return Err(invalid(
                "underlay IP",
                underlay_ip,
                format!("already registered by host {:?}", other.name),
            ));
        }
        let host = match self.hosts.get(&name) {
            // Re-registration (agent restart, new address, or a replacement machine taking the
            // name over): keep the VTEP MAC and the leases.
            Some(existing) => Host {
                underlay_ip,
                underlay_iface,
                underlay_mtu,
                last_seen_ms: now_ms,
                claimant: claim.instance,
                ..existing.clone()
            },
            None => {
                let taken: BTreeSet<MacAddr> = self.hosts.values().map(|h| h.vtep_mac).collect();
                Host {
                    vtep_mac: ipam::vtep_mac(&name, &taken),
                    name: name.clone(),
                    underlay_ip,
                    underlay_iface,
                    underlay_mtu,
                    registered_ms: now_ms,
                    last_seen_ms: now_ms,
                    claimant: claim.instance,
                }
            }
        };
        for network in self.networks.values_mut().filter(|n| n.mode.uses_leases()) {
            if !network.leases.contains_key(&name)
                && let Some(lease) = free_lease(network)
            {
                network.leases.insert(name.clone(), lease);
            }
        }
        self.hosts.insert(name, host.clone());
        Ok(host)
    }

    pub(super) fn heartbeat(&mut self, name: &str, now_ms: i64, instance: &str) -> Result<(), StateError> {
        self.holder(name, instance, now_ms, 0)?;
        let host = self
            .hosts
            .get_mut(name)
            .ok_or_else(|| StateError::UnknownHost(name.to_string()))?;
        host.last_seen_ms = host.last_seen_ms.max(now_ms);
        Ok(())
    }

    /// The record of host `name` if the agent `instance` holds it: what every agent call but
    /// Register requires (a non-holder may only claim the name, by registering).
    /// `timeout_ms` only completes the refusal's message.
    pub fn holder(
        &self,
        name: &str,
        instance: &str,
        now_ms: i64,
        timeout_ms: i64,
    ) -> Result<&Host, StateError> {
        let host = self
            .hosts
            .get(name)
            .ok_or_else(|| StateError::UnknownHost(name.to_string()))?;
        if host.claimant.is_empty() || host.claimant == instance {
            Ok(host)
        } else {
            Err(claimed(host, now_ms, timeout_ms))
        }
    }

    pub(super) fn remove_host(&mut self, name: &str) -> Result<(u32, u32), StateError> {
        if self.hosts.remove(name).is_none() {
            return Err(StateError::UnknownHost(name.to_string()));
        }
        let ids: Vec<u64> = self
            .endpoints
            .values()
            .filter(|e| e.host == name)
            .map(|e| e.id)
            .collect();
        for id in &ids {
            self.forget_endpoint(*id);
        }
        let mut released = 0;
        for network in self.networks.values_mut() {
            released += network.leases.remove(name).is_some() as u32;
        }
        Ok((ids.len() as u32, released))
    }
}

/// Why `ip` cannot be a host's underlay address, or `None` if it can. Peers on other machines
/// send their tunnel (or routed) traffic to it knowing nothing but the address, so it must be
/// one unicast address that means the same from every host, and only one spelling of it
/// (an IPv4 host is registered by its IPv4 address, so two hosts never share one in two forms).
fn underlay_refusal(ip: IpAddr) -> Option<String> {
    const UNICAST: &str = "must be a unicast address";
    const LOOPBACK: &str = "must not be a loopback address: other hosts cannot reach it";
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() => {
            Some(UNICAST.into())
        }
        // IPv4 loopback stays accepted: entries already in the log may hold one, and every
        // replica must replay them as they were decided (a single-host nat setup can use it).
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) if v6.is_unspecified() || v6.is_multicast() => Some(UNICAST.into()),
        IpAddr::V6(v6) if v6.is_loopback() => Some(LOOPBACK.into()),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(
            "must not be link-local (fe80::/10): VXLAN to it needs an interface scope; register a global or unique-local address".into(),
        ),
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(|v4| format!("must not be IPv4-mapped: register the IPv4 address {v4} instead")),
    }
}

/// A registration's claim on a host name.
pub(super) struct Claim {
    pub(super) instance: String,
    pub(super) now_ms: i64,
    pub(super) timeout_ms: i64,
}

impl Claim {
    /// Whether this claim may (re)take `host`: it holds it already, nobody does, or the holder
    /// has been silent for the timeout. Decided from the command and the state alone.
    fn may_take(&self, host: &Host) -> bool {
        host.claimant.is_empty()
            || host.claimant == self.instance
            || (self.timeout_ms > 0 && self.now_ms - host.last_seen_ms >= self.timeout_ms)
    }
}

pub(super) fn claimed(host: &Host, now_ms: i64, timeout_ms: i64) -> StateError {
    StateError::HostClaimed {
        host: host.name.clone(),
        holder: overlay_proto::instance::short(&host.claimant).to_string(),
        underlay_ip: host.underlay_ip,
        silent_ms: (now_ms - host.last_seen_ms).max(0),
        timeout_ms,
    }
}
