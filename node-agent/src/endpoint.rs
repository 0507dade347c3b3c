//! Wiring a workload into its namespace.
//!
//! - veth (vxlan, nat): a pair whose host end joins the network's bridge and whose other end
//!   moves into the workload's namespace.
//! - macvlan: a sub-interface of the parent NIC, moved whole into the namespace.
//!
//! Either way the workload side is renamed, given its MAC, MTU and address, and a default
//! route via the gateway. A failed attempt leaves nothing behind.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use ipnetwork::Ipv4Network;
use overlay_proto::mac::MacAddr;
use rtnetlink::packet_route::link::MacVlanMode;
use rtnetlink::{LinkMacVlan, LinkUnspec, RouteMessageBuilder};

use crate::kernel::MacvlanRecord;
use crate::netlink::{Netlink, NetlinkError};
use crate::netns;
use crate::spec::{Attachment, EndpointSpec, MacvlanMode, NetnsRef};

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

fn nl_err(e: NetlinkError) -> String {
    e.to_string()
}

fn veth_names(ep: &EndpointSpec) -> Result<(&str, &str), String> {
    match &ep.attachment {
        Attachment::Veth { bridge, host_ifname } => Ok((bridge, host_ifname)),
        Attachment::Macvlan { .. } => Err("not a veth endpoint".into()),
    }
}

/// Deletes `ep.peer_ifname` if an interrupted attempt left it in the host namespace.
async fn clear_stranded(nl: &Netlink, ep: &EndpointSpec) -> Result<(), String> {
    if let Some(old) = nl.link_by_name(&ep.peer_ifname).await.map_err(nl_err)? {
        nl.delete_link(&old.name, old.index).await.map_err(nl_err)?;
    }
    Ok(())
}

