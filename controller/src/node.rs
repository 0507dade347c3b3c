//! A running controller replica: the Raft handle, the applied state, and the two operations
//! every API handler needs, both usable on any replica:
//!
//! - [`Node::write`]: propose a command; a follower forwards it to the leader.
//! - [`Node::linearizable`]: make the local state at least as new as everything committed
//!   before the call (leader: confirm leadership with a quorum; follower: ask the leader for its
//!   read index and wait until applied).
//!
//! Both are bounded by [`Node::timeout`]: without a quorum they fail with a message that says
//! so instead of hanging.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::BasicNode;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use overlay_proto::raft::RaftPayload;
use overlay_proto::raft::raft_client::RaftClient;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::{Instant, sleep, timeout_at};
use tonic::transport::Channel;

use crate::raft::network::{PeerClients, decode, encode};
use crate::raft::{NodeId, Raft, StateView};
use crate::state::{Command, Reply, Response};

/// Pause between attempts while no leader is known or the leader just changed.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "no quorum: not confirmed by a majority within {0:?} (last leader: node {1}); is a majority of controller replicas up?"
    )]
    NoQuorum(Duration, NodeId),
    #[error("no leader: none elected within {0:?}; is a majority of controller replicas up?")]
    NoLeader(Duration),
    #[error("controller replica is shutting down: {0}")]
    Fatal(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A request the cluster will not carry out as asked (e.g. removing the last member).
    #[error("{0}")]
    Refused(String),
}

/// Why a request sent to another replica (a write, read index or membership change forwarded
/// to the leader; what a member heard from agents) got no answer. Callers retry or count the
/// replica unreachable; each message is the underlying error's own, as it always was.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No channel to the replica's address.
    #[error("{0}")]
    Connect(#[from] tonic::transport::Error),
    /// The request or the answer did not (de)serialize.
    #[error("{0}")]
    Codec(#[from] serde_json::Error),
    /// The replica (or the transport) answered with an error status; boxed, as a `Status` is
    /// large next to the answers.
    #[error("{}", .0.message())]
    Status(Box<tonic::Status>),
}

/// Answer of a replica to a forwarded write or read-index request.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum Forwarded<T> {
    Done(T),
    /// The receiver is not (or no longer) the leader.
    NotLeader,
    Failed(String),
}

/// What a replica knows about an agent without asking Raft: kept in memory by the replica the
/// agent talks to, gathered from every replica by `doctor`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentSeen {
    pub last_heartbeat_ms: i64,
    pub applied_revision: u64,
    /// Revision of the last desired state this replica's Watch stream sent the agent; equal
    /// to `applied_revision` once the agent has converged (a later state revision that did
    /// not change this host's view is not sent, and is no lag).
    pub sent_revision: u64,
    /// Watch streams of this agent open on this replica.
    pub streams: u32,
    /// Kernel drift the agent last reported, and when it was found.
    pub drift: Vec<String>,
    pub audited_ms: i64,
    /// When a Watch stream of this agent last ended here (0: never). A heartbeat older than
    /// that is a goodbye, not a sign of life (see [`agent_connected`]).
    #[serde(default)]
    pub stream_ended_ms: i64,
    /// Other agents refused this host name here, most recent first; at most
    /// [`MAX_REFUSED_CLAIMS`], none older than [`REFUSED_CLAIM_MEMORY_MS`].
    #[serde(default)]
    pub refused_claims: Vec<RefusedClaim>,
}

/// An agent that asked to act as a host another agent holds, and was refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedClaim {
    /// Short form of its instance id (the whole id is never kept outside the host record).
    pub instance: String,
    /// The underlay address it asked for ("" for calls that name none).
    pub underlay_ip: String,
    /// The address it connected from ("" when unknown).
    pub source: String,
    pub refusals: u32,
    pub last_refused_ms: i64,
    /// Its latest refused call (Register, Heartbeat, Watch ...).
    pub call: String,
}

