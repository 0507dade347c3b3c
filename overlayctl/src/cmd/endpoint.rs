//! `overlayctl endpoint`: attaching namespaces to networks and detaching them; its rendering
//! of an endpoint is also what `network inspect` and `doctor` show.

use std::io::{self, Write};
use std::time::Duration;

use clap::Subcommand;
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use serde_json::{Value, json};

use crate::client::call;
use crate::failure::Failure;
use crate::output::{self, Out};

#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// Attach a network namespace to a network; prints the address it got.
    Attach {
        network: String,
        /// Host the namespace lives on.
        #[arg(long)]
        host: String,
        /// Namespace: a name under /run/netns, an absolute path to a namespace file (not a
        /// symbolic link), or a workload's pid.
        #[arg(long)]
        netns: String,
        /// Interface name inside the namespace.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Ask for this address instead of the next free one.
        #[arg(long)]
        ip: Option<String>,
        /// Seconds to wait for the host's agent to wire the endpoint.
        #[arg(long, default_value_t = 15)]
        wait: u32,
        /// Only record the request; do not wait for the host's agent to carry it out.
        #[arg(long)]
        no_wait: bool,
        /// Make this network the namespace's default route (taken from the endpoint that has
        /// it). Without it, a namespace's first network is its default route and every other
        /// one is routed by its CIDR.
        #[arg(long)]
        default_route: bool,
        /// A name the endpoint answers to in the network's DNS (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Publish a port: HOSTPORT on the host's underlay address forwards to PORT of the
        /// endpoint, for other hosts and the host itself (repeatable; tcp unless /udp).
        #[arg(long = "publish", short = 'p', value_name = "HOSTPORT:PORT[/tcp|udp]")]
        publish: Vec<overlay_proto::ports::PublishedPort>,
    },
    /// Detach a namespace from a network; its address is released.
    Detach {
        network: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        netns: String,
    },
    /// List endpoints.
    Ls {
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        host: Option<String>,
    },
}

pub async fn run(controllers: &Controllers, out: &mut Out, cmd: EndpointCmd) -> Result<(), Failure> {
    match cmd {
        EndpointCmd::Attach {
            network,
            host,
            netns,
            ifname,
            ip,
            wait,
            no_wait,
            default_route,
            names,
            publish,
        } => {
            let req = pb::AttachEndpointRequest {
                network,
                host,
                netns,
                ifname,
                ip: ip.unwrap_or_default(),
                wait_ms: wait.saturating_mul(1000),
                no_wait,
                default_route,
                names,
                ports: overlay_proto::ports::to_wire(&publish),
            };
            let resp = call(controllers, |mut c| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(Duration::from_secs(wait as u64 + 15));
                async move { c.attach_endpoint(request).await }
            })
            .await?;
            print_attached(out, &resp)?;
        }
        EndpointCmd::Detach { network, host, netns } => {
            let req = pb::DetachEndpointRequest { network, host, netns };
            let resp = call(controllers, |mut c| {
                let req = req.clone();
                async move { c.detach_endpoint(req).await }
            })
            .await?;
            print_detached(out, &resp)?;
        }
        EndpointCmd::Ls { network, host } => {
            let req = pb::ListEndpointsRequest {
                network: network.unwrap_or_default(),
                host: host.unwrap_or_default(),
            };
            let resp = call(controllers, |mut c| {
                let req = req.clone();
                async move { c.list_endpoints(req).await }
            })
            .await?;
            print_list(out, &resp.endpoints)?;
        }
    }
    Ok(())
}

fn ep_state(e: &pb::Endpoint) -> &'static str {
    pb::EndpointState::try_from(e.state)
        .unwrap_or(pb::EndpointState::Unspecified)
        .label()
}

