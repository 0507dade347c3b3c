//! Starting a replica: open its store, start Raft, bootstrap a new cluster when this is the
//! lowest id and nothing exists yet, and serve the three gRPC services on one address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use overlay_proto::raft::raft_server::RaftServer;
use overlay_proto::tls::{Role, Tls, TlsError};
use overlay_proto::v1::agent_server::AgentServer;
use overlay_proto::v1::overlay_server::OverlayServer;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::server::TcpIncoming;

use crate::api::agent::AgentApi;
use crate::api::overlay::OverlayApi;
use crate::api::raft::RaftApi;
use crate::auth::AuthLayer;
use crate::metrics::{ControllerMetrics, RpcMetricsLayer};
use crate::node::{Batcher, Node, now_ms};
use crate::preface::{ProveLayer, Unproven};
use crate::raft::network::{NetworkFactory, PeerClients};
use crate::raft::storage::{self, OpenError};
use crate::raft::{LogStore, NodeId, Raft, StateMachineStore, raft_config};

/// Largest gRPC message: snapshots and big desired states travel whole, so replicas accept
/// (Raft) and send (all services) messages this large.
const MAX_MESSAGE: usize = 256 << 20;
/// Largest request of an agent or a user: a status report of thousands of endpoints fits; a
/// client cannot make a replica buffer 256 MiB.
const MAX_REQUEST: usize = 16 << 20;

/// How long a stopping replica lets in-flight calls finish and its Watch streams end (their
/// agents move to another replica) before it exits anyway: far inside systemd's stop timeout,
/// and short enough that a rolling restart is not held up by one slow client.
pub const GRACEFUL_STOP: Duration = Duration::from_secs(3);

/// Bound on stopping the Raft core once serving has ended.
const RAFT_STOP: Duration = Duration::from_secs(2);

/// HTTP/2 keepalive: every connection is pinged this often, and dropped when a ping is not
/// answered within [`KEEPALIVE_TIMEOUT`], so a peer that vanished (power loss, a cut link)
/// does not hold its streams and socket until TCP gives up, hours later.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    /// Every voter's id and address, this replica included.
    pub peers: BTreeMap<NodeId, String>,
    pub data_dir: PathBuf,
    /// Bound on a write or linearizable read, forwarding included.
    pub request_timeout: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Mutual TLS for every connection, served and made; `None` = plaintext.
    pub tls: Option<Tls>,
    /// Another agent may claim a host name once its holder has been silent this long.
    pub host_claim_timeout: Duration,
}

/// Shortest `--host-claim-timeout`: a live holder's replicated `last_seen` may be one persist
/// period plus one heartbeat old, and must never look silent.
pub const MIN_HOST_CLAIM_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Storage(#[from] OpenError),
    #[error("cannot read raft state: {0}")]
    Raft(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("cannot serve metrics: {0}")]
    Metrics(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The Raft core stopped by itself, on a storage error (a full or failing disk).
    ///
    /// The replica then exits non-zero rather than trying to recover in place: openraft
    /// cannot restart a stopped core, and after a failed commit redb refuses further writes
    /// to the open database, so recovering would mean reopening the store and rebuilding every
    /// service in a process whose state can no longer be trusted; a fresh process does exactly
    /// that from what is durable on disk. The supervisor (systemd `Restart=on-failure`)
    /// restarts it with back-off and makes the failure visible; while it is down its agents
    /// and clients use the other replicas instead of one that refuses every write.
    #[error(
        "raft stopped: {0}; exiting so that the supervisor restarts this replica once the data directory is writable again"
    )]
    RaftStopped(String),
}

/// Parses `--peers 1=192.0.2.10:7400,2=192.0.2.11:7400`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, String>, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| format!("peer {item:?} is not ID=HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a number"))?;
        if id == 0 {
            return Err("peer id 0 is reserved; number replicas from 1".into());
        }
        let addr = addr.trim();
        if addr.parse::<SocketAddr>().is_err() && !addr.contains(':') {
            return Err(format!("peer address {addr:?} is not HOST:PORT"));
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("peer id {id} given twice"));
        }
    }
    if peers.is_empty() {
        return Err("no peers given".into());
    }
    Ok(peers)
}

