//! route: per-host subnets routed host to host through the peers' underlay addresses
//! (host-gw): a bridge on each host, no tunnel and no VNI.

use overlay_proto::v1 as pb;

use super::{ChooseVni, Facts, Rules, Settled, leased, no_vni};
use crate::desired::bridge_name;
use crate::model::{Network, NetworkSpec};
use crate::state::StateError;

pub struct Route;

impl Rules for Route {
    fn settle(&self, spec: &NetworkSpec, _: ChooseVni) -> Result<Settled, StateError> {
        leased(spec, || no_vni(spec), spec.nat_egress)
    }

    fn facts(&self) -> Facts {
        Facts::leases(
            None,
            Some("route networks always route their peers directly: there is no tunnel"),
        )
    }

    fn base(&self, n: &Network, base: &mut pb::NetworkState) {
        base.bridge_name = bridge_name(n.id);
    }
}
