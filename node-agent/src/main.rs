//! `overlay-agent`: the node agent of overlay, one per host.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use overlay_agent::session::{AgentConfig, run};
use overlay_proto::tls::TlsArgs;

#[derive(Parser, Debug)]
#[command(
    name = "overlay-agent",
    version,
    about = "Programs this host's kernel toward overlay's desired state"
)]
struct Args {
    /// Controller replicas, HOST:PORT[,HOST:PORT...]; any of them will do.
    #[arg(long, env = "OVERLAY_CONTROLLER")]
    controller: String,
    /// This host's name in the cluster.
    #[arg(long, env = "OVERLAY_HOST_NAME")]
    host_name: String,
    /// Interface facing the other hosts (VXLAN is sent through it).
    #[arg(long, env = "OVERLAY_UNDERLAY_IFACE")]
    underlay_iface: String,
    /// Underlay address, IPv4 or IPv6; default: the interface's first IPv4 address, or its
    /// first global IPv6 address when it has no IPv4 one.
    #[arg(long, env = "OVERLAY_UNDERLAY_IP")]
    underlay_ip: Option<IpAddr>,
    /// Where the agent keeps its last desired state.
    #[arg(long, env = "OVERLAY_STATE_DIR", default_value = "/var/lib/overlay/agent")]
    state_dir: PathBuf,
    /// Seconds between full reconciles (endpoints checked inside their namespaces).
    #[arg(long, env = "OVERLAY_RESYNC_SECS", default_value_t = 30)]
    resync_secs: u64,
    /// How long an endpoint whose namespace is gone (a container removed without a detach, a
    /// pid reused, a name re-created) keeps its address before the agent releases it: 30s,
    /// 2m, 500ms, or plain seconds.
    #[arg(long, env = "OVERLAY_GONE_ENDPOINT_GRACE", default_value = "30s", value_parser = parse_duration)]
    gone_endpoint_grace: Duration,
    /// The host-local endpoint API's unix socket (root only), for the CNI plugin, the Docker
    /// plugin and a local overlayctl; "" serves none.
    #[arg(long, env = "OVERLAY_LOCAL_SOCKET", default_value = overlay_proto::local_socket::DEFAULT_SOCKET)]
    local_socket: PathBuf,
    /// Also serve Docker's network and IPAM plugin API (driver `overlay-net`), on
    /// --docker-plugin-socket.
    #[arg(long, env = "OVERLAY_DOCKER_PLUGIN")]
    docker_plugin: bool,
    /// dockerd's API socket: the plugin asks it for containers' names and network aliases
    /// (their names in the network's DNS) and for the name of a docker network created
    /// without --subnet; "" asks nothing (containers get no names, and such networks need
    /// --subnet or --ipam-opt network=).
    #[arg(long, env = "OVERLAY_DOCKER_API", default_value = overlay_agent::docker::engine::DEFAULT_SOCKET)]
    docker_api: PathBuf,
    /// Where dockerd finds the plugin (root only).
    #[arg(long, env = "OVERLAY_DOCKER_PLUGIN_SOCKET", default_value = overlay_agent::docker::DEFAULT_SOCKET)]
    docker_plugin_socket: PathBuf,
    /// Port of the DNS server on each network's gateway address (each network's names,
    /// everything else forwarded to /etc/resolv.conf's servers); 0 serves none.
    #[arg(long, env = "OVERLAY_DNS_PORT", default_value_t = 53)]
    dns_port: u16,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9401).
    #[arg(long, env = "OVERLAY_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Log format: text or json.
    #[arg(long, env = "OVERLAY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// Errors end in one line on stderr and exit code 1 ([`overlay_proto::daemon::run`]).
fn main() -> ExitCode {
    let args = Args::parse();
    overlay_proto::daemon::init_logging(&args.log_format, "info");
    // Before anything is bound, written or programmed: plaintext only when asked for.
    let tls = args.tls.load().unwrap_or_else(|e| {
        let _ = writeln!(std::io::stderr(), "overlay-agent: {e}");
        std::process::exit(1)
    });
    overlay_proto::daemon::run("overlay-agent", agent(args, tls))
}

async fn agent(args: Args, tls: Option<overlay_proto::tls::Tls>) -> anyhow::Result<()> {
    let config = AgentConfig {
        controllers: vec![args.controller],
        host_name: args.host_name,
        underlay_iface: args.underlay_iface,
        underlay_ip: args.underlay_ip,
        state_dir: args.state_dir,
        resync: Duration::from_secs(args.resync_secs.max(1)),
        heartbeat: Duration::from_secs(5),
        metrics_listen: args.metrics_listen,
        tls,
        gone_endpoint_grace: args.gone_endpoint_grace,
        local_socket: (!args.local_socket.as_os_str().is_empty()).then_some(args.local_socket),
        docker_plugin: args.docker_plugin.then_some(args.docker_plugin_socket),
        dns_port: (args.dns_port != 0).then_some(args.dns_port),
        docker_engine: (!args.docker_api.as_os_str().is_empty()).then_some(args.docker_api),
    };
    run(config, overlay_proto::daemon::shutdown_signal()).await?;
    Ok(())
}

/// A duration as people write it: `30s`, `2m`, `1h`, `500ms`, or plain seconds (`45`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 2m, 500ms)"))?;
    let per_unit_ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => return Err(format!("unknown unit {other:?} in {text:?} (use ms, s, m or h)")),
    };
    n.checked_mul(per_unit_ms)
        .filter(|ms| *ms <= 7 * 24 * 3_600_000)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long (at most a week)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1s", "3d", "1.5s", "99999999999999999999s", "200h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
