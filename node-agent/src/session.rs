//! The agent's life: register the host, keep a Watch stream open to any controller replica,
//! reconcile on every new desired state and periodically, heartbeat, and report endpoint
//! status back. A controller outage leaves the datapath as it is; the agent keeps
//! reconciling toward the last state it knew and re-syncs as soon as a replica answers.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use overlay_proto::connect::Controllers;
use overlay_proto::tls::{Role, Tls, TlsError};
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use prost::Message;
use tokio::sync::watch;

use crate::metrics::AgentMetrics;
use crate::netlink::Netlink;
use crate::reconcile::{EndpointStatuses, PassReport, Reconciler, Underlay};
use crate::spec::HostSpec;

pub struct AgentConfig {
    pub controllers: Vec<String>,
    pub host_name: String,
    pub underlay_iface: String,
    pub underlay_ip: Option<Ipv4Addr>,
    pub state_dir: PathBuf,
    /// Period of the full reconcile (endpoints checked inside their namespaces too).
    pub resync: Duration,
    pub heartbeat: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Mutual TLS toward the controllers with this host's agent certificate; `None` = plaintext.
    pub tls: Option<Tls>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error("underlay interface {0:?} not found")]
    NoUnderlay(String),
    #[error("underlay interface {0:?} has no IPv4 address; pass --underlay-ip")]
    NoUnderlayIp(String),
    #[error("cannot serve metrics: {0}")]
    Metrics(String),
    #[error("invalid host name {0:?}: {1}")]
    HostName(String, String),
    #[error("state directory {0}: {1}")]
    StateDir(String, std::io::Error),
    #[error(transparent)]
    Connect(#[from] overlay_proto::connect::ConnectError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "the agent certificate is for host {cert:?} but this agent runs as --host-name {host:?}; the controller only lets an agent act for the host its certificate names"
    )]
    CertificateHost { cert: String, host: String },
    /// Without nftables there is no isolation between networks and no NAT: refuse to run.
    #[error(transparent)]
    Firewall(#[from] crate::firewall::FirewallError),
}

/// Finds the underlay interface, its IPv4 address (unless given) and MTU.
pub async fn discover_underlay(
    nl: &Netlink,
    iface: &str,
    ip: Option<Ipv4Addr>,
) -> Result<Underlay, AgentError> {
    let link = nl
        .link_by_name(iface)
        .await?
        .ok_or_else(|| AgentError::NoUnderlay(iface.to_string()))?;
    let ip = match ip {
        Some(ip) => ip,
        None => nl
            .addresses()
            .await?
            .into_iter()
            .find(|(i, _)| *i == link.index)
            .map(|(_, a)| a.ip())
            .ok_or_else(|| AgentError::NoUnderlayIp(iface.to_string()))?,
    };
    Ok(Underlay {
        iface: iface.to_string(),
        ip,
        mtu: link.mtu,
    })
}

const DESIRED_FILE: &str = "desired.pb";

