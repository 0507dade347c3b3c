//! The openraft state machine around [`ClusterState`].
//!
//! The state lives in memory; durability comes from the log plus the latest snapshot, which is
//! written to redb whenever one is built or installed. On start the snapshot is loaded and
//! openraft re-applies the committed log after it (we persist the committed index).
//!
//! Readers (API handlers, Watch streams) share the state through [`StateView`]; every applied
//! batch that changes the revision wakes them through a watch channel.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot, StorageIOError};
use redb::{Database, ReadableDatabase};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::storage::{SNAPSHOT, io_error, join_err};
use super::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig};
use crate::state::{ClusterState, Reply, Response};

/// What a snapshot holds: the state plus where in the log it was taken.
#[derive(Serialize, Deserialize, Default)]
struct SnapshotPayload {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    state: ClusterState,
}

#[derive(Default)]
struct Data {
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    state: ClusterState,
}

struct Shared {
    data: RwLock<Data>,
    revision_tx: watch::Sender<u64>,
}

/// A cheap, cloneable read handle on the applied state.
#[derive(Clone)]
pub struct StateView {
    shared: Arc<Shared>,
}

impl StateView {
    /// Runs `f` on the current state under a read lock. Keep `f` short: apply waits for it.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        let guard = self.lock();
        f(&guard.state)
    }

    /// Revision notifications: the receiver sees the latest revision after every applied change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.revision_tx.subscribe()
    }

    pub fn revision(&self) -> u64 {
        *self.shared.revision_tx.borrow()
    }

    fn lock(&self) -> RwLockReadGuard<'_, Data> {
        // A panic while holding the lock would be a bug in apply; the data is still the last
        // consistent state (apply mutates only after all checks), so keep serving it.
        self.shared
            .data
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct StateMachineStore {
    shared: Arc<Shared>,
    db: Arc<Database>,
    snapshot_seq: Arc<AtomicU64>,
}

