//! Wiring a workload into its namespace.
//!
//! - veth (vxlan, nat): a pair whose host end joins the network's bridge and whose other end
//!   moves into the workload's namespace.
//! - macvlan: a sub-interface of the parent NIC, moved whole into the namespace.
//!
//! Either way the workload side is renamed, given its MAC, MTU and address, and routes via
//! the gateway: the default route if the endpoint holds its namespace's, else a route to its
//! network's CIDR. A failed attempt leaves nothing behind.
//!
//! Every function here works on a namespace already opened and checked ([`netns::open`]) and
//! pinned by the caller: `expect_cookie` refuses a namespace that replaced the pinned one.
//! Inside it, the agent touches only its own interface and routes via its own gateway on it:
//! a route it did not create is never replaced.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use overlay_proto::mac::MacAddr;
use rtnetlink::packet_route::link::MacVlanMode;
use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::{LinkMacVlan, LinkUnspec, RouteMessageBuilder};

use crate::kernel::{MacvlanRecord, ROUTE_PROTOCOL, Route, Route6};
use crate::netlink::{Netlink, NetlinkError};
use crate::netns::{Namespace, NetnsError};
use crate::spec::{Attachment, EndpointSpec, MacvlanMode};

/// Why an endpoint operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The namespace is gone, or is not the one the endpoint was wired into: nothing to retry.
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Failed(String),
}

impl From<NetnsError> for EndpointError {
    fn from(e: NetnsError) -> Self {
        if e.is_gone() {
            EndpointError::Gone(e.to_string())
        } else {
            EndpointError::Failed(e.to_string())
        }
    }
}

impl From<NetlinkError> for EndpointError {
    fn from(e: NetlinkError) -> Self {
        EndpointError::Failed(e.to_string())
    }
}

impl From<WiringError> for EndpointError {
    fn from(e: WiringError) -> Self {
        EndpointError::Failed(e.to_string())
    }
}

/// What went wrong while wiring or checking one workload interface.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The operation is for the other kind of attachment (a bug in the caller).
    #[error("not a {0} endpoint")]
    WrongKind(&'static str),
    /// Something else in the namespace already uses the endpoint's interface name.
    #[error("interface {0} already exists in the namespace")]
    NameTaken(String),
    /// The workload end of a pair (or a macvlan) made into the namespace is not there.
    #[error("{0} did not arrive in the namespace")]
    NotArrived(String),
    /// The host end of a pair just made is gone (someone deleted it meanwhile).
    #[error("veth end {0} vanished")]
    Vanished(String),
    /// The namespace routes the destination some other way; overlay never replaces that.
    #[error("the namespace already routes {dst} via {via} (not overlay's); not replacing it")]
    ForeignRoute { dst: IpNetwork, via: String },
}

/// A netlink request's failure, named by what it was doing.
fn op(what: String) -> impl FnOnce(rtnetlink::Error) -> WiringError {
    move |source| WiringError::Netlink(NetlinkError::Op { op: what, source })
}

/// What the workload side must look like.
#[derive(Clone, Debug)]
struct WorkloadSide {
    ifname: String,
    /// Name the interface arrives with (a fresh veth end or macvlan); `None` when checking an
    /// existing one.
    arriving_as: Option<String>,
    mac: MacAddr,
    /// `None`: leave the MTU as the device has it (macvlan inherits its parent's).
    mtu: Option<u32>,
    address: Ipv4Network,
    gateway: Ipv4Addr,
    /// Holds the namespace's default route.
    default_route: bool,
    /// The network's CIDR, routed via the gateway when the default route is not ours.
    cidr: Ipv4Network,
    /// Dual stack: the IPv6 address, its gateway and the network's IPv6 CIDR, routed like
    /// the IPv4 ones.
    v6: Option<Side6>,
}

#[derive(Clone, Copy, Debug)]
struct Side6 {
    address: Ipv6Network,
    gateway: Ipv6Addr,
    cidr: Ipv6Network,
}

impl WorkloadSide {
    fn of(ep: &EndpointSpec, arriving_as: Option<String>) -> Self {
        Self {
            ifname: ep.ifname.clone(),
            arriving_as,
            mac: ep.mac,
            mtu: (ep.mtu != 0).then_some(ep.mtu),
            address: ep.address,
            gateway: ep.gateway,
            default_route: ep.default_route,
            cidr: ep.cidr,
            v6: match (ep.address6, ep.cidr6) {
                (Some((address, gateway)), Some(cidr)) => Some(Side6 {
                    address,
                    gateway,
                    cidr,
                }),
                _ => None,
            },
        }
    }
}

