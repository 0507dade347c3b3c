//! Mode `macvlan`: workloads on the underlay LAN, each a macvlan of the parent NIC inside its
//! namespace. The host holds no device of the network's except an 802.1Q parent, when the
//! network names one (`eth0.42`), which the agent creates and owns.

use super::Wants;
use crate::spec::NetworkSpec;

pub(super) fn wants(net: &NetworkSpec) -> Wants<'_> {
    let vlan = net.macvlan.as_ref().and_then(|parent| {
        parent
            .vlan
            .as_ref()
            .map(|(base, vid)| (parent.name.as_str(), base.as_str(), *vid))
    });
    Wants {
        vlan,
        ..Wants::default()
    }
}