impl StateMachineStore {
    /// Opens the state machine, restoring the latest snapshot persisted in `db`.
    pub fn open(db: Arc<Database>) -> Result<Self, StorageError> {
        let data = match load_snapshot(&db)? {
            Some((_, bytes)) => {
                let payload = decode_payload(&bytes)?;
                Data {
                    last_applied: payload.last_applied,
                    last_membership: payload.last_membership,
                    state: payload.state,
                }
            }
            None => Data::default(),
        };
        let (revision_tx, _) = watch::channel(data.state.revision);
        Ok(Self {
            shared: Arc::new(Shared {
                data: RwLock::new(data),
                revision_tx,
            }),
            db,
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn view(&self) -> StateView {
        StateView {
            shared: self.shared.clone(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Data> {
        self.shared
            .data
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish_revision(&self, revision: u64) {
        self.shared.revision_tx.send_if_modified(|current| {
            let changed = *current != revision;
            *current = revision;
            changed
        });
    }
}

fn decode_payload(bytes: &[u8]) -> Result<SnapshotPayload, StorageError> {
    let mut payload: SnapshotPayload = serde_json::from_slice(bytes).map_err(|e| {
        io_error(
            ErrorSubject::StateMachine,
            ErrorVerb::Read,
            std::io::Error::other(format!("snapshot: {e}")),
        )
    })?;
    payload.state.rebuild_indices();
    Ok(payload)
}

fn load_snapshot(db: &Database) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
    let err = |e: &dyn std::fmt::Display| {
        io_error(
            ErrorSubject::Snapshot(None),
            ErrorVerb::Read,
            std::io::Error::other(e.to_string()),
        )
    };
    let txn = db.begin_read().map_err(|e| err(&e))?;
    let table = txn.open_table(SNAPSHOT).map_err(|e| err(&e))?;
    let meta = table.get("meta").map_err(|e| err(&e))?;
    let data = table.get("data").map_err(|e| err(&e))?;
    match (meta, data) {
        (Some(meta), Some(data)) => {
            let meta: SnapshotMeta = serde_json::from_slice(meta.value()).map_err(|e| err(&e))?;
            Ok(Some((meta, data.value().to_vec())))
        }
        _ => Ok(None),
    }
}

async fn save_snapshot(db: Arc<Database>, meta: &SnapshotMeta, data: Vec<u8>) -> Result<(), StorageError> {
    let signature = meta.signature();
    let meta_bytes = serde_json::to_vec(meta).map_err(|e| {
        StorageError::from(StorageIOError::write_snapshot(
            Some(signature.clone()),
            openraft::AnyError::new(&e),
        ))
    })?;
    tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            table.insert("meta", meta_bytes.as_slice())?;
            table.insert("data", data.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    })
    .await
    .map_err(join_err)?
    .map_err(|e| StorageIOError::write_snapshot(Some(signature), openraft::AnyError::new(&e)).into())
}

/// Builds snapshots from a consistent read of the shared state.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    db: Arc<Database>,
    snapshot_seq: Arc<AtomicU64>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // Serialize under one read lock so the log position and the state match.
        let (last_applied, last_membership, bytes) = {
            let data = self.shared.data.read().unwrap_or_else(|p| p.into_inner());
            let payload = SnapshotPayloadRef {
                last_applied: &data.last_applied,
                last_membership: &data.last_membership,
                state: &data.state,
            };
            let bytes = serde_json::to_vec(&payload)
                .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
            (data.last_applied, data.last_membership.clone(), bytes)
        };
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        save_snapshot(self.db.clone(), &meta, bytes.clone()).await?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

#[derive(Serialize)]
struct SnapshotPayloadRef<'a> {
    last_applied: &'a Option<LogId>,
    last_membership: &'a StoredMembership,
    state: &'a ClusterState,
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let data = self.write();
        Ok((data.last_applied, data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut data = self.write();
        let mut replies = Vec::new();
        for entry in entries {
            data.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Normal(cmd) => data.state.apply(cmd),
                EntryPayload::Membership(m) => {
                    data.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    Reply {
                        revision: data.state.revision,
                        result: Ok(Response::Noop),
                    }
                }
                EntryPayload::Blank => Reply {
                    revision: data.state.revision,
                    result: Ok(Response::Noop),
                },
            };
            replies.push(reply);
        }
        let revision = data.state.revision;
        drop(data);
        self.publish_revision(revision);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            db: self.db.clone(),
            snapshot_seq: self.snapshot_seq.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let payload = decode_payload(&bytes)?;
        save_snapshot(self.db.clone(), meta, bytes).await?;
        let revision = payload.state.revision;
        {
            let mut data = self.write();
            data.last_applied = meta.last_log_id;
            data.last_membership = meta.last_membership.clone();
            data.state = payload.state;
        }
        tracing::info!(snapshot = %meta.snapshot_id, revision, "snapshot installed");
        self.publish_revision(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(load_snapshot(&self.db)?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod fuzz {
    //! Snapshots arrive from peers (InstallSnapshot) and from disk: a damaged one is an error,
    //! never a panic while decoding or rebuilding the indices.

    use overlay_lab::fuzz::{mutations, run_for};
    use proptest::prelude::*;

    use super::*;
    use crate::state::Command;

    fn snapshot_bytes() -> Vec<u8> {
        let mut state = ClusterState::default();
        for (i, ip) in ["192.0.2.21", "192.0.2.22"].iter().enumerate() {
            state.apply(Command::RegisterHost {
                instance: String::new(),
                claim_timeout_ms: 0,
                name: format!("h{i}"),
                underlay_ip: ip.parse().unwrap(),
                underlay_iface: "eth0".into(),
                underlay_mtu: 1500,
                now_ms: 1,
            });
        }
        let spec = crate::model::NetworkSpec {
            cidr6: None,
            host_prefix6: None,
            name: "blue".into(),
            mode: crate::model::Mode::Vxlan,
            cidr: "10.1.0.0/16".parse().unwrap(),
            host_prefix: Some(24),
            vni: None,
            mtu: None,
            nat_egress: false,
            direct_routing: false,
            macvlan: None,
        };
        state.apply(Command::CreateNetwork { spec, now_ms: 1 });
        for i in 0..4u8 {
            state.apply(Command::SyncEndpoints {
                host: format!("h{}", i % 2),
                full: false,
                upsert: vec![crate::model::HostEndpoint {
                    key: format!("c{i}/eth0"),
                    host_id: u64::from(i),
                    network: "blue".into(),
                    netns: format!("/run/netns/w{i}"),
                    ifname: "eth0".into(),
                    ip: std::net::Ipv4Addr::new(10, 1, i % 2, 2 + i),
                    default_route: true,
                    owner: "cni".into(),
                    names: vec![],
                    ports: vec![],
                    status: crate::model::EndpointStatus::Ready,
                }],
                remove: vec![],
                failed: vec![],
                now_ms: 2,
            });
        }
        let payload = SnapshotPayloadRef {
            last_applied: &None,
            last_membership: &StoredMembership::default(),
            state: &state,
        };
        serde_json::to_vec(&payload).expect("encode")
    }

    #[test]
    fn damaged_snapshots_are_errors_not_panics() {
        let good = snapshot_bytes();
        let decoded = decode_payload(&good).expect("the seed decodes");
        assert_eq!(decoded.state.endpoints.len(), 4, "the seed holds the endpoints");
        run_for("snapshot decoding (mutated)", mutations(vec![good], 6), |bytes| {
            let _ = decode_payload(&bytes);
            Ok(())
        });
    }

    #[test]
    fn random_bytes_are_errors_not_panics() {
        run_for(
            "snapshot decoding (random)",
            prop::collection::vec(any::<u8>(), 0..300),
            |bytes| {
                let _ = decode_payload(&bytes);
                Ok(())
            },
        );
    }
}
