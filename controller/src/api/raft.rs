//! The replica-to-replica `Raft` service: openraft RPCs plus forwarded writes and read-index
//! requests from followers.

use std::sync::Arc;

use overlay_proto::raft::raft_server::Raft;
use overlay_proto::raft::{NodeInfo, NodeInfoRequest, RaftPayload};
use tonic::{Code, Request, Response, Status};

use super::status;
use crate::node::{MembershipChange, Node};
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
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        reply(&self.node.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        reply(&self.node.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(req.get_ref()).map_err(bad_payload)?;
        reply(&self.node.raft.install_snapshot(rpc).await)
    }

    async fn forward(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let cmd: Command = decode(req.get_ref()).map_err(bad_payload)?;
        let outcome = self.node.write_here(cmd).await.map_err(Status::from)?;
        reply(&outcome)
    }

    async fn change_membership(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let change: MembershipChange = decode(req.get_ref()).map_err(bad_payload)?;
        let outcome = self
            .node
            .change_membership_here(change)
            .await
            .map_err(Status::from)?;
        reply(&outcome)
    }

    async fn agents_seen(&self, _req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let seen = self.node.agents.lock().unwrap_or_else(|p| p.into_inner()).clone();
        reply(&seen)
    }

    async fn start_probe(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let orders = pb::ProbeOrders::decode(req.get_ref().data.as_slice())
            .map_err(|e| Status::invalid_argument(format!("bad probe orders: {e}")))?;
        self.node.probes.publish(&orders.orders);
        Ok(Response::new(RaftPayload::default()))
    }

    async fn probe_reports(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let id = String::from_utf8_lossy(&req.get_ref().data).to_string();
        let reports = pb::ProbeReports {
            reports: self.node.probes.reports(&id),
        };
        Ok(Response::new(RaftPayload {
            data: reports.encode_to_vec(),
        }))
    }

    async fn read_index(&self, _req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let outcome = self.node.read_index_here().await.map_err(Status::from)?;
        reply(&outcome)
    }

    async fn metrics(&self, _req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
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