/// Refused claimants remembered per host: enough to show a conflict, not a place an
/// impostor cycling through instance ids can fill.
pub const MAX_REFUSED_CLAIMS: usize = 8;
/// How long a refused claim stays visible (in `doctor`) after its latest refusal.
pub const REFUSED_CLAIM_MEMORY_MS: i64 = 10 * 60 * 1000;

impl AgentSeen {
    /// Counts a refusal of `claim` (merged with an earlier one of the same instance and
    /// source address), keeping the list bounded and recent.
    pub fn refuse(&mut self, claim: RefusedClaim) {
        match self
            .refused_claims
            .iter_mut()
            .find(|c| c.instance == claim.instance && c.source == claim.source)
        {
            Some(c) => {
                c.refusals = c.refusals.saturating_add(claim.refusals.max(1));
                if claim.last_refused_ms >= c.last_refused_ms {
                    c.last_refused_ms = claim.last_refused_ms;
                    c.call = claim.call;
                    if !claim.underlay_ip.is_empty() {
                        c.underlay_ip = claim.underlay_ip;
                    }
                }
            }
            None => self.refused_claims.push(RefusedClaim {
                refusals: claim.refusals.max(1),
                ..claim
            }),
        }
        self.tidy_claims(
            self.refused_claims
                .iter()
                .map(|c| c.last_refused_ms)
                .max()
                .unwrap_or(0),
        );
    }

    /// Most recent first; nothing older than [`REFUSED_CLAIM_MEMORY_MS`] before `now_ms`; at
    /// most [`MAX_REFUSED_CLAIMS`].
    pub fn tidy_claims(&mut self, now_ms: i64) {
        self.refused_claims
            .retain(|c| now_ms - c.last_refused_ms < REFUSED_CLAIM_MEMORY_MS);
        self.refused_claims
            .sort_by_key(|c| std::cmp::Reverse(c.last_refused_ms));
        self.refused_claims.truncate(MAX_REFUSED_CLAIMS);
    }
}

/// Whether a host's agent counts as connected (and so may not simply be removed, or its name
/// taken over): a Watch stream open on some replica, or a heartbeat within the down timeout
/// that came after its last stream ended (an agent that stopped cleanly closed its stream
/// after its last heartbeat). `last_seen_ms` is the replicated one, in case the replica the
/// agent talks to could not be asked.
pub fn agent_connected(seen: &AgentSeen, last_seen_ms: i64, now_ms: i64) -> bool {
    let heard = seen.last_heartbeat_ms.max(last_seen_ms);
    seen.streams > 0 || (heard > seen.stream_ended_ms && now_ms - heard < crate::state::HOST_DOWN_AFTER_MS)
}

/// Host name → what this replica heard from its agent. Only registered hosts have an entry
/// (see [`Node::with_agent`]), so no caller can grow it by naming hosts.
pub type AgentsSeen = Arc<std::sync::Mutex<std::collections::HashMap<String, AgentSeen>>>;

/// Entries of hosts removed meanwhile tolerated in [`AgentsSeen`] before it is pruned.
const AGENTS_SEEN_SLACK: usize = 64;

/// Members by id and address.
pub type Members = Vec<(NodeId, String)>;

/// How long a membership learned from the other replicas (for a Raft caller this replica
/// does not know yet) is reused: a flood of unknown callers costs one lookup per period.
const PEER_MEMBERSHIP_TTL: Duration = Duration::from_secs(1);

/// A command waiting for the batcher, with where its outcome goes.
type Proposal = (Command, oneshot::Sender<Result<Forwarded<Reply>, NodeError>>);

/// Most commands in one log entry.
const MAX_BATCH: usize = 256;

/// Batches proposed at a time. openraft 0.9 holds back every later proposal until the log flush
/// of the one being applied, so without batching a replica commits about one command per fsync
/// (~1,800/s here, whatever the number of clients). Two in flight keeps the log busy while
/// the next batch fills up.
const BATCHES_IN_FLIGHT: usize = 2;

