//! vxlan: per-host subnets joined across hosts by a VXLAN device (flannel-style). The only
//! mode with a VNI, and the one whose MTU pays the tunnel's overhead. With direct routing,
//! each agent routes the peers on its own underlay subnet without the tunnel.

use overlay_proto::v1 as pb;

use super::{ChooseVni, Facts, Rules, Settled, leased};
use crate::desired::{bridge_name, vxlan_name};
use crate::model::{Network, NetworkSpec};
use crate::state::StateError;

pub struct Vxlan;

impl Rules for Vxlan {
    fn settle(&self, spec: &NetworkSpec, choose_vni: ChooseVni) -> Result<Settled, StateError> {
        leased(spec, || choose_vni(spec.vni).map(Some), spec.nat_egress)
    }

    fn facts(&self) -> Facts {
        Facts::leases(None, None)
    }

    fn base(&self, n: &Network, base: &mut pb::NetworkState) {
        base.bridge_name = bridge_name(n.id);
        base.vxlan_name = vxlan_name(n.id);
        base.direct_routing = n.direct_routing;
    }
}