/// Runs the agent until `shutdown` resolves.
pub async fn run(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    overlay_proto::validate::ifname(&config.underlay_iface)
        .map_err(|r| AgentError::NoUnderlay(format!("{} ({r})", config.underlay_iface)))?;
    if config.host_name.is_empty() || config.host_name.len() > 64 {
        return Err(AgentError::HostName(
            config.host_name.clone(),
            "must be 1 to 64 characters".into(),
        ));
    }
    if let Some(tls) = &config.tls {
        tls.require_role("agent", Role::Agent)?;
        if tls.identity.name != config.host_name {
            return Err(AgentError::CertificateHost {
                cert: tls.identity.name.clone(),
                host: config.host_name.clone(),
            });
        }
    }
    // Before anything is wired: an agent that cannot filter must not connect workloads.
    crate::firewall::preflight()?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| AgentError::StateDir(config.state_dir.display().to_string(), e))?;
    let nl = Netlink::connect()?;
    let underlay = discover_underlay(&nl, &config.underlay_iface, config.underlay_ip).await?;
    tracing::info!(host = %config.host_name, iface = %underlay.iface, ip = %underlay.ip, mtu = underlay.mtu, "agent starting");
    let controllers = Arc::new(
        Controllers::new(
            &config.controllers,
            Duration::from_secs(2),
            Duration::from_secs(15),
        )?
        .with_tls(config.tls.as_ref().map(Tls::client_config)),
    );

    let mut metrics = AgentMetrics::new();
    if let Some(tls) = &config.tls {
        tls.register_expiry(&mut metrics.registry);
    }
    let metrics = Arc::new(metrics);
    if let Some(addr) = config.metrics_listen {
        let listener = overlay_proto::metrics_http::bind(addr)
            .await
            .map_err(AgentError::Metrics)?;
        let m = metrics.clone();
        let render: overlay_proto::metrics_http::Render =
            Arc::new(move || overlay_proto::metrics_http::encode_registry(&m.registry));
        tokio::spawn(async move {
            if let Err(e) = overlay_proto::metrics_http::serve(listener, render).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }

    let (spec_tx, spec_rx) = watch::channel::<Option<Arc<HostSpec>>>(None);
    let (report_tx, report_rx) = watch::channel::<Option<Arc<PassReport>>>(None);
    let (drift_tx, drift_rx) = watch::channel(Drift::default());
    let config = Arc::new(config);
    let applied = Arc::new(AtomicU64::new(0));

    let reconciler = Reconciler::new(nl, underlay.clone(), Some(&config.state_dir))
        .with_control_plane(crate::firewall::addresses_in(&config.controllers));
    let tasks = [
        tokio::spawn(reconcile_loop(
            reconciler,
            spec_rx,
            config.resync,
            config.heartbeat,
            PassOutputs {
                report_tx,
                drift_tx,
                applied: applied.clone(),
                metrics: metrics.clone(),
            },
        )),
        tokio::spawn(report_loop(
            controllers.clone(),
            config.clone(),
            report_rx,
            drift_rx,
        )),
        tokio::spawn(offline_start(config.clone(), underlay.ip, spec_tx.clone())),
    ];
    let session = session_loop(controllers, config, underlay, spec_tx, applied, metrics);
    tokio::select! {
        _ = session => {},
        _ = shutdown => {
            overlay_proto::sd_notify::notify_or_log("STOPPING=1");
            tracing::info!("shutting down; the datapath stays as it is");
        }
    }
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// Register, then follow the Watch stream; on any failure, start over with the next replica.
async fn session_loop(
    controllers: Arc<Controllers>,
    config: Arc<AgentConfig>,
    underlay: Underlay,
    spec_tx: watch::Sender<Option<Arc<HostSpec>>>,
    applied: Arc<AtomicU64>,
    metrics: Arc<AgentMetrics>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let outcome = session(&controllers, &config, &underlay, &spec_tx, &applied, &metrics).await;
        metrics.set_connected(false);
        match outcome {
            Ok(()) => tracing::warn!("watch stream ended; reconnecting"),
            Err(status) => tracing::warn!(error = %status.message(), "controller session failed; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    controllers: &Arc<Controllers>,
    config: &AgentConfig,
    underlay: &Underlay,
    spec_tx: &watch::Sender<Option<Arc<HostSpec>>>,
    applied: &AtomicU64,
    metrics: &AgentMetrics,
) -> Result<(), tonic::Status> {
    let req = pb::RegisterRequest {
        host_name: config.host_name.clone(),
        underlay_ip: underlay.ip.to_string(),
        underlay_iface: underlay.iface.clone(),
        underlay_mtu: underlay.mtu,
    };
    let host = controllers
        .call(|ch| {
            let req = req.clone();
            async move { AgentClient::new(ch).register(req).await }
        })
        .await?
        .into_inner();
    tracing::info!(
        vtep_mac = host.host.as_ref().map(|h| h.vtep_mac.as_str()).unwrap_or(""),
        "registered"
    );
    let watch_req = pb::WatchRequest {
        host_name: config.host_name.clone(),
    };
    let mut stream = controllers
        .call(|ch| {
            let req = watch_req.clone();
            async move {
                AgentClient::new(ch)
                    .max_decoding_message_size(256 << 20)
                    .watch(req)
                    .await
            }
        })
        .await?
        .into_inner();
    metrics.set_connected(true);
    let mut heartbeat = tokio::time::interval(config.heartbeat);
    // This session's copy of the desired state: a full state, then the deltas applied to it.
    let mut desired = pb::HostDesiredState::default();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let Some(event) = msg? else { return Ok(()) };
                if let Some(pb::watch_event::Event::Probe(order)) = event.event {
                    tokio::spawn(run_probe(order, desired.clone(), controllers.clone(), config.host_name.clone()));
                    continue;
                }
                let full = matches!(event.event, Some(pb::watch_event::Event::Full(_)));
                if let Err(e) = overlay_proto::watch::apply(&mut desired, event) {
                    // Never program a state built on the wrong base: start over with a full one.
                    return Err(tonic::Status::data_loss(e.to_string()));
                }
                let spec = HostSpec::from_proto(&desired, underlay.ip);
                tracing::debug!(revision = spec.revision, full, networks = spec.networks.len(), "desired state received");
                metrics.set_desired(spec.revision);
                persist(&config.state_dir, &desired);
                spec_tx.send_replace(Some(Arc::new(spec)));
            }
            _ = heartbeat.tick() => {
                let req = pb::HeartbeatRequest {
                    host_name: config.host_name.clone(),
                    applied_revision: applied.load(Ordering::Relaxed),
                };
                // A failed heartbeat is not fatal: the stream tells us when the replica is gone.
                if let Err(status) = controllers.call(|ch| { let req = req.clone(); async move { AgentClient::new(ch).heartbeat(req).await } }).await {
                    if status.code() == tonic::Code::NotFound {
                        return Err(status);
                    }
                    tracing::debug!(error = %status.message(), "heartbeat failed");
                }
            }
        }
    }
}

/// The last desired state is kept on disk, so a host that reboots while no controller is
/// reachable still gets its datapath back.
fn persist(state_dir: &std::path::Path, desired: &pb::HostDesiredState) {
    let tmp = state_dir.join(format!("{DESIRED_FILE}.tmp"));
    let result = std::fs::write(&tmp, desired.encode_to_vec())
        .and_then(|()| std::fs::rename(&tmp, state_dir.join(DESIRED_FILE)));
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot persist desired state");
    }
}

