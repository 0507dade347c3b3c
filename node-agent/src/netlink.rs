//! rtnetlink I/O: one dump of everything the planner needs, and the operations it plans.
//!
//! One dump per kind (links, addresses, neighbours, FDB, routes) per pass, never one request
//! per object: the cost of a reconcile grows with the host, not with the number of checks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use std::collections::BTreeSet;

use ipnetwork::{Ipv4Network, Ipv6Network};
use overlay_proto::mac::MacAddr;
use overlay_proto::names;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVlan, LinkVxlan, RouteMessageBuilder,
};

use crate::kernel::{
    FdbEntry, Kernel, Link, LinkKind, Neighbour, OWNED_ALIAS, ROUTE_PROTOCOL, Route, Route6, VxlanAttrs,
};
use crate::plan::{EntryOp, LinkOp};
use crate::spec::VXLAN_PORT;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("dump links: {0}")]
    Dump(std::io::Error),
    #[error("{op}: {source}")]
    Op { op: String, source: rtnetlink::Error },
    #[error("{0}")]
    Missing(String),
}

fn op_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Op { op, source }
}

/// True when the error is the kernel's ENOENT/ESRCH/ENODEV: the object is already gone.
pub fn is_gone(e: &NetlinkError) -> bool {
    match e {
        NetlinkError::Op {
            source: rtnetlink::Error::NetlinkError(msg),
            ..
        } => msg.code.is_some_and(|c| {
            matches!(
                -c.get(),
                libc_enoent::ENOENT | libc_enoent::ESRCH | libc_enoent::ENODEV
            )
        }),
        _ => false,
    }
}

mod libc_enoent {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const ENODEV: i32 = 19;
}

mod links;

/// A netlink connection in the namespace of the thread that opened it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    /// A second socket with strict checking (NETLINK_GET_STRICT_CHK), for the dumps the
    /// kernel filters only then: the FDB and neighbours of one device. Without it each pass
    /// read every bridge port's FDB on the host (thousands of entries next to a few hundred
    /// containers) to keep the few on overlay's vxlan devices. Opened on first use: most
    /// connections (one per wiring inside a workload's namespace) never dump.
    strict: std::sync::Arc<std::sync::OnceLock<Handle>>,
    /// Link dumps, decoded lazily (see [`links`]).
    dumper: std::sync::Arc<links::LinkDumper>,
}