/// Result of checking the workload side of an endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    /// Present; this many things had to be repaired.
    Fine(usize),
    /// The interface is not in the namespace: the endpoint must be wired again.
    Missing,
}

fn veth_names(ep: &EndpointSpec) -> Result<(&str, &str), WiringError> {
    match &ep.attachment {
        Attachment::Veth {
            bridge, host_ifname, ..
        } => Ok((bridge, host_ifname)),
        Attachment::Macvlan { .. } => Err(WiringError::WrongKind("veth")),
    }
}

/// Deletes `ep.peer_ifname` if an interrupted attempt left it in the host namespace.
async fn clear_stranded(nl: &Netlink, ep: &EndpointSpec) -> Result<(), WiringError> {
    if let Some(old) = nl.link_by_name(&ep.peer_ifname).await? {
        nl.delete_link(&old.name, old.index).await?;
    }
    Ok(())
}

/// Creates a veth endpoint from scratch in `ns`. `stale` devices (a broken earlier attempt)
/// go first. Returns the namespace cookie seen inside.
pub async fn wire(
    nl: &Netlink,
    ep: &EndpointSpec,
    ns: &Namespace,
    expect_cookie: Option<u64>,
    stale: &[(String, u32)],
    bridge_index: u32,
) -> Result<Option<u64>, EndpointError> {
    let (bridge, host_ifname) = veth_names(ep)?;
    let started = std::time::Instant::now();
    for (name, index) in stale {
        nl.delete_link(name, *index).await?;
    }
    clear_stranded(nl, ep).await?;
    nl.create_veth_into(host_ifname, &ep.peer_ifname, ep.mtu, ns.file())
        .await?;
    let created_us = started.elapsed().as_micros() as u64;
    let result = async {
        let cookie = configure_inside(ep, ns, expect_cookie).await?;
        tracing::debug!(
            created_us,
            inside_us = started.elapsed().as_micros() as u64 - created_us,
            "veth made and configured inside"
        );
        let host = nl
            .link_by_name(host_ifname)
            .await?
            .ok_or_else(|| WiringError::Vanished(host_ifname.to_string()))?;
        attach_host_side(nl, ep, host.index, bridge_index).await?;
        Ok(cookie)
    }
    .await;
    if result.is_err()
        && let Ok(Some(host)) = nl.link_by_name(host_ifname).await
    {
        // Deleting one end removes the pair, wherever the other end is.
        let _ = nl.delete_link(&host.name, host.index).await;
    }
    tracing::debug!(bridge, "veth endpoint wired");
    result
}

/// Configures `ep.peer_ifname`, already inside `ns`, as the workload's interface.
async fn configure_inside(
    ep: &EndpointSpec,
    ns: &Namespace,
    expect_cookie: Option<u64>,
) -> Result<Option<u64>, EndpointError> {
    let side = WorkloadSide::of(ep, Some(ep.peer_ifname.clone()));
    let entered = ns.run(expect_cookie, move |nl| configure(nl, side)).await?;
    Ok(entered.cookie)
}

/// Puts a veth's host end on the bridge with the network's MTU and brings it up.
pub async fn attach_host_side(
    nl: &Netlink,
    ep: &EndpointSpec,
    index: u32,
    bridge_index: u32,
) -> Result<(), WiringError> {
    let (bridge, host_ifname) = veth_names(ep)?;
    nl.set_link(
        LinkUnspec::new_with_index(index)
            .controller(bridge_index)
            .mtu(ep.mtu)
            .up(),
        &format!("attach {host_ifname} to {bridge}"),
    )
    .await?;
    Ok(())
}

/// Checks the workload side in `ns` and repairs what differs (address, MAC, MTU, routes).
/// Returns what it found and the namespace cookie seen inside.
pub async fn verify(
    ep: &EndpointSpec,
    ns: &Namespace,
    expect_cookie: Option<u64>,
) -> Result<(Checked, Option<u64>), EndpointError> {
    let side = WorkloadSide::of(ep, None);
    let entered = ns.run(expect_cookie, move |nl| configure(nl, side)).await?;
    Ok((entered.value, entered.cookie))
}

