//! Networks in the replicated state: creating, changing and deleting them, and the pools
//! (VNIs, host subnets, the macvlan range) they draw from.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use overlay_proto::limits;

use super::{ClusterState, MtuSetting, StateError, invalid, validate_ifname, validate_name};
use crate::ipam;
use crate::model::{Lease, Mode, Network, NetworkSpec};

/// Default host prefix for vxlan/nat networks (flannel's SubnetLen).
pub const DEFAULT_HOST_PREFIX: u8 = 24;

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
        let host_prefix = match spec.mode {
            Mode::Vxlan | Mode::Route | Mode::Nat => {
                let hp = spec.host_prefix.unwrap_or(DEFAULT_HOST_PREFIX);
                if hp <= cidr.prefix() {
                    return Err(invalid(
                        "host prefix",
                        format!("/{hp}"),
                        format!("must be longer than the network prefix /{}", cidr.prefix()),
                    ));
                }
                if hp > 30 {
                    return Err(invalid(
                        "host prefix",
                        format!("/{hp}"),
                        "must be /30 or shorter (room for a gateway and an endpoint)",
                    ));
                }
                hp
            }
            Mode::Macvlan => {
                if spec.host_prefix.is_some() {
                    return Err(invalid(
                        "host prefix",
                        "set",
                        "macvlan networks have no per-host subnets",
                    ));
                }
                cidr.prefix()
            }
        };
        let vni = match spec.mode {
            Mode::Vxlan => Some(self.choose_vni(spec.vni)?),
            Mode::Route | Mode::Macvlan | Mode::Nat => {
                if spec.vni.is_some() {
                    return Err(invalid(
                        "VNI",
                        spec.vni.unwrap_or_default(),
                        format!("{} networks have no VNI", spec.mode),
                    ));
                }
                None
            }
        };
        let nat_egress = match spec.mode {
            Mode::Nat => true,
            Mode::Vxlan | Mode::Route => spec.nat_egress,
            Mode::Macvlan if spec.nat_egress => {
                return Err(invalid(
                    "option",
                    "--nat-egress",
                    "macvlan workloads egress through the LAN gateway",
                ));
            }
            Mode::Macvlan => false,
        };
        let macvlan = match (spec.mode, spec.macvlan) {
            (Mode::Macvlan, Some(m)) => {
                validate_ifname("macvlan parent", &m.parent)?;
                if !cidr.contains(m.gateway) || m.gateway == cidr.network() || m.gateway == cidr.broadcast() {
                    return Err(invalid(
                        "gateway",
                        m.gateway,
                        format!("must be a host address of {cidr}"),
                    ));
                }
                if !(cidr.contains(m.ip_range.network()) && m.ip_range.prefix() >= cidr.prefix()) {
                    return Err(invalid("ip range", m.ip_range, format!("must lie inside {cidr}")));
                }
                if m.ip_range.network() != m.ip_range.ip() {
                    return Err(invalid("ip range", m.ip_range, "host bits are set"));
                }
                Some(m)
            }
            (Mode::Macvlan, None) => {
                return Err(invalid(
                    "option",
                    "--parent",
                    "macvlan networks need a parent interface and a gateway",
                ));
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "option",
                    "--parent",
                    format!("only macvlan networks take macvlan options, not {}", spec.mode),
                ));
            }
            (_, None) => None,
        };

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
    ) -> Result<Network, StateError> {
        let network = self
            .networks
            .get(name)
            .ok_or_else(|| StateError::UnknownNetwork(name.to_string()))?;
        // Only vxlan and route networks choose; the others' egress is their mode's.
        let fixed_egress = match network.mode {
            Mode::Vxlan | Mode::Route => None,
            Mode::Nat => Some("nat networks always masquerade"),
            Mode::Macvlan => Some("macvlan workloads egress through the LAN gateway"),
        };
        if let (Some(nat), Some(why)) = (nat_egress, fixed_egress)
            && nat != network.nat_egress
        {
            return Err(invalid("option", "--nat-egress", why));
        }
        if let Some(MtuSetting::Fixed(m)) = mtu {
            limits::mtu(m).map_err(|why| invalid("MTU", m, why))?;
        }
        let network = self.networks.get_mut(name).expect("checked above");
        if let Some(nat) = nat_egress {
            network.nat_egress = nat;
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
        match (&network.mode, &network.macvlan) {
            (Mode::Macvlan, Some(m)) => {
                let (first, last) = macvlan_range(network.cidr, m.ip_range);
                let gateway_inside = (first..=last).contains(&m.gateway) as u64;
                ipam::range_len(first, last).saturating_sub(gateway_inside)
            }
            _ => ipam::subnet_count(network.cidr, network.host_prefix),
        }
    }
}

/// The macvlan allocation range clipped to the subnet's host addresses.
pub(super) fn macvlan_range(cidr: Ipv4Network, ip_range: Ipv4Network) -> (Ipv4Addr, Ipv4Addr) {
    let first = u32::from(ip_range.network()).max(u32::from(cidr.network()) + 1);
    let last = u32::from(ip_range.broadcast()).min(u32::from(cidr.broadcast()) - 1);
    (Ipv4Addr::from(first), Ipv4Addr::from(last))
}

pub(super) fn free_subnet(network: &Network) -> Option<Ipv4Network> {
    ipam::first_free_subnet(
        network.cidr,
        network.host_prefix,
        network.leases.values().map(|l| l.subnet),
    )
}
