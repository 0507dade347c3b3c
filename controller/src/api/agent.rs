//! The `Agent` service: registration, heartbeats, status reports and the Watch stream.
//!
//! Heartbeats are cheap on purpose: a replica remembers them in memory and writes one through
//! Raft only when the replicated `last_seen` is older than [`HEARTBEAT_PERSIST_EVERY`], so a
//! thousand agents do not turn into a thousand log entries every few seconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_server::Agent;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use super::{convert, invalid, parse, status};
use crate::desired;
use crate::model::EndpointStatus;
use crate::node::{Node, now_ms};
use crate::state::{Command, Response as Done};

/// The replicated `last_seen` of a host is refreshed at most this often.
pub const HEARTBEAT_PERSIST_EVERY: Duration = Duration::from_secs(10);

/// What a replica knows about an agent without asking Raft.
#[derive(Clone, Debug, Default)]
pub struct AgentSeen {
    pub last_heartbeat_ms: i64,
    pub applied_revision: u64,
}

pub struct AgentApi {
    node: Arc<Node>,
    seen: Arc<Mutex<HashMap<String, AgentSeen>>>,
}

impl AgentApi {
    pub fn new(node: Arc<Node>) -> Self {
        Self {
            node,
            seen: Arc::default(),
        }
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

/// The desired state without its revision, to tell whether anything an agent programs changed.
fn content(d: &pb::HostDesiredState) -> pb::HostDesiredState {
    pb::HostDesiredState {
        revision: 0,
        ..d.clone()
    }
}

#[tonic::async_trait]
impl Agent for AgentApi {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
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

    type WatchStream = ReceiverStream<Result<pb::HostDesiredState, Status>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let host = req.into_inner().host_name;
        let view = self.node.view.clone();
        // Subscribe before the first read so no change between the two is missed.
        let mut revisions = view.subscribe();
        let first = view
            .read(|s| desired::for_host(s, &host))
            .ok_or_else(|| Self::unknown_host(&host))?;
        let (tx, rx) = mpsc::channel(4);
        tracing::info!(%host, revision = first.revision, "watch started");
        tokio::spawn(async move {
            let mut last = content(&first);
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { break },
                    _ = tx.closed() => break,
                }
                match view.read(|s| desired::for_host(s, &host)) {
                    None => {
                        let _ = tx.send(Err(Self::unknown_host(&host))).await;
                        break;
                    }
                    Some(next) => {
                        let next_content = content(&next);
                        if next_content != last {
                            last = next_content;
                            if tx.send(Ok(next)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            tracing::info!(%host, "watch ended");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_status(
        &self,
        req: Request<pb::ReportStatusRequest>,
    ) -> Result<Response<pb::ReportStatusResponse>, Status> {
        let req = req.into_inner();
        self.remember(&req.host_name, req.applied_revision);
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
                        Ok(pb::EndpointReport::Failed) => EndpointStatus::Failed(r.message.clone()),
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
}
