//! What each network mode means to the controller, one file per mode: how a
//! [`NetworkSpec`] is checked and settled into a [`Network`], which pool its addresses come
//! from, and its part of each host's desired state. The proto crate's [`Mode`] says what a
//! mode does (its capability methods); this module is where the controller acts on it, so
//! the state machine and the Watch model never branch on a mode themselves.
//!
//! A new mode is a new file here holding a [`Rules`] implementation, and one arm in [`rules`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use overlay_proto::v1 as pb;

use crate::ipam;
use crate::model::{Host, MacvlanSpec, Mode, Network, NetworkSpec};
use crate::state::{ClusterState, StateError, invalid, validate_ifname};

mod macvlan;
mod nat;
mod route;
mod vxlan;

/// The rules of `mode`: the one place that dispatches on it.
pub fn rules(mode: Mode) -> &'static dyn Rules {
    match mode {
        Mode::Vxlan => &vxlan::Vxlan,
        Mode::Route => &route::Route,
        Mode::Macvlan => &macvlan::Macvlan,
        Mode::Nat => &nat::Nat,
    }
}

/// Default host prefix of the modes with per-host subnets (flannel's SubnetLen).
pub const DEFAULT_HOST_PREFIX: u8 = 24;

/// Default IPv6 host prefix of a dual-stack network: one /64 per host, as SLAAC-sized
/// subnets are everywhere else (flannel's IPv6SubnetLen).
pub const DEFAULT_HOST_PREFIX6: u8 = 64;

/// Picks a VNI: the requested one if free, else the first free one (the state's VNI pool).
pub type ChooseVni<'a> = &'a dyn Fn(Option<u32>) -> Result<u32, StateError>;

/// One mode's rules.
pub trait Rules: Sync {
    /// The mode-specific fields of a network created from `spec` (whose name, subnet and MTU
    /// are already checked), or why `spec` does not fit the mode. Checks run in the order
    /// host prefix, VNI, NAT egress, macvlan options, so the first error is always the same.
    fn settle(&self, spec: &NetworkSpec, choose_vni: ChooseVni) -> Result<Settled, StateError>;

    /// What the mode declares of its networks.
    fn facts(&self) -> Facts;

    /// The mode's devices and options in the part of the desired state every host shares.
    fn base(&self, n: &Network, base: &mut pb::NetworkState);
}

/// What [`Rules::settle`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub host_prefix: u8,
    pub vni: Option<u32>,
    pub nat_egress: bool,
    pub macvlan: Option<MacvlanSpec>,
}

/// What a mode declares rather than computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Where the network's endpoint addresses come from.
    pub pool: Pool,
    /// Why the network's NAT egress cannot be changed, or `None` when the network chooses.
    pub fixed_egress: Option<&'static str>,
    /// Why the network takes no `--direct-routing`, or `None` when it chooses.
    pub fixed_direct_routing: Option<&'static str>,
}

impl Facts {
    /// A mode with per-host subnets, whose egress is `fixed_egress` and direct routing
    /// `fixed_direct_routing` (`None`: chosen).
    const fn leases(fixed_egress: Option<&'static str>, fixed_direct_routing: Option<&'static str>) -> Facts {
        Facts {
            pool: Pool::HostLeases,
            fixed_egress,
            fixed_direct_routing,
        }
    }
}

/// Where a network's endpoint addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Per-host subnets (leases): each host's agent hands out the addresses of its own, and
    /// the state machine checks what it reports against it.
    HostLeases,
    /// One range shared by every host (macvlan's `--ip-range`): the state machine hands out
    /// each address, so no two hosts ever get the same.
    SharedRange,
}

impl Pool {
    /// Every host's place in `n`, by host name: the hosts holding a lease, or every host for
    /// a shared range (each has the parent NIC on the same LAN).
    pub fn members(self, state: &ClusterState, n: &Network) -> BTreeMap<String, Member> {
        match self {
            Pool::HostLeases => lease_members(state, n),
            Pool::SharedRange => lan_members(state, n),
        }
    }
}