impl Netlink {
    /// Opens the sockets in the calling thread's network namespace; the connection tasks run
    /// on the current tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        let dumper = std::sync::Arc::new(links::LinkDumper::open().map_err(NetlinkError::Socket)?);
        Ok(Self {
            handle,
            strict: Default::default(),
            dumper,
        })
    }

    /// The strict-checking connection, opened in this thread's namespace, which is this
    /// connection's: a `Netlink` is used only where it was opened (the host's on the agent's
    /// runtime, a workload's on the thread that entered it).
    fn strict(&self) -> Result<&Handle, NetlinkError> {
        if let Some(h) = self.strict.get() {
            return Ok(h);
        }
        let (conn, handle, _) =
            rtnetlink::new_connection_with_strict_check().map_err(NetlinkError::Socket)?;
        tokio::spawn(conn);
        Ok(self.strict.get_or_init(|| handle))
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    // ------------------------------------------------------------------ reading

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        self.dumper.links().map_err(NetlinkError::Dump)
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let mut stream = self.handle.link().get().match_name(name.to_string()).execute();
        match stream.try_next().await {
            Ok(msg) => Ok(msg.as_ref().and_then(parse_link)),
            Err(e) => {
                let e = NetlinkError::Op {
                    op: format!("get link {name}"),
                    source: e,
                };
                if is_gone(&e) { Ok(None) } else { Err(e) }
            }
        }
    }

    pub async fn addresses(&self) -> Result<Vec<(u32, Ipv4Network)>, NetlinkError> {
        // IPv4 only: every link's IPv6 link-local address would be read to be dropped.
        let msgs = self
            .address_dump(AddressFamily::Inet, None, "dump addresses")
            .await?;
        Ok(msgs.iter().filter_map(parse_address).collect())
    }

    /// The addresses of `family` (of link `index` only, when given).
    async fn address_dump(
        &self,
        family: AddressFamily,
        index: Option<u32>,
        what: &'static str,
    ) -> Result<Vec<AddressMessage>, NetlinkError> {
        let mut request = match index {
            Some(i) => self.handle.address().get().set_link_index_filter(i),
            None => self.handle.address().get(),
        };
        request.message_mut().header.family = family;
        request.execute().try_collect().await.map_err(op_err(what))
    }

    /// The first global IPv6 address of link `index` that stays: not link-local, not a
    /// temporary (privacy) or deprecated one, not one that failed duplicate detection (one
    /// still being checked is taken: it is usable within a second).
    pub async fn global_ipv6(&self, index: u32) -> Result<Option<Ipv6Addr>, NetlinkError> {
        let msgs = self
            .address_dump(AddressFamily::Inet6, Some(index), "dump IPv6 addresses")
            .await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index && m.header.scope == AddressScope::Universe)
            .filter(|m| {
                !m.attributes
                    .iter()
                    // Privacy (temporary: IFA_F_SECONDARY in IPv6) and deprecated addresses
                    // expire, and peers would lose the host with them.
                    .any(|a| matches!(a, AddressAttribute::Flags(f) if f.intersects(AddressFlags::Dadfailed | AddressFlags::Secondary | AddressFlags::Deprecated)))
            })
            .find_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V6(ip)) if (ip.segments()[0] & 0xffc0) != 0xfe80 => {
                        Some(*ip)
                    }
                    _ => None,
                })
            }))
    }

    /// The IPv6 half of a dual-stack snapshot (see [`Kernel::addresses6`]): read only when
    /// a network has IPv6, so an IPv4-only host pays nothing for it (every veth has an IPv6
    /// link-local address that an address dump would carry).
    async fn dump6(&self, kernel: &mut Kernel) -> Result<(), NetlinkError> {
        let overlay_devices: BTreeSet<u32> = kernel
            .links
            .values()
            .filter(|l| l.name.starts_with(names::BRIDGE_PREFIX) || l.name.starts_with(names::VXLAN_PREFIX))
            .map(|l| l.index)
            .collect();
        let msgs = self
            .address_dump(AddressFamily::Inet6, None, "dump IPv6 addresses")
            .await?;
        for (index, net) in msgs.iter().filter_map(parse_address6) {
            if overlay_devices.contains(&index) {
                kernel.addresses6.entry(index).or_default().insert(net);
            }
        }
        for index in kernel.vxlan_indexes() {
            let strict = self.strict()?;
            let mut neigh = strict.neighbours().get().set_address_family(AddressFamily::Inet6);
            neigh
                .message_mut()
                .attributes
                .push(NeighbourAttribute::IfIndex(index));
            let neigh: Vec<NeighbourMessage> = neigh
                .execute()
                .try_collect()
                .await
                .map_err(op_err("dump IPv6 neighbours"))?;
            kernel.neighbours6.extend(
                neigh
                    .iter()
                    .filter(|m| m.header.ifindex == index)
                    .filter_map(parse_neighbour6),
            );
        }
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(op_err("dump IPv6 routes"))?;
        kernel.routes6 = routes
            .iter()
            .filter_map(parse_route6)
            .filter(|r| r.protocol == crate::kernel::ROUTE_PROTOCOL)
            .collect();
        Ok(())
    }

    /// IPv6 routes of the main table (a workload namespace's, for its endpoint's routes).
    pub async fn routes6(&self) -> Result<Vec<Route6>, NetlinkError> {
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(op_err("dump IPv6 routes"))?;
        Ok(routes.iter().filter_map(parse_route6).collect())
    }

    /// Global IPv6 addresses of link `index` (a workload's interface).
    pub async fn addresses6_of(&self, index: u32) -> Result<Vec<Ipv6Network>, NetlinkError> {
        let msgs = self
            .address_dump(AddressFamily::Inet6, Some(index), "dump IPv6 addresses")
            .await?;
        Ok(msgs
            .iter()
            .filter_map(parse_address6)
            .filter(|(i, _)| *i == index)
            .map(|(_, a)| a)
            .collect())
    }

    /// Adds (or replaces) IPv6 address `addr` on link `index` without duplicate address
    /// detection: overlay hands the address out, so no one else holds it, and a tentative
    /// address would drop the workload's first packets for a second.
    pub async fn add_address6(&self, index: u32, addr: Ipv6Network) -> Result<(), NetlinkError> {
        let mut request = self
            .handle
            .address()
            .add(index, IpAddr::V6(addr.ip()), addr.prefix())
            .replace();
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        request
            .execute()
            .await
            .map_err(op_err(format!("add address {addr}")))
    }

    /// The whole snapshot the planner works from; with `v6`, its IPv6 half too.
    pub async fn dump(&self, v6: bool) -> Result<Kernel, NetlinkError> {
        let started = std::time::Instant::now();
        let mut kernel = Kernel::default();
        for l in self.links().await? {
            kernel.links.insert(l.name.clone(), l);
        }
        let links_us = started.elapsed().as_micros() as u64;
        for (index, addr) in self.addresses().await? {
            kernel.addresses.entry(index).or_default().insert(addr);
        }
        let addresses_us = started.elapsed().as_micros() as u64 - links_us;
        // Only overlay's vxlan devices' entries are of interest: one filtered dump each.
        for index in kernel.vxlan_indexes() {
            let strict = self.strict()?;
            let mut neigh = strict.neighbours().get().set_address_family(AddressFamily::Inet);
            neigh
                .message_mut()
                .attributes
                .push(NeighbourAttribute::IfIndex(index));
            let neigh: Vec<NeighbourMessage> = neigh
                .execute()
                .try_collect()
                .await
                .map_err(op_err("dump neighbours"))?;
            kernel.neighbours.extend(
                neigh
                    .iter()
                    .filter(|m| m.header.ifindex == index)
                    .filter_map(parse_neighbour),
            );
            // In a strict FDB dump the header's index selects the port (`bridge fdb show brport`).
            let mut fdb = strict
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge);
            fdb.message_mut().header.ifindex = index;
            let fdb: Vec<NeighbourMessage> = fdb.execute().try_collect().await.map_err(op_err("dump fdb"))?;
            kernel.fdb.extend(
                fdb.iter()
                    .filter(|m| m.header.ifindex == index)
                    .filter_map(parse_fdb),
            );
        }
        let before_routes = started.elapsed().as_micros() as u64;
        kernel.routes = self.routes().await?;
        if v6 {
            self.dump6(&mut kernel).await?;
        }
        let took_us = started.elapsed().as_micros() as u64;
        // What a pass costs grows with every interface on the host, overlay's or not.
        tracing::debug!(
            links = kernel.links.len(),
            routes = kernel.routes.len(),
            fdb = kernel.fdb.len(),
            links_us,
            addresses_us,
            entries_us = before_routes - links_us - addresses_us,
            routes_us = took_us - before_routes,
            took_us,
            "kernel dumped"
        );
        Ok(kernel)
    }

    /// IPv4 routes of the main table.
    pub async fn routes(&self) -> Result<Vec<Route>, NetlinkError> {
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(op_err("dump routes"))?;
        Ok(routes.iter().filter_map(parse_route).collect())
    }

    // ------------------------------------------------------------------ links

    pub async fn apply_link(&self, op: &LinkOp) -> Result<(), NetlinkError> {
        match op {
            LinkOp::CreateBridge { name, mtu, mac } => self
                .handle
                .link()
                .add(
                    LinkBridge::new(name)
                        .mtu(*mtu)
                        .address(mac.0.to_vec())
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(op_err(format!("create bridge {name}"))),
            LinkOp::CreateVxlan { spec, underlay_index } => {
                let vxlan = LinkVxlan::new(&spec.name, spec.vni)
                    .dev(*underlay_index)
                    .port(VXLAN_PORT);
                let vxlan = match spec.local {
                    IpAddr::V4(ip) => vxlan.local(ip),
                    IpAddr::V6(ip) => vxlan.local6(ip),
                };
                let msg = vxlan
                    .learning(false)
                    .mtu(spec.mtu)
                    .address(spec.mac.0.to_vec())
                    .up()
                    .build();
                self.handle
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(op_err(format!("create vxlan {}", spec.name)))
            }
            LinkOp::CreateVlan {
                name,
                base_index,
                vid,
            } => {
                self.handle
                    .link()
                    .add(LinkVlan::new(name, *base_index, *vid).up().build())
                    .execute()
                    .await
                    .map_err(op_err(format!("create vlan {name}")))?;
                // Mark it as overlay's, so only it is ever deleted again.
                let link = self
                    .link_by_name(name)
                    .await?
                    .ok_or_else(|| NetlinkError::Missing(format!("{name} vanished")))?;
                self.set_link(
                    LinkUnspec::new_with_index(link.index).alias(OWNED_ALIAS),
                    &format!("mark {name}"),
                )
                .await
            }
            LinkOp::Delete { name, index, .. } => self.delete_link(name, *index).await,
            LinkOp::SetMtu { name, index, mtu } => {
                self.set_link(
                    LinkUnspec::new_with_index(*index).mtu(*mtu),
                    &format!("set mtu of {name}"),
                )
                .await
            }
            LinkOp::SetMac { name, index, mac } => {
                self.set_link(
                    LinkUnspec::new_with_index(*index).address(mac.0.to_vec()),
                    &format!("set mac of {name}"),
                )
                .await
            }
            LinkOp::SetUp { name, index } => {
                self.set_link(LinkUnspec::new_with_index(*index).up(), &format!("set {name} up"))
                    .await
            }
        }
    }

    pub async fn set_link(
        &self,
        msg: LinkMessageBuilder<LinkUnspec>,
        what: &str,
    ) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .map_err(op_err(what))
    }

    /// Deletes a link; one that is already gone counts as deleted.
    pub async fn delete_link(&self, name: &str, index: u32) -> Result<(), NetlinkError> {
        match self
            .handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(op_err(format!("delete {name}")))
        {
            Err(e) if is_gone(&e) => Ok(()),
            other => other,
        }
    }

    pub async fn create_veth(&self, host: &str, peer: &str, mtu: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .add(LinkVeth::new(host, peer).mtu(mtu).build())
            .execute()
            .await
            .map_err(op_err(format!("create veth {host}/{peer}")))
    }

    /// Creates a veth pair whose `peer` end is born inside the namespace open at `ns`. Moving
    /// an existing device between namespaces waits for an RCU grace period in the kernel
    /// (~15-20 ms here); creating it there does not.
    pub async fn create_veth_into(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        ns: &std::fs::File,
    ) -> Result<(), NetlinkError> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(op_err(format!("create veth {host}/{peer}")))
    }

    // ------------------------------------------------------------------ entries

    pub async fn apply_entry(&self, op: &EntryOp) -> Result<(), NetlinkError> {
        let h = &self.handle;
        match op {
            EntryOp::AddAddress { index, addr } => h
                .address()
                .add(*index, IpAddr::V4(addr.ip()), addr.prefix())
                .replace()
                .execute()
                .await
                .map_err(op_err(format!("add address {addr}"))),
            EntryOp::AddAddress6 { index, addr } => self.add_address6(*index, *addr).await,
            EntryOp::DelAddress6 { index, addr } => ignore_gone(
                h.address()
                    .del(address_message6(*index, *addr))
                    .execute()
                    .await
                    .map_err(op_err(format!("delete address {addr}"))),
            ),
            EntryOp::SetNeighbour6 { index, ip, mac } => {
                set_neighbour(h, *index, IpAddr::V6(*ip), *mac).await
            }
            EntryOp::DelNeighbour6 { index, ip } => del_neighbour(h, *index, IpAddr::V6(*ip)).await,
            EntryOp::SetRoute6 { dst, via, index } => {
                let msg = RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix())
                    .gateway(*via)
                    .output_interface(*index)
                    .onlink()
                    .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
                    .build();
                set_route(h, msg, format!("set route {dst} via {via}")).await
            }
            EntryOp::DelRoute6 { route } => ignore_gone(
                h.route()
                    .del(route_message6(route))
                    .execute()
                    .await
                    .map_err(op_err(format!("delete route {}", route.dst))),
            ),
            EntryOp::DelAddress { index, addr } => ignore_gone(
                h.address()
                    .del(address_message(*index, *addr))
                    .execute()
                    .await
                    .map_err(op_err(format!("delete address {addr}"))),
            ),
            EntryOp::SetNeighbour { index, ip, mac } => set_neighbour(h, *index, IpAddr::V4(*ip), *mac).await,
            EntryOp::DelNeighbour { index, ip } => del_neighbour(h, *index, IpAddr::V4(*ip)).await,
            EntryOp::SetFdb { index, mac, dst } => h
                .neighbours()
                .add_bridge(*index, &mac.0)
                .destination(*dst)
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(op_err(format!("set fdb {mac} dst {dst}"))),
            EntryOp::DelFdb { index, mac, dst } => {
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Bridge;
                msg.header.ifindex = *index;
                msg.header.flags = NeighbourFlags::Own;
                msg.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
                if let Some(dst) = dst {
                    let dst = match dst {
                        IpAddr::V4(ip) => NeighbourAddress::Inet(*ip),
                        IpAddr::V6(ip) => NeighbourAddress::Inet6(*ip),
                    };
                    msg.attributes.push(NeighbourAttribute::Destination(dst));
                }
                ignore_gone(
                    h.neighbours()
                        .del(msg)
                        .execute()
                        .await
                        .map_err(op_err(format!("delete fdb {mac}"))),
                )
            }
            EntryOp::SetRoute { dst, via, index } => {
                let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.network(), dst.prefix())
                    .gateway(*via)
                    .output_interface(*index)
                    .onlink()
                    .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
                    .build();
                set_route(h, msg, format!("set route {dst} via {via}")).await
            }
            EntryOp::DelRoute { route } => ignore_gone(
                h.route()
                    .del(route_message(route))
                    .execute()
                    .await
                    .map_err(op_err(format!("delete route {}", route.dst))),
            ),
        }
    }
}