/// If no controller has answered a few seconds after start, reconcile toward the persisted
/// desired state.
async fn offline_start(
    config: Arc<AgentConfig>,
    underlay_ip: Ipv4Addr,
    spec_tx: watch::Sender<Option<Arc<HostSpec>>>,
) {
    tokio::time::sleep(Duration::from_secs(5)).await;
    if spec_tx.borrow().is_some() {
        return;
    }
    let Ok(bytes) = std::fs::read(config.state_dir.join(DESIRED_FILE)) else {
        return;
    };
    match pb::HostDesiredState::decode(bytes.as_slice()) {
        Ok(desired) if desired.host_name == config.host_name => {
            tracing::warn!(
                revision = desired.revision,
                "no controller reachable; using the persisted desired state"
            );
            spec_tx.send_if_modified(|slot| {
                if slot.is_none() {
                    *slot = Some(Arc::new(HostSpec::from_proto(&desired, underlay_ip)));
                    true
                } else {
                    false
                }
            });
        }
        Ok(_) => tracing::warn!("persisted desired state is for another host; ignored"),
        Err(e) => tracing::warn!(error = %e, "persisted desired state unreadable; ignored"),
    }
}

/// Carries out a probe order: every target, small and MTU-sized echoes in parallel, from this
/// host's gateway address in the network; then reports to the controller.
async fn run_probe(
    order: pb::ProbeOrder,
    desired: pb::HostDesiredState,
    controllers: Arc<Controllers>,
    host: String,
) {
    let network = desired.networks.iter().find(|n| n.name == order.network);
    let source = network.and_then(|n| n.gateway.parse::<Ipv4Addr>().ok());
    let mtu = network.map(|n| n.mtu).unwrap_or(0);
    let timeout = Duration::from_millis(u64::from(order.timeout_ms.max(100)));
    let big = match order.big_payload {
        0 => mtu.saturating_sub(28),
        n => n,
    };
    let mut jobs = Vec::new();
    for target in &order.targets {
        for payload in [order.small_payload, big] {
            let (to, address, count) = (target.host.clone(), target.address.clone(), order.count);
            let from = host.clone();
            jobs.push(tokio::task::spawn_blocking(move || {
                let mut result = pb::ProbeResult {
                    from,
                    to,
                    size: payload + 28,
                    ..Default::default()
                };
                let outcome = match (source, address.parse::<Ipv4Addr>()) {
                    (Some(src), Ok(dst)) if payload > 0 => {
                        crate::probe::echo(src, dst, payload as usize, count, timeout)
                            .map_err(|e| e.to_string())
                    }
                    (None, _) => Err("this host has no gateway address in the network".to_string()),
                    _ => Err(format!("cannot probe {address:?} with {payload} bytes")),
                };
                match outcome {
                    Ok(stats) => {
                        result.sent = stats.sent;
                        result.received = stats.received;
                        if stats.received > 0 {
                            result.rtt_us = (stats.rtt_total / stats.received).as_micros() as u64;
                        }
                    }
                    Err(e) => result.error = e,
                }
                result
            }));
        }
    }
    let mut results = Vec::new();
    for job in jobs {
        if let Ok(r) = job.await {
            results.push(r);
        }
    }
    let report = pb::ProbeReport {
        id: order.id.clone(),
        host: host.clone(),
        results,
    };
    let sent = controllers
        .call(|ch| {
            let report = report.clone();
            async move { AgentClient::new(ch).report_probe(report).await }
        })
        .await;
    if let Err(e) = sent {
        tracing::warn!(id = %order.id, error = %e.message(), "probe report failed");
    }
}

