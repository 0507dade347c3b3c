//! nat: a host-local bridge per host, masquerading its egress; no path between hosts, so
//! no peers and no VNI. Its subnet is still split into per-host leases, so the same
//! workload address never appears on two hosts.

use overlay_proto::v1 as pb;

use super::{ChooseVni, Facts, Rules, Settled, leased, no_vni};
use crate::desired::bridge_name;
use crate::model::{Network, NetworkSpec};
use crate::state::StateError;

pub struct Nat;

impl Rules for Nat {
    fn settle(&self, spec: &NetworkSpec, _: ChooseVni) -> Result<Settled, StateError> {
        leased(spec, || no_vni(spec), true)
    }

    fn facts(&self) -> Facts {
        Facts::leases(
            Some("nat networks always masquerade"),
            Some("nat networks are host-local: there are no peers to route"),
        )
    }

    fn base(&self, n: &Network, base: &mut pb::NetworkState) {
        base.bridge_name = bridge_name(n.id);
    }
}
