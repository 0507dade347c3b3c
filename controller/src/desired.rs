//! Desired state per host: everything one agent must program, computed from the cluster state.
//!
//! Pure: the Watch stream calls it on every revision and sends the result only when it differs
//! from what that agent last received. The agent never sees other hosts' endpoints, only the
//! peers it needs tunnel entries for.

use overlay_proto::v1 as pb;

use crate::ipam;
use crate::model::{Host, Mode, Network};
use crate::state::ClusterState;

/// VXLAN over an IPv4 underlay costs 50 bytes: outer IPv4 (20) + UDP (8) + VXLAN (8) +
/// inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

pub fn bridge_name(network_id: u32) -> String {
    format!("{}{network_id}", overlay_proto::names::BRIDGE_PREFIX)
}

pub fn vxlan_name(network_id: u32) -> String {
    format!("{}{network_id}", overlay_proto::names::VXLAN_PREFIX)
}

/// Host side of an endpoint's veth (or the macvlan before it moves): unique per endpoint.
pub fn host_ifname(endpoint_id: u64) -> String {
    format!("{}{endpoint_id:x}", overlay_proto::names::ENDPOINT_PREFIX)
}

/// MTU of a network's workload interfaces on every host. Explicit if set; otherwise the smallest
/// that fits every host holding a lease, so a host with a smaller underlay does not become a
/// black hole for full-size packets from the others.
pub fn network_mtu(state: &ClusterState, network: &Network, host: &Host) -> u32 {
    if let Some(mtu) = network.mtu {
        return mtu;
    }
    match network.mode {
        Mode::Vxlan => network
            .leases
            .keys()
            .filter_map(|h| state.hosts.get(h))
            .map(|h| h.underlay_mtu)
            .chain(std::iter::once(host.underlay_mtu))
            .min()
            .unwrap_or(host.underlay_mtu)
            .saturating_sub(VXLAN_OVERHEAD),
        Mode::Nat => host.underlay_mtu,
        // Inherit the parent's MTU.
        Mode::Macvlan => 0,
    }
}

/// The desired state of `host_name`, or `None` if no such host is registered.
pub fn for_host(state: &ClusterState, host_name: &str) -> Option<pb::HostDesiredState> {
    let host = state.hosts.get(host_name)?;
    let mut networks = Vec::new();
    for network in state.networks.values() {
        if let Some(ns) = network_state(state, network, host) {
            networks.push(ns);
        }
    }
    Some(pb::HostDesiredState {
        revision: state.revision,
        host_name: host.name.clone(),
        underlay_ip: host.underlay_ip.to_string(),
        vtep_mac: host.vtep_mac.to_string(),
        networks,
    })
}

