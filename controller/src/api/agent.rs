//! The `Agent` service: registration, heartbeats, status reports and the Watch stream.
//!
//! Heartbeats are cheap on purpose: a replica remembers them in memory and writes one through
//! Raft only when the replicated `last_seen` is older than [`HEARTBEAT_PERSIST_EVERY`], so a
//! thousand agents do not turn into a thousand log entries every few seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_server::Agent;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::{convert, invalid, parse, status};
use crate::auth::require_host;
use crate::desired::Model;
use crate::model::EndpointStatus;
use crate::node::{AgentsSeen, Node, now_ms};
use crate::state::{Command, Response as Done};

/// The replicated `last_seen` of a host is refreshed at most this often.
pub const HEARTBEAT_PERSIST_EVERY: Duration = Duration::from_secs(10);

pub struct AgentApi {
    node: Arc<Node>,
    seen: AgentsSeen,
    /// Open Watch streams, for the metrics.
    watchers: Arc<AtomicI64>,
    /// The desired-state model of the latest revision, shared by every Watch stream.
    models: watch::Sender<Arc<Model>>,
    /// Turns true when the replica stops: every Watch stream then ends.
    stopping: watch::Receiver<bool>,
}

/// Rebuilds of the model are at least this far apart; revisions arriving meanwhile share one.
const MODEL_COALESCE: Duration = Duration::from_millis(10);

/// How long a new Watch stream waits for the model to include changes already applied.
const MODEL_CATCH_UP: Duration = Duration::from_secs(5);

impl AgentApi {
    /// `watchers` counts the open Watch streams (shared with the metrics).
    pub fn new(node: Arc<Node>, watchers: Arc<AtomicI64>) -> Self {
        let view = node.view.clone();
        let initial = Arc::new(view.read(|s| Model::build(s, None)));
        let (models, _) = watch::channel(initial);
        tokio::spawn(publish_models(view, models.clone()));
        Self {
            seen: node.agents.clone(),
            node,
            watchers,
            models,
            stopping: watch::channel(false).1,
        }
    }