/// A permanent neighbour entry for `ip` at `mac` on `index`, either family.
async fn set_neighbour(h: &Handle, index: u32, ip: IpAddr, mac: MacAddr) -> Result<(), NetlinkError> {
    h.neighbours()
        .add(index, ip)
        .link_layer_address(&mac.0)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(op_err(format!("set neighbour {ip} lladdr {mac}")))
}

/// Deletes the neighbour entry for `ip` on `index` (fine if it is gone already).
async fn del_neighbour(h: &Handle, index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
    let mut msg = NeighbourMessage::default();
    msg.header.ifindex = index;
    let (family, dst) = match ip {
        IpAddr::V4(ip) => (AddressFamily::Inet, NeighbourAddress::Inet(ip)),
        IpAddr::V6(ip) => (AddressFamily::Inet6, NeighbourAddress::Inet6(ip)),
    };
    msg.header.family = family;
    msg.attributes.push(NeighbourAttribute::Destination(dst));
    ignore_gone(
        h.neighbours()
            .del(msg)
            .execute()
            .await
            .map_err(op_err(format!("delete neighbour {ip}"))),
    )
}

/// Adds or replaces the route `msg` (`what` names it in errors).
async fn set_route(h: &Handle, msg: RouteMessage, what: String) -> Result<(), NetlinkError> {
    h.route().add(msg).replace().execute().await.map_err(op_err(what))
}

