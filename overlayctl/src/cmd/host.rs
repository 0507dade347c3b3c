//! `overlayctl host`: the hosts agents registered, so listing, inspecting and removing one
//! share their rendering.

use std::io::{self, Write};

use clap::Subcommand;
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use serde_json::{Value, json};

use crate::client::call;
use crate::failure::Failure;
use crate::output::{Out, ago, table};

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// List hosts.
    Ls,
    /// Show one host with its subnet leases.
    Inspect { name: String },
    /// Remove a host: its leases and endpoints are released and every other host drops its
    /// tunnel entries. Refused while its agent is connected (it would register the host
    /// again): stop the agent first, or give --force.
    Rm {
        name: String,
        /// Remove it although its agent is connected (the agent registers it again unless it
        /// is stopped).
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(controllers: &Controllers, out: &mut Out, cmd: HostCmd) -> Result<(), Failure> {
    match cmd {
        HostCmd::Ls => {
            let resp = call(controllers, |mut c| async move {
                c.list_hosts(pb::ListHostsRequest {}).await
            })
            .await?;
            print_list(out, &resp.hosts)?;
        }
        HostCmd::Inspect { name } => {
            let resp = call(controllers, |mut c| {
                let name = name.clone();
                async move { c.inspect_host(pb::HostRef { name }).await }
            })
            .await?;
            print_one(out, &resp)?;
        }
        HostCmd::Rm { name, force } => {
            let resp = call(controllers, |mut c| {
                let name = name.clone();
                async move { c.remove_host(pb::RemoveHostRequest { name, force }).await }
            })
            .await?;
            print_removed(out, &name, &resp)?;
        }
    }
    Ok(())
}

fn json(h: &pb::Host) -> Value {
    let leases: Vec<Value> = h
        .leases
        .iter()
        .map(|l| json!({"network": l.host, "subnet": l.subnet, "gateway": l.gateway}))
        .collect();
    json!({
        "name": h.name, "underlay_ip": h.underlay_ip, "underlay_iface": h.underlay_iface,
        "underlay_mtu": h.underlay_mtu, "vtep_mac": h.vtep_mac, "state": h.state,
        "registered_unix_ms": h.registered_unix_ms, "last_seen_unix_ms": h.last_seen_unix_ms,
        "endpoints": h.endpoint_count, "leases": leases,
    })
}

/// The table (or JSON array) of `host ls`.
pub(crate) fn print_list(out: &mut Out, hosts: &[pb::Host]) -> io::Result<()> {
    if out.json() {
        return out.print_json(&Value::Array(hosts.iter().map(json).collect()));
    }
    let rows = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.state.clone(),
                h.underlay_ip.clone(),
                h.vtep_mac.clone(),
                h.endpoint_count.to_string(),
                ago(h.last_seen_unix_ms),
            ]
        })
        .collect();
    table(
        out,
        &["NAME", "STATE", "UNDERLAY", "VTEP MAC", "ENDPOINTS", "LAST SEEN"],
        rows,
    )?;
    Ok(())
}

fn print_one(out: &mut Out, h: &pb::Host) -> io::Result<()> {
    if out.json() {
        return out.print_json(&json(h));
    }
    writeln!(out, "name:        {}", h.name)?;
    writeln!(
        out,
        "state:       {} (last seen {})",
        h.state,
        ago(h.last_seen_unix_ms)
    )?;
    writeln!(
        out,
        "underlay:    {} on {} (MTU {})",
        h.underlay_ip, h.underlay_iface, h.underlay_mtu
    )?;
    writeln!(out, "vtep mac:    {}", h.vtep_mac)?;
    writeln!(out, "endpoints:   {}", h.endpoint_count)?;
    if !h.leases.is_empty() {
        writeln!(out)?;
        let rows = h
            .leases
            .iter()
            .map(|l| vec![l.host.clone(), l.subnet.clone(), l.gateway.clone()])
            .collect();
        table(out, &["NETWORK", "SUBNET", "GATEWAY"], rows)?;
    }
    Ok(())
}

fn print_removed(out: &mut Out, name: &str, r: &pb::RemoveHostResponse) -> io::Result<()> {
    if out.json() {
        return out.print_json(
            &json!({"removed": name, "released_leases": r.released_leases, "removed_endpoints": r.removed_endpoints, "revision": r.revision, "agent_connected": r.agent_connected}),
        );
    }
    writeln!(
        out,
        "removed host {name} ({} lease(s) released, {} endpoint(s) removed)",
        r.released_leases, r.removed_endpoints
    )?;
    if r.agent_connected {
        writeln!(
            out,
            "warning: the agent of {name} is still running and will register {name} again unless it is stopped"
        )?;
    }
    Ok(())
}