/// Where the reconcile loop publishes what its passes and audits found.
struct PassOutputs {
    report_tx: watch::Sender<Option<Arc<PassReport>>>,
    drift_tx: watch::Sender<Drift>,
    applied: Arc<AtomicU64>,
    metrics: Arc<AgentMetrics>,
}

/// Where the kernel differs from the desired state, as the last audit or pass found it.
#[derive(Clone, Debug, Default)]
pub struct Drift {
    /// Unix ms of the finding (0: nothing looked yet).
    pub found_ms: i64,
    pub items: Vec<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn reconcile_loop(
    mut reconciler: Reconciler,
    mut spec_rx: watch::Receiver<Option<Arc<HostSpec>>>,
    resync: Duration,
    audit_every: Duration,
    out: PassOutputs,
) {
    let PassOutputs {
        report_tx,
        drift_tx,
        applied,
        metrics,
    } = out;
    let mut timer = tokio::time::interval(resync);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit_timer = tokio::time::interval(audit_every);
    audit_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checked_deep = false;
    let mut ready = false;
    loop {
        let mut deep = !checked_deep;
        let mut audit_only = false;
        tokio::select! {
            changed = spec_rx.changed() => if changed.is_err() { return },
            _ = timer.tick() => deep = true,
            _ = audit_timer.tick() => audit_only = true,
        }
        let Some(spec) = spec_rx.borrow_and_update().clone() else {
            continue;
        };
        if audit_only {
            // Look, do not touch: drift stays visible to `doctor` until the next pass repairs it.
            match reconciler.audit(&spec).await {
                Ok(drift) => {
                    if !drift.is_empty() {
                        tracing::warn!(items = drift.len(), first = %drift[0], "kernel drifted from the desired state");
                    }
                    drift_tx.send_replace(Drift {
                        found_ms: now_ms(),
                        items: drift,
                    });
                }
                Err(e) => tracing::warn!(error = %e, "audit failed"),
            }
            continue;
        }
        match reconciler.pass(&spec, deep).await {
            Ok(report) => {
                metrics.observe_pass(&report);
                // What a pass could not fix is the drift that remains.
                drift_tx.send_replace(Drift {
                    found_ms: now_ms(),
                    items: report.errors.clone(),
                });
                checked_deep |= deep;
                if report.errors.is_empty() {
                    applied.store(report.revision, Ordering::Relaxed);
                }
                let took_us = report.took.as_micros() as u64;
                if report.changes > 0 || !report.errors.is_empty() {
                    tracing::info!(
                        revision = report.revision,
                        changes = report.changes,
                        errors = report.errors.len(),
                        deep,
                        took_us,
                        "reconciled"
                    );
                } else {
                    tracing::debug!(
                        revision = report.revision,
                        deep,
                        took_us,
                        "reconcile pass: nothing to do"
                    );
                }
                for e in &report.errors {
                    tracing::warn!(error = %e, "reconcile");
                }
                if !ready {
                    // systemd's READY: registered (or working offline) and the kernel converged once.
                    ready = true;
                    overlay_proto::sd_notify::notify_or_log(&format!(
                        "READY=1\nSTATUS=converged to revision {}",
                        report.revision
                    ));
                }
                report_tx.send_replace(Some(Arc::new(report)));
            }
            Err(e) => tracing::error!(error = %e, "reconcile pass failed"),
        }
    }
}

/// Sends endpoint status to the controller whenever it changes (and again after failures).
async fn report_loop(
    controllers: Arc<Controllers>,
    config: Arc<AgentConfig>,
    mut report_rx: watch::Receiver<Option<Arc<PassReport>>>,
    mut drift_rx: watch::Receiver<Drift>,
) {
    let mut last_sent: Option<(u64, EndpointStatuses, Vec<String>)> = None;
    let mut retry = false;
    loop {
        let next = async {
            tokio::select! {
                r = report_rx.changed() => r.is_ok(),
                d = drift_rx.changed() => d.is_ok(),
            }
        };
        if retry {
            // Retry the latest report after a pause, or sooner if a newer one arrives.
            let _ = tokio::time::timeout(Duration::from_secs(1), next).await;
        } else if !next.await {
            return;
        }
        let Some(report) = report_rx.borrow_and_update().clone() else {
            continue;
        };
        let drift = drift_rx.borrow_and_update().clone();
        let current = (report.revision, report.endpoints.clone(), drift.items.clone());
        if last_sent.as_ref() == Some(&current) {
            continue;
        }
        let req = pb::ReportStatusRequest {
            host_name: config.host_name.clone(),
            applied_revision: report.revision,
            endpoints: report
                .endpoints
                .iter()
                .map(|(id, r)| pb::EndpointStatus {
                    id: *id,
                    report: match r {
                        Ok(()) => pb::EndpointReport::Ready as i32,
                        Err(_) => pb::EndpointReport::Failed as i32,
                    },
                    message: r.as_ref().err().cloned().unwrap_or_default(),
                })
                .collect(),
            drift: drift.items,
            audited_ms: drift.found_ms,
        };
        let sent = controllers
            .call(|ch| {
                let req = req.clone();
                async move { AgentClient::new(ch).report_status(req).await }
            })
            .await;
        retry = sent.is_err();
        match sent {
            Ok(_) => last_sent = Some(current),
            Err(status) => tracing::warn!(error = %status.message(), "status report failed; will retry"),
        }
    }
}