/// Group commit at the Raft level: concurrent writes on the leader are proposed together as one
/// [`Command::Batch`] entry. Each command still gets its own reply and revision.
pub struct Batcher {
    queue: mpsc::UnboundedSender<Proposal>,
}

impl Batcher {
    /// Starts the batching task for `raft` (on the current tokio runtime).
    pub fn start(raft: Raft) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(propose_batches(raft, rx));
        Self { queue }
    }
}

async fn propose_batches(raft: Raft, mut rx: mpsc::UnboundedReceiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    loop {
        // Wait for a free slot first: commands arriving meanwhile join the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Proposes one batch (a lone command as itself) and hands each caller its own outcome.
async fn propose(raft: &Raft, mut batch: Vec<Proposal>) {
    let entry = if batch.len() == 1 {
        batch[0].0.clone()
    } else {
        Command::Batch(batch.iter().map(|(c, _)| c.clone()).collect())
    };
    let outcome = match raft.client_write(entry).await {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Err(Ok(Forwarded::NotLeader)),
        Err(RaftError::APIError(e)) => Err(Ok(Forwarded::Failed(e.to_string()))),
        Err(RaftError::Fatal(f)) => Err(Err(NodeError::Fatal(f.to_string()))),
    };
    match outcome {
        Ok(reply) if batch.len() == 1 => {
            let (_, tx) = batch.remove(0);
            let _ = tx.send(Ok(Forwarded::Done(reply)));
        }
        Ok(Reply {
            result: Ok(Response::Batch(replies)),
            ..
        }) if replies.len() == batch.len() => {
            for ((_, tx), reply) in batch.into_iter().zip(replies) {
                let _ = tx.send(Ok(Forwarded::Done(reply)));
            }
        }
        Ok(other) => {
            let msg = format!("a batch of {} commands got the reply {other:?}", batch.len());
            for (_, tx) in batch {
                let _ = tx.send(Ok(Forwarded::Failed(msg.clone())));
            }
        }
        Err(result) => {
            for (_, tx) in batch {
                let _ = tx.send(result.clone());
            }
        }
    }
}

/// A change to the set of controller replicas (`overlayctl cluster add-member/remove-member`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub enum MembershipChange {
    /// Joins as a learner, receives the log or a snapshot, then becomes a voter.
    Add { id: NodeId, addr: String },
    /// Leaves the cluster (a voter or a learner that never caught up).
    Remove { id: NodeId },
}

/// How long `cluster add-member` waits for the new replica to answer at all.
const NEW_MEMBER_WAIT: Duration = Duration::from_secs(10);

/// Upper bound for a membership change: a new member first has to catch up. Below
/// overlayctl's 30 s request timeout, so the CLI gets the reason rather than a timeout.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(25);

pub struct Node {
    pub id: NodeId,
    pub raft: Raft,
    pub batcher: Batcher,
    pub agents: AgentsSeen,
    pub probes: Arc<crate::probe::ProbeHub>,
    pub view: StateView,
    pub peers: Arc<PeerClients>,
    /// Latest committed log index this replica knows (from the log store).
    pub committed_index: Arc<AtomicU64>,
    /// Upper bound for a write or a linearizable read, forwarding included.
    pub timeout: Duration,
    /// A host name held by a silent agent may be claimed by another after this long.
    pub claim_timeout: Duration,
    /// `--peers`: the replicas whose certificates a replica that has not joined a cluster yet
    /// accepts Raft traffic from (afterwards the membership in the log decides).
    pub configured_peers: BTreeMap<NodeId, String>,
    /// The membership as the other replicas last told it, and when (see [`Node::members_by_peers`]).
    pub peer_membership: tokio::sync::Mutex<Option<(Instant, Members)>>,
}

/// The innermost cause of a failed call ("invalid peer certificate: ...", "connection
/// refused"), which says more than tonic's "transport error".
fn deepest_cause(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut msg = status.message().to_string();
    let mut source = status.source();
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    msg
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Node {
    /// The leader as this replica knows it: id and address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n: &BasicNode| n.addr.clone())?;
        Some((id, addr))
    }

    /// Resolves once this replica is a member of a cluster that has a leader: what systemd's
    /// READY means for a controller.
    pub async fn joined(&self) -> Option<NodeId> {
        let me = self.id;
        let metrics = self
            .raft
            .wait(None)
            .metrics(
                move |m| {
                    m.current_leader.is_some() && m.membership_config.membership().get_node(&me).is_some()
                },
                "joined a cluster with a leader",
            )
            .await
            .ok()?;
        metrics.current_leader
    }

    pub fn committed_index(&self) -> u64 {
        self.committed_index.load(Ordering::Relaxed)
    }

    /// Proposes `cmd` through Raft from any replica and returns the state machine's reply.
    pub async fn write(&self, cmd: Command) -> Result<Reply, NodeError> {
        let deadline = Instant::now() + self.timeout;
        let mut last_leader = None;
        loop {
            match timeout_at(deadline, self.write_here(cmd.clone())).await {
                Err(_) => return Err(NodeError::NoQuorum(self.timeout, last_leader.unwrap_or(self.id))),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Forwarded::Done(reply))) => return Ok(reply),
                Ok(Ok(Forwarded::Failed(msg))) => return Err(NodeError::Internal(msg)),
                Ok(Ok(Forwarded::NotLeader)) => {}
            }
            if let Some((leader, addr)) = self.leader().filter(|(id, _)| *id != self.id) {
                last_leader = Some(leader);
                let forwarded = timeout_at(deadline, self.forward(&addr, &cmd)).await;
                match forwarded {
                    Err(_) => return Err(NodeError::NoQuorum(self.timeout, leader)),
                    Ok(Ok(Forwarded::Done(reply))) => return Ok(reply),
                    Ok(Ok(Forwarded::Failed(msg))) => return Err(NodeError::Internal(msg)),
                    // Leadership moved or the leader is unreachable: look again after a pause.
                    Ok(Ok(Forwarded::NotLeader)) | Ok(Err(_)) => {}
                }
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(match last_leader {
                    Some(l) => NodeError::NoQuorum(self.timeout, l),
                    None => NodeError::NoLeader(self.timeout),
                });
            }
            sleep(RETRY_PAUSE).await;
        }
    }

    /// Waits (at most `self.timeout`) until this replica has applied `revision`: after a write
    /// that a follower forwarded, its own state may still be behind the leader's reply.
    pub async fn applied(&self, revision: u64) {
        let mut revisions = self.view.subscribe();
        let _ = timeout_at(Instant::now() + self.timeout, async {
            while *revisions.borrow_and_update() < revision {
                if revisions.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// One proposal on this replica, no forwarding. Used directly for forwarded commands.
    pub async fn write_here(&self, cmd: Command) -> Result<Forwarded<Reply>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.batcher
            .queue
            .send((cmd, tx))
            .map_err(|_| NodeError::Fatal("the proposal batcher has stopped".into()))?;
        rx.await
            .map_err(|_| NodeError::Fatal("the proposal batcher dropped a command".into()))?
    }

    /// Carries out `change` on the leader, from any replica, within [`MEMBERSHIP_TIMEOUT`].
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), NodeError> {
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        let outcome = timeout_at(deadline, async {
            loop {
                match self.change_membership_here(change.clone()).await? {
                    Forwarded::Done(()) => return Ok(()),
                    Forwarded::Failed(msg) => return Err(NodeError::Refused(msg)),
                    Forwarded::NotLeader => {}
                }
                if let Some((_, addr)) = self.leader().filter(|(id, _)| *id != self.id) {
                    match self.forward_membership(&addr, &change).await {
                        Ok(Forwarded::Done(())) => return Ok(()),
                        Ok(Forwarded::Failed(msg)) => return Err(NodeError::Refused(msg)),
                        Ok(Forwarded::NotLeader) | Err(_) => {}
                    }
                }
                sleep(RETRY_PAUSE).await;
            }
        })
        .await;
        outcome.unwrap_or_else(|_| {
            Err(NodeError::Refused(match &change {
                MembershipChange::Add { id, addr } => format!(
                    "node {id} at {addr} did not catch up within {MEMBERSHIP_TIMEOUT:?}; is overlay-controller running there with --node-id {id}? (it stays a learner until then)"
                ),
                MembershipChange::Remove { id } => {
                    format!("removing node {id} did not commit within {MEMBERSHIP_TIMEOUT:?}; is a majority up?")
                }
            }))
        })
    }

    /// A membership change on this replica, no forwarding. Used directly for forwarded ones.
    pub async fn change_membership_here(&self, change: MembershipChange) -> Result<Forwarded<()>, NodeError> {
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let known = |id: NodeId| membership.get_node(&id).is_some();
        let result = match change {
            MembershipChange::Add { id, addr } => {
                if voters.contains(&id) {
                    return Ok(Forwarded::Failed(format!("node {id} is already a member")));
                }
                if let Some((other, _)) = membership
                    .nodes()
                    .find(|(n, node)| **n != id && node.addr == addr)
                {
                    return Ok(Forwarded::Failed(format!(
                        "{addr} is already the address of node {other}"
                    )));
                }
                match self.raft.add_learner(id, BasicNode { addr }, true).await {
                    Ok(_) => {
                        let mut next = voters;
                        next.insert(id);
                        self.raft.change_membership(next, false).await.map(|_| ())
                    }
                    Err(e) => Err(e),
                }
            }
            MembershipChange::Remove { id } if voters.contains(&id) => {
                if voters.len() == 1 {
                    return Ok(Forwarded::Failed(format!(
                        "node {id} is the last member; a cluster cannot remove all of its members"
                    )));
                }
                let mut next = voters;
                next.remove(&id);
                self.raft.change_membership(next, false).await.map(|_| ())
            }
            MembershipChange::Remove { id } if known(id) => {
                let learner = std::collections::BTreeSet::from([id]);
                self.raft
                    .change_membership(openraft::ChangeMembers::RemoveNodes(learner), false)
                    .await
                    .map(|_| ())
            }
            MembershipChange::Remove { id } => {
                return Ok(Forwarded::Failed(format!("node {id} is not a member")));
            }
        };
        match result {
            Ok(()) => Ok(Forwarded::Done(())),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Ok(Forwarded::NotLeader),
            Err(RaftError::APIError(e)) => Ok(Forwarded::Failed(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(NodeError::Fatal(f.to_string())),
        }
    }

    async fn forward_membership(
        &self,
        addr: &str,
        change: &MembershipChange,
    ) -> Result<Forwarded<()>, ForwardError> {
        self.ask(addr, change, None, |mut c, req| async move {
            c.change_membership(req).await
        })
        .await
    }

    /// Records something about the agent of `host` (a registered host: the caller checked).
    /// Entries of hosts that are gone are pruned once there are too many.
    pub fn with_agent<R>(&self, host: &str, f: impl FnOnce(&mut AgentSeen) -> R) -> R {
        let mut seen = self.agents.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains_key(host) && seen.len() >= AGENTS_SEEN_SLACK {
            let hosts = self.view.read(|s| s.hosts.len());
            if seen.len() >= hosts + AGENTS_SEEN_SLACK {
                let known: std::collections::HashSet<String> =
                    self.view.read(|s| s.hosts.keys().cloned().collect());
                seen.retain(|h, _| known.contains(h));
            }
        }
        f(seen.entry(host.to_string()).or_default())
    }

    /// Every member (voter or learner) by id and address, as this replica knows it; before it
    /// has joined a cluster, its `--peers`.
    pub fn members(&self) -> Vec<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let members: Vec<(NodeId, String)> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        if members.is_empty() {
            return self.configured_peers.clone().into_iter().collect();
        }
        members
    }

    /// The newest membership any other member knows: for a Raft caller this replica has not
    /// heard of (it missed the change that added it). Asked over the members' own verified
    /// connections; reused for [`PEER_MEMBERSHIP_TTL`].
    pub async fn members_by_peers(&self) -> Vec<(NodeId, String)> {
        let mut cached = self.peer_membership.lock().await;
        if let Some((at, members)) = cached.as_ref()
            && at.elapsed() < PEER_MEMBERSHIP_TTL
        {
            return members.clone();
        }
        let asks = self.other_members().into_iter().map(|(_, addr)| async move {
            let mut client = self.peers.client(&addr).ok()?;
            let mut req = tonic::Request::new(encode(&()).ok()?);
            req.set_timeout(Duration::from_secs(1));
            let reply = client.metrics(req).await.ok()?;
            decode::<openraft::RaftMetrics<NodeId, BasicNode>>(reply.get_ref()).ok()
        });
        let newest = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .max_by_key(|m| m.membership_config.log_id().map(|l| l.index))
            .map(|m| {
                m.membership_config
                    .membership()
                    .nodes()
                    .map(|(id, n)| (*id, n.addr.clone()))
                    .collect()
            })
            .unwrap_or_default();
        *cached = Some((Instant::now(), newest));
        cached.as_ref().map(|(_, m)| m.clone()).unwrap_or_default()
    }

    /// Before `cluster add-member ID ADDR`: the replica at ADDR must answer as node ID, over
    /// the cluster's TLS when it runs TLS, which checks that ADDR is among the names of that
    /// replica's certificate. Otherwise nothing is changed: the admin gets the reason at once,
    /// instead of a learner that never catches up.
    pub async fn check_new_member(&self, id: NodeId, addr: &str) -> Result<(), NodeError> {
        let unreachable = |why: String| {
            NodeError::Refused(format!(
                "node {id} at {addr} does not answer ({why}); start overlay-controller there with --node-id {id} first; with TLS its certificate must name {} (--san)",
                overlay_proto::tls::address_host(addr)
            ))
        };
        let mut client = self.peers.client(addr).map_err(|e| unreachable(e.to_string()))?;
        // A replica started a moment ago may not listen yet: give it a few seconds.
        let deadline = Instant::now() + NEW_MEMBER_WAIT;
        let info = loop {
            let mut req = tonic::Request::new(overlay_proto::raft::NodeInfoRequest {});
            req.set_timeout(Duration::from_secs(2));
            match client.info(req).await {
                Ok(info) => break info.into_inner(),
                // A certificate that does not fit will not fit any better in a moment.
                Err(s)
                    if Instant::now() + RETRY_PAUSE >= deadline
                        || deepest_cause(&s).contains("certificate") =>
                {
                    return Err(unreachable(deepest_cause(&s)));
                }
                Err(_) => sleep(RETRY_PAUSE).await,
            }
        };
        if info.id != id {
            return Err(NodeError::Refused(format!(
                "the replica at {addr} is node {}, not {id}; add it under its own --node-id",
                info.id
            )));
        }
        Ok(())
    }

    /// Every other member (voter or learner): id and address.
    pub fn other_members(&self) -> Vec<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// What every reachable replica heard from the agents, merged per host: the freshest
    /// heartbeat wins, streams add up, drift comes from the latest audit. Also the replicas
    /// that did not answer.
    pub async fn agents_everywhere(&self) -> (std::collections::HashMap<String, AgentSeen>, Vec<NodeId>) {
        let members = self.other_members();
        let asks = members.into_iter().map(|(id, addr)| async move {
            let answer: Result<std::collections::HashMap<String, AgentSeen>, ForwardError> = self
                .ask(
                    &addr,
                    &(),
                    Some(Duration::from_secs(1)),
                    |mut c, req| async move { c.agents_seen(req).await },
                )
                .await;
            (id, answer)
        });
        let mut merged = self.agents.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut unreachable = Vec::new();
        for (id, answer) in futures::future::join_all(asks).await {
            let Ok(theirs) = answer else {
                unreachable.push(id);
                continue;
            };
            for (host, s) in theirs {
                let e = merged.entry(host).or_default();
                if s.last_heartbeat_ms > e.last_heartbeat_ms {
                    e.last_heartbeat_ms = s.last_heartbeat_ms;
                }
                e.applied_revision = e.applied_revision.max(s.applied_revision);
                e.sent_revision = e.sent_revision.max(s.sent_revision);
                e.streams += s.streams;
                e.stream_ended_ms = e.stream_ended_ms.max(s.stream_ended_ms);
                if s.audited_ms > e.audited_ms {
                    e.drift = s.drift;
                    e.audited_ms = s.audited_ms;
                }
                for claim in s.refused_claims {
                    e.refuse(claim);
                }
            }
        }
        (merged, unreachable)
    }

    async fn forward(&self, addr: &str, cmd: &Command) -> Result<Forwarded<Reply>, ForwardError> {
        self.ask(addr, cmd, None, |mut c, req| async move { c.forward(req).await })
            .await
    }

    /// Sends `query` to the replica at `addr` with `call` (one RPC of the Raft service, within
    /// `ttl` if given) and decodes its answer: the one path every forwarded request takes.
    async fn ask<Q, A, F, Fut>(
        &self,
        addr: &str,
        query: &Q,
        ttl: Option<Duration>,
        call: F,
    ) -> Result<A, ForwardError>
    where
        Q: Serialize,
        A: serde::de::DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftPayload>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let client = self.peers.client(addr)?;
        let mut req = tonic::Request::new(encode(query)?);
        if let Some(ttl) = ttl {
            req.set_timeout(ttl);
        }
        let reply = call(client, req)
            .await
            .map_err(|s| ForwardError::Status(Box::new(s)))?;
        Ok(decode(reply.get_ref())?)
    }

    /// Waits until this replica's state reflects every write committed before the call.
    pub async fn linearizable(&self) -> Result<(), NodeError> {
        let deadline = Instant::now() + self.timeout;
        let mut last_leader = None;
        loop {
            match self.leader() {
                Some((id, _)) if id == self.id => {
                    last_leader = Some(id);
                    match timeout_at(deadline, self.raft.ensure_linearizable()).await {
                        Err(_) => return Err(NodeError::NoQuorum(self.timeout, id)),
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(RaftError::Fatal(f))) => return Err(NodeError::Fatal(f.to_string())),
                        Ok(Err(RaftError::APIError(_))) => {}
                    }
                }
                Some((id, addr)) => {
                    last_leader = Some(id);
                    if let Ok(Ok(Forwarded::Done(index))) = timeout_at(deadline, self.read_index(&addr)).await
                    {
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        return match self
                            .raft
                            .wait(Some(remaining))
                            .applied_index_at_least(Some(index), "read")
                            .await
                        {
                            Ok(_) => Ok(()),
                            Err(_) => Err(NodeError::NoQuorum(self.timeout, id)),
                        };
                    }
                }
                None => {}
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(match last_leader {
                    Some(l) => NodeError::NoQuorum(self.timeout, l),
                    None => NodeError::NoLeader(self.timeout),
                });
            }
            sleep(RETRY_PAUSE).await;
        }
    }

    /// On the leader: confirm leadership with a quorum and return the index a read must see.
    pub async fn read_index_here(&self) -> Result<Forwarded<u64>, NodeError> {
        match timeout_at(Instant::now() + self.timeout, self.raft.get_read_log_id()).await {
            Err(_) => Ok(Forwarded::Failed("no quorum confirmed leadership".into())),
            Ok(Ok((read_log_id, _))) => Ok(Forwarded::Done(read_log_id.map(|l| l.index).unwrap_or(0))),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => Ok(Forwarded::NotLeader),
            Ok(Err(RaftError::APIError(e))) => Ok(Forwarded::Failed(e.to_string())),
            Ok(Err(RaftError::Fatal(f))) => Err(NodeError::Fatal(f.to_string())),
        }
    }

    async fn read_index(&self, addr: &str) -> Result<Forwarded<u64>, ForwardError> {
        self.ask(
            addr,
            &(),
            None,
            |mut c, req| async move { c.read_index(req).await },
        )
        .await
    }

    /// Initialises a new cluster with `members` unless some member already belongs to one.
    /// Called by the lowest id when its own store is empty. Peers that do not answer yet are
    /// assumed new (at first start they come up in any order); a peer that answers and is
    /// initialised means this replica lost its data and must rejoin, not found a second cluster.
    pub async fn bootstrap(&self, members: BTreeMap<NodeId, String>) -> Result<bool, NodeError> {
        for (id, addr) in members.iter().filter(|(id, _)| **id != self.id) {
            if let Ok(mut client) = self.peers.client(addr) {
                let mut req = tonic::Request::new(overlay_proto::raft::NodeInfoRequest {});
                req.set_timeout(Duration::from_secs(1));
                if let Ok(info) = client.info(req).await
                    && info.get_ref().initialized
                {
                    tracing::warn!(
                        peer = id,
                        "peer already belongs to a cluster; not initialising a new one"
                    );
                    return Ok(false);
                }
            }
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(e)) => {
                tracing::info!(error = %e, "cluster already initialised");
                Ok(false)
            }
            Err(RaftError::Fatal(f)) => Err(NodeError::Fatal(f.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(instance: &str, source: &str, at: i64) -> RefusedClaim {
        RefusedClaim {
            instance: instance.into(),
            source: source.into(),
            refusals: 1,
            last_refused_ms: at,
            call: "Register".into(),
            ..Default::default()
        }
    }

    #[test]
    fn refused_claims_merge_and_stay_bounded() {
        let mut seen = AgentSeen::default();
        for i in 0..100 {
            seen.refuse(refused("bbbbbbbb", "192.0.2.13", 1_000 + i));
        }
        assert_eq!(seen.refused_claims.len(), 1);
        assert_eq!(seen.refused_claims[0].refusals, 100);
        // An impostor cycling through instance ids fills a bounded list, newest first.
        for i in 0..1000 {
            seen.refuse(refused(&format!("{i:08x}"), "192.0.2.14", 10_000 + i));
        }
        assert_eq!(seen.refused_claims.len(), MAX_REFUSED_CLAIMS);
        assert_eq!(seen.refused_claims[0].instance, format!("{:08x}", 999));
        seen.tidy_claims(10_999 + REFUSED_CLAIM_MEMORY_MS);
        assert!(seen.refused_claims.is_empty(), "old refusals are forgotten");
    }

    #[test]
    fn an_agent_is_connected_by_stream_or_by_heartbeats_after_its_last_stream() {
        let now = 100_000;
        let mut seen = AgentSeen {
            streams: 1,
            ..Default::default()
        };
        assert!(agent_connected(&seen, 0, now), "an open stream");
        seen.streams = 0;
        seen.last_heartbeat_ms = now - 1_000;
        assert!(agent_connected(&seen, 0, now), "a heartbeat a second ago");
        seen.stream_ended_ms = now - 500;
        assert!(!agent_connected(&seen, 0, now), "stopped: its stream ended after");
        assert!(
            agent_connected(&seen, now - 100, now),
            "but heard since (replicated)"
        );
        seen.last_heartbeat_ms = now - crate::state::HOST_DOWN_AFTER_MS;
        seen.stream_ended_ms = 0;
        assert!(!agent_connected(&seen, 0, now), "silent for the down timeout");
    }
}
