//! Mode `nat`: a host-local bridge whose workloads reach the world masqueraded (the firewall's
//! part). Nothing crosses to other hosts, so there are no peers.

use super::Wants;
use crate::spec::NetworkSpec;

pub(super) fn wants(net: &NetworkSpec) -> Wants<'_> {
    Wants {
        bridge: net.bridge.as_ref(),
        ..Wants::default()
    }
}
