//! macvlan: workloads sit on the underlay LAN through a parent NIC. The whole subnet is the
//! LAN's, shared by every host: no per-host subnets, no VNI, the LAN's gateway for egress,
//! and one range the controller hands out addresses from.

use overlay_proto::v1 as pb;

use super::{ChooseVni, Facts, Pool, Rules, Settled, macvlan_options, no_vni};
use crate::model::{Network, NetworkSpec};
use crate::state::{StateError, invalid};

pub struct Macvlan;

/// Why a macvlan network's egress is not the controller's to choose.
const LAN_EGRESS: &str = "macvlan workloads egress through the LAN gateway";

impl Rules for Macvlan {
    fn settle(&self, spec: &NetworkSpec, _: ChooseVni) -> Result<Settled, StateError> {
        if spec.host_prefix.is_some() {
            return Err(invalid(
                "host prefix",
                "set",
                "macvlan networks have no per-host subnets",
            ));
        }
        let vni = no_vni(spec)?;
        if spec.nat_egress {
            return Err(invalid("option", "--nat-egress", LAN_EGRESS));
        }
        Ok(Settled {
            host_prefix: spec.cidr.prefix(),
            vni,
            nat_egress: false,
            macvlan: Some(macvlan_options(spec)?),
        })
    }

    fn facts(&self) -> Facts {
        Facts {
            pool: Pool::SharedRange,
            fixed_egress: Some(LAN_EGRESS),
            fixed_direct_routing: Some("macvlan workloads are on the LAN: there are no peers to route"),
        }
    }

    fn base(&self, n: &Network, base: &mut pb::NetworkState) {
        base.macvlan = n.macvlan.as_ref().map(|m| pb::MacvlanOptions {
            parent: m.parent.clone(),
            gateway: m.gateway.to_string(),
            ip_range: m.ip_range.to_string(),
            mode: m.mode.label().to_string(),
        });
    }
}