    /// Ends every Watch stream once `stopping` turns true, with `UNAVAILABLE`, so that each
    /// agent moves to another replica at once instead of holding this one's shutdown up.
    pub fn ending_streams_on(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    fn remember(&self, host: &str, applied_revision: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen.entry(host.to_string()).or_default();
        entry.last_heartbeat_ms = now_ms();
        entry.applied_revision = entry.applied_revision.max(applied_revision);
    }

    fn unknown_host(host: &str) -> Status {
        status(Code::NotFound, format!("host {host:?} is not registered"))
    }
}

/// Rebuilds the shared model after every revision change, once for all Watch streams. Parts
/// that did not change are shared with the previous model.
async fn publish_models(view: crate::raft::StateView, models: watch::Sender<Arc<Model>>) {
    let mut revisions = view.subscribe();
    let mut last_build: Option<tokio::time::Instant> = None;
    while revisions.changed().await.is_ok() {
        // A lone change is published at once; under a burst of writes, at most one rebuild per
        // MODEL_COALESCE covers every revision that arrived meanwhile, so rebuilding does not
        // compete with each write for the CPU.
        if let Some(at) = last_build {
            tokio::time::sleep_until(at + MODEL_COALESCE).await;
        }
        last_build = Some(tokio::time::Instant::now());
        revisions.borrow_and_update();
        let previous = models.borrow().clone();
        let next = view.read(|s| Model::build(s, Some(&previous)));
        models.send_replace(Arc::new(next));
    }
}

/// Results in one probe report: one per peer host and packet size.
const MAX_PROBE_RESULTS: usize = 16_384;
/// What an agent may say about one endpoint or one drift line: enough for any kernel error,
/// not enough to bloat the replicated log or the replica's memory.
const MAX_REPORT_TEXT: usize = 1024;
const MAX_DRIFT_LINES: usize = 1000;

fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_REPORT_TEXT) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        require_host(&req, &req.get_ref().host_name)?;
        let req = req.into_inner();
        let underlay_ip = parse::ipv4("underlay IP", &req.underlay_ip)?;
        if req.host_name.is_empty() {
            return Err(invalid("host name is required"));
        }
        let cmd = Command::RegisterHost {
            name: req.host_name.clone(),
            underlay_ip,
            underlay_iface: req.underlay_iface,
            underlay_mtu: req.underlay_mtu,
            now_ms: now_ms(),
        };
        let reply = self.node.write(cmd).await?;
        let Done::Host(host) = reply.result? else {
            return Err(status(Code::Internal, "unexpected reply"));
        };
        self.remember(&host.name, 0);
        tracing::info!(host = %host.name, underlay = %host.underlay_ip, vtep_mac = %host.vtep_mac, "host registered");
        self.node.applied(reply.revision).await;
        let out = self.node.view.read(|s| convert::host(s, &host, now_ms()));
        Ok(Response::new(pb::RegisterResponse {
            host: Some(out),
            revision: reply.revision,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        require_host(&req, &req.get_ref().host_name)?;
        let req = req.into_inner();
        let last_seen = self
            .node
            .view
            .read(|s| s.hosts.get(&req.host_name).map(|h| h.last_seen_ms));
        let Some(last_seen) = last_seen else {
            return Err(Self::unknown_host(&req.host_name));
        };
        self.remember(&req.host_name, req.applied_revision);
        let now = now_ms();
        if now - last_seen >= HEARTBEAT_PERSIST_EVERY.as_millis() as i64 {
            let reply = self
                .node
                .write(Command::Heartbeat {
                    name: req.host_name.clone(),
                    now_ms: now,
                })
                .await?;
            reply.result?;
        }
        Ok(Response::new(pb::HeartbeatResponse {
            revision: self.node.view.revision(),
        }))
    }

    type WatchStream = ReceiverStream<Result<pb::WatchEvent, Status>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        require_host(&req, &req.get_ref().host_name)?;
        let host = req.into_inner().host_name;
        let mut models = self.models.subscribe();
        // Start from a model that includes every change applied before this call (a host that
        // just registered must find itself in it).
        let applied = self.node.view.revision();
        let first = tokio::time::timeout(MODEL_CATCH_UP, models.wait_for(|m| m.revision >= applied))
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|m| m.clone())
            .unwrap_or_else(|| models.borrow().clone());
        let event = first.full_event(&host).ok_or_else(|| Self::unknown_host(&host))?;
        let (tx, rx) = mpsc::channel(16);
        tracing::info!(%host, revision = first.revision, "watch started");
        let watchers = self.watchers.clone();
        watchers.fetch_add(1, Ordering::Relaxed);
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(host.clone())
            .or_default()
            .streams += 1;
        let guard = OpenStream {
            watchers,
            seen: self.seen.clone(),
            host: host.clone(),
        };
        let mut probe_orders = self.node.probes.subscribe();
        let mut stopping = self.stopping.clone();
        let seen = self.seen.clone();
        let record_sent = move |host: &str, revision: u64| {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.entry(host.to_string()).or_default().sent_revision = revision;
        };
        tokio::spawn(async move {
            let _open = guard;
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
            record_sent(&host, first.revision);
            // The model this agent last received: deltas are computed against it.
            let mut sent = first;
            loop {
                tokio::select! {
                    changed = models.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                    () = stopped(&mut stopping) => {
                        // Not waited for: a stream whose agent does not read just ends.
                        let _ = tx.try_send(Err(status(Code::Unavailable, "controller replica is stopping; reconnect to another replica")));
                        break;
                    }
                    order = probe_orders.recv() => {
                        // Orders for other hosts, or a lagging receiver, are no concern here.
                        if let Ok(o) = order && o.host == host && let Some(order) = o.order {
                            let event = pb::WatchEvent {
                                revision: sent.revision,
                                event: Some(pb::watch_event::Event::Probe(order)),
                            };
                            if tx.send(Ok(event)).await.is_err() {
                                break;
                            }
                        }
                        continue;
                    }
                }
                let current = models.borrow_and_update().clone();
                if !current.has_host(&host) {
                    let _ = tx.send(Err(Self::unknown_host(&host))).await;
                    break;
                }
                if let Some(event) = current.delta(&sent, &host) {
                    if tx.send(Ok(event)).await.is_err() {
                        break;
                    }
                    record_sent(&host, current.revision);
                    sent = current;
                }
            }
            tracing::info!(%host, "watch ended");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_probe(&self, req: Request<pb::ProbeReport>) -> Result<Response<pb::ProbeAck>, Status> {
        require_host(&req, &req.get_ref().host)?;
        let report = req.into_inner();
        // An agent measures from its own host only, and a report is one row of the matrix.
        if let Some(r) = report.results.iter().find(|r| r.from != report.host) {
            return Err(invalid(format!(
                "probe report of host {:?} carries a result from {:?}",
                report.host, r.from
            )));
        }
        if report.results.len() > MAX_PROBE_RESULTS {
            return Err(invalid(format!(
                "probe report with {} results (at most {MAX_PROBE_RESULTS})",
                report.results.len()
            )));
        }
        tracing::info!(host = %report.host, id = %report.id, results = report.results.len(), "probe report");
        self.node.probes.record(report);
        Ok(Response::new(pb::ProbeAck {}))
    }

    async fn report_status(
        &self,
        req: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        require_host(&req, &req.get_ref().host_name)?;
        let req = req.into_inner();
        self.remember(&req.host_name, req.applied_revision);
        if req.audited_ms > 0 {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let entry = seen.entry(req.host_name.clone()).or_default();
            if req.audited_ms >= entry.audited_ms {
                entry.drift = req.drift.iter().take(MAX_DRIFT_LINES).map(|l| clip(l)).collect();
                entry.audited_ms = req.audited_ms;
            }
        }
        let changed = self.node.view.read(|s| {
            if !s.hosts.contains_key(&req.host_name) {
                return Err(Self::unknown_host(&req.host_name));
            }
            Ok(req
                .endpoints
                .iter()
                .filter_map(|r| {
                    let status = match pb::EndpointReport::try_from(r.report) {
                        Ok(pb::EndpointReport::Ready) => EndpointStatus::Ready,
                        Ok(pb::EndpointReport::Failed) => EndpointStatus::Failed(clip(&r.message)),
                        Ok(pb::EndpointReport::Gone) => EndpointStatus::Gone(clip(&r.message)),
                        _ => return None,
                    };
                    let ep = s.endpoints.get(&r.id)?;
                    (ep.host == req.host_name && ep.status != status).then_some((r.id, status))
                })
                .collect::<Vec<_>>())
        })?;
        if !changed.is_empty() {
            let reply = self
                .node
                .write(Command::ReportEndpoints {
                    host: req.host_name,
                    statuses: changed,
                })
                .await?;
            reply.result?;
        }
        Ok(Response::new(pb::ReportStatusResponse {
            revision: self.node.view.revision(),
        }))
    }

    /// Frees an endpoint whose namespace is gone. Only the endpoint's own host may: the caller's
    /// certificate must name `host_name` (here), and the state machine checks that the endpoint
    /// is that host's and was reported gone (in `apply`, so a race with a report or a detach
    /// is decided in log order).
    async fn release_endpoint(
        &self,
        req: Request<pb::ReleaseEndpointRequest>,
    ) -> Result<Response<pb::ReleaseEndpointResponse>, Status> {
        require_host(&req, &req.get_ref().host_name)?;
        let req = req.into_inner();
        if req.host_name.is_empty() {
            return Err(invalid("host name is required"));
        }
        let reply = self
            .node
            .write(Command::ReleaseEndpoint {
                host: req.host_name.clone(),
                id: req.id,
            })
            .await?;
        let Done::EndpointDetached(ep) = reply.result? else {
            return Err(status(Code::Internal, "unexpected reply"));
        };
        tracing::info!(host = %ep.host, id = ep.id, network = %ep.network, netns = %ep.netns, address = %ep.ip, "gone endpoint released by its agent");
        Ok(Response::new(pb::ReleaseEndpointResponse {
            endpoint: Some(convert::endpoint(&ep)),
            revision: reply.revision,
        }))
    }
}

/// Resolves once `stopping` is true; never when nobody can set it any more.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Counts a Watch stream as open for as long as its task runs, however it ends.
struct OpenStream {
    watchers: Arc<AtomicI64>,
    seen: AgentsSeen,
    host: String,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::Relaxed);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = seen.get_mut(&self.host) {
            s.streams = s.streams.saturating_sub(1);
        }
    }
}
