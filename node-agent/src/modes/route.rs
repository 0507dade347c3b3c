//! Mode `route` (host-gw): hosts on one L2 segment, no tunnel. Each peer's subnet is routed via
//! the peer's underlay address; a peer behind a router cannot be reached this way and is
//! reported rather than given a route that would send its traffic to the default gateway.

use super::{Segment, Wants};
use crate::spec::NetworkSpec;

pub(super) fn wants<'a>(net: &'a NetworkSpec, segment: &Segment<'_>) -> Wants<'a> {
    let (direct, off_segment): (Vec<_>, Vec<_>) =
        net.peers.iter().partition(|p| segment.holds(p.underlay_ip));
    Wants {
        bridge: net.bridge.as_ref(),
        direct,
        unreachable: off_segment
            .into_iter()
            .map(|p| {
                format!(
                    "route network {}: peer {} ({}) is not on this host's underlay segment; its workloads are unreachable without a tunnel (use --mode vxlan)",
                    net.name, p.host, p.underlay_ip
                )
            })
            .collect(),
        ..Wants::default()
    }
}
