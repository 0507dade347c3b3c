//! Mode `vxlan`: per-host subnets joined across hosts by a VXLAN device. The workloads sit on
//! a bridge; every peer host is reached through the tunnel (neighbour, FDB entry, route).

use super::Wants;
use crate::spec::NetworkSpec;

pub(super) fn wants(net: &NetworkSpec) -> Wants<'_> {
    Wants {
        bridge: net.bridge.as_ref(),
        vxlan: net.vxlan.as_ref(),
        tunnelled: net.peers.iter().collect(),
        ..Wants::default()
    }
}