/// One endpoint as scripts see it (also in `network inspect` and `doctor`).
pub(crate) fn json(e: &pb::Endpoint) -> Value {
    let mut v = json!({
        "id": e.id, "network": e.network, "host": e.host, "netns": e.netns, "ifname": e.ifname,
        "address": e.address, "ip": e.address.split('/').next().unwrap_or_default(),
        "mac": e.mac, "gateway": e.gateway, "state": ep_state(e),
        "message": (!e.message.is_empty()).then_some(&e.message),
        "default_route": e.default_route,
        "key": e.key, "owner": e.owner, "names": e.names,
        "ports": e.ports.iter().map(|p| json!({
            "host_port": p.host_port, "container_port": p.container_port,
            "protocol": p.protocol, "host_ip": (!p.host_ip.is_empty()).then_some(&p.host_ip),
        })).collect::<Vec<_>>(),
    });
    if !e.address6.is_empty() {
        v["address6"] = json!(e.address6);
        v["ip6"] = json!(e.address6.split('/').next().unwrap_or_default());
        v["gateway6"] = json!(e.gateway6);
    }
    v
}

/// `10.1.3.2/24` or, dual-stack, `10.1.3.2/24,fd00:1:0:3::2/64`.
fn addresses(e: &pb::Endpoint) -> String {
    if e.address6.is_empty() {
        e.address.clone()
    } else {
        format!("{},{}", e.address, e.address6)
    }
}

/// `8080:80/tcp, 5353:53/udp` (empty: none).
fn ports_text(e: &pb::Endpoint) -> String {
    e.ports
        .iter()
        .map(|p| {
            let host = if p.host_ip.is_empty() {
                String::new()
            } else {
                format!("{}:", p.host_ip)
            };
            format!("{host}{}:{}/{}", p.host_port, p.container_port, p.protocol)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The endpoint table (also in `network inspect`).
pub(crate) fn table(out: &mut Out, eps: &[pb::Endpoint]) -> io::Result<()> {
    let rows = eps
        .iter()
        .map(|e| {
            let state = if e.message.is_empty() {
                ep_state(e).to_string()
            } else {
                format!("{}: {}", ep_state(e), e.message)
            };
            vec![
                e.network.clone(),
                e.host.clone(),
                e.netns.clone(),
                e.ifname.clone(),
                addresses(e),
                e.mac.clone(),
                if e.default_route { "default" } else { "network" }.to_string(),
                ports_text(e),
                state,
            ]
        })
        .collect();
    output::table(
        out,
        &[
            "NETWORK", "HOST", "NETNS", "IFNAME", "ADDRESS", "MAC", "ROUTE", "PORTS", "STATE",
        ],
        rows,
    )?;
    Ok(())
}

fn print_list(out: &mut Out, eps: &[pb::Endpoint]) -> io::Result<()> {
    if out.json() {
        return out.print_json(&Value::Array(eps.iter().map(json).collect()));
    }
    table(out, eps)
}

fn print_attached(out: &mut Out, e: &pb::Endpoint) -> io::Result<()> {
    if out.json() {
        return out.print_json(&json(e));
    }
    if e.address.is_empty() {
        // --no-wait: recorded for the host's agent, which picks the address from its lease.
        writeln!(
            out,
            "requested: host {}'s agent attaches {} to {} and picks the address",
            e.host, e.netns, e.network
        )?;
    } else {
        // The address alone, for `ip=$(overlayctl endpoint attach ...)`; dual-stack: both.
        let ip = e.address.split('/').next().unwrap_or_default();
        match e.address6.split('/').next().unwrap_or_default() {
            "" => writeln!(out, "{ip}")?,
            ip6 => writeln!(out, "{ip} {ip6}")?,
        }
    }
    Ok(())
}

fn print_detached(out: &mut Out, r: &pb::DetachEndpointResponse) -> io::Result<()> {
    let Some(e) = &r.endpoint else { return Ok(()) };
    if out.json() {
        return out.print_json(&json(e));
    }
    if e.address.is_empty() {
        writeln!(
            out,
            "withdrew the request for {} on {} in {}",
            e.netns, e.host, e.network
        )?;
    } else {
        writeln!(
            out,
            "detached {} from {} on {} (released {})",
            e.netns,
            e.network,
            e.host,
            addresses(e)
        )?;
    }
    Ok(())
}