fn macvlan_mode(mode: MacvlanMode) -> MacVlanMode {
    match mode {
        MacvlanMode::Bridge => MacVlanMode::Bridge,
        MacvlanMode::Private => MacVlanMode::Private,
        MacvlanMode::Vepa => MacVlanMode::Vepa,
        MacvlanMode::Passthru => MacVlanMode::Passthrough,
    }
}

/// Creates a macvlan endpoint on `parent_index` inside `ns`. Returns its record and the
/// namespace cookie seen inside.
pub async fn wire_macvlan(
    nl: &Netlink,
    ep: &EndpointSpec,
    ns: &Namespace,
    expect_cookie: Option<u64>,
    parent_index: u32,
) -> Result<(MacvlanRecord, Option<u64>), EndpointError> {
    let Attachment::Macvlan { mode, .. } = &ep.attachment else {
        return Err(WiringError::WrongKind("macvlan").into());
    };
    clear_stranded(nl, ep).await?;
    let mut msg =
        LinkMacVlan::new(&ep.peer_ifname, parent_index, macvlan_mode(*mode)).address(ep.mac.0.to_vec());
    if ep.mtu != 0 {
        msg = msg.mtu(ep.mtu);
    }
    // Born inside the namespace (no move, so no wait for an RCU grace period); on failure
    // `configure` deletes it there.
    nl.handle()
        .link()
        .add(msg.setns_by_fd(ns.file().as_raw_fd()).build())
        .execute()
        .await
        .map_err(op(format!("create macvlan {}", ep.peer_ifname)))?;
    let cookie = configure_inside(ep, ns, expect_cookie).await?;
    let record = MacvlanRecord {
        id: ep.id,
        netns: ep.netns.as_text(),
        ifname: ep.ifname.clone(),
        mac: ep.mac,
    };
    Ok((record, cookie))
}

/// Deletes a detached macvlan endpoint inside `ns` (the namespace it was wired into): only
/// the interface with the recorded name and MAC, so a device the workload made itself is
/// never touched.
pub async fn remove_macvlan(
    record: &MacvlanRecord,
    ns: &Namespace,
    expect_cookie: Option<u64>,
) -> Result<(), EndpointError> {
    let (ifname, mac) = (record.ifname.clone(), record.mac);
    ns.run(expect_cookie, move |nl| async move {
        let links = nl.links().await?;
        if let Some(l) = links.iter().find(|l| l.name == ifname && l.mac == Some(mac)) {
            nl.delete_link(&l.name, l.index).await?;
        }
        Ok::<(), NetlinkError>(())
    })
    .await?;
    Ok(())
}

/// Runs inside the workload namespace. When the interface is arriving and anything fails, it
/// is deleted again so the namespace is left as it was.
async fn configure(nl: Netlink, w: WorkloadSide) -> Result<Checked, WiringError> {
    let arriving_index = match &w.arriving_as {
        Some(name) => nl.link_by_name(name).await?.map(|l| (name.clone(), l.index)),
        None => None,
    };
    let result = configure_steps(&nl, &w).await;
    if result.is_err()
        && let Some((name, index)) = arriving_index
    {
        let _ = nl.delete_link(&name, index).await;
    }
    result
}

