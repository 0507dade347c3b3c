//! Raft transport over tonic: openraft's messages, JSON-encoded, framed in `RaftPayload`.
//!
//! Replicas keep one lazily-connected channel per peer address in [`PeerClients`]; the same
//! channels carry forwarded writes and read-index requests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use overlay_proto::raft::RaftPayload;
use overlay_proto::raft::raft_client::RaftClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::{NodeId, TypeConfig};

/// How long a replica waits for a TCP connection to a peer before calling it unreachable.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One channel per peer address, created on first use and reconnected by tonic as needed.
#[derive(Default)]
pub struct PeerClients {
    channels: Mutex<HashMap<String, Channel>>,
    /// Mutual TLS toward the other replicas, presenting this replica's controller certificate.
    tls: Option<ClientTlsConfig>,
}

impl PeerClients {
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        Self {
            channels: Mutex::default(),
            tls,
        }
    }

    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let ch = match channels.get(addr) {
            Some(ch) => ch.clone(),
            None => {
                let ch = self.channel(addr)?;
                channels.insert(addr.to_string(), ch.clone());
                ch
            }
        };
        // Snapshots travel in one message; the default 4 MiB limit would cap the state size.
        Ok(RaftClient::new(ch)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20))
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let host_port = addr.split_once("://").map_or(addr, |(_, rest)| rest);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{host_port}"))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let endpoint = match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone())?,
            None => endpoint,
        };
        Ok(endpoint.connect_lazy())
    }
}

pub fn encode<T: Serialize>(value: &T) -> Result<RaftPayload, serde_json::Error> {
    Ok(RaftPayload {
        data: serde_json::to_vec(value)?,
    })
}

pub fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, serde_json::Error> {
    serde_json::from_slice(&payload.data)
}

#[derive(Clone)]
pub struct NetworkFactory {
    peers: Arc<PeerClients>,
}

impl NetworkFactory {
    pub fn new(peers: Arc<PeerClients>) -> Self {
        Self { peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        PeerNetwork {
            target,
            client: self.peers.client(&node.addr).map_err(|e| e.to_string()),
        }
    }
}

pub struct PeerNetwork {
    target: NodeId,
    /// An unusable address is reported as unreachable on every call rather than panicking.
    client: Result<RaftClient<Channel>, String>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl PeerNetwork {
    /// Sends one JSON-framed RPC and decodes the peer's `Result<Resp, RaftError<E>>`.
    async fn call<Req, Resp, E, F, Fut>(
        &mut self,
        req: &Req,
        ttl: Duration,
        send: F,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                    e.clone(),
                ))));
            }
        };
        let payload = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(ttl);
        let reply = send(client, request)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
                _ => RPCError::Network(NetworkError::new(&status)),
            })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(reply.get_ref()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.call(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(&rpc, option.hard_ttl(), |mut c, r| async move {
            c.install_snapshot(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(&rpc, option.hard_ttl(), |mut c, r| async move { c.vote(r).await })
            .await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A dead peer is retried every 200 ms: replication resumes quickly after it restarts.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
