//! `overlayctl network`: creating, changing and removing networks, with the checks made before
//! a request is sent and the rendering of what comes back.

use std::io::{self, Write};

use clap::{Args, Subcommand};
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use serde_json::{Value, json};

use crate::client::call;
use crate::cmd::endpoint;
use crate::failure::Failure;
use crate::output::{Out, or_dash, table};

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long, value_enum)]
    pub mode: overlay_proto::modes::Mode,
    /// The network's address space, e.g. 10.1.0.0/16 (for macvlan: the LAN subnet). Given
    /// twice, an IPv4 and an IPv6 CIDR, the network is dual-stack (vxlan).
    #[arg(long, required = true)]
    pub subnet: Vec<String>,
    /// Prefix length of each host's slice (vxlan, nat). Default 24.
    #[arg(long)]
    pub host_prefix: Option<u32>,
    /// Prefix length of each host's IPv6 slice (dual-stack networks). Default 64.
    #[arg(long)]
    pub host_prefix6: Option<u32>,
    /// VXLAN network identifier (1-16777215). Default: first free from 4096.
    #[arg(long)]
    pub vni: Option<u32>,
    /// Workload MTU. Default: underlay MTU minus the VXLAN overhead (vxlan), underlay MTU (nat),
    /// the parent's (macvlan).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Masquerade traffic leaving the network to the host's underlay address (vxlan).
    #[arg(long)]
    pub nat_egress: bool,
    /// vxlan: route peers on this host's underlay subnet directly, without encapsulation; peers
    /// behind a router keep the tunnel.
    #[arg(long)]
    pub direct_routing: bool,
    /// macvlan: parent NIC on every host (a VLAN sub-interface like eth0.50 is created if missing).
    #[arg(long)]
    pub parent: Option<String>,
    /// macvlan: the LAN's router.
    #[arg(long)]
    pub gateway: Option<String>,
    /// macvlan: addresses overlay may hand out (default: the whole subnet).
    #[arg(long)]
    pub ip_range: Option<String>,
    /// macvlan mode.
    #[arg(long, value_parser = ["bridge", "private", "vepa", "passthru"])]
    pub macvlan_mode: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    Ls,
    /// Show a network with its leases and endpoints.
    Inspect { name: String },
    /// Change a live network: NAT egress on or off, MTU, direct routing on or off.
    Update {
        name: String,
        /// Masquerade traffic leaving the network (vxlan networks).
        #[arg(long, value_name = "true|false")]
        nat_egress: Option<bool>,
        /// Route same-segment peers without encapsulation (vxlan networks); established flows
        /// keep going across the switch.
        #[arg(long, value_name = "true|false")]
        direct_routing: Option<bool>,
        /// Workload MTU, or 0 to derive it from the underlay again.
        #[arg(long)]
        mtu: Option<u32>,
    },
    /// Remove a network. Refused while it has endpoints, unless --force.
    Rm {
        name: String,
        /// Also detach its endpoints.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(controllers: &Controllers, out: &mut Out, cmd: NetworkCmd) -> Result<(), Failure> {
    match cmd {
        NetworkCmd::Create(args) => {
            let req = create_request(args)?;
            let resp = call(controllers, |mut c| {
                let req = req.clone();
                async move { c.create_network(req).await }
            })
            .await?;
            print_created(out, &resp)?;
        }
        NetworkCmd::Ls => {
            let resp = call(controllers, |mut c| async move {
                c.list_networks(pb::ListNetworksRequest {}).await
            })
            .await?;
            print_list(out, &resp.networks)?;
        }
        NetworkCmd::Inspect { name } => {
            let resp = call(controllers, |mut c| {
                let name = name.clone();
                async move { c.inspect_network(pb::NetworkRef { name }).await }
            })
            .await?;
            print_detail(out, &resp)?;
        }
        NetworkCmd::Update {
            name,
            nat_egress,
            direct_routing,
            mtu,
        } => {
            if nat_egress.is_none() && mtu.is_none() && direct_routing.is_none() {
                return Err(Failure::Message(
                    "nothing to change: give --nat-egress, --mtu or --direct-routing".into(),
                ));
            }
            let req = pb::UpdateNetworkRequest {
                name,
                nat_egress,
                mtu,
                direct_routing,
            };
            let resp = call(controllers, |mut c| {
                let req = req.clone();
                async move { c.update_network(req).await }
            })
            .await?;
            print_updated(out, &resp)?;
        }
        NetworkCmd::Rm { name, force } => {
            let resp = call(controllers, |mut c| {
                let name = name.clone();
                async move { c.delete_network(pb::DeleteNetworkRequest { name, force }).await }
            })
            .await?;
            print_removed(out, &name, &resp)?;
        }
    }
    Ok(())
}

