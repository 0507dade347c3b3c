//! The `Agent` service: registration, heartbeats, status reports and the Watch stream.
//!
//! Heartbeats are cheap on purpose: a replica remembers them in memory and writes one through
//! Raft only when the replicated `last_seen` is older than [`HEARTBEAT_PERSIST_EVERY`], so a
//! thousand agents do not turn into a thousand log entries every few seconds.
//!
//! One agent instance holds a host name at a time (`overlay_proto::instance`): every call
//! carries the caller's instance id, a `Register` from another instance is refused while the
//! holder is connected or seen within `--host-claim-timeout` (the state machine decides from
//! the command's clock and timeout), and every other call from a non-holder is refused. Each
//! refusal is remembered per host ([`crate::node::RefusedClaim`]) for `doctor`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_server::Agent;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::{convert, invalid, parse, status};
use crate::auth::{self, require_host, require_underlay};
use crate::desired::Model;
use crate::model::{EndpointStatus, Host};
use crate::node::{AgentsSeen, Node, RefusedClaim, agent_connected, now_ms};
use crate::state::{Command, Response as Done, StateError};

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

    /// Notes a sign of life of `host`'s agent (a registered host's holder: checked by the caller).
    fn remember(&self, host: &str, applied_revision: u64) {
        self.node.with_agent(host, |entry| {
            entry.last_heartbeat_ms = now_ms();
            entry.applied_revision = entry.applied_revision.max(applied_revision);
        });
    }

    fn unknown_host(host: &str) -> Status {
        status(Code::NotFound, format!("host {host:?} is not registered"))
    }

    fn claim_timeout_ms(&self) -> i64 {
        self.node.claim_timeout.as_millis() as i64
    }

    /// The record of `host` if `instance` holds it; otherwise the refusal, remembered for
    /// `doctor` (`call` says what the caller asked for).
    fn holder<T>(&self, req: &Request<T>, host: &str, instance: &str, call: &str) -> Result<Host, Status> {
        check_instance(instance)?;
        let checked = self.node.view.read(|s| {
            s.holder(host, instance, now_ms(), self.claim_timeout_ms())
                .cloned()
        });
        checked.map_err(|e| match e {
            StateError::UnknownHost(_) => Self::unknown_host(host),
            e => self.refuse_claim(req, host, instance, "", call, e),
        })
    }

    /// Records and logs a refused claim on `host`; returns the status for the caller.
    fn refuse_claim<T>(
        &self,
        req: &Request<T>,
        host: &str,
        instance: &str,
        underlay_ip: &str,
        call: &str,
        why: StateError,
    ) -> Status {
        let claim = RefusedClaim {
            instance: overlay_proto::instance::short(instance).to_string(),
            underlay_ip: underlay_ip.to_string(),
            source: auth::source(req),
            refusals: 1,
            last_refused_ms: now_ms(),
            call: call.to_string(),
        };
        tracing::warn!(%host, instance = %claim.instance, source = %claim.source, call, "refused an agent claiming a host held by another: {why}");
        self.node.with_agent(host, |a| a.refuse(claim));
        Status::from(why)
    }
}