/// A started replica: its node handle and the future that serves it until `shutdown`.
pub struct Controller {
    pub node: Arc<Node>,
    listener: tokio::net::TcpListener,
    tls: Option<Tls>,
    metrics_listener: Option<tokio::net::TcpListener>,
    initialized_at_start: bool,
}

impl Controller {
    /// Opens storage, starts Raft and binds the listen address (serving starts in [`serve`]).
    pub async fn start(config: &ControllerConfig) -> Result<Self, ServerError> {
        if config.node_id == 0 {
            return Err(ServerError::Config(
                "node id 0 is reserved; number replicas from 1".into(),
            ));
        }
        if !config.peers.contains_key(&config.node_id) {
            return Err(ServerError::Config(format!(
                "--peers does not list this node's id {}",
                config.node_id
            )));
        }
        if let Some(tls) = &config.tls {
            tls.require_role("controller", Role::Controller)?;
        }
        if config.host_claim_timeout < MIN_HOST_CLAIM_TIMEOUT {
            return Err(ServerError::Config(format!(
                "--host-claim-timeout {:?} is too short: at least {MIN_HOST_CLAIM_TIMEOUT:?} (a live agent's last_seen is refreshed every {:?})",
                config.host_claim_timeout,
                crate::api::agent::HEARTBEAT_PERSIST_EVERY
            )));
        }
        let db = storage::open(&config.data_dir)?;
        let log_store = LogStore::new(db.clone());
        let initialized_at_start = log_store
            .is_initialized()
            .map_err(|e| ServerError::Raft(e.to_string()))?;
        let committed_index = log_store.committed_index();
        let sm = StateMachineStore::open(db).map_err(|e| ServerError::Raft(e.to_string()))?;
        let view = sm.view();
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;

        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                overlay_proto::metrics_http::bind(addr)
                    .await
                    .map_err(ServerError::Metrics)?,
            ),
            None => None,
        };

        let raft_config = raft_config()
            .validate()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let peers = Arc::new(PeerClients::new(config.tls.as_ref().map(Tls::client_config)));
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            NetworkFactory::new(peers.clone()),
            log_store,
            sm,
        )
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;
        let node = Arc::new(Node {
            id: config.node_id,
            batcher: Batcher::start(raft.clone()),
            agents: Arc::default(),
            probes: Arc::default(),
            raft,
            view,
            peers,
            committed_index,
            timeout: config.request_timeout,
            claim_timeout: config.host_claim_timeout,
            configured_peers: config.peers.clone(),
            peer_membership: Default::default(),
        });

        let lowest = config.peers.keys().next().copied();
        if !initialized_at_start && lowest == Some(config.node_id) {
            let node = node.clone();
            let members = config.peers.clone();
            tokio::spawn(async move {
                match node.bootstrap(members).await {
                    Ok(true) => tracing::info!("initialised a new cluster"),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "bootstrap failed"),
                }
            });
        } else if initialized_at_start {
            tracing::info!("existing raft state found; rejoining the cluster");
        } else {
            tracing::info!("empty store; waiting for the lowest-id replica to initialise the cluster");
        }
        Ok(Self {
            node,
            listener,
            tls: config.tls.clone(),
            metrics_listener,
            initialized_at_start,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves (or the Raft core stops on a storage error), then
    /// stops within [`GRACEFUL_STOP`]: no new connections, Watch streams ended so their agents
    /// move to another replica at once, in-flight calls finished; then Raft is stopped.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let node = self.node.clone();
        let overlay = OverlayServer::new(OverlayApi::new(node.clone()))
            .max_decoding_message_size(MAX_REQUEST)
            .max_encoding_message_size(MAX_MESSAGE);
        let mut metrics = ControllerMetrics::new();
        if let Some(tls) = &self.tls {
            tls.register_expiry(&mut metrics.registry);
        }
        let metrics = Arc::new(metrics);
        let (stopping_tx, stopping) = watch::channel(false);
        let agent_api = AgentApi::new(node.clone(), metrics.watch_subscribers.clone())
            .ending_streams_on(stopping.clone());
        if let Some(listener) = self.metrics_listener {
            let (metrics, node, seen) = (metrics.clone(), node.clone(), node.agents.clone());
            let render: overlay_proto::metrics_http::Render = Arc::new(move || {
                metrics.refresh(&node, &seen, now_ms());
                overlay_proto::metrics_http::encode_registry(&metrics.registry)
            });
            tokio::spawn(async move {
                if let Err(e) = overlay_proto::metrics_http::serve(listener, render).await {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            });
        }
        let agent = AgentServer::new(agent_api)
            .max_decoding_message_size(MAX_REQUEST)
            .max_encoding_message_size(MAX_MESSAGE);
        let raft = RaftServer::new(RaftApi::new(node.clone(), self.initialized_at_start))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        // Nagle off on every accepted socket: small replies (a forwarded write's answer, an
        // AppendEntries ack) otherwise wait for the peer's delayed ACK, ~40 ms each. The builder's
        // `tcp_nodelay` only applies to listeners tonic binds itself, not to this one.
        let tls = self.tls.is_some();
        let unproven = Unproven::default();
        let guard = unproven.clone();
        let incoming = TcpIncoming::from(self.listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(30)))
            .map(move |accepted| accepted.map(|stream| guard.guard(stream, tls)));
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.server_config())?;
        }
        let mut stop_serving = stopping.clone();
        let serving = builder
            .layer(ProveLayer(unproven))
            // Metrics outside auth: refused calls are counted as PERMISSION_DENIED.
            .layer(RpcMetricsLayer(metrics))
            .layer(AuthLayer { tls })
            .add_service(overlay)
            .add_service(agent)
            .add_service(raft)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_serving.wait_for(|stop| *stop).await;
            });
        tokio::pin!(serving);
        let stopped_raft = tokio::select! {
            result = &mut serving => {
                stop_raft(&node).await;
                return result.map_err(ServerError::from);
            }
            _ = shutdown => None,
            cause = raft_stopped(&node) => Some(cause),
        };
        match &stopped_raft {
            None => tracing::info!("stopping: ending Watch streams, finishing calls in flight"),
            Some(cause) => tracing::error!(%cause, "raft stopped on its own; stopping the replica"),
        }
        let _ = stopping_tx.send(true);
        let result = match tokio::time::timeout(GRACEFUL_STOP, &mut serving).await {
            Ok(result) => result.map_err(ServerError::from),
            Err(_) => {
                tracing::warn!("connections still open {GRACEFUL_STOP:?} after the stop began; closing them");
                Ok(())
            }
        };
        stop_raft(&node).await;
        match stopped_raft {
            Some(cause) => Err(ServerError::RaftStopped(cause)),
            None => result,
        }
    }
}

/// Stops the Raft core, within [`RAFT_STOP`].
async fn stop_raft(node: &Node) {
    match tokio::time::timeout(RAFT_STOP, node.raft.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown"),
        Err(_) => tracing::warn!("raft did not stop within {RAFT_STOP:?}"),
    }
}

/// Resolves, with the cause, when the Raft core stops by itself: a storage error. A stop we
/// asked for (`Fatal::Stopped`) never resolves it.
async fn raft_stopped(node: &Node) -> String {
    let mut metrics = node.raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state
            && !matches!(fatal, openraft::error::Fatal::Stopped)
        {
            return fatal.to_string();
        }
        if metrics.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_garbage() {
        let p = parse_peers("1=192.0.2.10:7400, 2=192.0.2.11:7400,3=ctl3:7400").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&3], "ctl3:7400");
        for bad in [
            "",
            "1",
            "x=1.2.3.4:1",
            "0=1.2.3.4:1",
            "1=a:1,1=b:2",
            "1=nohostport",
        ] {
            assert!(parse_peers(bad).is_err(), "{bad:?} accepted");
        }
    }
}