fn create_request(a: CreateArgs) -> Result<pb::CreateNetworkRequest, Failure> {
    let (v6, v4): (Vec<&String>, Vec<&String>) = a.subnet.iter().partition(|s| is_ipv6_cidr(s));
    let subnet = match v4.as_slice() {
        [one] => one.trim().to_string(),
        [] => {
            return Err(Failure::Message(format!(
                "an IPv4 --subnet is required (IPv6-only networks are not supported yet); add one such as 10.1.0.0/16 beside {}",
                v6.first().map(|s| s.trim()).unwrap_or_default()
            )));
        }
        _ => return Err(Failure::Message("--subnet: give at most one IPv4 CIDR".into())),
    };
    let subnet6 = match v6.as_slice() {
        [] => String::new(),
        [one] => one.trim().to_string(),
        _ => return Err(Failure::Message("--subnet: give at most one IPv6 CIDR".into())),
    };
    if a.host_prefix6.is_some() && subnet6.is_empty() {
        return Err(Failure::Message("--host-prefix6 needs an IPv6 --subnet".into()));
    }
    let macvlan_given =
        a.parent.is_some() || a.gateway.is_some() || a.ip_range.is_some() || a.macvlan_mode.is_some();
    if macvlan_given && !a.mode.on_the_lan() {
        return Err(Failure::Message(
            "--parent, --gateway, --ip-range and --macvlan-mode apply to --mode macvlan only".into(),
        ));
    }
    Ok(pb::CreateNetworkRequest {
        name: a.name,
        mode: a.mode.wire() as i32,
        subnet,
        host_prefix: a.host_prefix,
        subnet6,
        host_prefix6: a.host_prefix6,
        vni: a.vni,
        mtu: a.mtu,
        nat_egress: a.nat_egress,
        direct_routing: a.direct_routing,
        macvlan: macvlan_given.then(|| pb::MacvlanOptions {
            parent: a.parent.unwrap_or_default(),
            gateway: a.gateway.unwrap_or_default(),
            ip_range: a.ip_range.unwrap_or_default(),
            mode: a.macvlan_mode.unwrap_or_default(),
        }),
    })
}

/// `fd00::/64` and the like: the IPv6 one of the `--subnet`s.
fn is_ipv6_cidr(text: &str) -> bool {
    let addr = text.trim().split('/').next().unwrap_or_default();
    addr.parse::<std::net::Ipv6Addr>().is_ok()
}

fn mode(n: &pb::Network) -> &'static str {
    overlay_proto::modes::Mode::from_wire(n.mode).map_or("unspecified", |m| m.name())
}

fn json(n: &pb::Network) -> Value {
    let mut v = json!({
        "name": n.name, "id": n.id, "mode": mode(n), "subnet": n.subnet,
        "host_prefix": n.host_prefix, "vni": (n.vni != 0).then_some(n.vni),
        "mtu": (n.mtu != 0).then_some(n.mtu),
        "effective_mtu": (n.effective_mtu != 0).then_some(n.effective_mtu),
        "mtu_mode": if n.mtu == 0 { "auto" } else { "fixed" }, "nat_egress": n.nat_egress,
        "direct_routing": n.direct_routing,
        "endpoints": n.endpoint_count, "leases": n.lease_count, "capacity": n.capacity,
        "created_unix_ms": n.created_unix_ms,
    });
    if !n.subnet6.is_empty() {
        v["subnet6"] = json!(n.subnet6);
        v["host_prefix6"] = json!(n.host_prefix6);
    }
    if let Some(m) = &n.macvlan {
        v["macvlan"] =
            json!({"parent": m.parent, "gateway": m.gateway, "ip_range": m.ip_range, "mode": m.mode});
    }
    v
}

/// The MTU the network's devices get, and where it comes from: `1450 (auto)`, `1400 (fixed)`.
fn mtu_cell(n: &pb::Network) -> String {
    match (n.mtu, n.effective_mtu) {
        (0, 0) if mode(n) == "macvlan" => "auto (the parent's)".into(),
        (0, 0) => "auto (no host yet)".into(),
        (0, m) => format!("{m} (auto)"),
        (m, _) => format!("{m} (fixed)"),
    }
}

/// The network's CIDRs: `10.1.0.0/16` or, dual-stack, `10.1.0.0/16,fd00:10::/48`.
fn subnets(n: &pb::Network) -> String {
    if n.subnet6.is_empty() {
        n.subnet.clone()
    } else {
        format!("{},{}", n.subnet, n.subnet6)
    }
}

fn vni_cell(n: &pb::Network) -> String {
    if n.vni == 0 { "-".into() } else { n.vni.to_string() }
}