fn ignore_gone(r: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Err(e) if is_gone(&e) => Ok(()),
        other => other,
    }
}

pub fn address_message(index: u32, addr: Ipv4Network) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = addr.prefix();
    msg.header.index = index;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(addr.ip())));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr.ip())));
    msg
}

fn address_message6(index: u32, addr: Ipv6Network) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet6;
    msg.header.prefix_len = addr.prefix();
    msg.header.index = index;
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V6(addr.ip())));
    msg
}

fn route_message6(r: &Route6) -> RouteMessage {
    let dst = (r.dst.prefix(), RouteAddress::Inet6(r.dst.network()));
    route_message_of(AddressFamily::Inet6, dst, r.gateway.map(RouteAddress::Inet6), r)
}

fn route_message(r: &Route) -> RouteMessage {
    let dst = (r.dst.prefix(), RouteAddress::Inet(r.dst.network()));
    route_message_of(AddressFamily::Inet, dst, r.gateway.map(RouteAddress::Inet), r)
}

/// The message naming main-table route `r` (of either family: its destination and gateway
/// already in `family`'s form), as a delete needs it.
fn route_message_of<N, A>(
    family: AddressFamily,
    (prefix, dst): (u8, RouteAddress),
    gateway: Option<RouteAddress>,
    r: &crate::kernel::Route<N, A>,
) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    msg.header.destination_prefix_length = prefix;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(r.protocol);
    msg.header.scope = RouteScope::Universe;
    msg.header.kind = RouteType::Unicast;
    msg.attributes.push(RouteAttribute::Destination(dst));
    if let Some(gw) = gateway {
        msg.attributes.push(RouteAttribute::Gateway(gw));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

// ---------------------------------------------------------------------- parsing

fn mac_of(bytes: &[u8]) -> Option<MacAddr> {
    <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
}

pub fn parse_link(msg: &LinkMessage) -> Option<Link> {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: LinkKind::Other(String::new()),
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        master: None,
        peer_in_other_netns: false,
        lower: None,
        alias: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(a) => link.mac = mac_of(a),
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::LinkNetNsId(_) => link.peer_in_other_netns = true,
            LinkAttribute::Link(l) => link.lower = Some(*l),
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(InfoKind::Bridge) => link.kind = LinkKind::Bridge,
                        LinkInfo::Kind(InfoKind::Veth) => link.kind = LinkKind::Veth,
                        LinkInfo::Kind(InfoKind::MacVlan) => link.kind = LinkKind::Macvlan,
                        LinkInfo::Kind(InfoKind::Vlan) if !matches!(link.kind, LinkKind::Vlan(_)) => {
                            link.kind = LinkKind::Vlan(0)
                        }
                        LinkInfo::Data(InfoData::Vlan(data)) => {
                            for d in data {
                                if let InfoVlan::Id(id) = d {
                                    link.kind = LinkKind::Vlan(*id);
                                }
                            }
                        }
                        LinkInfo::Kind(InfoKind::Vxlan) if !matches!(link.kind, LinkKind::Vxlan(_)) => {
                            link.kind = LinkKind::Vxlan(VxlanAttrs::default())
                        }
                        LinkInfo::Kind(other) => {
                            link.kind = LinkKind::Other(format!("{other:?}").to_lowercase())
                        }
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            let mut attrs = match &link.kind {
                                LinkKind::Vxlan(a) => a.clone(),
                                _ => VxlanAttrs::default(),
                            };
                            for d in data {
                                match d {
                                    InfoVxlan::Id(v) => attrs.vni = *v,
                                    InfoVxlan::Port(p) => attrs.port = *p,
                                    InfoVxlan::Local(ip) => attrs.local = Some((*ip).into()),
                                    InfoVxlan::Local6(ip) => attrs.local = Some((*ip).into()),
                                    InfoVxlan::Link(l) => attrs.link = Some(*l),
                                    InfoVxlan::Learning(b) => attrs.learning = *b,
                                    _ => {}
                                }
                            }
                            link.kind = LinkKind::Vxlan(attrs);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

fn parse_address(msg: &AddressMessage) -> Option<(u32, Ipv4Network)> {
    if msg.header.family != AddressFamily::Inet {
        return None;
    }
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
            AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
            _ => {}
        }
    }
    let ip = local.or(address)?;
    Ipv4Network::new(ip, msg.header.prefix_len)
        .ok()
        .map(|n| (msg.header.index, n))
}

