//! The `Overlay` service: networks, hosts, endpoints and cluster status for overlayctl.
//!
//! Writes go through [`Node::write`]; reads first call [`Node::linearizable`], so an answer
//! never misses a change that was acknowledged before the request, whichever replica serves it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use overlay_proto::v1 as pb;
use overlay_proto::v1::overlay_server::Overlay;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

use super::{convert, invalid, parse, status};
use crate::model::EndpointStatus;
use crate::node::{MembershipChange, Node, agent_connected, now_ms};
use crate::raft::NodeId;
use crate::state::{Command, MtuSetting, Response as Done};

/// How long `endpoint attach` waits for the host's agent unless the request says otherwise.
pub const DEFAULT_ATTACH_WAIT: Duration = Duration::from_secs(15);
const MAX_ATTACH_WAIT: Duration = Duration::from_secs(300);

pub struct OverlayApi {
    node: Arc<Node>,
}

impl OverlayApi {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Proposes `cmd` and returns the successful response, or the refusal as a status.
    async fn write(&self, cmd: Command) -> Result<(Done, u64), Status> {
        let reply = self.node.write(cmd).await?;
        Ok((reply.result?, reply.revision))
    }

    /// Waits for the agent to carry out a request. On failure or timeout the request is
    /// withdrawn, so a failed attach leaves nothing behind.
    ///
    /// `revision` is the one the allocation created: a follower that forwarded the write may not
    /// have applied it yet, and must not mistake "not applied yet" for "detached".
    async fn await_wiring(
        &self,
        ep: pb::Endpoint,
        revision: u64,
        wait: Duration,
    ) -> Result<pb::Endpoint, Status> {
        let deadline = Instant::now() + wait;
        let mut revisions = self.node.view.subscribe();
        self.node.applied(revision).await;
        loop {
            let current = self
                .node
                .view
                .read(|s| s.endpoints.get(&ep.id).map(|e| e.status.clone()));
            match current {
                None => {
                    return Err(status(
                        Code::Aborted,
                        format!(
                            "the endpoint of {} in {} was detached while being wired",
                            ep.network, ep.netns
                        ),
                    ));
                }
                Some(EndpointStatus::Ready) => {
                    let done = self
                        .node
                        .view
                        .read(|s| s.endpoints.get(&ep.id).map(convert::endpoint));
                    return Ok(done.unwrap_or(ep));
                }
                Some(EndpointStatus::Failed(reason) | EndpointStatus::Gone(reason)) => {
                    self.roll_back(&ep).await;
                    return Err(status(
                        Code::FailedPrecondition,
                        format!("host {:?} could not wire the endpoint: {reason}", ep.host),
                    ));
                }
                Some(EndpointStatus::Requested | EndpointStatus::Pending) => {}
            }
            if tokio::time::timeout_at(deadline, revisions.changed())
                .await
                .is_err()
            {
                self.roll_back(&ep).await;
                return Err(status(
                    Code::DeadlineExceeded,
                    format!(
                        "the agent on host {:?} did not wire the endpoint within {}s; is overlay-agent running there?",
                        ep.host,
                        wait.as_secs()
                    ),
                ));
            }
        }
    }

    async fn roll_back(&self, ep: &pb::Endpoint) {
        let cmd = Command::DetachEndpoint {
            network: ep.network.clone(),
            host: ep.host.clone(),
            netns: ep.netns.clone(),
        };
        if let Err(e) = self.node.write(cmd).await {
            tracing::warn!(endpoint = ep.id, error = %e, "could not roll back a failed attach");
        }
    }

    /// Replication position of each member as the leader sees it (asked of the leader when this
    /// replica follows).
    async fn leader_replication(&self) -> Option<std::collections::BTreeMap<NodeId, u64>> {
        let metrics = if self.node.leader().is_some_and(|(id, _)| id == self.node.id) {
            self.node.raft.metrics().borrow().clone()
        } else {
            let (_, addr) = self.node.leader()?;
            let mut client = self.node.peers.client(&addr).ok()?;
            let mut req = Request::new(overlay_proto::raft::RaftPayload { data: Vec::new() });
            req.set_timeout(Duration::from_secs(1));
            let reply = client.metrics(req).await.ok()?;
            crate::raft::network::decode::<openraft::RaftMetrics<NodeId, openraft::BasicNode>>(
                reply.get_ref(),
            )
            .ok()?
        };
        let replication = metrics.replication?;
        Some(
            replication
                .into_iter()
                .map(|(id, log)| (id, log.map(|l| l.index).unwrap_or(0)))
                .collect(),
        )
    }
}

