//! Mode `route` (host-gw): hosts on one L2 segment, no tunnel. Each peer's subnet is routed via
//! the peer's underlay address; a peer behind a router cannot be reached this way and is
//! reported rather than given a route that would send its traffic to the default gateway.

//! Next hops are IPv4 underlay addresses: a peer on an IPv6 underlay is reported too.

use super::{Direct, Segment, Wants};
use crate::spec::NetworkSpec;

pub(super) fn wants<'a>(net: &'a NetworkSpec, segment: &Segment<'_>) -> Wants<'a> {
    let mut want = Wants {
        bridge: net.bridge.as_ref(),
        ..Wants::default()
    };
    for peer in &net.peers {
        match segment.next_hop(peer.underlay_ip) {
            Some(via) => want.direct.push(Direct { peer, via }),
            None if peer.underlay_ip.is_ipv6() => want.unreachable.push(format!(
                "route network {}: peer {} ({}) has an IPv6 underlay address; route mode routes via IPv4 underlay addresses only (use --mode vxlan)",
                net.name, peer.host, peer.underlay_ip
            )),
            None => want.unreachable.push(format!(
                "route network {}: peer {} ({}) is not on this host's underlay segment; its workloads are unreachable without a tunnel (use --mode vxlan)",
                net.name, peer.host, peer.underlay_ip
            )),
        }
    }
    want
}