/// One host's place in one network, as its agent programs it.
#[derive(Debug, PartialEq, Eq)]
pub struct Member {
    pub subnet: String,
    pub gateway: String,
    /// Dual stack: the IPv6 subnet and gateway ("" = IPv4 only).
    pub subnet6: String,
    pub gateway6: String,
    pub mtu: u32,
    /// What the other hosts program for this one (modes that cross hosts only).
    pub peer: Option<pb::Peer>,
}

// ---------------------------------------------------------------- settling, shared by modes

/// Per-host subnets: the host prefix asked for (or the default), longer than the network's.
fn host_subnets(spec: &NetworkSpec) -> Result<u8, StateError> {
    let cidr = spec.cidr;
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
    Ok(hp)
}

/// A mode without a VNI refuses one.
fn no_vni(spec: &NetworkSpec) -> Result<Option<u32>, StateError> {
    match spec.vni {
        Some(vni) => Err(invalid("VNI", vni, format!("{} networks have no VNI", spec.mode))),
        None => Ok(None),
    }
}

/// A mode other than macvlan refuses macvlan options.
fn no_macvlan(spec: &NetworkSpec) -> Result<Option<MacvlanSpec>, StateError> {
    match spec.macvlan {
        Some(_) => Err(invalid(
            "option",
            "--parent",
            format!("only macvlan networks take macvlan options, not {}", spec.mode),
        )),
        None => Ok(None),
    }
}

/// The settling of a mode with per-host subnets and no macvlan options: `vni` and
/// `nat_egress` are the mode's own decisions.
fn leased(
    spec: &NetworkSpec,
    vni: impl FnOnce() -> Result<Option<u32>, StateError>,
    nat_egress: bool,
) -> Result<Settled, StateError> {
    let host_prefix = host_subnets(spec)?;
    let vni = vni()?;
    Ok(Settled {
        host_prefix,
        vni,
        nat_egress,
        macvlan: no_macvlan(spec)?,
    })
}

/// Macvlan options: a valid parent, a gateway and a range inside the subnet.
fn macvlan_options(spec: &NetworkSpec) -> Result<MacvlanSpec, StateError> {
    let cidr = spec.cidr;
    let Some(m) = &spec.macvlan else {
        return Err(invalid(
            "option",
            "--parent",
            "macvlan networks need a parent interface and a gateway",
        ));
    };
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
    Ok(m.clone())
}

// ---------------------------------------------------------------- per-host view, shared

/// The largest workload MTU `h`'s own underlay carries in `n`: its underlay MTU minus what
/// the mode costs over that underlay's family (vxlan: 50 bytes over IPv4, 70 over IPv6).
fn member_mtu(n: &Network, h: &Host) -> u32 {
    h.underlay_mtu
        .saturating_sub(n.mode.overhead(h.underlay_ip.is_ipv6()))
}

/// The smallest [`member_mtu`] of the hosts holding a lease in `n`. A vxlan network's MTU fits
/// every member's underlay, so a host with a smaller one is no black hole. Each member pays
/// its own family's overhead: the smallest underlay minus one overhead would give a 1500-byte
/// IPv6 member 1450 when only 1430 fits, next to a 1480-byte IPv4 one.
fn smallest_member_mtu(state: &ClusterState, n: &Network) -> Option<u32> {
    n.leases
        .keys()
        .filter_map(|h| state.hosts.get(h))
        .map(|h| member_mtu(n, h))
        .min()
}

/// The MTU of `n`'s devices on a host whose own [`member_mtu`] is `own`: the fixed one, else
/// derived (vxlan: the smallest of every member's; nat: the host's own, its underlay's;
/// macvlan: 0, the parent's).
fn device_mtu(n: &Network, smallest_member: Option<u32>, own: u32) -> u32 {
    if n.mode.on_the_lan() {
        return n.mtu.unwrap_or(0);
    }
    // Traffic between hosts must fit every member's underlay; the rest only this host's.
    let derived = if n.mode.crosses_hosts() {
        smallest_member.unwrap_or(own)
    } else {
        own
    };
    n.mtu.unwrap_or(derived)
}

