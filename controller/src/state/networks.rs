//! Networks in the replicated state: creating, changing and deleting them, and the pools
//! (VNIs, host subnets, the macvlan range) they draw from.

use std::collections::{BTreeMap, BTreeSet};

use ipnetwork::Ipv4Network;
use overlay_proto::limits;

use super::{ClusterState, MtuSetting, StateError, invalid, validate_name};
use crate::ipam;
use crate::model::{Lease, Network, NetworkSpec};
use crate::modes::{self, Pool, Settled};

impl ClusterState {
    pub(super) fn create_network(&mut self, spec: NetworkSpec, now_ms: i64) -> Result<Network, StateError> {
        validate_name("network name", &spec.name)?;
        if self.networks.contains_key(&spec.name) {
            return Err(StateError::DuplicateNetwork(spec.name));
        }
        let cidr = spec.cidr;
        if cidr.network() != cidr.ip() {
            return Err(invalid(
                "subnet",
                cidr,
                format!(
                    "host bits are set; did you mean {}/{}?",
                    cidr.network(),
                    cidr.prefix()
                ),
            ));
        }
        if cidr.prefix() < 8 || cidr.prefix() > 30 {
            return Err(invalid(
                "subnet",
                cidr,
                "prefix length must be between /8 and /30",
            ));
        }
        if let Some(other) = self.networks.values().find(|n| n.cidr.overlaps(cidr)) {
            return Err(StateError::Overlap {
                cidr: cidr.to_string(),
                other: other.name.clone(),
                other_cidr: other.cidr.to_string(),
            });
        }
        if let Some(mtu) = spec.mtu {
            limits::mtu(mtu).map_err(|why| invalid("MTU", mtu, why))?;
        }
        // Everything that depends on the mode is the mode's (see `crate::modes`).
        let Settled {
            host_prefix,
            vni,
            nat_egress,
            macvlan,
        } = modes::rules(spec.mode).settle(&spec, &|requested| self.choose_vni(requested))?;
        if spec.direct_routing
            && let Some(why) = modes::rules(spec.mode).facts().fixed_direct_routing
        {
            return Err(invalid("option", "--direct-routing", why));
        }
        self.next_network_id += 1;
        let mut network = Network {
            name: spec.name.clone(),
            id: self.next_network_id,
            mode: spec.mode,
            cidr,
            host_prefix,
            vni,
            mtu: spec.mtu,
            nat_egress,
            direct_routing: spec.direct_routing,
            macvlan,
            created_ms: now_ms,
            leases: BTreeMap::new(),
            cursor: None,
        };
        if network.mode.uses_leases() {
            // Every registered host gets its slice now, in name order, as far as the pool goes;
            // a host left without one gets a clear error when it first attaches an endpoint.
            let hosts: Vec<String> = self.hosts.keys().cloned().collect();
            for host in hosts {
                if let Some(subnet) = free_subnet(&network) {
                    network.leases.insert(host, Lease { subnet, cursor: None });
                }
            }
        }
        self.addresses.insert(spec.name.clone(), BTreeMap::new());
        self.networks.insert(spec.name, network.clone());
        Ok(network)
    }

    fn choose_vni(&self, requested: Option<u32>) -> Result<u32, StateError> {
        let used: BTreeSet<u32> = self.networks.values().filter_map(|n| n.vni).collect();
        match requested {
            Some(v) if v == 0 || v > ipam::VNI_MAX => Err(invalid(
                "VNI",
                v,
                format!("must be between 1 and {}", ipam::VNI_MAX),
            )),
            Some(v) => match self.networks.values().find(|n| n.vni == Some(v)) {
                Some(n) => Err(StateError::VniInUse {
                    vni: v,
                    network: n.name.clone(),
                }),
                None => Ok(v),
            },
            None => ipam::first_free_vni(&used).ok_or(StateError::VniExhausted),
        }
    }

    pub(super) fn update_network(
        &mut self,
        name: &str,
        nat_egress: Option<bool>,
        mtu: Option<MtuSetting>,
        direct_routing: Option<bool>,
    ) -> Result<Network, StateError> {
        let network = self
            .networks
            .get(name)
            .ok_or_else(|| StateError::UnknownNetwork(name.to_string()))?;
        // Some modes' egress is theirs, not the network's to choose.
        let facts = modes::rules(network.mode).facts();
        if let (Some(nat), Some(why)) = (nat_egress, facts.fixed_egress)
            && nat != network.nat_egress
        {
            return Err(invalid("option", "--nat-egress", why));
        }
        if let (Some(direct), Some(why)) = (direct_routing, facts.fixed_direct_routing)
            && direct != network.direct_routing
        {
            return Err(invalid("option", "--direct-routing", why));
        }
        if let Some(MtuSetting::Fixed(m)) = mtu {
            limits::mtu(m).map_err(|why| invalid("MTU", m, why))?;
        }
        let network = self.networks.get_mut(name).expect("checked above");
        if let Some(nat) = nat_egress {
            network.nat_egress = nat;
        }
        if let Some(direct) = direct_routing {
            network.direct_routing = direct;
        }
        match mtu {
            Some(MtuSetting::Auto) => network.mtu = None,
            Some(MtuSetting::Fixed(m)) => network.mtu = Some(m),
            None => {}
        }
        Ok(network.clone())
    }

    pub(super) fn delete_network(&mut self, name: &str, force: bool) -> Result<u32, StateError> {
        if !self.networks.contains_key(name) {
            return Err(StateError::UnknownNetwork(name.to_string()));
        }
        let ids: Vec<u64> = self.network_endpoints(name).map(|e| e.id).collect();
        if !ids.is_empty() && !force {
            return Err(StateError::NetworkHasEndpoints {
                name: name.to_string(),
                count: ids.len() as u32,
            });
        }
        for id in &ids {
            self.forget_endpoint(*id);
        }
        self.networks.remove(name);
        self.addresses.remove(name);
        Ok(ids.len() as u32)
    }

    /// How many host subnets (vxlan/nat) or addresses (macvlan) a network can hold.
    pub fn capacity(network: &Network) -> u64 {
        match (modes::rules(network.mode).facts().pool, &network.macvlan) {
            (Pool::SharedRange, Some(m)) => {
                let (first, last) = modes::shared_range(network.cidr, m.ip_range);
                let gateway_inside = (first..=last).contains(&m.gateway) as u64;
                ipam::range_len(first, last).saturating_sub(gateway_inside)
            }
            (Pool::SharedRange, None) | (Pool::HostLeases, _) => {
                ipam::subnet_count(network.cidr, network.host_prefix)
            }
        }
    }
}

pub(super) fn free_subnet(network: &Network) -> Option<Ipv4Network> {
    ipam::first_free_subnet(
        network.cidr,
        network.host_prefix,
        network.leases.values().map(|l| l.subnet),
    )
}
