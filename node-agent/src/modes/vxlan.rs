//! Mode `vxlan`: per-host subnets joined across hosts by a VXLAN device. The workloads sit on
//! a bridge; every peer host is reached through the tunnel (neighbour, FDB entry, route), or,
//! with direct routing, a peer on this host's underlay subnet by a plain route via its
//! underlay address (flannel's DirectRouting, Calico's CrossSubnet): no encapsulation where
//! none is needed, the tunnel for peers behind a router.

use super::{Segment, Wants};
use crate::spec::NetworkSpec;

pub(super) fn wants<'a>(net: &'a NetworkSpec, segment: &Segment<'_>) -> Wants<'a> {
    let (direct, tunnelled) = net
        .peers
        .iter()
        .partition(|p| net.direct_routing && segment.holds(p.underlay_ip));
    Wants {
        bridge: net.bridge.as_ref(),
        vxlan: net.vxlan.as_ref(),
        tunnelled,
        direct,
        ..Wants::default()
    }
}