/// Creates a veth endpoint from scratch. `stale` devices (a broken earlier attempt) go first.
pub async fn wire(
    nl: &Netlink,
    ep: &EndpointSpec,
    stale: &[(String, u32)],
    bridge_index: u32,
) -> Result<(), String> {
    let (bridge, host_ifname) = veth_names(ep)?;
    // Open the namespace first: a missing namespace must fail before anything is created.
    let path = ep.netns.path();
    let ns = netns::open(&path).map_err(|e| e.to_string())?;
    for (name, index) in stale {
        nl.delete_link(name, *index).await.map_err(nl_err)?;
    }
    clear_stranded(nl, ep).await?;
    nl.create_veth_into(host_ifname, &ep.peer_ifname, ep.mtu, &ns)
        .await
        .map_err(nl_err)?;
    let result = async {
        configure_inside(ep, ns).await?;
        let host = nl
            .link_by_name(host_ifname)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| format!("veth end {host_ifname} vanished"))?;
        attach_host_side(nl, ep, host.index, bridge_index).await
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

/// Configures `ep.peer_ifname`, already inside the namespace open at `ns`, as the workload's
/// interface.
async fn configure_inside(ep: &EndpointSpec, ns: std::fs::File) -> Result<(), String> {
    let side = WorkloadSide::of(ep, Some(ep.peer_ifname.clone()));
    netns::run_in(ns, ep.netns.path().display().to_string(), move |nl| {
        configure(nl, side)
    })
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Puts a veth's host end on the bridge with the network's MTU and brings it up.
pub async fn attach_host_side(
    nl: &Netlink,
    ep: &EndpointSpec,
    index: u32,
    bridge_index: u32,
) -> Result<(), String> {
    let (bridge, host_ifname) = veth_names(ep)?;
    nl.set_link(
        LinkUnspec::new_with_index(index)
            .controller(bridge_index)
            .mtu(ep.mtu)
            .up(),
        &format!("attach {host_ifname} to {bridge}"),
    )
    .await
    .map_err(nl_err)
}

/// Checks the workload side and repairs what differs (address, MAC, MTU, default route).
pub async fn verify(ep: &EndpointSpec) -> Result<Checked, String> {
    let path = ep.netns.path();
    let ns = netns::open(&path).map_err(|e| e.to_string())?;
    let side = WorkloadSide::of(ep, None);
    netns::run_in(ns, path.display().to_string(), move |nl| configure(nl, side))
        .await
        .map_err(|e| e.to_string())
}

fn macvlan_mode(mode: MacvlanMode) -> MacVlanMode {
    match mode {
        MacvlanMode::Bridge => MacVlanMode::Bridge,
        MacvlanMode::Private => MacVlanMode::Private,
        MacvlanMode::Vepa => MacVlanMode::Vepa,
        MacvlanMode::Passthru => MacVlanMode::Passthrough,
    }
}

/// Creates a macvlan endpoint on `parent_index` and moves it into the workload namespace.
pub async fn wire_macvlan(
    nl: &Netlink,
    ep: &EndpointSpec,
    parent_index: u32,
) -> Result<MacvlanRecord, String> {
    let Attachment::Macvlan { mode, .. } = &ep.attachment else {
        return Err("not a macvlan endpoint".into());
    };
    let ns = netns::open(&ep.netns.path()).map_err(|e| e.to_string())?;
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
        .add(msg.setns_by_fd(ns.as_raw_fd()).build())
        .execute()
        .await
        .map_err(|e| format!("create macvlan {}: {e}", ep.peer_ifname))?;
    configure_inside(ep, ns).await?;
    Ok(MacvlanRecord {
        id: ep.id,
        netns: ep.netns.as_text(),
        ifname: ep.ifname.clone(),
        mac: ep.mac,
    })
}

/// Deletes a detached macvlan endpoint inside its namespace: only the interface with the
/// recorded name and MAC, so a device the workload made itself is never touched. A namespace
/// that is gone took the interface with it.
pub async fn remove_macvlan(record: &MacvlanRecord) -> Result<(), String> {
    let netns = NetnsRef::parse(&record.netns)?;
    let path = netns.path();
    let ns = match netns::open(&path) {
        Ok(ns) => ns,
        Err(netns::NetnsError::NotFound(_)) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let (ifname, mac) = (record.ifname.clone(), record.mac);
    netns::run_in(ns, path.display().to_string(), move |nl| async move {
        let links = nl.links().await.map_err(nl_err)?;
        if let Some(l) = links.iter().find(|l| l.name == ifname && l.mac == Some(mac)) {
            nl.delete_link(&l.name, l.index).await.map_err(nl_err)?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())
}

/// Runs inside the workload namespace. When the interface is arriving and anything fails, it
/// is deleted again so the namespace is left as it was.
async fn configure(nl: Netlink, w: WorkloadSide) -> Result<Checked, String> {
    let arriving_index = match &w.arriving_as {
        Some(name) => nl
            .link_by_name(name)
            .await
            .map_err(nl_err)?
            .map(|l| (name.clone(), l.index)),
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

async fn configure_steps(nl: &Netlink, w: &WorkloadSide) -> Result<Checked, String> {
    let links = nl.links().await.map_err(nl_err)?;
    let mut repairs = 0;
    if let Some(lo) = links.iter().find(|l| l.name == "lo")
        && !lo.up
    {
        nl.set_link(LinkUnspec::new_with_index(lo.index).up(), "set lo up")
            .await
            .map_err(nl_err)?;
        repairs += 1;
    }
    let with_mtu = |b: rtnetlink::LinkMessageBuilder<LinkUnspec>| match w.mtu {
        Some(mtu) => b.mtu(mtu),
        None => b,
    };
    let index = match &w.arriving_as {
        Some(arriving) => {
            if links.iter().any(|l| l.name == w.ifname) {
                return Err(format!("interface {} already exists in the namespace", w.ifname));
            }
            let l = links
                .iter()
                .find(|l| &l.name == arriving)
                .ok_or_else(|| format!("{arriving} did not arrive in the namespace"))?;
            nl.set_link(
                with_mtu(
                    LinkUnspec::new_with_index(l.index)
                        .name(w.ifname.clone())
                        .address(w.mac.0.to_vec()),
                ),
                &format!("rename {arriving} to {}", w.ifname),
            )
            .await
            .map_err(nl_err)?;
            nl.set_link(
                LinkUnspec::new_with_index(l.index).up(),
                &format!("set {} up", w.ifname),
            )
            .await
            .map_err(nl_err)?;
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
                .await
                .map_err(nl_err)?;
                repairs += 1;
            }
            if !l.up {
                nl.set_link(
                    LinkUnspec::new_with_index(l.index).up(),
                    &format!("set {} up", w.ifname),
                )
                .await
                .map_err(nl_err)?;
                repairs += 1;
            }
            l.index
        }
    };
    let has_address = nl
        .addresses()
        .await
        .map_err(nl_err)?
        .iter()
        .any(|(i, a)| *i == index && *a == w.address);
    if !has_address {
        nl.handle()
            .address()
            .add(index, w.address.ip().into(), w.address.prefix())
            .replace()
            .execute()
            .await
            .map_err(|e| format!("add address {}: {e}", w.address))?;
        repairs += 1;
    }
    let has_default = nl
        .routes()
        .await
        .map_err(nl_err)?
        .iter()
        .any(|r| r.dst.prefix() == 0 && r.gateway == Some(w.gateway) && r.oif == Some(index));
    if !has_default {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(w.gateway)
            .output_interface(index)
            .build();
        nl.handle()
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| format!("add default route via {}: {e}", w.gateway))?;
        repairs += 1;
    }
    Ok(Checked::Fine(repairs))
}