/// An instance id as agents send it ("" allowed: such a caller can only claim a free name).
fn check_instance(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Ok(());
    }
    overlay_proto::instance::validate(id).map_err(|reason| invalid(format!("invalid instance id: {reason}")))
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
        let underlay_ip = parse::ip("underlay IP", &req.get_ref().underlay_ip)?;
        require_underlay(&req, underlay_ip)?;
        let body = req.get_ref().clone();
        if body.host_name.is_empty() {
            return Err(invalid("host name is required"));
        }
        check_instance(&body.instance_id)?;
        let refuse = |why| {
            self.refuse_claim(
                &req,
                &body.host_name,
                &body.instance_id,
                &body.underlay_ip,
                "Register",
                why,
            )
        };
        // Another instance holds the name. The state machine goes by the replicated
        // `last_seen`, which may be HEARTBEAT_PERSIST_EVERY old; the replicas' memory knows
        // better. While the holder is connected, or was heard (a heartbeat, a report, its
        // stream ending) within the claim timeout, refuse here.
        let held = self.node.view.read(|s| {
            s.hosts
                .get(&body.host_name)
                .filter(|h| !h.claimant.is_empty() && h.claimant != body.instance_id)
                .cloned()
        });
        if let Some(holder) = held {
            let (seen, _) = self.node.agents_everywhere().await;
            let now = now_ms();
            let s = seen.get(&holder.name).cloned().unwrap_or_default();
            let heard = s
                .last_heartbeat_ms
                .max(s.stream_ended_ms)
                .max(holder.last_seen_ms);
            let timeout_ms = self.claim_timeout_ms();
            if agent_connected(&s, holder.last_seen_ms, now) || now - heard < timeout_ms {
                return Err(refuse(StateError::HostClaimed {
                    host: holder.name.clone(),
                    holder: overlay_proto::instance::short(&holder.claimant).to_string(),
                    underlay_ip: holder.underlay_ip,
                    silent_ms: if s.streams > 0 { 0 } else { (now - heard).max(0) },
                    timeout_ms,
                }));
            }
        }
        let cmd = Command::RegisterHost {
            name: body.host_name.clone(),
            underlay_ip,
            underlay_iface: body.underlay_iface.clone(),
            underlay_mtu: body.underlay_mtu,
            now_ms: now_ms(),
            instance: body.instance_id.clone(),
            claim_timeout_ms: self.claim_timeout_ms(),
        };
        let reply = self.node.write(cmd).await?;
        let host = match reply.result {
            Ok(Done::Host(host)) => host,
            Err(why @ StateError::HostClaimed { .. }) => return Err(refuse(why)),
            Err(e) => return Err(e.into()),
            Ok(_) => return Err(status(Code::Internal, "unexpected reply")),
        };
        self.remember(&host.name, 0);
        tracing::info!(host = %host.name, underlay = %host.underlay_ip, vtep_mac = %host.vtep_mac, instance = overlay_proto::instance::short(&host.claimant), "host registered");
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
        let (host, instance) = (&req.get_ref().host_name, &req.get_ref().instance_id);
        let last_seen = self.holder(&req, host, instance, "Heartbeat")?.last_seen_ms;
        let req = req.into_inner();
        self.remember(&req.host_name, req.applied_revision);
        let now = now_ms();
        if now - last_seen >= HEARTBEAT_PERSIST_EVERY.as_millis() as i64 {
            let reply = self
                .node
                .write(Command::Heartbeat {
                    name: req.host_name.clone(),
                    now_ms: now,
                    instance: req.instance_id,
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
        let (host, instance) = (&req.get_ref().host_name, &req.get_ref().instance_id);
        // (An unknown host is answered below, once the model has caught up.)
        if self.node.view.read(|s| s.hosts.contains_key(host)) {
            self.holder(&req, host, instance, "Watch")?;
        }
        let pb::WatchRequest {
            host_name: host,
            instance_id: instance,
        } = req.into_inner();
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
        self.node.with_agent(&host, |a| a.streams += 1);
        let guard = OpenStream {
            watchers,
            seen: self.seen.clone(),
            host: host.clone(),
        };
        let mut probe_orders = self.node.probes.subscribe();
        let mut stopping = self.stopping.clone();
        let (node, claim_timeout_ms) = (self.node.clone(), self.claim_timeout_ms());
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
                // Another instance took the name over (this one was silent too long): its
                // desired state is no longer this agent's.
                let lost = node
                    .view
                    .read(|s| s.holder(&host, &instance, now_ms(), claim_timeout_ms).err());
                if let Some(why @ StateError::HostClaimed { .. }) = lost {
                    let _ = tx.send(Err(Status::from(why))).await;
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
        let (host, instance) = (&req.get_ref().host, &req.get_ref().instance_id);
        self.holder(&req, host, instance, "ReportProbe")?;
        let report = req.into_inner();
        // An agent measures from its own host only, and a report is one row of the matrix.
        if let Some(r) = report.results.iter().find(|r| r.from != report.host) {
            return Err(invalid(format!(
                "probe report of host {:?} carries a result from {:?}",
                report.host,
                r.from.chars().take(64).collect::<String>()
            )));
        }
        let (host, results) = (report.host.clone(), report.results.len());
        let id: String = report.id.chars().take(64).collect();
        self.node
            .probes
            .record(report)
            .map_err(|e| status(Code::FailedPrecondition, e.to_string()))?;
        tracing::info!(%host, %id, results, "probe report");
        Ok(Response::new(pb::ProbeAck {}))
    }

    async fn report_status(
        &self,
        req: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        require_host(&req, &req.get_ref().host_name)?;
        // Nothing is recorded for a host that does not exist, or for an agent not holding it.
        let (host, instance) = (&req.get_ref().host_name, &req.get_ref().instance_id);
        self.holder(&req, host, instance, "ReportStatus")?;
        let req = req.into_inner();
        self.remember(&req.host_name, req.applied_revision);
        if req.audited_ms > 0 {
            self.node.with_agent(&req.host_name, |entry| {
                if req.audited_ms >= entry.audited_ms {
                    entry.drift = req.drift.iter().take(MAX_DRIFT_LINES).map(|l| clip(l)).collect();
                    entry.audited_ms = req.audited_ms;
                }
            });
        }
        Ok(Response::new(pb::ReportStatusResponse {
            revision: self.node.view.revision(),
        }))
    }

    /// Records the endpoints the agent's host holds (its store is the authority for them):
    /// each is checked in `apply` against the host's lease and the other endpoints.
    async fn sync_endpoints(
        &self,
        req: Request<pb::SyncEndpointsRequest>,
    ) -> Result<Response<pb::SyncEndpointsResponse>, Status> {
        require_host(&req, &req.get_ref().host_name)?;
        let (host, instance) = (&req.get_ref().host_name, &req.get_ref().instance_id);
        self.holder(&req, host, instance, "SyncEndpoints")?;
        let req = req.into_inner();
        self.remember(&req.host_name, 0);
        let upsert = req
            .endpoints
            .iter()
            .map(parse::host_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(
            host = %req.host_name,
            full = req.full,
            upsert = ?req.endpoints.iter().map(|e| &e.key).collect::<Vec<_>>(),
            removed = ?req.removed,
            failed = ?req.failed.iter().map(|f| &f.key).collect::<Vec<_>>(),
            "endpoint report"
        );
        let cmd = Command::SyncEndpoints {
            host: req.host_name,
            full: req.full,
            upsert,
            remove: req.removed,
            failed: req
                .failed
                .into_iter()
                .map(|f| (f.key, clip(&f.message)))
                .collect(),
            now_ms: now_ms(),
        };
        let reply = self.node.write(cmd).await?;
        let Done::Synced { refused, .. } = reply.result? else {
            return Err(status(Code::Internal, "unexpected reply"));
        };
        for (key, why) in &refused {
            tracing::warn!(%key, %why, "endpoint report refused");
        }
        Ok(Response::new(pb::SyncEndpointsResponse {
            revision: reply.revision,
            refused: refused
                .into_iter()
                .map(|(key, message)| pb::FailedRequest { key, message })
                .collect(),
        }))
    }

    /// An address of a macvlan network for one of the agent's endpoints.
    async fn allocate_address(
        &self,
        req: Request<pb::AllocateAddressRequest>,
    ) -> Result<Response<pb::AllocateAddressResponse>, Status> {
        require_host(&req, &req.get_ref().host_name)?;
        let (host, instance) = (&req.get_ref().host_name, &req.get_ref().instance_id);
        self.holder(&req, host, instance, "AllocateAddress")?;
        let req = req.into_inner();
        let ip = match req.ip.as_str() {
            "" => None,
            text => Some(parse::ipv4("address", text)?),
        };
        let endpoint = crate::model::HostEndpoint {
            key: req.key,
            host_id: req.host_id,
            network: req.network,
            netns: req.netns,
            ifname: req.ifname,
            ip: std::net::Ipv4Addr::UNSPECIFIED,
            default_route: req.default_route,
            owner: req.owner,
            names: req.names,
            status: EndpointStatus::Pending,
            // macvlan: nothing to publish (refused for any non-empty list).
            ports: Vec::new(),
        };
        let reply = self
            .node
            .write(Command::AllocateAddress {
                host: req.host_name,
                endpoint,
                ip,
                now_ms: now_ms(),
            })
            .await?;
        let Done::Endpoint(ep) = reply.result? else {
            return Err(status(Code::Internal, "unexpected reply"));
        };
        Ok(Response::new(pb::AllocateAddressResponse {
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
            s.stream_ended_ms = now_ms();
        }
    }
}
