//! `overlayctl`: the command-line client of overlay, in the spirit of `docker network`.
//!
//! Tables for people, `--output json` for scripts. Every error exits 1 with one line on stderr
//! that names the cause.

mod output;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::overlay_client::OverlayClient;
use tonic::transport::Channel;

use overlay_proto::tls::{Purpose, Role, Tls};
use overlayctl::certs;
use overlayctl::cli::{CertsCmd, Cli, ClusterCmd, Command, CreateArgs, EndpointCmd, HostCmd, NetworkCmd};

/// Why a command failed: exit code 1 and one line on stderr.
enum Failure {
    /// The cause, for the user.
    Message(String),
    /// The answer could not be written (a full disk; a closed pipe never gets here, see
    /// [`output::ReaderGone`]).
    Output(std::io::Error),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Message(s.message().lines().next().unwrap_or("request failed").to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Output(e)
    }
}

/// One line on stderr. Not `eprintln!`, which panics when stderr itself cannot be written.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "overlayctl: {line}");
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut out = output::Out::stdout(cli.output);
    let outcome = runtime.block_on(run(cli, &mut out));
    // What was written goes out before any error line, and a full disk is noticed even when
    // everything else succeeded.
    let flushed = out.finish();
    let failure = match (outcome, flushed) {
        (Err(Failure::Message(msg)), _) => Failure::Message(msg),
        (Err(Failure::Output(e)), _) | (Ok(()), Err(e)) => Failure::Output(e),
        (Ok(()), Ok(())) => return ExitCode::SUCCESS,
    };
    match failure {
        Failure::Message(msg) => say(&msg),
        Failure::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
        Failure::Output(e) => say(&format!("cannot write output: {e}")),
    }
    ExitCode::FAILURE
}

/// Help and version print as usual; a usage error becomes one line and exit 1.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let rendered = e.render().to_string();
    let text: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    let line = text.join(" ");
    say(&format!("{} (see --help)", line.trim_start_matches("error: ")));
    ExitCode::FAILURE
}