fn require(what: &str, value: &str) -> Result<(), Status> {
    if value.trim().is_empty() {
        Err(invalid(format!("{what} is required")))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl Overlay for OverlayApi {
    async fn doctor(&self, _req: Request<pb::DoctorRequest>) -> Result<Response<pb::DoctorResponse>, Status> {
        let (hosts, gone_endpoints): (Vec<(String, String)>, Vec<pb::Endpoint>) = self.node.view.read(|s| {
            let gone = s
                .endpoints
                .values()
                .filter(|e| matches!(e.status, EndpointStatus::Gone(_)))
                .map(convert::endpoint)
                .collect();
            let hosts = s
                .hosts
                .values()
                .map(|h| {
                    let instance = match h.claimant.as_str() {
                        "" => String::new(),
                        id => overlay_proto::instance::short(id).to_string(),
                    };
                    (h.name.clone(), instance)
                })
                .collect();
            (hosts, gone)
        });
        let (seen, unreachable) = self.node.agents_everywhere().await;
        let now = now_ms();
        let hosts = hosts
            .into_iter()
            .map(|(host, instance)| {
                let mut s = seen.get(&host).cloned().unwrap_or_default();
                s.tidy_claims(now);
                pb::HostHealth {
                    connected: s.streams > 0,
                    last_heartbeat_ms: s.last_heartbeat_ms,
                    applied_revision: s.applied_revision,
                    sent_revision: s.sent_revision,
                    drift: s.drift,
                    audited_ms: s.audited_ms,
                    host,
                    instance,
                    refused_claims: s
                        .refused_claims
                        .into_iter()
                        .map(|c| pb::RefusedClaim {
                            instance: c.instance,
                            underlay_ip: c.underlay_ip,
                            source: c.source,
                            refusals: c.refusals,
                            last_refused_ms: c.last_refused_ms,
                            call: c.call,
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Response::new(pb::DoctorResponse {
            hosts,
            now_ms: now,
            unreachable_replicas: unreachable,
            gone_endpoints,
        }))
    }

    async fn probe(&self, req: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeMatrix>, Status> {
        use prost::Message;
        let req = req.into_inner();
        require("network", &req.network)?;
        let count = match req.count {
            0 => 3,
            n => n.min(20),
        };
        let id = format!(
            "{}-{}-{}",
            self.node.id,
            now_ms(),
            PROBE_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        self.node.linearizable().await?;
        let (orders, hosts) = self
            .node
            .view
            .read(|s| crate::probe::orders(s, &req.network, count, &id))
            .map_err(|e| {
                let code = if e.starts_with("unknown network") {
                    Code::NotFound
                } else {
                    Code::FailedPrecondition
                };
                status(code, e)
            })?;
        tracing::info!(%id, network = %req.network, hosts = hosts.len(), "probe started");
        self.node.probes.publish(&orders);
        let peers = self.node.other_members();
        let payload = overlay_proto::raft::RaftPayload {
            data: pb::ProbeOrders { orders }.encode_to_vec(),
        };
        for (_, addr) in &peers {
            if let Ok(mut c) = self.node.peers.client(addr) {
                let mut r = Request::new(payload.clone());
                r.set_timeout(Duration::from_secs(1));
                let _ = c.start_probe(r).await;
            }
        }
        // Each agent sends `count` echoes of two sizes to every target (in parallel per
        // target), each waiting up to ECHO_TIMEOUT_MS: allow for that and the round trips.
        let deadline = Instant::now()
            + Duration::from_millis(u64::from(count * crate::probe::ECHO_TIMEOUT_MS) * 2 + 3000);
        let mut reports: std::collections::BTreeMap<String, pb::ProbeReport> = Default::default();
        loop {
            for r in self.node.probes.reports(&id) {
                reports.insert(r.host.clone(), r);
            }
            for (_, addr) in &peers {
                if let Ok(mut c) = self.node.peers.client(addr) {
                    let mut r = Request::new(overlay_proto::raft::RaftPayload {
                        data: id.clone().into_bytes(),
                    });
                    r.set_timeout(Duration::from_secs(1));
                    if let Ok(resp) = c.probe_reports(r).await
                        && let Ok(theirs) = pb::ProbeReports::decode(resp.get_ref().data.as_slice())
                    {
                        for r in theirs.reports {
                            reports.insert(r.host.clone(), r);
                        }
                    }
                }
            }
            if hosts.iter().all(|h| reports.contains_key(h)) || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let silent = hosts
            .iter()
            .filter(|h| !reports.contains_key(*h))
            .cloned()
            .collect();
        let results: Vec<pb::ProbeResult> = reports.into_values().flat_map(|r| r.results).collect();
        let small_size = results.iter().map(|r| r.size).min().unwrap_or(0);
        let big_size = results.iter().map(|r| r.size).max().unwrap_or(0);
        Ok(Response::new(pb::ProbeMatrix {
            network: req.network,
            hosts,
            results,
            silent,
            small_size,
            big_size,
        }))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let req = req.into_inner();
        if req.id == 0 {
            return Err(invalid("member id must be 1 or more"));
        }
        let addr = req.addr.trim().to_string();
        if !valid_member_addr(&addr) {
            return Err(invalid(format!(
                "invalid member address {addr:?}: expected host:port, e.g. 192.0.2.13:7400"
            )));
        }
        self.node.check_new_member(req.id, &addr).await?;
        tracing::info!(id = req.id, %addr, "adding a controller member");
        self.node
            .change_membership(MembershipChange::Add { id: req.id, addr })
            .await?;
        self.cluster_status(Request::new(pb::ClusterStatusRequest {}))
            .await
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let id = req.into_inner().id;
        tracing::info!(id, "removing a controller member");
        self.node
            .change_membership(MembershipChange::Remove { id })
            .await?;
        self.cluster_status(Request::new(pb::ClusterStatusRequest {}))
            .await
    }

    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let replication = self.leader_replication().await;
        let leader = metrics.current_leader;

        // Ask every member directly whether it answers: a dead follower's replication position
        // alone looks healthy until the next write.
        let probes = membership.nodes().map(|(id, node)| {
            let (id, addr) = (*id, node.addr.clone());
            let peers = self.node.peers.clone();
            let me = self.node.id;
            async move {
                if id == me {
                    return (id, true);
                }
                let Ok(mut client) = peers.client(&addr) else {
                    return (id, false);
                };
                let mut req = Request::new(overlay_proto::raft::NodeInfoRequest {});
                req.set_timeout(Duration::from_millis(800));
                (id, client.info(req).await.is_ok())
            }
        });
        let reachable: std::collections::BTreeMap<NodeId, bool> =
            futures::future::join_all(probes).await.into_iter().collect();

        let members: Vec<pb::ClusterMember> = membership
            .nodes()
            .map(|(id, node)| {
                let role = if Some(*id) == leader {
                    "leader"
                } else if voters.contains(id) {
                    "follower"
                } else {
                    "learner"
                };
                let matched = if Some(*id) == leader {
                    metrics.last_log_index.unwrap_or(0)
                } else {
                    replication.as_ref().and_then(|r| r.get(id).copied()).unwrap_or(0)
                };
                pb::ClusterMember {
                    id: *id,
                    addr: node.addr.clone(),
                    role: role.to_string(),
                    healthy: reachable.get(id).copied().unwrap_or(false),
                    matched_index: matched,
                }
            })
            .collect();
        let healthy_voters = members
            .iter()
            .filter(|m| voters.contains(&m.id) && m.healthy)
            .count();
        let health = if leader.is_none() || healthy_voters * 2 <= voters.len() {
            "no-quorum"
        } else if members.iter().all(|m| m.healthy) {
            "ok"
        } else {
            "degraded"
        };
        Ok(Response::new(pb::ClusterStatusResponse {
            members,
            leader_id: leader.unwrap_or(0),
            term: metrics.current_term,
            commit_index: self.node.committed_index(),
            applied_index: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            revision: self.node.view.revision(),
            served_by: self.node.id,
            health: health.to_string(),
        }))
    }

    async fn create_network(
        &self,
        req: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let spec = parse::network_spec(req.get_ref())?;
        let (done, _) = self
            .write(Command::CreateNetwork {
                spec,
                now_ms: now_ms(),
            })
            .await?;
        let Done::Network(n) = done else {
            return Err(status(Code::Internal, "unexpected reply"));
        };
        let out = self.node.view.read(|s| convert::network(s, &n));
        Ok(Response::new(out))
    }

    async fn list_networks(
        &self,
        _req: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksResponse>, Status> {
        self.node.linearizable().await?;
        let out = self.node.view.read(|s| pb::ListNetworksResponse {
            networks: s.networks.values().map(|n| convert::network(s, n)).collect(),
            revision: s.revision,
        });
        Ok(Response::new(out))
    }

    async fn inspect_network(
        &self,
        req: Request<pb::NetworkRef>,
    ) -> Result<Response<pb::NetworkDetail>, Status> {
        let name = &req.get_ref().name;
        require("network name", name)?;
        self.node.linearizable().await?;
        let out = self.node.view.read(|s| {
            s.networks.get(name).map(|n| pb::NetworkDetail {
                network: Some(convert::network(s, n)),
                leases: convert::leases(n),
                endpoints: s.network_endpoints(name).map(convert::endpoint).collect(),
                revision: s.revision,
            })
        });
        out.map(Response::new)
            .ok_or_else(|| status(Code::NotFound, format!("unknown network {name:?}")))
    }

    async fn update_network(
        &self,
        req: Request<pb::UpdateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let req = req.into_inner();
        require("network name", &req.name)?;
        let mtu = req.mtu.map(|m| {
            if m == 0 {
                MtuSetting::Auto
            } else {
                MtuSetting::Fixed(m)
            }
        });
        let (done, _) = self
            .write(Command::UpdateNetwork {
                name: req.name,
                nat_egress: req.nat_egress,
                mtu,
                direct_routing: req.direct_routing,
            })
            .await?;
        let Done::Network(n) = done else {
            return Err(status(Code::Internal, "unexpected reply"));
        };
        let out = self.node.view.read(|s| convert::network(s, &n));
        Ok(Response::new(out))
    }

    async fn delete_network(
        &self,
        req: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<pb::DeleteNetworkResponse>, Status> {
        let req = req.into_inner();
        require("network name", &req.name)?;
        let (done, revision) = self
            .write(Command::DeleteNetwork {
                name: req.name,
                force: req.force,
            })
            .await?;
        let Done::NetworkDeleted { removed_endpoints } = done else {
            return Err(status(Code::Internal, "unexpected reply"));
        };
        Ok(Response::new(pb::DeleteNetworkResponse {
            removed_endpoints,
            revision,
        }))
    }

    async fn list_hosts(
        &self,
        _req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        self.node.linearizable().await?;
        let now = now_ms();
        let out = self.node.view.read(|s| pb::ListHostsResponse {
            hosts: s.hosts.values().map(|h| convert::host(s, h, now)).collect(),
            revision: s.revision,
        });
        Ok(Response::new(out))
    }

    async fn inspect_host(&self, req: Request<pb::HostRef>) -> Result<Response<pb::Host>, Status> {
        let name = &req.get_ref().name;
        require("host name", name)?;
        self.node.linearizable().await?;
        let now = now_ms();
        let out = self
            .node
            .view
            .read(|s| s.hosts.get(name).map(|h| convert::host(s, h, now)));
        out.map(Response::new)
            .ok_or_else(|| status(Code::NotFound, format!("unknown host {name:?}")))
    }

    async fn remove_host(
        &self,
        req: Request<pb::RemoveHostRequest>,
    ) -> Result<Response<pb::RemoveHostResponse>, Status> {
        let pb::RemoveHostRequest { name, force } = req.into_inner();
        require("host name", &name)?;
        // A connected agent would register the host again a second later, its workloads
        // having lost their endpoints meanwhile: refused unless forced.
        self.node.linearizable().await?;
        let last_seen = self
            .node
            .view
            .read(|s| s.hosts.get(&name).map(|h| h.last_seen_ms));
        let mut agent_is_connected = false;
        if let Some(last_seen) = last_seen {
            let (seen, _) = self.node.agents_everywhere().await;
            let s = seen.get(&name).cloned().unwrap_or_default();
            let now = now_ms();
            agent_is_connected = agent_connected(&s, last_seen, now);
            if agent_is_connected && !force {
                let how = if s.streams > 0 {
                    format!("its agent holds {} Watch stream(s)", s.streams)
                } else {
                    let heard = s.last_heartbeat_ms.max(last_seen);
                    format!("its agent was heard {}s ago", (now - heard).max(0) / 1000)
                };
                return Err(status(
                    Code::FailedPrecondition,
                    format!(
                        "host {name:?} is connected ({how}); stop overlay-agent on it first (it would register the host again), or use --force"
                    ),
                ));
            }
        }
        if agent_is_connected {
            tracing::warn!(host = %name, "removing a host whose agent is connected (forced)");
        }
        let (done, revision) = self.write(Command::RemoveHost { name }).await?;
        let Done::HostRemoved {
            removed_endpoints,
            released_leases,
        } = done
        else {
            return Err(status(Code::Internal, "unexpected reply"));
        };
        Ok(Response::new(pb::RemoveHostResponse {
            removed_endpoints,
            released_leases,
            revision,
            agent_connected: agent_is_connected,
        }))
    }

    async fn attach_endpoint(
        &self,
        req: Request<pb::AttachEndpointRequest>,
    ) -> Result<Response<pb::Endpoint>, Status> {
        let req = req.into_inner();
        require("network", &req.network)?;
        require("host", &req.host)?;
        require("namespace", &req.netns)?;
        parse::netns_reference(&req.netns)?;
        let ip = if req.ip.is_empty() {
            None
        } else {
            Some(parse::ipv4("--ip", &req.ip)?)
        };
        let ports = overlay_proto::ports::from_wire(&req.ports)
            .map_err(|why| invalid(format!("--publish: {why}")))?;
        let wait = match req.wait_ms {
            0 => DEFAULT_ATTACH_WAIT,
            ms => Duration::from_millis(ms as u64).min(MAX_ATTACH_WAIT),
        };
        // The host's agent allocates the address and wires the endpoint: the controller
        // records the request, the agent takes it up from its Watch stream.
        let cmd = Command::RequestEndpoint {
            network: req.network,
            host: req.host,
            netns: req.netns,
            ifname: if req.ifname.is_empty() {
                "eth0".to_string()
            } else {
                req.ifname
            },
            ip,
            default_route: req.default_route,
            names: req.names,
            ports,
            now_ms: now_ms(),
        };
        let (done, revision) = self.write(cmd).await?;
        let Done::Endpoint(ep) = done else {
            return Err(status(Code::Internal, "unexpected reply"));
        };
        let ep = convert::endpoint(&ep);
        if req.no_wait {
            return Ok(Response::new(ep));
        }
        self.await_wiring(ep, revision, wait).await.map(Response::new)
    }

    async fn detach_endpoint(
        &self,
        req: Request<pb::DetachEndpointRequest>,
    ) -> Result<Response<pb::DetachEndpointResponse>, Status> {
        let req = req.into_inner();
        require("network", &req.network)?;
        require("host", &req.host)?;
        require("namespace", &req.netns)?;
        let cmd = Command::DetachEndpoint {
            network: req.network,
            host: req.host,
            netns: req.netns,
        };
        let (done, revision) = self.write(cmd).await?;
        let Done::EndpointDetached(ep) = done else {
            return Err(status(Code::Internal, "unexpected reply"));
        };
        Ok(Response::new(pb::DetachEndpointResponse {
            endpoint: Some(convert::endpoint(&ep)),
            revision,
        }))
    }

    async fn list_endpoints(
        &self,
        req: Request<pb::ListEndpointsRequest>,
    ) -> Result<Response<pb::ListEndpointsResponse>, Status> {
        let req = req.into_inner();
        self.node.linearizable().await?;
        let out = self.node.view.read(|s| {
            if !req.network.is_empty() && !s.networks.contains_key(&req.network) {
                return Err(status(
                    Code::NotFound,
                    format!("unknown network {:?}", req.network),
                ));
            }
            if !req.host.is_empty() && !s.hosts.contains_key(&req.host) {
                return Err(status(Code::NotFound, format!("unknown host {:?}", req.host)));
            }
            Ok(pb::ListEndpointsResponse {
                endpoints: s
                    .endpoints
                    .values()
                    .filter(|e| req.network.is_empty() || e.network == req.network)
                    .filter(|e| req.host.is_empty() || e.host == req.host)
                    .map(convert::endpoint)
                    .collect(),
                revision: s.revision,
            })
        })?;
        Ok(Response::new(out))
    }
}

/// Makes probe ids unique within a replica.
static PROBE_SEQ: AtomicU64 = AtomicU64::new(0);

/// `host:port` with a non-empty host and a port number: what a peer can dial.
fn valid_member_addr(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(char::is_whitespace)
                && !host.contains('/')
                && port.parse::<u16>().is_ok_and(|p| p != 0)
        }
        None => false,
    }
}
