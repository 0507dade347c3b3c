//! Wiring a workload: a veth pair whose host end joins the network's bridge and whose other
//! end moves into the workload's namespace, renamed, addressed, with a default route.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use overlay_proto::mac::MacAddr;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use crate::netlink::{Netlink, NetlinkError};
use crate::netns;
use crate::spec::EndpointSpec;

/// What the workload side must look like.
#[derive(Clone, Debug)]
struct WorkloadSide {
    ifname: String,
    /// Name the interface arrives with (a fresh veth end); `None` when checking an existing one.
    arriving_as: Option<String>,
    mac: MacAddr,
    mtu: u32,
    address: Ipv4Network,
    gateway: Ipv4Addr,
}

impl WorkloadSide {
    fn of(ep: &EndpointSpec, arriving_as: Option<String>) -> Self {
        Self {
            ifname: ep.ifname.clone(),
            arriving_as,
            mac: ep.mac,
            mtu: ep.mtu,
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

/// Creates the endpoint from scratch. `stale` devices (a broken earlier attempt) go first.
/// On failure nothing is left behind in the host namespace.
pub async fn wire(
    nl: &Netlink,
    ep: &EndpointSpec,
    stale: &[(String, u32)],
    bridge_index: u32,
) -> Result<(), String> {
    // Open the namespace first: a missing namespace must fail before anything is created.
    let path = ep.netns.path();
    let ns = netns::open(&path).map_err(|e| e.to_string())?;
    for (name, index) in stale {
        nl.delete_link(name, *index).await.map_err(nl_err)?;
    }
    if let Some(old) = nl.link_by_name(&ep.peer_ifname).await.map_err(nl_err)? {
        nl.delete_link(&old.name, old.index).await.map_err(nl_err)?;
    }
    nl.create_veth(&ep.host_ifname, &ep.peer_ifname, ep.mtu)
        .await
        .map_err(nl_err)?;
    let result = async {
        let peer = nl
            .link_by_name(&ep.peer_ifname)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| format!("veth end {} vanished after creation", ep.peer_ifname))?;
        nl.move_to_netns(peer.index, &ep.peer_ifname, &ns)
            .await
            .map_err(nl_err)?;
        let side = WorkloadSide::of(ep, Some(ep.peer_ifname.clone()));
        netns::run_in(ns, path.display().to_string(), move |nl| configure(nl, side))
            .await
            .map_err(|e| e.to_string())?;
        let host = nl
            .link_by_name(&ep.host_ifname)
            .await
            .map_err(nl_err)?
            .ok_or_else(|| format!("veth end {} vanished", ep.host_ifname))?;
        attach_host_side(nl, ep, host.index, bridge_index).await
    }
    .await;
    if result.is_err()
        && let Ok(Some(host)) = nl.link_by_name(&ep.host_ifname).await
    {
        // Deleting one end removes the pair, wherever the other end is.
        let _ = nl.delete_link(&host.name, host.index).await;
    }
    result
}

/// Puts the host end on the bridge with the network's MTU and brings it up.
pub async fn attach_host_side(
    nl: &Netlink,
    ep: &EndpointSpec,
    index: u32,
    bridge_index: u32,
) -> Result<(), String> {
    nl.set_link(
        LinkUnspec::new_with_index(index)
            .controller(bridge_index)
            .mtu(ep.mtu)
            .up(),
        &format!("attach {} to {}", ep.host_ifname, ep.bridge),
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

/// Runs inside the workload namespace.
async fn configure(nl: Netlink, w: WorkloadSide) -> Result<Checked, String> {
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
                LinkUnspec::new_with_index(l.index)
                    .name(w.ifname.clone())
                    .address(w.mac.0.to_vec())
                    .mtu(w.mtu),
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
            if l.mac != Some(w.mac) || l.mtu != w.mtu {
                nl.set_link(
                    LinkUnspec::new_with_index(l.index)
                        .address(w.mac.0.to_vec())
                        .mtu(w.mtu),
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