async fn configure_steps(nl: &Netlink, w: &WorkloadSide) -> Result<Checked, WiringError> {
    let links = nl.links().await?;
    let mut repairs = 0;
    if let Some(lo) = links.iter().find(|l| l.name == "lo")
        && !lo.up
    {
        nl.set_link(LinkUnspec::new_with_index(lo.index).up(), "set lo up")
            .await?;
        repairs += 1;
    }
    let with_mtu = |b: rtnetlink::LinkMessageBuilder<LinkUnspec>| match w.mtu {
        Some(mtu) => b.mtu(mtu),
        None => b,
    };
    let index = match &w.arriving_as {
        Some(arriving) => {
            if links.iter().any(|l| l.name == w.ifname) {
                return Err(WiringError::NameTaken(w.ifname.clone()));
            }
            let l = links
                .iter()
                .find(|l| &l.name == arriving)
                .ok_or_else(|| WiringError::NotArrived(arriving.clone()))?;
            // One request, as `ip link set ... name ... address ... up` sends it: the kernel
            // renames and sets the MAC before it brings the device up.
            nl.set_link(
                with_mtu(
                    LinkUnspec::new_with_index(l.index)
                        .name(w.ifname.clone())
                        .address(w.mac.0.to_vec()),
                )
                .up(),
                &format!("rename {arriving} to {} and set it up", w.ifname),
            )
            .await?;
            l.index
        }
        None => {
            let Some(l) = links.iter().find(|l| l.name == w.ifname) else {
                return Ok(Checked::Missing);
            };
            if l.mac != Some(w.mac) || w.mtu.is_some_and(|m| m != l.mtu) {
                nl.set_link(
                    with_mtu(LinkUnspec::new_with_index(l.index).address(w.mac.0.to_vec())),
                    &format!("fix {}", w.ifname),
                )
                .await?;
                repairs += 1;
            }
            if !l.up {
                nl.set_link(
                    LinkUnspec::new_with_index(l.index).up(),
                    &format!("set {} up", w.ifname),
                )
                .await?;
                repairs += 1;
            }
            l.index
        }
    };
    let has_address = nl
        .addresses()
        .await?
        .iter()
        .any(|(i, a)| *i == index && *a == w.address);
    if !has_address {
        nl.handle()
            .address()
            .add(index, w.address.ip().into(), w.address.prefix())
            .replace()
            .execute()
            .await
            .map_err(op(format!("add address {}", w.address)))?;
        repairs += 1;
    }
    repairs += sync_routes(nl, w, index).await?;
    if let Some(v6) = w.v6 {
        if !nl.addresses6_of(index).await?.contains(&v6.address) {
            nl.add_address6(index, v6.address).await?;
            repairs += 1;
        }
        repairs += sync_routes6(nl, w, v6, index).await?;
    }
    Ok(Checked::Fine(repairs))
}

/// [`sync_routes`] for the IPv6 side: the default route (`::/0`) or the network's IPv6 CIDR
/// via the IPv6 gateway, by the same rule (the endpoint's role decides, a foreign default
/// route is left alone and the CIDR routed instead).
async fn sync_routes6(nl: &Netlink, w: &WorkloadSide, v6: Side6, index: u32) -> Result<usize, WiringError> {
    let routes = nl.routes6().await?;
    let ours = |r: &Route6| r.gateway == Some(v6.gateway) && r.oif == Some(index);
    let foreign_default = routes.iter().any(|r| r.dst.prefix() == 0 && !ours(r));
    let want_default = w.default_route && !foreign_default;
    let want_cidr = !want_default && v6.address.prefix() > v6.cidr.prefix();
    let default_dst = Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).expect("/0 is valid");
    let mut repairs = 0;
    for (dst, wanted) in [(default_dst, want_default), (v6.cidr, want_cidr)] {
        let have = routes.iter().filter(|r| ours(r)).find(|r| r.dst == dst);
        let route = |protocol: u8| {
            RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(dst.network(), dst.prefix())
                .gateway(v6.gateway)
                .output_interface(index)
                .protocol(RouteProtocol::from(protocol))
                .build()
        };
        match (have, wanted) {
            (None, true) => {
                if let Some(other) = routes.iter().find(|r| r.dst == dst) {
                    return Err(foreign_route(dst.into(), other.gateway));
                }
                nl.handle()
                    .route()
                    .add(route(ROUTE_PROTOCOL))
                    .execute()
                    .await
                    .map_err(op(format!("add route {dst} via {}", v6.gateway)))?;
                repairs += 1;
            }
            (Some(r), false) => {
                let what = format!("delete route {dst} via {}", v6.gateway);
                repairs += usize::from(delete_route(nl, route(r.protocol), what).await?);
            }
            _ => {}
        }
    }
    Ok(repairs)
}

/// What the endpoint must route via its gateway, given the namespace's routes: the default
/// route if it holds it and nobody else's is there, otherwise its network's CIDR (unless its
/// own address already covers it, as on a macvlan LAN). Pure, for the tests.
fn wanted_routes(w: &WorkloadSide, index: u32, routes: &[Route]) -> (bool, Option<Ipv4Network>) {
    let ours = |r: &Route| r.gateway == Some(w.gateway) && r.oif == Some(index);
    let foreign_default = routes.iter().any(|r| r.dst.prefix() == 0 && !ours(r));
    let default = w.default_route && !foreign_default;
    let covered = w.address.prefix() <= w.cidr.prefix();
    let cidr = (!default && !covered).then_some(w.cidr);
    (default, cidr)
}