/// The MTU `network ls` shows: what the devices get, the same derivation as the desired
/// state (for a nat network whose members differ, the smallest). `None` while no host holds
/// a lease, and for a macvlan network that inherits its parent's.
pub fn effective_mtu(state: &ClusterState, n: &Network) -> Option<u32> {
    if n.mtu.is_some() || n.mode.on_the_lan() {
        return n.mtu;
    }
    let smallest = smallest_member_mtu(state, n)?;
    Some(device_mtu(n, Some(smallest), smallest))
}

/// The members of a network with per-host subnets: each host holding a lease, with its
/// subnet's gateway; a peer of the others when the mode crosses hosts.
///
/// Every member is a peer of every other, whatever the underlay families: the controller
/// does not decide reachability. Each agent does, per family and segment: a vxlan tunnel or
/// a route (route mode, `--direct-routing`) needs a peer underlay address of its own
/// underlay's family, and an IPv4 overlay route via an IPv6 next hop is not something this
/// project programs; the agent reports such peers as unreachable instead.
fn lease_members(state: &ClusterState, n: &Network) -> BTreeMap<String, Member> {
    let smallest_member = smallest_member_mtu(state, n);
    let mut members = BTreeMap::new();
    for (host, lease) in &n.leases {
        let Some(h) = state.hosts.get(host) else { continue };
        let subnet = lease.subnet.to_string();
        let subnet6 = lease.subnet6.map(|s| s.to_string()).unwrap_or_default();
        let peer = n.mode.crosses_hosts().then(|| pb::Peer {
            host: host.clone(),
            underlay_ip: h.underlay_ip.to_string(),
            vtep_mac: h.vtep_mac.to_string(),
            subnet: subnet.clone(),
            subnet6: subnet6.clone(),
        });
        let member = Member {
            gateway: ipam::subnet_gateway(lease.subnet).to_string(),
            subnet,
            gateway6: lease
                .subnet6
                .map(|s| ipam::subnet_gateway(s).to_string())
                .unwrap_or_default(),
            subnet6,
            mtu: device_mtu(n, smallest_member, member_mtu(n, h)),
            peer,
        };
        members.insert(host.clone(), member);
    }
    members
}

/// The members of a network on the LAN: every registered host, with the LAN's gateway.
fn lan_members(state: &ClusterState, n: &Network) -> BTreeMap<String, Member> {
    let gateway = n
        .macvlan
        .as_ref()
        .map(|m| m.gateway.to_string())
        .unwrap_or_default();
    state
        .hosts
        .keys()
        .map(|host| {
            let member = Member {
                subnet: n.cidr.to_string(),
                gateway: gateway.clone(),
                subnet6: String::new(),
                gateway6: String::new(),
                mtu: device_mtu(n, None, 0),
                peer: None,
            };
            (host.clone(), member)
        })
        .collect()
}

/// The addresses a [`Pool::SharedRange`] network hands out: its `--ip-range` clipped to the
/// subnet's host addresses.
pub fn shared_range(cidr: Ipv4Network, ip_range: Ipv4Network) -> (Ipv4Addr, Ipv4Addr) {
    let first = u32::from(ip_range.network()).max(u32::from(cidr.network()) + 1);
    let last = u32::from(ip_range.broadcast()).min(u32::from(cidr.broadcast()) - 1);
    (Ipv4Addr::from(first), Ipv4Addr::from(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each mode's pool agrees with what the proto crate says of it (the agent relies on it).
    #[test]
    fn pools_agree_with_the_modes_capabilities() {
        for mode in Mode::ALL {
            let pool = rules(mode).facts().pool;
            let leased = match pool {
                Pool::HostLeases => true,
                Pool::SharedRange => false,
            };
            assert_eq!(leased, mode.uses_leases(), "{mode}");
        }
    }
}