fn network_state(state: &ClusterState, network: &Network, host: &Host) -> Option<pb::NetworkState> {
    let (subnet, gateway) = match network.mode {
        Mode::Vxlan | Mode::Nat => {
            // No lease (pool exhausted when the host joined): nothing to program here.
            let lease = network.leases.get(&host.name)?;
            (
                lease.subnet.to_string(),
                ipam::subnet_gateway(lease.subnet).to_string(),
            )
        }
        Mode::Macvlan => {
            let gw = network
                .macvlan
                .as_ref()
                .map(|m| m.gateway.to_string())
                .unwrap_or_default();
            (network.cidr.to_string(), gw)
        }
    };
    let peers = if network.mode == Mode::Vxlan {
        network
            .leases
            .iter()
            .filter(|(name, _)| *name != &host.name)
            .filter_map(|(name, lease)| {
                let peer = state.hosts.get(name)?;
                Some(pb::Peer {
                    host: name.clone(),
                    underlay_ip: peer.underlay_ip.to_string(),
                    vtep_mac: peer.vtep_mac.to_string(),
                    subnet: lease.subnet.to_string(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let endpoints = state
        .network_endpoints(&network.name)
        .filter(|e| e.host == host.name)
        .map(|e| pb::LocalEndpoint {
            id: e.id,
            netns: e.netns.clone(),
            ifname: e.ifname.clone(),
            address: format!("{}/{}", e.ip, e.prefix_len),
            mac: e.mac.to_string(),
            gateway: e.gateway.to_string(),
            host_ifname: host_ifname(e.id),
        })
        .collect();
    let mode = match network.mode {
        Mode::Vxlan => pb::NetworkMode::Vxlan,
        Mode::Macvlan => pb::NetworkMode::Macvlan,
        Mode::Nat => pb::NetworkMode::Nat,
    };
    Some(pb::NetworkState {
        name: network.name.clone(),
        id: network.id,
        mode: mode as i32,
        cidr: network.cidr.to_string(),
        subnet,
        gateway,
        vni: network.vni.unwrap_or(0),
        mtu: network_mtu(state, network, host),
        nat_egress: network.nat_egress,
        bridge_name: if network.mode == Mode::Macvlan {
            String::new()
        } else {
            bridge_name(network.id)
        },
        vxlan_name: if network.mode == Mode::Vxlan {
            vxlan_name(network.id)
        } else {
            String::new()
        },
        macvlan: network.macvlan.as_ref().map(|m| pb::MacvlanOptions {
            parent: m.parent.clone(),
            gateway: m.gateway.to_string(),
            ip_range: m.ip_range.to_string(),
            mode: m.mode.label().to_string(),
        }),
        peers,
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NetworkSpec;
    use crate::state::Command;

    fn setup() -> ClusterState {
        let mut s = ClusterState::default();
        for (i, mtu) in [(1, 1500), (2, 1500), (3, 1450)] {
            s.apply(Command::RegisterHost {
                name: format!("h{i}"),
                underlay_ip: format!("192.0.2.2{i}").parse().unwrap(),
                underlay_iface: "eth0".into(),
                underlay_mtu: mtu,
                now_ms: 0,
            });
        }
        s.apply(Command::CreateNetwork {
            spec: NetworkSpec {
                name: "blue".into(),
                mode: Mode::Vxlan,
                cidr: "10.1.0.0/16".parse().unwrap(),
                host_prefix: None,
                vni: Some(42),
                mtu: None,
                nat_egress: false,
                macvlan: None,
            },
            now_ms: 0,
        });
        for (h, ns) in [("h1", "a"), ("h2", "b"), ("h1", "c")] {
            s.apply(Command::AttachEndpoint {
                network: "blue".into(),
                host: h.into(),
                netns: ns.into(),
                ifname: "eth0".into(),
                ip: None,
                now_ms: 0,
            })
            .result
            .unwrap();
        }
        s
    }

    #[test]
    fn host_sees_its_endpoints_and_every_other_peer() {
        let s = setup();
        let d = for_host(&s, "h1").unwrap();
        assert_eq!(d.revision, s.revision);
        assert_eq!(d.networks.len(), 1);
        let n = &d.networks[0];
        assert_eq!(
            (n.vni, n.subnet.as_str(), n.gateway.as_str()),
            (42, "10.1.0.0/24", "10.1.0.1")
        );
        assert_eq!(n.vxlan_name, "ovx-1");
        assert_eq!(n.bridge_name, "ovb-1");
        let peers: Vec<_> = n
            .peers
            .iter()
            .map(|p| (p.host.as_str(), p.subnet.as_str()))
            .collect();
        assert_eq!(peers, [("h2", "10.1.1.0/24"), ("h3", "10.1.2.0/24")]);
        let eps: Vec<_> = n
            .endpoints
            .iter()
            .map(|e| (e.netns.as_str(), e.address.as_str()))
            .collect();
        assert_eq!(eps, [("a", "10.1.0.2/24"), ("c", "10.1.0.3/24")]);
        // The smallest underlay (h3: 1450) sets the MTU for everyone.
        assert_eq!(n.mtu, 1400);
        assert!(for_host(&s, "nope").is_none());
    }

    #[test]
    fn removed_host_disappears_from_peers() {
        let mut s = setup();
        s.apply(Command::RemoveHost { name: "h2".into() }).result.unwrap();
        let d = for_host(&s, "h1").unwrap();
        let peers: Vec<_> = d.networks[0].peers.iter().map(|p| p.host.as_str()).collect();
        assert_eq!(peers, ["h3"]);
    }
}
