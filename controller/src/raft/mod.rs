//! openraft wiring: the type configuration, the redb-backed storage and the gRPC transport.

// openraft's storage traits fix the (large) error type; boxing it here would only add a layer.
#![allow(clippy::result_large_err)]

use std::io::Cursor;

pub mod log_store;
pub mod network;
pub mod state_machine;
pub mod storage;

pub use log_store::LogStore;
pub use state_machine::{StateMachineStore, StateView};

use crate::state::{Command, Reply};

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Raft types of the overlay controller: log entries carry [`Command`]s, applying one
    /// yields a [`Reply`].
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Timing and retention of the Raft group.
///
/// Heartbeats every 100 ms; a follower calls an election after 600-1200 ms of silence (etcd's
/// defaults are 100 ms / 1 s). openraft makes followers refuse votes for `election_timeout_max`
/// after the last heartbeat (the leader lease), so the first candidate is usually turned down
/// and a failover takes about two timeouts: ~2 s measured in the fault tests, against ~3.5 s
/// with 1-2 s timeouts. Heartbeats are sent by replication tasks, not behind fsync, so log I/O
/// stalls do not cause spurious elections. A snapshot every 1,000 entries keeps the log (and
/// restart replay) short.
pub fn raft_config() -> openraft::Config {
    openraft::Config {
        cluster_name: "overlay".into(),
        heartbeat_interval: 100,
        election_timeout_min: 600,
        election_timeout_max: 1200,
        install_snapshot_timeout: 5000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 500,
        purge_batch_size: 256,
        max_payload_entries: 512,
        ..Default::default()
    }
}
