//! The agent's life: register the host, keep a Watch stream open to any controller replica,
//! reconcile on every new desired state, on kernel notifications of drift (see
//! [`crate::events`]) and periodically, heartbeat, and report endpoint status back. A
//! controller outage leaves the datapath as it is; the agent keeps reconciling toward the
//! last state it knew and re-syncs as soon as a replica answers.
//!
//! Every call carries this agent's instance id ([`crate::identity`]). While another instance
//! holds the host name the controller refuses it; the agent logs the controller's line and
//! keeps trying (a replacement machine takes over once the old one has been silent long
//! enough). An agent whose host record stops matching it (its underlay address changed
//! behind its back) registers again.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use overlay_proto::connect::Controllers;
use overlay_proto::ports::Protocol;
use overlay_proto::tls::{Role, Tls, TlsError};
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use prost::Message;
use tokio::sync::watch;

use crate::attachments::{Attachments, ControllerLink};
use crate::events::{Changes, EventsOptions, KernelEvents};
use crate::firewall;
use crate::metrics::AgentMetrics;
use crate::netlink::Netlink;
use crate::reconcile::{PassReport, Reconciler, Underlay};
use crate::spec::HostSpec;

pub struct AgentConfig {
    pub controllers: Vec<String>,
    pub host_name: String,
    pub underlay_iface: String,
    pub underlay_ip: Option<IpAddr>,
    pub state_dir: PathBuf,
    /// Period of the full reconcile (endpoints checked inside their namespaces too).
    pub resync: Duration,
    pub heartbeat: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Mutual TLS toward the controllers with this host's agent certificate; `None` = plaintext.
    pub tls: Option<Tls>,
    /// How long an endpoint whose namespace is gone keeps its address before the agent
    /// releases it.
    pub gone_endpoint_grace: Duration,
    /// Where to serve the host-local endpoint API (`None`: not at all).
    pub local_socket: Option<PathBuf>,
    /// Where to serve Docker's network and IPAM plugin API (`None`: not at all).
    pub docker_plugin: Option<PathBuf>,
    /// dockerd's API socket, where the plugin learns containers' names (`None`: it does not).
    pub docker_engine: Option<PathBuf>,
    /// The port of the DNS server on every gateway (`None`: no DNS server).
    pub dns_port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error("underlay interface {0:?} not found")]
    NoUnderlay(String),
    #[error("underlay interface {0:?} has no IPv4 address and no global IPv6 address; pass --underlay-ip")]
    NoUnderlayIp(String),
    #[error("cannot serve metrics: {0}")]
    Metrics(String),
    #[error("invalid host name {0:?}: {1}")]
    HostName(String, String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    LocalSocket(#[from] crate::local_socket::SocketError),
    #[error("state directory {0}: {1}")]
    StateDir(String, std::io::Error),
    #[error(transparent)]
    Connect(#[from] overlay_proto::connect::ConnectError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(
        "the agent certificate is for host {cert:?} but this agent runs as --host-name {host:?}; the controller only lets an agent act for the host its certificate names"
    )]
    CertificateHost { cert: String, host: String },
    /// Without nftables there is no isolation between networks and no NAT: refuse to run.
    #[error(transparent)]
    Firewall(#[from] crate::firewall::FirewallError),
    #[error("DNS server: {0}")]
    Dns(#[from] crate::dns::DnsError),
}

/// Finds the underlay interface, its address (unless given: the first IPv4 one, else the
/// first global IPv6 one) and MTU.
pub async fn discover_underlay(
    nl: &Netlink,
    iface: &str,
    ip: Option<IpAddr>,
) -> Result<Underlay, AgentError> {
    let link = nl
        .link_by_name(iface)
        .await?
        .ok_or_else(|| AgentError::NoUnderlay(iface.to_string()))?;
    let ip = match ip {
        Some(ip) => ip,
        None => {
            let v4 = nl
                .addresses()
                .await?
                .into_iter()
                .find(|(i, _)| *i == link.index)
                .map(|(_, a)| IpAddr::V4(a.ip()));
            match v4 {
                Some(ip) => ip,
                None => nl
                    .global_ipv6(link.index)
                    .await?
                    .map(IpAddr::V6)
                    .ok_or_else(|| AgentError::NoUnderlayIp(iface.to_string()))?,
            }
        }
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
    let instance: Arc<str> = crate::identity::load_or_create(&config.state_dir)?.into();
    let nl = Netlink::connect()?;
    let underlay = discover_underlay(&nl, &config.underlay_iface, config.underlay_ip).await?;
    tracing::info!(host = %config.host_name, iface = %underlay.iface, ip = %underlay.ip, mtu = underlay.mtu, instance = overlay_proto::instance::short(&instance), "agent starting");
    if config.tls.is_none() {
        overlay_proto::tls::warn_insecure();
    }
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
    let dns_metrics = crate::metrics::DnsMetrics::default();
    if config.dns_port.is_some() {
        dns_metrics.register(&mut metrics.registry);
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

    // Opened here, on the agent's own thread: the sockets listen in the host namespace.
    let events = match KernelEvents::start(
        &nl,
        spec_rx.clone(),
        Some(metrics.clone()),
        EventsOptions::default(),
    )
    .await
    {
        Ok(events) => Some(events),
        Err(e) => {
            tracing::warn!(error = %e, "no kernel notifications: drift is repaired by the periodic pass only");
            None
        }
    };
    // The guard that keeps NAT-egress workloads off the control plane needs addresses:
    // controllers given by name are resolved here, once.
    let (control_plane, unresolved) =
        crate::firewall::resolve_controllers(controllers.addrs(), CONTROLLER_LOOKUP).await;
    for line in &unresolved {
        tracing::warn!("{line}: NAT-egress workloads are not kept from it");
    }
    let reconciler = Reconciler::new(nl, underlay.clone(), Some(&config.state_dir))
        .with_gone_grace(config.gone_endpoint_grace)
        .with_control_plane(control_plane);
    // This host's endpoints: its own durable book, the authority for them.
    let book = crate::book::Book::open(&config.state_dir)?;
    if book.needs_import() {
        tracing::info!(
            "new endpoint store: it is filled from the controller's records before any address is handed out"
        );
    }
    let attachments = Attachments::new(
        book,
        underlay.ip,
        spec_tx.clone(),
        report_rx.clone(),
        ControllerLink {
            controllers: controllers.clone(),
            host: config.host_name.clone(),
            instance: instance.clone(),
        },
        reserved_ports(&config, underlay.ip),
    );
    let local = match &config.local_socket {
        Some(path) => {
            let socket = crate::local_socket::LocalSocket::bind(path).await?;
            tracing::info!(socket = %path.display(), "local endpoint API listening");
            Some(tokio::spawn(crate::local_api::serve(socket, attachments.clone())))
        }
        None => None,
    };
    let docker = match &config.docker_plugin {
        Some(path) => {
            let socket = crate::docker::bind(path).await?;
            tracing::info!(socket = %path.display(), driver = crate::docker::DRIVER, "docker network plugin listening");
            let attachments = attachments.clone();
            let engine = config
                .docker_engine
                .clone()
                .map(crate::docker::engine::Engine::new);
            Some(tokio::spawn(async move {
                if let Err(e) = crate::docker::serve(socket, attachments, engine).await {
                    tracing::error!(error = %e, "docker network plugin stopped");
                }
            }))
        }
        None => None,
    };
    let (dns_tx, dns_rx) = watch::channel(Vec::<String>::new());
    let dns = match config.dns_port {
        Some(port) => {
            let server = crate::dns::DnsServer::start(crate::dns::DnsConfig {
                port,
                metrics: dns_metrics,
                ..Default::default()
            })?;
            attachments.serve_dns();
            Some(tokio::spawn(feed_dns(server, attachments.zones(), dns_tx)))
        }
        None => None,
    };
    let (sessions_tx, sessions_rx) = watch::channel(0u64);
    let tasks = [
        tokio::spawn(reconcile_loop(
            reconciler,
            attachments.kernel_gate(),
            spec_rx,
            events,
            config.resync,
            config.heartbeat,
            PassOutputs {
                report_tx,
                drift_tx,
                applied: applied.clone(),
                metrics: metrics.clone(),
            },
        )),
        tokio::spawn(expire_loop(attachments.clone(), report_rx.clone())),
        tokio::spawn(crate::sync::sync_loop(
            attachments.clone(),
            controllers.clone(),
            config.host_name.clone(),
            instance.clone(),
            sessions_rx,
            report_rx.clone(),
        )),
        tokio::spawn(report_loop(
            controllers.clone(),
            config.clone(),
            instance.clone(),
            report_rx,
            drift_rx,
            dns_rx,
        )),
        tokio::spawn(offline_start(
            config.clone(),
            attachments.clone(),
            spec_tx.clone(),
        )),
    ];
    let session = session_loop(
        controllers,
        Identity {
            config,
            instance,
            underlay,
            attachments,
            sessions: sessions_tx,
        },
        applied,
        metrics,
    );
    tokio::select! {
        _ = session => {},
        _ = shutdown => {
            overlay_proto::sd_notify::notify_or_log("STOPPING=1");
            tracing::info!("shutting down; the datapath stays as it is");
        }
    }
    for t in tasks.into_iter().chain(local).chain(dns) {
        t.abort();
    }
    if let Some(d) = docker {
        d.abort();
    }
    Ok(())
}

/// Releases the endpoints whose namespace has been gone for the grace period, as the passes
/// list them (`PassReport::expired`): the book forgets them, the next pass removes their
/// devices and the controller hears of it with the next report.
async fn expire_loop(attachments: Arc<Attachments>, mut report_rx: watch::Receiver<Option<Arc<PassReport>>>) {
    while report_rx.changed().await.is_ok() {
        let expired = report_rx
            .borrow_and_update()
            .as_ref()
            .map(|r| r.expired.clone())
            .unwrap_or_default();
        attachments.expire(&expired);
    }
}

/// Who this agent is: its host name and settings, its instance id and its underlay.
struct Identity {
    config: Arc<AgentConfig>,
    instance: Arc<str>,
    underlay: Underlay,
    /// Where desired states go (with this host's endpoints, they become the spec).
    attachments: Arc<Attachments>,
    /// Bumped at every registration: the endpoint report after it is a full one.
    sessions: watch::Sender<u64>,
}

/// Longest pause between attempts while another agent holds the host name.
const CLAIM_RETRY_MAX: Duration = Duration::from_secs(10);

/// Register, then follow the Watch stream; on any failure, start over with the next replica.
async fn session_loop(
    controllers: Arc<Controllers>,
    me: Identity,
    applied: Arc<AtomicU64>,
    metrics: Arc<AgentMetrics>,
) {
    const FIRST_RETRY: Duration = Duration::from_millis(200);
    let mut backoff = FIRST_RETRY;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = session(&controllers, &me, &applied, &metrics).await;
        metrics.set_connected(false);
        let mut most = Duration::from_secs(5);
        match outcome {
            Ok(()) => tracing::warn!("watch stream ended; reconnecting"),
            // Another instance holds the host name: the controller's line says who, since
            // when, and the ways out.
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                most = CLAIM_RETRY_MAX;
                tracing::error!(
                    host = %me.config.host_name,
                    "the controller refuses this agent the host name (retrying): {}",
                    status.message()
                );
            }
            Err(status) if status.code() == tonic::Code::Aborted => {
                tracing::warn!("{}", status.message());
                backoff = Duration::from_millis(200);
            }
            Err(status) => tracing::warn!(error = %status.message(), "controller session failed; retrying"),
        }
        // A session that lasted was a working one whose replica went away (stopped, say): try
        // the next replica at once, not after the back-off of failures long past.
        if started.elapsed() >= Duration::from_secs(10) {
            backoff = FIRST_RETRY;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(most);
    }
}

async fn session(
    controllers: &Arc<Controllers>,
    me: &Identity,
    applied: &AtomicU64,
    metrics: &AgentMetrics,
) -> Result<(), tonic::Status> {
    let (config, underlay) = (&me.config, &me.underlay);
    let req = pb::RegisterRequest {
        host_name: config.host_name.clone(),
        underlay_ip: underlay.ip.to_string(),
        underlay_iface: underlay.iface.clone(),
        underlay_mtu: underlay.mtu,
        instance_id: me.instance.to_string(),
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
    me.sessions.send_modify(|n| *n += 1);
    let watch_req = pb::WatchRequest {
        host_name: config.host_name.clone(),
        instance_id: me.instance.to_string(),
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
                    let reporter = (config.host_name.clone(), me.instance.clone());
                    tokio::spawn(run_probe(order, desired.clone(), controllers.clone(), reporter));
                    continue;
                }
                let full = matches!(event.event, Some(pb::watch_event::Event::Full(_)));
                if let Err(e) = overlay_proto::watch::apply(&mut desired, event) {
                    // Never program a state built on the wrong base: start over with a full one.
                    return Err(tonic::Status::data_loss(e.to_string()));
                }
                // The cluster must reach this host where it is: a record that says otherwise
                // (changed behind this agent's back) is put right by registering again.
                if !desired.underlay_ip.is_empty() && desired.underlay_ip != underlay.ip.to_string() {
                    return Err(tonic::Status::aborted(format!(
                        "the controller's record of host {:?} has underlay {}, but this agent is at {}; registering again",
                        config.host_name, desired.underlay_ip, underlay.ip
                    )));
                }
                tracing::debug!(revision = desired.revision, full, networks = desired.networks.len(), "desired state received");
                metrics.set_desired(desired.revision);
                persist(&config.state_dir, &desired);
                for (network, request) in me.attachments.set_desired(desired.clone(), true) {
                    tokio::spawn(me.attachments.clone().carry_out(network, request));
                }
            }
            _ = heartbeat.tick() => {
                let req = pb::HeartbeatRequest {
                    host_name: config.host_name.clone(),
                    applied_revision: applied.load(Ordering::Relaxed),
                    instance_id: me.instance.to_string(),
                };
                // A failed heartbeat is not fatal: the stream tells us when the replica is gone.
                // Unless the host is gone, or no longer this agent's: then register again.
                if let Err(status) = controllers.call(|ch| { let req = req.clone(); async move { AgentClient::new(ch).heartbeat(req).await } }).await {
                    if matches!(status.code(), tonic::Code::NotFound | tonic::Code::FailedPrecondition) {
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
    attachments: Arc<Attachments>,
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
            // Programmed, not followed: the copy may be older than what this host reported.
            if spec_tx.borrow().is_none() {
                attachments.set_desired(desired, false);
            }
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
    (host, instance): (String, Arc<str>),
) {
    let network = desired.networks.iter().find(|n| n.name == order.network);
    let source = network.and_then(|n| n.gateway.parse::<Ipv4Addr>().ok().map(IpAddr::V4));
    let source6 = network.and_then(|n| n.gateway6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6));
    let mtu = network.map(|n| n.mtu).unwrap_or(0);
    let timeout = Duration::from_millis(u64::from(order.timeout_ms.max(100)));
    // Headers: IPv4 20 + ICMP 8, IPv6 40 + ICMPv6 8.
    let big = |header: u32| match order.big_payload {
        0 => mtu.saturating_sub(header),
        n => n,
    };
    let mut jobs = Vec::new();
    for target in &order.targets {
        // IPv6 too where the network is dual-stack (the target has an IPv6 gateway).
        let mut families = vec![(source, target.address.clone(), 28, false)];
        if !target.address6.is_empty() {
            families.push((source6, target.address6.clone(), 48, true));
        }
        for (source, address, header, ipv6) in families {
            for payload in [order.small_payload, big(header)] {
                let (to, address, count) = (target.host.clone(), address.clone(), order.count);
                let from = host.clone();
                jobs.push(tokio::task::spawn_blocking(move || {
                    let mut result = pb::ProbeResult {
                        from,
                        to,
                        size: payload + header,
                        ipv6,
                        ..Default::default()
                    };
                    let outcome = match (source, address.parse::<IpAddr>()) {
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
        instance_id: instance.to_string(),
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

/// How long drift that a repair fixed stays in the status report, as `repaired: <item>`: a
/// repair takes milliseconds, and `doctor` must still show what the agent saw.
pub const REPAIRED_HOLD: Duration = Duration::from_secs(10);
/// How long resolving one controller's name may take at start.
const CONTROLLER_LOOKUP: Duration = Duration::from_secs(5);
/// Least time between two passes triggered by kernel events: bounds what a kernel (or another
/// program) that keeps re-creating the same drift can cost.
const EVENT_PASS_GAP: Duration = Duration::from_millis(50);

/// The reconcile loop's state between passes.
struct Converger {
    reconciler: Reconciler,
    out: PassOutputs,
    checked_deep: bool,
    ready: bool,
    /// The desired state the last pass converged to: the only one a repair works toward (a
    /// newer one gets a regular pass).
    converged: Option<Arc<HostSpec>>,
    /// What the last repair could not fix; events that show nothing else do not retry it
    /// (the periodic pass does).
    unresolved: BTreeSet<String>,
    repaired: Repaired,
    /// The nftables ruleset generation right after the agent last wrote its tables (`None`:
    /// unknown), to tell a change behind its back from its own write.
    firewall_baseline: Option<u32>,
    last_event_pass: Option<Instant>,
}

impl Converger {
    /// Publishes the current drift, with what was repaired lately.
    fn publish(&mut self, items: Vec<String>) {
        let items = self.repaired.report(items, Instant::now());
        self.out.drift_tx.send_replace(Drift {
            found_ms: now_ms(),
            items,
        });
    }

    /// Look, do not touch (the heartbeat-paced audit): drift stays visible to `doctor`.
    async fn audit(&mut self, spec: &HostSpec) {
        match self.reconciler.audit(spec).await {
            Ok(drift) => {
                if !drift.is_empty() {
                    tracing::warn!(items = drift.len(), first = %drift[0], "kernel drifted from the desired state");
                }
                self.publish(drift);
            }
            Err(e) => tracing::warn!(error = %e, "audit failed"),
        }
    }

    /// One pass toward `spec`; the report is published (status, metrics), the drift is left
    /// to the caller.
    async fn pass(&mut self, spec: &Arc<HostSpec>, deep: bool) -> Option<Arc<PassReport>> {
        let report = match self.reconciler.pass(spec, deep).await {
            Ok(report) => report,
            Err(e) => {
                tracing::error!(error = %e, "reconcile pass failed");
                return None;
            }
        };
        self.out.metrics.observe_pass(&report);
        self.converged = Some(spec.clone());
        self.checked_deep |= deep;
        if report.errors.is_empty() {
            self.out.applied.store(report.revision, Ordering::Relaxed);
        }
        let took_us = report.took.as_micros() as u64;
        if report.changes > 0 || !report.errors.is_empty() {
            tracing::info!(
                revision = report.revision,
                changes = report.changes,
                errors = report.errors.len(),
                deep,
                took_us,
                snapshot_reused = report.snapshot_reused,
                "reconciled"
            );
        } else {
            tracing::debug!(
                revision = report.revision,
                deep,
                took_us,
                snapshot_reused = report.snapshot_reused,
                "reconcile pass: nothing to do"
            );
        }
        for e in &report.errors {
            tracing::warn!(error = %e, "reconcile");
        }
        if report.firewall_rebuilt {
            // The ruleset generation right after the agent's own write: one netlink round
            // trip, where listing the tables would cost three `nft` runs on every attach.
            self.firewall_baseline = tokio::task::spawn_blocking(firewall::generation::current)
                .await
                .ok()
                .and_then(Result::ok);
        }
        if !self.ready {
            // systemd's READY: registered (or working offline) and the kernel converged once.
            self.ready = true;
            overlay_proto::sd_notify::notify_or_log(&format!(
                "READY=1\nSTATUS=converged to revision {}",
                report.revision
            ));
        }
        let report = Arc::new(report);
        self.out.report_tx.send_replace(Some(report.clone()));
        if let Err(e) = self.reconciler.save_pins() {
            tracing::warn!(error = %e, "cannot save the namespace pins; the next pass tries again");
        }
        Some(report)
    }

    /// What kernel notifications showed: drift against the desired state last programmed
    /// (`None`: nothing to look at, or only the agent's own firewall rebuild).
    async fn look(&mut self, changes: Changes) -> Option<Seen> {
        let spec = self.converged.clone()?;
        let mut firewall_changed = false;
        if changes.contains(Changes::NFT) {
            let now = tokio::task::spawn_blocking(firewall::generation::current)
                .await
                .ok()
                .and_then(Result::ok);
            if now.is_none() || now != self.firewall_baseline {
                firewall_changed = true;
                self.reconciler.forget_firewall();
            } else if changes == Changes::NFT {
                // Only the agent's own rebuild (or something put back as it was).
                return None;
            }
        }
        self.out.metrics.observe_event_audit();
        let mut found = match self.reconciler.audit(&spec).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "audit after a kernel change failed");
                return None;
            }
        };
        if firewall_changed {
            found.push(firewall_item());
        }
        Some(Seen {
            changes,
            found,
            firewall_changed,
        })
    }

    /// Kernel notifications said overlay's objects changed: look (one dump), and if that
    /// shows drift, repair it with a pass. Passes that change nothing raise no notifications,
    /// so the agent's own repairs end here.
    async fn repair(&mut self, changes: Changes) {
        let Some(spec) = self.converged.clone() else {
            return;
        };
        let Some(seen) = self.look(changes).await else {
            return;
        };
        if seen.found.is_empty() {
            self.unresolved.clear();
            self.publish(seen.found);
            return;
        }
        if !seen.firewall_changed && seen.found.iter().all(|f| self.unresolved.contains(f)) {
            self.publish(seen.found);
            return;
        }
        if let Some(wait) = self
            .last_event_pass
            .and_then(|last| EVENT_PASS_GAP.checked_sub(last.elapsed()))
        {
            tokio::time::sleep(wait).await;
        }
        self.last_event_pass = Some(Instant::now());
        self.out.metrics.observe_event_pass();
        self.converge(&spec, false, Some(seen)).await;
    }

    /// A pass toward `spec`. With `seen` (drift notifications showed beforehand), audits
    /// again afterwards and records what the pass repaired; otherwise what the pass could not
    /// fix is the drift that remains.
    async fn converge(&mut self, spec: &Arc<HostSpec>, deep: bool, seen: Option<Seen>) {
        let started = Instant::now();
        let Some(report) = self.pass(spec, deep).await else {
            if let Some(seen) = seen {
                self.publish(seen.found);
            }
            return;
        };
        let Some(seen) = seen.filter(|s| !s.found.is_empty()) else {
            self.unresolved.clear();
            self.publish(report.errors.clone());
            return;
        };
        let mut left = match self.reconciler.audit(spec).await {
            Ok(left) => left,
            Err(_) => seen.found.clone(),
        };
        if seen.firewall_changed && !report.firewall_rebuilt {
            left.push(firewall_item());
        }
        let fixed: Vec<&String> = seen.found.iter().filter(|f| !left.contains(f)).collect();
        tracing::info!(
            changes = %seen.changes,
            repaired = fixed.len(),
            left = left.len(),
            first = %seen.found[0],
            took_ms = started.elapsed().as_millis() as u64,
            "drift repaired"
        );
        self.repaired.record(&fixed, Instant::now());
        self.unresolved = left.iter().cloned().collect();
        for e in report.errors.iter() {
            if !left.contains(e) {
                left.push(e.clone());
            }
        }
        self.publish(left);
    }
}

/// Drift that repairs fixed, each kept for [`REPAIRED_HOLD`] after its latest repair.
#[derive(Default)]
struct Repaired {
    items: Vec<(Instant, String)>,
}

impl Repaired {
    /// One entry per item: bounded by the items, not by how often they are repaired.
    fn record(&mut self, fixed: &[&String], now: Instant) {
        self.items.retain(|(_, item)| !fixed.contains(&item));
        self.items.extend(fixed.iter().map(|f| (now, f.to_string())));
    }

    /// The drift to report: `current`, then `repaired: <item>` for each recent repair that
    /// is not drifted again.
    fn report(&mut self, mut current: Vec<String>, now: Instant) -> Vec<String> {
        self.items
            .retain(|(at, _)| now.saturating_duration_since(*at) < REPAIRED_HOLD);
        for (_, item) in &self.items {
            let line = format!("repaired: {item}");
            if !current.contains(item) && !current.contains(&line) {
                current.push(line);
            }
        }
        current
    }
}

/// Drift the agent saw through kernel notifications, before the pass that repairs it.
struct Seen {
    changes: Changes,
    found: Vec<String>,
    firewall_changed: bool,
}

fn firewall_item() -> String {
    format!("nftables table {} changed", firewall::TABLE)
}

async fn next_event(events: &mut Option<KernelEvents>) -> Changes {
    match events {
        Some(e) => e.next().await,
        None => std::future::pending().await,
    }
}

async fn reconcile_loop(
    reconciler: Reconciler,
    kernel_gate: Arc<tokio::sync::Mutex<()>>,
    mut spec_rx: watch::Receiver<Option<Arc<HostSpec>>>,
    mut events: Option<KernelEvents>,
    resync: Duration,
    audit_every: Duration,
    out: PassOutputs,
) {
    let mut timer = tokio::time::interval(resync);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit_timer = tokio::time::interval(audit_every);
    audit_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // With notifications counted, a pass right after a look at an unchanged kernel plans
    // from that look's dump.
    let reconciler = match &events {
        Some(e) => reconciler.with_kernel_changes(e.rtnl_changes()),
        None => reconciler,
    };
    let mut c = Converger {
        reconciler,
        out,
        checked_deep: false,
        ready: false,
        converged: None,
        unresolved: BTreeSet::new(),
        repaired: Repaired::default(),
        firewall_baseline: None,
        last_event_pass: None,
    };
    loop {
        let mut deep = !c.checked_deep;
        let mut audit_only = false;
        let mut kicked = None;
        // A gone endpoint reaching the end of its grace period needs a pass to be released.
        let gone_deadline = c.reconciler.next_gone_deadline();
        let gone_due = async {
            match gone_deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = spec_rx.changed() => if changed.is_err() { return },
            _ = timer.tick() => deep = true,
            _ = audit_timer.tick() => audit_only = true,
            changes = next_event(&mut events) => kicked = Some(changes),
            _ = gone_due => {},
        }
        // Taken before the spec is read: a kernel write outside a pass is published with the
        // spec that wants it before this iteration looks (see Attachments::kernel_gate).
        let _gate = kernel_gate.lock().await;
        if let Some(changes) = kicked {
            let current = spec_rx.borrow().clone();
            match (current, &c.converged) {
                // Repairs converge to the state already programmed; a newer one gets a pass.
                (Some(now), Some(done)) if Arc::ptr_eq(&now, done) => {
                    c.repair(changes).await;
                    continue;
                }
                (None, _) => continue,
                _ => {}
            }
        }
        let Some(spec) = spec_rx.borrow_and_update().clone() else {
            continue;
        };
        if audit_only {
            c.audit(&spec).await;
            continue;
        }
        // Drift notified but not looked at yet would be repaired by this pass unseen: look
        // first (against what was programmed), so `doctor` still hears of it.
        let pending =
            kicked.unwrap_or_default() | events.as_mut().map(KernelEvents::take).unwrap_or_default();
        let seen = match pending.is_empty() {
            true => None,
            false => c.look(pending).await,
        };
        c.converge(&spec, deep, seen).await;
    }
}

/// Sends endpoint status to the controller whenever it changes (and again after failures).
async fn report_loop(
    controllers: Arc<Controllers>,
    config: Arc<AgentConfig>,
    instance: Arc<str>,
    mut report_rx: watch::Receiver<Option<Arc<PassReport>>>,
    mut drift_rx: watch::Receiver<Drift>,
    mut dns_rx: watch::Receiver<Vec<String>>,
) {
    type Sent = (u64, Vec<String>);
    let mut last_sent: Option<Sent> = None;
    let mut retry = false;
    let mut refused = false;
    loop {
        if refused {
            // Another agent holds the host name: its refusal will not change for a while.
            tokio::time::sleep(CLAIM_RETRY_MAX).await;
        }
        let next = async {
            tokio::select! {
                r = report_rx.changed() => r.is_ok(),
                d = drift_rx.changed() => d.is_ok(),
                d = dns_rx.changed() => d.is_ok(),
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
        let mut drift = drift_rx.borrow_and_update().clone();
        // What `doctor` must also hear: a gateway the DNS server cannot answer on.
        drift.items.extend(dns_rx.borrow_and_update().iter().cloned());
        let current = (report.revision, drift.items.clone());
        if last_sent.as_ref() == Some(&current) {
            continue;
        }
        let req = pb::ReportStatusRequest {
            host_name: config.host_name.clone(),
            applied_revision: report.revision,
            // Endpoints are reported by the sync loop.
            endpoints: Vec::new(),
            drift: drift.items,
            audited_ms: drift.found_ms,
            instance_id: instance.to_string(),
        };
        let sent = controllers
            .call(|ch| {
                let req = req.clone();
                async move { AgentClient::new(ch).report_status(req).await }
            })
            .await;
        retry = sent.is_err();
        refused = matches!(&sent, Err(s) if s.code() == tonic::Code::FailedPrecondition);
        match sent {
            Ok(_) => last_sent = Some(current),
            Err(status) => tracing::warn!(error = %status.message(), "status report failed; will retry"),
        }
    }
}

/// Keeps the DNS server's zones those of the latest spec, and publishes the gateways it
/// cannot listen on (one `dns: ...` line each) for the status report.
async fn feed_dns(
    server: crate::dns::DnsServer,
    mut zones: watch::Receiver<Arc<Vec<crate::dns::Zone>>>,
    problems: watch::Sender<Vec<String>>,
) {
    loop {
        let current = zones.borrow_and_update().clone();
        let report = server.update(current.to_vec());
        tracing::debug!(zones = report.zones, names = report.names, "DNS zones updated");
        let mut lines: Vec<String> = report.problems.iter().map(|p| format!("dns: {p}")).collect();
        let status = server.settled().await;
        lines.extend(
            status
                .values()
                .filter_map(|s| s.as_ref().err())
                .map(|e| format!("dns: {e}")),
        );
        problems.send_if_modified(|p| {
            let changed = *p != lines;
            *p = lines;
            changed
        });
        // A listener that failed is retried by the server; look again while any is down.
        let failing = status.values().any(Result::is_err);
        tokio::select! {
            changed = zones.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(2)), if failing => {}
        }
    }
}

/// The ports of this host overlay uses itself, which no endpoint may publish: VXLAN, and a
/// controller or this agent's metrics listening on the underlay address.
fn reserved_ports(config: &AgentConfig, underlay_ip: IpAddr) -> BTreeSet<(Protocol, u16)> {
    let mut out = BTreeSet::from([(Protocol::Udp, crate::spec::VXLAN_PORT)]);
    let here = |ip: std::net::IpAddr| ip.is_unspecified() || ip.is_loopback() || ip == underlay_ip;
    for c in &config.controllers {
        let bare = c.split("://").last().unwrap_or(c);
        if let Ok(addr) = bare.trim_end_matches('/').parse::<std::net::SocketAddr>()
            && here(addr.ip())
        {
            out.insert((Protocol::Tcp, addr.port()));
        }
    }
    if let Some(m) = config.metrics_listen
        && here(m.ip())
    {
        out.insert((Protocol::Tcp, m.port()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repaired_drift_is_reported_for_a_while_once_per_item() {
        let (route, fdb) = ("missing route 10.1.2.0/24".to_string(), "missing fdb".to_string());
        let mut r = Repaired::default();
        let t0 = Instant::now();
        r.record(&[&route, &fdb], t0);
        r.record(&[&route], t0 + Duration::from_secs(5));
        assert_eq!(r.items.len(), 2, "one entry per item");
        assert_eq!(
            r.report(
                vec!["endpoint 3: no namespace".into()],
                t0 + Duration::from_secs(1)
            ),
            vec![
                "endpoint 3: no namespace".to_string(),
                format!("repaired: {fdb}"),
                format!("repaired: {route}"),
            ]
        );
        // Drifted again: reported as current drift only.
        assert_eq!(
            r.report(vec![route.clone()], t0 + Duration::from_secs(2)),
            vec![route.clone(), format!("repaired: {fdb}")]
        );
        // The fdb repair is older than the hold; the route's latest repair is not.
        assert_eq!(
            r.report(vec![], t0 + REPAIRED_HOLD + Duration::from_secs(1)),
            vec![format!("repaired: {route}")]
        );
        assert!(r.report(vec![], t0 + REPAIRED_HOLD * 2).is_empty());
        assert!(r.items.is_empty());
    }
}