/// A global (not link-local) IPv6 address: the kernel's own link-local addresses are not
/// overlay's to plan.
fn parse_address6(msg: &AddressMessage) -> Option<(u32, Ipv6Network)> {
    if msg.header.family != AddressFamily::Inet6 {
        return None;
    }
    let ip = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(IpAddr::V6(ip)) => Some(*ip),
        _ => None,
    })?;
    if ip.segments()[0] & 0xffc0 == 0xfe80 {
        return None;
    }
    Ipv6Network::new(ip, msg.header.prefix_len)
        .ok()
        .map(|n| (msg.header.index, n))
}

fn parse_neighbour6(msg: &NeighbourMessage) -> Option<Neighbour<Ipv6Addr>> {
    parse_neighbour_of(msg, |a| match a {
        NeighbourAddress::Inet6(a) => Some(*a),
        _ => None,
    })
}

fn parse_route6(msg: &RouteMessage) -> Option<Route6> {
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet6(a) => Some(*a),
        _ => None,
    };
    let net = |a, len| Ipv6Network::new(a, len).ok();
    parse_route_of(msg, AddressFamily::Inet6, Ipv6Addr::UNSPECIFIED, addr, net)
}

fn parse_neighbour(msg: &NeighbourMessage) -> Option<Neighbour> {
    parse_neighbour_of(msg, |a| match a {
        NeighbourAddress::Inet(a) => Some(*a),
        _ => None,
    })
}

