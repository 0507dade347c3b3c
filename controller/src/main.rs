//! `overlay-controller`: one replica of the overlay control plane.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use overlay_controller::server::{Controller, ControllerConfig, parse_peers};
use overlay_proto::tls::TlsArgs;

#[derive(Parser, Debug)]
#[command(
    name = "overlay-controller",
    version,
    about = "Raft-replicated control plane of overlay"
)]
struct Args {
    /// This replica's id (1, 2, 3 ...); must appear in --peers when that is given.
    #[arg(long, env = "OVERLAY_NODE_ID")]
    node_id: u64,
    /// Address serving agents, overlayctl and the other replicas.
    #[arg(long, env = "OVERLAY_LISTEN", default_value = "0.0.0.0:7400")]
    listen: SocketAddr,
    /// Raft log, vote and snapshots live here.
    #[arg(long, env = "OVERLAY_DATA_DIR", default_value = "/var/lib/overlay/controller")]
    data_dir: PathBuf,
    /// All replicas as ID=HOST:PORT,...; omitted (or empty) = a single-node cluster at --listen.
    #[arg(long, env = "OVERLAY_PEERS")]
    peers: Option<String>,
    /// Bound on a write or consistent read (without a quorum requests fail after this long).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// A host name held by one agent is refused to any other (same --host-name on another
    /// machine, or a copy of its certificate) until the holder has been silent this long.
    #[arg(long, env = "OVERLAY_HOST_CLAIM_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    host_claim_timeout: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9400).
    #[arg(long, env = "OVERLAY_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Log format: text or json.
    #[arg(long, env = "OVERLAY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration {s:?} (use ms, s or m)")),
    }
}

/// Errors end in one line on stderr and exit code 1 ([`overlay_proto::daemon::run`]).
fn main() -> ExitCode {
    let args = Args::parse();
    overlay_proto::daemon::init_logging(&args.log_format, "info,openraft=warn");
    // Before anything is bound or written: plaintext only when asked for (one line, exit 1).
    let tls = args.tls.load().unwrap_or_else(|e| {
        let _ = writeln!(std::io::stderr(), "overlay-controller: {e}");
        std::process::exit(1)
    });
    overlay_proto::daemon::run("overlay-controller", run(args, tls))
}

async fn run(args: Args, tls: Option<overlay_proto::tls::Tls>) -> anyhow::Result<()> {
    let peers = match args.peers.as_deref().filter(|p| !p.trim().is_empty()) {
        Some(p) => parse_peers(p).map_err(anyhow::Error::msg).context("--peers")?,
        None => [(args.node_id, args.listen.to_string())].into_iter().collect(),
    };
    let config = ControllerConfig {
        node_id: args.node_id,
        listen: args.listen,
        peers,
        data_dir: args.data_dir,
        request_timeout: args.request_timeout,
        metrics_listen: args.metrics_listen,
        tls,
        host_claim_timeout: args.host_claim_timeout,
    };
    let controller = Controller::start(&config).await?;
    let security = match &config.tls {
        Some(tls) => format!("mutual TLS as {}", tls.identity),
        None => {
            overlay_proto::tls::warn_insecure();
            "plaintext".to_string()
        }
    };
    tracing::info!(node_id = config.node_id, listen = %controller.local_addr()?, %security, "controller serving");
    let node = controller.node.clone();
    tokio::spawn(async move {
        if let Some(leader) = node.joined().await {
            tracing::info!(leader, "joined the cluster");
            overlay_proto::sd_notify::notify_or_log(&format!(
                "READY=1\nSTATUS=member of the cluster (leader: node {leader})"
            ));
        }
    });
    let served = controller.serve(overlay_proto::daemon::shutdown_signal()).await;
    overlay_proto::sd_notify::notify_or_log("STOPPING=1");
    served?;
    tracing::info!("controller stopped");
    Ok(())
}
