//! The replica-to-replica `Raft` service: openraft RPCs plus forwarded writes and read-index
//! requests from followers.
//!
//! Under mutual TLS every call but `Info` must come from a current member's certificate, and
//! a vote, log or snapshot from the certificate of the member it names as its sender (see
//! [`crate::auth`] for the binding). A refused call changes nothing.

use std::sync::Arc;

use overlay_proto::raft::raft_server::Raft;
use overlay_proto::raft::{NodeInfo, NodeInfoRequest, RaftPayload};
use tonic::{Code, Request, Response, Status};

use super::status;
use crate::auth::{Caller, member_refusal};
use crate::node::{MembershipChange, Node};
use crate::raft::NodeId;
use crate::raft::network::{decode, encode};
use crate::state::Command;
use overlay_proto::v1 as pb;
use prost::Message;

pub struct RaftApi {
    node: Arc<Node>,
    /// Whether this replica's store held a vote or log when it started (see [`NodeInfo`]).
    initialized_at_start: bool,
}

impl RaftApi {
    pub fn new(node: Arc<Node>, initialized_at_start: bool) -> Self {
        Self {
            node,
            initialized_at_start,
        }
    }

    /// Refuses a caller that is not a current member (or, with `claimed`, not that member).
    async fn authorize<T>(
        &self,
        req: &Request<T>,
        call: &str,
        claimed: Option<NodeId>,
    ) -> Result<(), Status> {
        let Some(why) = member_refusal(req, &self.node.members(), claimed) else {
            return Ok(());
        };
        // A member this replica has not heard of (it missed the change that added it) is
        // known to the others: without this, a replica that was down then could never follow
        // a leader added meanwhile.
        if matches!(req.extensions().get::<Caller>(), Some(Caller::Verified(_))) {
            let theirs = self.node.members_by_peers().await;
            if !theirs.is_empty() && member_refusal(req, &theirs, claimed).is_none() {
                return Ok(());
            }
        }
        tracing::warn!(call, "raft call refused: {why}");
        Err(status(Code::PermissionDenied, why))
    }
}

/// The member an openraft message says it comes from.
fn sender(vote: &openraft::Vote<NodeId>) -> Option<NodeId> {
    vote.leader_id().voted_for()
}

fn bad_payload(e: serde_json::Error) -> Status {
    status(Code::InvalidArgument, format!("undecodable raft payload: {e}"))
}

fn reply<T: serde::Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encode(value)
        .map(Response::new)
        .map_err(|e| status(Code::Internal, e.to_string()))
}

#[tonic::async_trait]
impl Raft for RaftApi {
    async fn append_entries(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "AppendEntries", None).await?;
        let rpc: openraft::raft::AppendEntriesRequest<crate::raft::TypeConfig> =
            decode(req.get_ref()).map_err(bad_payload)?;
        self.authorize(&req, "AppendEntries", sender(&rpc.vote)).await?;
        reply(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "Vote", None).await?;
        let rpc: openraft::raft::VoteRequest<NodeId> = decode(req.get_ref()).map_err(bad_payload)?;
        self.authorize(&req, "Vote", sender(&rpc.vote)).await?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "InstallSnapshot", None).await?;
        let rpc: openraft::raft::InstallSnapshotRequest<crate::raft::TypeConfig> =
            decode(req.get_ref()).map_err(bad_payload)?;
        self.authorize(&req, "InstallSnapshot", sender(&rpc.vote)).await?;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "Forward", None).await?;
        let cmd: Command = decode(req.get_ref()).map_err(bad_payload)?;
        let outcome = self.node.write_here(cmd).await.map_err(Status::from)?;
        reply(&outcome)
    }

    async fn change_membership(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "ChangeMembership", None).await?;
        let change: MembershipChange = decode(req.get_ref()).map_err(bad_payload)?;
        let outcome = self
            .node
            .change_membership_here(change)
            .await
            .map_err(Status::from)?;
        reply(&outcome)
    }

    async fn agents_seen(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "AgentsSeen", None).await?;
        let seen = self.node.agents.lock().unwrap_or_else(|p| p.into_inner()).clone();
        reply(&seen)
    }

    async fn start_probe(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "StartProbe", None).await?;
        let orders = pb::ProbeOrders::decode(req.get_ref().data.as_slice())
            .map_err(|e| Status::invalid_argument(format!("bad probe orders: {e}")))?;
        self.node.probes.publish(&orders.orders);
        Ok(Response::new(RaftPayload::default()))
    }

    async fn probe_reports(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "ProbeReports", None).await?;
        let id = String::from_utf8_lossy(&req.get_ref().data).to_string();
        let reports = pb::ProbeReports {
            reports: self.node.probes.reports(&id),
        };
        Ok(Response::new(RaftPayload {
            data: reports.encode_to_vec(),
        }))
    }

    async fn read_index(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "ReadIndex", None).await?;
        let outcome = self.node.read_index_here().await.map_err(Status::from)?;
        reply(&outcome)
    }

    async fn metrics(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        self.authorize(&req, "Metrics", None).await?;
        let metrics = self.node.raft.metrics().borrow().clone();
        reply(&metrics)
    }

    async fn info(&self, _req: Request<NodeInfoRequest>) -> Result<Response<NodeInfo>, Status> {
        let metrics = self.node.raft.metrics().borrow().clone();
        let initialized = self.initialized_at_start
            || metrics.last_log_index.is_some()
            || metrics.current_leader.is_some()
            || metrics.current_term > 0;
        Ok(Response::new(NodeInfo {
            id: self.node.id,
            initialized,
            current_leader: metrics.current_leader.unwrap_or(0),
            term: metrics.current_term,
        }))
    }
}
