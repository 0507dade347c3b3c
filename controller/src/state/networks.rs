//! Networks in the replicated state: creating, changing and deleting them, and the pools
//! (VNIs, host subnets, the macvlan range) they draw from.

use std::collections::{BTreeMap, BTreeSet};

use ipnetwork::{Ipv4Network, Ipv6Network};
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
        let v6 = self.check_cidr6(&spec)?;
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
        if let Some((_, hp6)) = v6
            && !ipam::pairs_fit(host_prefix, hp6)
        {
            return Err(invalid(
                "IPv6 host prefix",
                format!("/{hp6}"),
                format!(
                    "must be /{} or shorter: each host's IPv6 subnet pairs an address with every IPv4 one of its /{host_prefix}",
                    96 + u32::from(host_prefix)
                ),
            ));
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
            cidr6: v6.map(|(c, _)| c),
            host_prefix6: v6.map(|(_, hp)| hp).unwrap_or(0),
        };
        if network.mode.uses_leases() {
            // Every registered host gets its slice now, in name order, as far as the pool goes;
            // a host left without one gets a clear error when it first attaches an endpoint.
            let hosts: Vec<String> = self.hosts.keys().cloned().collect();
            for host in hosts {
                if let Some(lease) = free_lease(&network) {
                    network.leases.insert(host, lease);
                }
            }
        }
        self.addresses.insert(spec.name.clone(), BTreeMap::new());
        self.networks.insert(spec.name, network.clone());
        Ok(network)
    }

    /// The IPv6 CIDR of a dual-stack network and its host prefix, checked: a vxlan network
    /// without direct routing (the modes that route on the underlay are IPv4 in this release),
    /// a unicast global or unique-local range without host bits, not overlapping another
    /// network's, with a host prefix longer than it and no longer than /120.
    fn check_cidr6(&self, spec: &NetworkSpec) -> Result<Option<(Ipv6Network, u8)>, StateError> {
        let Some(cidr6) = spec.cidr6 else {
            if let Some(hp6) = spec.host_prefix6 {
                return Err(invalid(
                    "IPv6 host prefix",
                    format!("/{hp6}"),
                    "needs an IPv6 --subnet",
                ));
            }
            return Ok(None);
        };
        if spec.mode != crate::model::Mode::Vxlan || spec.direct_routing {
            return Err(invalid(
                "subnet",
                cidr6,
                "IPv6 subnets are supported on vxlan networks without --direct-routing only, so far",
            ));
        }
        if cidr6.network() != cidr6.ip() {
            return Err(invalid(
                "subnet",
                cidr6,
                format!(
                    "host bits are set; did you mean {}/{}?",
                    cidr6.network(),
                    cidr6.prefix()
                ),
            ));
        }
        // Global unicast or unique local, wholly (see `ipam::overlay_range6`).
        let first = cidr6.network().segments()[0];
        if !ipam::overlay_range6(cidr6) || cidr6.prefix() < 8 {
            let kind = match first {
                f if f & 0xffc0 == 0xfe80 => "link-local fe80::/10 is not; ",
                f if f & 0xff00 == 0xff00 => "multicast ff00::/8 is not; ",
                _ => "",
            };
            return Err(invalid(
                "subnet",
                cidr6,
                format!(
                    "must be a global unicast (2000::/3) or unique local (fc00::/7) range, /8 or longer ({kind}see RFC 4291)"
                ),
            ));
        }
        if let Some(other) = self
            .networks
            .values()
            .find(|n| n.cidr6.is_some_and(|c| c.overlaps(cidr6)))
        {
            return Err(StateError::Overlap {
                cidr: cidr6.to_string(),
                other: other.name.clone(),
                other_cidr: other.cidr6.map(|c| c.to_string()).unwrap_or_default(),
            });
        }
        let hp6 = spec.host_prefix6.unwrap_or(modes::DEFAULT_HOST_PREFIX6);
        if hp6 <= cidr6.prefix() || hp6 > 120 {
            return Err(invalid(
                "IPv6 host prefix",
                format!("/{hp6}"),
                format!(
                    "must be longer than the network prefix /{} and /120 or shorter",
                    cidr6.prefix()
                ),
            ));
        }
        Ok(Some((cidr6, hp6)))
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
        // As at creation: direct routes are IPv4 only, and would take peers off the tunnel
        // that carries their IPv6.
        if direct_routing == Some(true) && !network.direct_routing && network.cidr6.is_some() {
            return Err(invalid(
                "option",
                "--direct-routing",
                "a dual-stack network's IPv6 crosses the tunnel only, so its peers cannot be routed directly",
            ));
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

/// A new host's lease: the lowest free subnet of each of the network's families, or `None`
/// when either family is full (a host gets both or nothing: half a dual-stack network cannot
/// be wired).
pub(super) fn free_lease(network: &Network) -> Option<Lease> {
    let subnet: Ipv4Network = ipam::first_free_subnet(
        network.cidr,
        network.host_prefix,
        network.leases.values().map(|l| l.subnet),
    )?;
    let subnet6 = match network.cidr6 {
        None => None,
        Some(cidr6) => Some(ipam::first_free_subnet::<Ipv6Network>(
            cidr6,
            network.host_prefix6,
            network.leases.values().filter_map(|l| l.subnet6),
        )?),
    };
    Some(Lease {
        subnet,
        cursor: None,
        subnet6,
    })
}