/// A neighbour entry whose address `addr` reads (`None`: another family, or none at all).
fn parse_neighbour_of<A>(
    msg: &NeighbourMessage,
    addr: impl Fn(&NeighbourAddress) -> Option<A>,
) -> Option<Neighbour<A>> {
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => ip = addr(a).or(ip),
            NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: msg.header.ifindex,
        ip: ip?,
        mac,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

fn parse_fdb(msg: &NeighbourMessage) -> Option<FdbEntry> {
    if !msg.header.flags.contains(NeighbourFlags::Own) {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some((*a).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => dst = Some((*a).into()),
            // In AF_BRIDGE messages the parser cannot know the family of NDA_DST; a vxlan FDB
            // entry's destination arrives as raw bytes: 4 for IPv4, 16 for IPv6.
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
                dst = match raw.len() {
                    4 => <[u8; 4]>::try_from(raw.as_slice())
                        .ok()
                        .map(|o| Ipv4Addr::from(o).into()),
                    16 => <[u8; 16]>::try_from(raw.as_slice())
                        .ok()
                        .map(|o| std::net::Ipv6Addr::from(o).into()),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Some(FdbEntry {
        ifindex: msg.header.ifindex,
        mac: mac?,
        dst,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

fn parse_route(msg: &RouteMessage) -> Option<Route> {
    let addr = |a: &RouteAddress| match a {
        RouteAddress::Inet(a) => Some(*a),
        _ => None,
    };
    let net = |a, len| Ipv4Network::new(a, len).ok();
    parse_route_of(msg, AddressFamily::Inet, Ipv4Addr::UNSPECIFIED, addr, net)
}

/// A main-table route of `family`, its addresses read by `addr` and its destination made by
/// `net`: what the IPv4 and IPv6 dumps share.
fn parse_route_of<A: Copy, N>(
    msg: &RouteMessage,
    family: AddressFamily,
    unspecified: A,
    addr: impl Fn(&RouteAddress) -> Option<A>,
    net: impl Fn(A, u8) -> Option<N>,
) -> Option<crate::kernel::Route<N, A>> {
    let mut table = msg.header.table as u32;
    let mut dst = unspecified;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = addr(a).unwrap_or(dst),
            RouteAttribute::Gateway(a) => gateway = addr(a).or(gateway),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != RouteHeader::RT_TABLE_MAIN as u32 || msg.header.address_family != family {
        return None;
    }
    Some(crate::kernel::Route {
        dst: net(dst, msg.header.destination_prefix_length)?,
        gateway,
        oif,
        protocol: u8::from(msg.header.protocol),
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
    })
}

#[cfg(test)]
mod fuzz {
    //! The kernel's replies, as decoded by netlink-packet-route, pass through `parse_*` into
    //! the agent's view of the kernel: no reply, however malformed, may panic the agent.

    use overlay_lab::fuzz::{mutations, run_for};
    use proptest::prelude::*;
    use rtnetlink::packet_core::{Emitable, Parseable, ParseableParametrized};
    use rtnetlink::packet_route::RouteNetlinkMessage;

    use super::*;

    const RTM_NEWLINK: u16 = 16;
    const RTM_NEWADDR: u16 = 20;
    const RTM_NEWROUTE: u16 = 24;
    const RTM_NEWNEIGH: u16 = 28;

    /// Decodes `bytes` as a reply of `kind` and feeds whatever decodes to the agent's parsers.
    fn feed(kind: u16, bytes: &[u8]) {
        if kind == RTM_NEWLINK {
            let _ = links::decode(bytes);
        }
        let Ok(msg) = RouteNetlinkMessage::parse_with_param(bytes, kind) else {
            return;
        };
        match msg {
            RouteNetlinkMessage::NewLink(m) => {
                let _ = parse_link(&m);
            }
            RouteNetlinkMessage::NewAddress(m) => {
                let _ = parse_address(&m);
            }
            RouteNetlinkMessage::NewNeighbour(m) => {
                let _ = parse_neighbour(&m);
                let _ = parse_fdb(&m);
            }
            RouteNetlinkMessage::NewRoute(m) => {
                let _ = parse_route(&m);
            }
            _ => {}
        }
    }

    fn emitted(msg: &impl Emitable) -> Vec<u8> {
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        buf
    }

    fn neighbour(family: AddressFamily, index: u32, ip: Ipv4Addr, mac: MacAddr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        msg
    }

    /// Well-formed replies of every kind the agent reads, to mutate.
    fn seeds() -> Vec<(u16, Vec<u8>)> {
        let route = Route {
            dst: "10.1.2.0/24".parse().unwrap(),
            gateway: Some("10.1.2.0".parse().unwrap()),
            oif: Some(7),
            protocol: ROUTE_PROTOCOL,
            onlink: true,
        };
        let vxlan = LinkVxlan::new("ovx-1", 4096)
            .dev(2)
            .port(VXLAN_PORT)
            .local("192.0.2.11".parse().unwrap())
            .learning(false)
            .mtu(1450)
            .address(vec![2, 0, 0, 0, 0, 1])
            .build();
        let mac = MacAddr([2, 0, 0, 0, 0, 2]);
        vec![
            (
                RTM_NEWLINK,
                emitted(&LinkVeth::new("ovv-1", "ovp-1").mtu(1450).build()),
            ),
            (RTM_NEWLINK, emitted(&LinkBridge::new("ovb-1").build())),
            (RTM_NEWLINK, emitted(&vxlan)),
            (
                RTM_NEWADDR,
                emitted(&address_message(3, "10.1.0.1/24".parse().unwrap())),
            ),
            (RTM_NEWROUTE, emitted(&route_message(&route))),
            (
                RTM_NEWNEIGH,
                emitted(&neighbour(
                    AddressFamily::Inet,
                    7,
                    "10.1.2.0".parse().unwrap(),
                    mac,
                )),
            ),
            (
                RTM_NEWNEIGH,
                emitted(&neighbour(
                    AddressFamily::Bridge,
                    7,
                    "192.0.2.12".parse().unwrap(),
                    mac,
                )),
            ),
        ]
    }

    #[test]
    fn lazy_link_decode_agrees_with_the_full_one() {
        let mut port = LinkVeth::new("ovv-1", "ovp-1").mtu(1450).up().build();
        port.attributes.push(LinkAttribute::Controller(3));
        port.attributes.push(LinkAttribute::LinkNetNsId(1));
        port.attributes.push(LinkAttribute::IfAlias(OWNED_ALIAS.into()));
        port.attributes
            .push(LinkAttribute::Address(vec![0x0a, 0x58, 0, 0, 0, 2]));
        let vlan = LinkVlan::new("eth0.10", 2, 10).build();
        let mut plain = LinkMessage::default();
        plain.header.index = 2;
        plain.attributes.push(LinkAttribute::IfName("eth0".into()));
        plain.attributes.push(LinkAttribute::Mtu(1500));
        plain.attributes.push(LinkAttribute::Link(9));
        let links = [
            emitted(&port),
            emitted(&LinkBridge::new("ovb-1").mtu(1450).build()),
            emitted(&vlan),
            emitted(&plain),
            seeds()[2].1.clone(),
        ];
        for bytes in links {
            let full = parse_link(&LinkMessage::parse(&bytes[..]).unwrap());
            assert!(full.is_some());
            assert_eq!(links::decode(&bytes), full);
        }
    }

    #[test]
    fn random_replies_never_panic_the_parsers() {
        let kinds = prop::sample::select(vec![RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWNEIGH]);
        run_for(
            "netlink replies (random bytes)",
            (kinds, prop::collection::vec(any::<u8>(), 0..400)),
            |(kind, bytes)| {
                feed(kind, &bytes);
                Ok(())
            },
        );
    }

    #[test]
    fn mutated_replies_never_panic_the_parsers() {
        let seeds = seeds();
        for (kind, bytes) in &seeds {
            // The seeds themselves decode: the mutations start from real replies.
            assert!(RouteNetlinkMessage::parse_with_param(bytes.as_slice(), *kind).is_ok());
        }
        let by_kind: Vec<u16> = seeds.iter().map(|(k, _)| *k).collect();
        let bodies: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
        let indexed: Vec<Vec<u8>> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut v = vec![i as u8];
                v.extend_from_slice(b);
                v
            })
            .collect();
        run_for("netlink replies (mutated)", mutations(indexed, 8), |bytes| {
            if let Some((&i, body)) = bytes.split_first() {
                let kind = by_kind[usize::from(i) % by_kind.len()];
                feed(kind, body);
            }
            Ok(())
        });
    }
}