fn print_list(out: &mut Out, networks: &[pb::Network]) -> io::Result<()> {
    if out.json() {
        return out.print_json(&Value::Array(networks.iter().map(json).collect()));
    }
    let rows = networks
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                mode(n).into(),
                subnets(n),
                vni_cell(n),
                mtu_cell(n),
                if n.nat_egress { "yes" } else { "no" }.into(),
                n.endpoint_count.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &["NAME", "MODE", "SUBNET", "VNI", "MTU", "NAT", "ENDPOINTS"],
        rows,
    )?;
    Ok(())
}

fn print_created(out: &mut Out, n: &pb::Network) -> io::Result<()> {
    if out.json() {
        return out.print_json(&json(n));
    }
    match mode(n) {
        "vxlan" => writeln!(
            out,
            "created network {} (vxlan, {}, VNI {})",
            n.name,
            subnets(n),
            n.vni
        ),
        m => writeln!(out, "created network {} ({m}, {})", n.name, n.subnet),
    }?;
    Ok(())
}

fn print_updated(out: &mut Out, n: &pb::Network) -> io::Result<()> {
    if out.json() {
        return out.print_json(&json(n));
    }
    let mtu = mtu_cell(n);
    let direct = if n.direct_routing {
        ", direct routing on"
    } else {
        ""
    };
    writeln!(
        out,
        "updated network {} (nat egress {}, mtu {mtu}{direct})",
        n.name,
        if n.nat_egress { "on" } else { "off" }
    )?;
    Ok(())
}

fn print_detail(out: &mut Out, d: &pb::NetworkDetail) -> io::Result<()> {
    let Some(n) = &d.network else { return Ok(()) };
    if out.json() {
        let mut v = json(n);
        v["host_leases"] = Value::Array(
            d.leases
                .iter()
                .map(|l| {
                    let mut v = json!({"host": l.host, "subnet": l.subnet, "gateway": l.gateway});
                    if !l.subnet6.is_empty() {
                        v["subnet6"] = json!(l.subnet6);
                        v["gateway6"] = json!(l.gateway6);
                    }
                    v
                })
                .collect(),
        );
        v["endpoint_list"] = Value::Array(d.endpoints.iter().map(endpoint::json).collect());
        v["revision"] = json!(d.revision);
        return out.print_json(&v);
    }
    writeln!(out, "name:        {} (id {})", n.name, n.id)?;
    writeln!(out, "mode:        {}", mode(n))?;
    writeln!(out, "subnet:      {}", n.subnet)?;
    match mode(n) {
        "macvlan" => {
            if let Some(m) = &n.macvlan {
                writeln!(out, "parent:      {} ({} mode)", m.parent, or_dash(&m.mode))?;
                writeln!(out, "gateway:     {}", m.gateway)?;
                writeln!(out, "ip range:    {}", m.ip_range)?;
            }
        }
        _ => writeln!(out, "host prefix: /{}", n.host_prefix)?,
    }
    if !n.subnet6.is_empty() {
        writeln!(
            out,
            "subnet6:     {} (host prefix /{})",
            n.subnet6, n.host_prefix6
        )?;
    }
    if n.vni != 0 {
        writeln!(out, "vni:         {}", n.vni)?;
    }
    writeln!(out, "mtu:         {}", mtu_cell(n))?;
    writeln!(out, "nat egress:  {}", if n.nat_egress { "yes" } else { "no" })?;
    if n.direct_routing {
        writeln!(out, "direct routing: yes (same-segment peers without the tunnel)")?;
    }
    writeln!(out, "endpoints:   {} (capacity {})", n.endpoint_count, n.capacity)?;
    if !d.leases.is_empty() {
        writeln!(out)?;
        if n.subnet6.is_empty() {
            let rows = d
                .leases
                .iter()
                .map(|l| vec![l.host.clone(), l.subnet.clone(), l.gateway.clone()])
                .collect();
            table(out, &["HOST", "SUBNET", "GATEWAY"], rows)?;
        } else {
            let rows = d
                .leases
                .iter()
                .map(|l| {
                    vec![
                        l.host.clone(),
                        l.subnet.clone(),
                        l.gateway.clone(),
                        or_dash(&l.subnet6),
                        or_dash(&l.gateway6),
                    ]
                })
                .collect();
            table(out, &["HOST", "SUBNET", "GATEWAY", "SUBNET6", "GATEWAY6"], rows)?;
        }
    }
    if !d.endpoints.is_empty() {
        writeln!(out)?;
        endpoint::table(out, &d.endpoints)?;
    }
    Ok(())
}

fn print_removed(out: &mut Out, name: &str, r: &pb::DeleteNetworkResponse) -> io::Result<()> {
    if out.json() {
        return out.print_json(
            &json!({"removed": name, "removed_endpoints": r.removed_endpoints, "revision": r.revision}),
        );
    }
    if r.removed_endpoints > 0 {
        writeln!(
            out,
            "removed network {name} and its {} endpoint(s)",
            r.removed_endpoints
        )?;
    } else {
        writeln!(out, "removed network {name}")?;
    }
    Ok(())
}