/// Brings the routes via the endpoint's gateway on its interface to what [`wanted_routes`]
/// says. Routes through anything else are someone else's and never touched.
async fn sync_routes(nl: &Netlink, w: &WorkloadSide, index: u32) -> Result<usize, WiringError> {
    let routes = nl.routes().await?;
    let (want_default, want_cidr) = wanted_routes(w, index, &routes);
    let default_dst = Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid");
    let ours = |r: &&Route| r.gateway == Some(w.gateway) && r.oif == Some(index);
    let mut repairs = 0;
    for (dst, wanted) in [(default_dst, want_default), (w.cidr, want_cidr.is_some())] {
        let have = routes.iter().filter(ours).find(|r| r.dst == dst);
        match (have, wanted) {
            (None, true) => {
                if let Some(other) = routes.iter().find(|r| r.dst == dst) {
                    return Err(foreign_route(dst.into(), other.gateway));
                }
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix())
                    .gateway(w.gateway)
                    .output_interface(index)
                    .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
                    .build();
                // Exclusive: never replaces a route that appeared meanwhile.
                nl.handle()
                    .route()
                    .add(route)
                    .execute()
                    .await
                    .map_err(op(format!("add route {dst} via {}", w.gateway)))?;
                if dst == w.cidr && w.default_route {
                    tracing::warn!(ifname = %w.ifname, %dst, "the namespace has a default route overlay did not make; routing only the network via the gateway");
                }
                repairs += 1;
            }
            (Some(r), false) => {
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix())
                    .gateway(w.gateway)
                    .output_interface(index)
                    .protocol(RouteProtocol::from(r.protocol))
                    .build();
                let what = format!("delete route {dst} via {}", w.gateway);
                repairs += usize::from(delete_route(nl, route, what).await?);
            }
            _ => {}
        }
    }
    Ok(repairs)
}

/// The refusal to route `dst` via the gateway when someone else's route to it is there (via
/// `gateway`, or straight out of a device).
fn foreign_route(dst: IpNetwork, gateway: Option<impl std::fmt::Display>) -> WiringError {
    WiringError::ForeignRoute {
        dst,
        via: gateway
            .map(|g| g.to_string())
            .unwrap_or_else(|| "a device".into()),
    }
}

/// Deletes `route` (`what` names it in errors): `false` when it was gone already.
async fn delete_route(
    nl: &Netlink,
    route: rtnetlink::packet_route::route::RouteMessage,
    what: String,
) -> Result<bool, WiringError> {
    match nl.handle().route().del(route).execute().await {
        Ok(()) => Ok(true),
        Err(source) => {
            let e = NetlinkError::Op { op: what, source };
            if crate::netlink::is_gone(&e) {
                Ok(false)
            } else {
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(default_route: bool, address: &str, cidr: &str) -> WorkloadSide {
        WorkloadSide {
            ifname: "eth0".into(),
            arriving_as: None,
            mac: "0a:58:0a:01:00:02".parse().unwrap(),
            mtu: None,
            address: address.parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            default_route,
            cidr: cidr.parse().unwrap(),
            v6: None,
        }
    }

    fn route(dst: &str, gw: &str, oif: u32) -> Route {
        Route {
            dst: dst.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: Some(oif),
            protocol: 4,
            onlink: false,
        }
    }

    #[test]
    fn one_default_route_the_rest_route_their_network() {
        let holder = side(true, "10.1.0.2/24", "10.1.0.0/16");
        assert_eq!(wanted_routes(&holder, 5, &[]), (true, None));
        // Its own default route (any protocol) is kept.
        let own = [route("0.0.0.0/0", "10.1.0.1", 5)];
        assert_eq!(wanted_routes(&holder, 5, &own), (true, None));
        // Someone else's default route is left alone: route the network instead.
        let foreign = [route("0.0.0.0/0", "192.168.7.1", 9)];
        assert_eq!(
            wanted_routes(&holder, 5, &foreign),
            (false, Some("10.1.0.0/16".parse().unwrap()))
        );
        let other = side(false, "10.1.0.2/24", "10.1.0.0/16");
        assert_eq!(
            wanted_routes(&other, 5, &own),
            (false, Some("10.1.0.0/16".parse().unwrap())),
            "an endpoint without the role gives its default route up"
        );
        // A LAN address already covers its network: no route needed.
        let lan = side(false, "198.51.100.7/24", "198.51.100.0/24");
        assert_eq!(wanted_routes(&lan, 5, &[]), (false, None));
    }
}
