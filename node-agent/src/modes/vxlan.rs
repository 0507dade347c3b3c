//! Mode `vxlan`: per-host subnets joined across hosts by a VXLAN device. The workloads sit on
//! a bridge; every peer host is reached through the tunnel (neighbour, FDB entry, route), or,
//! with direct routing, a peer on this host's underlay subnet by a plain route via its
//! underlay address (flannel's DirectRouting, Calico's CrossSubnet): no encapsulation where
//! none is needed, the tunnel for peers behind a router.

//!
//! The underlay may be IPv4 or IPv6 (VXLAN over IPv6 costs 20 bytes more, which the
//! controller's MTU accounts for); a tunnel joins two hosts of the same underlay family only,
//! so a peer of the other family is reported, never given entries that would lead nowhere.

use super::{Direct, Segment, Wants};
use crate::spec::NetworkSpec;

pub(super) fn wants<'a>(net: &'a NetworkSpec, segment: &Segment<'_>) -> Wants<'a> {
    let mut want = Wants {
        bridge: net.bridge.as_ref(),
        vxlan: net.vxlan.as_ref(),
        ..Wants::default()
    };
    let Some(vx) = &net.vxlan else { return want };
    for peer in &net.peers {
        if peer.underlay_ip.is_ipv6() != vx.local.is_ipv6() {
            want.unreachable.push(format!(
                "vxlan network {}: peer {} ({}) is on an {} underlay and this host ({}) on an {} one; no tunnel joins them (give every host an underlay address of one family)",
                net.name,
                peer.host,
                peer.underlay_ip,
                family(peer.underlay_ip),
                vx.local,
                family(vx.local),
            ));
            continue;
        }
        match segment.next_hop(peer.underlay_ip).filter(|_| net.direct_routing) {
            Some(via) => want.direct.push(Direct { peer, via }),
            None => want.tunnelled.push(peer),
        }
    }
    want
}

fn family(ip: std::net::IpAddr) -> &'static str {
    if ip.is_ipv6() { "IPv6" } else { "IPv4" }
}