async fn run(cli: Cli, out: &mut output::Out) -> Result<(), Failure> {
    // Local commands first: making certificates must not need the TLS files they make.
    if let Command::Certs(cmd) = cli.command {
        return certs(out, cmd);
    }
    let tls = cli
        .tls
        .load_for(Purpose::Connect)
        .map_err(|e| Failure::Message(e.to_string()))?;
    let controllers = Controllers::new(
        std::slice::from_ref(&cli.controller),
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .map_err(|e| Failure::Message(e.to_string()))?
    .with_tls(tls.as_ref().map(Tls::client_config));
    match cli.command {
        Command::Cluster(ClusterCmd::Status) => {
            let resp = call(&controllers, |mut c| async move {
                c.cluster_status(pb::ClusterStatusRequest {}).await
            })
            .await?;
            output::cluster_status(out, &resp)?;
        }
        Command::Probe { network, count } => {
            let resp = call(&controllers, |mut c| {
                let req = pb::ProbeRequest {
                    network: network.clone(),
                    count,
                };
                async move { c.probe(req).await }
            })
            .await?;
            let failing = output::probe(out, &resp)?;
            if !failing.is_empty() {
                return Err(Failure::Message(format!(
                    "probe found {} failing path(s): {}",
                    failing.len(),
                    failing.join("; ")
                )));
            }
        }
        Command::Doctor => {
            let resp = call(&controllers, |mut c| async move {
                c.doctor(pb::DoctorRequest {}).await
            })
            .await?;
            let problems = output::doctor(out, &resp)?;
            if !problems.is_empty() {
                return Err(Failure::Message(format!(
                    "doctor found {} problem(s): {}",
                    problems.len(),
                    problems.join("; ")
                )));
            }
        }
        Command::Cluster(ClusterCmd::AddMember { id, addr }) => {
            let resp = call(&controllers, |mut c| {
                let req = pb::AddMemberRequest {
                    id,
                    addr: addr.clone(),
                };
                async move { c.add_member(req).await }
            })
            .await?;
            output::cluster_status(out, &resp)?;
        }
        Command::Cluster(ClusterCmd::RemoveMember { id }) => {
            let resp = call(&controllers, |mut c| async move {
                c.remove_member(pb::RemoveMemberRequest { id }).await
            })
            .await?;
            output::cluster_status(out, &resp)?;
        }
        Command::Host(HostCmd::Ls) => {
            let resp = call(&controllers, |mut c| async move {
                c.list_hosts(pb::ListHostsRequest {}).await
            })
            .await?;
            output::hosts(out, &resp.hosts)?;
        }
        Command::Host(HostCmd::Inspect { name }) => {
            let resp = call(&controllers, |mut c| {
                let name = name.clone();
                async move { c.inspect_host(pb::HostRef { name }).await }
            })
            .await?;
            output::host(out, &resp)?;
        }
        Command::Host(HostCmd::Rm { name, force }) => {
            let resp = call(&controllers, |mut c| {
                let name = name.clone();
                async move { c.remove_host(pb::RemoveHostRequest { name, force }).await }
            })
            .await?;
            output::host_removed(out, &name, &resp)?;
        }
        Command::Network(NetworkCmd::Create(args)) => {
            let req = create_request(args)?;
            let resp = call(&controllers, |mut c| {
                let req = req.clone();
                async move { c.create_network(req).await }
            })
            .await?;
            output::network_created(out, &resp)?;
        }
        Command::Network(NetworkCmd::Ls) => {
            let resp = call(&controllers, |mut c| async move {
                c.list_networks(pb::ListNetworksRequest {}).await
            })
            .await?;
            output::networks(out, &resp.networks)?;
        }
        Command::Network(NetworkCmd::Inspect { name }) => {
            let resp = call(&controllers, |mut c| {
                let name = name.clone();
                async move { c.inspect_network(pb::NetworkRef { name }).await }
            })
            .await?;
            output::network_detail(out, &resp)?;
        }
        Command::Network(NetworkCmd::Update {
            name,
            nat_egress,
            mtu,
        }) => {
            if nat_egress.is_none() && mtu.is_none() {
                return Err(Failure::Message(
                    "nothing to change: give --nat-egress and/or --mtu".into(),
                ));
            }
            let req = pb::UpdateNetworkRequest {
                name,
                nat_egress,
                mtu,
            };
            let resp = call(&controllers, |mut c| {
                let req = req.clone();
                async move { c.update_network(req).await }
            })
            .await?;
            output::network_updated(out, &resp)?;
        }
        Command::Network(NetworkCmd::Rm { name, force }) => {
            let resp = call(&controllers, |mut c| {
                let name = name.clone();
                async move { c.delete_network(pb::DeleteNetworkRequest { name, force }).await }
            })
            .await?;
            output::network_removed(out, &name, &resp)?;
        }
        Command::Endpoint(EndpointCmd::Attach {
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
        }) => {
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
            let resp = call(&controllers, |mut c| {
                let mut request = tonic::Request::new(req.clone());
                request.set_timeout(Duration::from_secs(wait as u64 + 15));
                async move { c.attach_endpoint(request).await }
            })
            .await?;
            output::endpoint_attached(out, &resp)?;
        }
        Command::Endpoint(EndpointCmd::Detach { network, host, netns }) => {
            let req = pb::DetachEndpointRequest { network, host, netns };
            let resp = call(&controllers, |mut c| {
                let req = req.clone();
                async move { c.detach_endpoint(req).await }
            })
            .await?;
            output::endpoint_detached(out, &resp)?;
        }
        Command::Endpoint(EndpointCmd::Ls { network, host }) => {
            let req = pb::ListEndpointsRequest {
                network: network.unwrap_or_default(),
                host: host.unwrap_or_default(),
            };
            let resp = call(&controllers, |mut c| {
                let req = req.clone();
                async move { c.list_endpoints(req).await }
            })
            .await?;
            output::endpoints(out, &resp.endpoints)?;
        }
        Command::Certs(_) => unreachable!("certs commands returned before any controller was dialled"),
    }
    Ok(())
}

/// `overlayctl certs ...`: local files only.
fn certs(out: &mut output::Out, cmd: CertsCmd) -> Result<(), Failure> {
    let fail = |e: certs::CertError| Failure::Message(e.to_string());
    match cmd {
        CertsCmd::Ca { dir, days } => {
            let pair = certs::new_ca(days).map_err(fail)?;
            let (cert, key) = (dir.join(certs::CA_CERT), dir.join(certs::CA_KEY));
            certs::write(&pair, &cert, &key, false).map_err(fail)?;
            output::cert_written(out, "ca", "overlay cluster CA", &cert, &key)?;
        }
        CertsCmd::Issue {
            role,
            name,
            san,
            dir,
            days,
            force,
        } => {
            let role = Role::from(role);
            let ca = certs::read_ca(&dir).map_err(fail)?;
            let pair = certs::issue(&ca, role, &name, &san, days).map_err(fail)?;
            let (cert, key) = certs::paths(&dir, role, &name);
            certs::write(&pair, &cert, &key, force).map_err(fail)?;
            output::cert_written(out, role.label(), &name, &cert, &key)?;
        }
        CertsCmd::Show { file } => {
            let shown = certs::show(&file).map_err(fail)?;
            output::cert_shown(out, &shown)?;
        }
    }
    Ok(())
}

/// One RPC on the first replica that answers.
async fn call<T, F, Fut>(controllers: &Controllers, mut f: F) -> Result<T, Failure>
where
    F: FnMut(OverlayClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let resp = controllers.call(|ch| f(OverlayClient::new(ch))).await?;
    Ok(resp.into_inner())
}

fn create_request(a: CreateArgs) -> Result<pb::CreateNetworkRequest, Failure> {
    if is_ipv6_cidr(&a.subnet) {
        return Err(Failure::Message(format!(
            "IPv6 is not supported yet: --subnet {:?} is IPv6; give an IPv4 CIDR such as 10.1.0.0/16",
            a.subnet.trim()
        )));
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
        subnet: a.subnet,
        host_prefix: a.host_prefix,
        vni: a.vni,
        mtu: a.mtu,
        nat_egress: a.nat_egress,
        macvlan: macvlan_given.then(|| pb::MacvlanOptions {
            parent: a.parent.unwrap_or_default(),
            gateway: a.gateway.unwrap_or_default(),
            ip_range: a.ip_range.unwrap_or_default(),
            mode: a.macvlan_mode.unwrap_or_default(),
        }),
    })
}

/// `fd00::/64` and the like: said to be unsupported here rather than sent to be called
/// malformed IPv4.
fn is_ipv6_cidr(text: &str) -> bool {
    let addr = text.trim().split('/').next().unwrap_or_default();
    addr.parse::<std::net::Ipv6Addr>().is_ok()
}
