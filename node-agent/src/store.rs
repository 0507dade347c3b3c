//! The host's own record of the endpoints it handed out (`<state-dir>/endpoints.redb`).
//!
//! An address inside this host's lease is this host's to give: an attach on the local API
//! allocates it here and commits it (fsync'd, redb's `Durability::Immediate`) before answering,
//! so an agent restart or crash never hands the same address out twice and never forgets a
//! live one. A new endpoint's record may be *staged* first ([`Store::stage_new`]: visible at
//! once, on disk only with the next durable commit) and *sealed* ([`Sealer::seal`]) while its
//! devices are made: the attach still answers only once both are done. The controller learns
//! of each endpoint afterwards ([`crate::sync`]).
//!
//! A store that did not exist when the agent started is *new*: the agent may have lost its
//! state directory while workloads kept running, so it is filled from the controller's records
//! of this host before any new address is given out.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use overlay_proto::mac::MacAddr;
use overlay_proto::ports::PublishedPort;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Endpoint key -> JSON [`Record`].
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
/// "next_id" -> the next host-local endpoint id.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Network -> the last address handed out in it (IPv4 as u32): allocation goes on after it
/// across restarts, so a freed address is not the next one given.
const CURSORS: TableDefinition<&str, u32> = TableDefinition::new("cursors");
/// Docker network id -> the overlay network it joins (the Docker plugin: docker never tells a
/// plugin its networks again after a restart).
const DOCKER_NETWORKS: TableDefinition<&str, &str> = TableDefinition::new("docker_networks");

pub const STORE_FILE: &str = "endpoints.redb";

/// One endpoint of this host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Caller-given, unique on this host (CNI: "<container id>/<ifname>").
    pub key: String,
    /// Host-local number, never reused by this store: names the host side (`ovv-<id hex>`).
    pub id: u64,
    pub network: String,
    /// The namespace reference as the caller gave it (a path, a name under /run/netns, a pid).
    pub netns: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: MacAddr,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// Who attached it (cni, docker, overlayctl).
    pub owner: String,
    #[serde(default)]
    pub default_route: bool,
    pub created_ms: i64,
    /// The controller has recorded it (it was in the controller's list). A reported endpoint
    /// that leaves the list was detached through the controller; one never reported is still
    /// to be told.
    #[serde(default)]
    pub reported: bool,
    /// Set for endpoints whose interface a container runtime moves into its sandbox itself
    /// (Docker): see [`RuntimeLink`]. `None`: the agent wires the namespace.
    #[serde(default)]
    pub runtime: Option<RuntimeLink>,
}

/// Docker's side of an endpoint. Docker asks for the address first (IPAM), then for the
/// endpoint, then joins it to a sandbox that does not exist yet: the agent creates the veth
/// pair in its own namespace and Docker moves the workload end into the container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeLink {
    /// Docker's endpoint id, once the endpoint is created ("" while only the address is held).
    pub endpoint_id: String,
    /// The veth pair exists and the workload end was handed to Docker (`netns` then names
    /// the sandbox, `ifname` the name the workload end was handed over with).
    pub joined: bool,
}

impl Record {
    /// Held for a runtime that has not joined it to a sandbox yet: no namespace to wire.
    pub fn is_reservation(&self) -> bool {
        self.runtime.as_ref().is_some_and(|r| !r.joined)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("endpoint store: the commit did not finish: {0}")]
    Interrupted(String),
    #[error(
        "cannot open {path}: {source} (if the file is damaged, move it aside: the agent rebuilds it from the controller's records)"
    )]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("endpoint store {path}: {source}")]
    Io { path: String, source: redb::Error },
    #[error("endpoint store {path}: record {key:?} is unreadable: {reason}")]
    Corrupt {
        path: String,
        key: String,
        reason: String,
    },
}

pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
    created: bool,
}

/// Makes every staged write of a [`Store`] durable; usable apart from the store (on a blocking
/// thread, while the book it belongs to goes on).
#[derive(Clone)]
pub struct Sealer {
    db: Arc<Database>,
    path: PathBuf,
}

impl Sealer {
    /// One durable (fsync'd) commit: every write before it, staged ones included, is on disk
    /// once it returns.
    pub fn seal(&self) -> Result<(), StoreError> {
        let err = |e: redb::Error| StoreError::Io {
            path: self.path.display().to_string(),
            source: e,
        };
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        txn.commit().map_err(|e| err(e.into()))
    }
}

impl Store {
    /// Opens `<dir>/endpoints.redb`, creating it (and `dir`) when missing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(STORE_FILE);
        let created = !path.exists();
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|source| StoreError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let store = Self {
            db: Arc::new(db),
            path,
            created,
        };
        store.write(|txn| {
            txn.open_table(ENDPOINTS)?;
            txn.open_table(META)?;
            txn.open_table(CURSORS)?;
            txn.open_table(DOCKER_NETWORKS)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Whether this store did not exist before [`Store::open`] (see the module docs).
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            source: e.into(),
        }
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        self.write_as(Durability::Immediate, f)
    }

    fn write_as<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(durability).map_err(|e| self.err(e))?;
        let out = f(&txn).map_err(|e| self.err(e))?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Every record, by key.
    pub fn records(&self) -> Result<Vec<Record>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(ENDPOINTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (key, value) = row.map_err(|e| self.err(e))?;
            let record: Record = serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.display().to_string(),
                key: key.value().to_string(),
                reason: e.to_string(),
            })?;
            out.push(record);
        }
        Ok(out)
    }

    /// The id the next record gets (at least `floor`). Nothing is written: the counter moves
    /// past an id in the commit of the record that takes it ([`Store::put`]), so an id is
    /// never given twice, across restarts too, and an attach pays one fsync, not two. An id
    /// whose record never reached the disk (staged, then a crash before the seal) is free
    /// again after a restart; a device made for it meanwhile is a stray to the first pass
    /// (no record wants it) or, named for the id's next holder, a host end the new process
    /// knows nothing of: the plan verifies it inside the holder's own namespace, finds no
    /// workload end there and rebuilds the pair. Two live endpoints never share an id or an
    /// address.
    pub fn next_id(&self, floor: u64) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        // The table exists from `open` on.
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let next = meta.get("next_id").map_err(|e| self.err(e))?.map(|v| v.value());
        Ok(next.unwrap_or(1).max(floor))
    }

    /// The last address handed out per network.
    pub fn cursors(&self) -> Result<Vec<(String, Ipv4Addr)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(CURSORS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((k.value().to_string(), Ipv4Addr::from(v.value())));
        }
        Ok(out)
    }

    /// Writes a new `record` and moves its network's cursor to its address, in one commit.
    pub fn put_new(&self, record: &Record) -> Result<(), StoreError> {
        self.put_new_as(Durability::Immediate, record)
    }

    /// [`Store::put_new`] without waiting for the disk: the record is read back at once, and
    /// is durable after the next durable commit of this store ([`Sealer::seal`], or any other
    /// write). Lost with the process if it dies before that.
    pub fn stage_new(&self, record: &Record) -> Result<(), StoreError> {
        self.put_new_as(Durability::None, record)
    }

    fn put_new_as(&self, durability: Durability, record: &Record) -> Result<(), StoreError> {
        self.put_and(durability, record, |txn| {
            txn.open_table(CURSORS)?
                .insert(record.network.as_str(), u32::from(record.ip))?;
            Ok(())
        })
    }

    /// What makes this store's staged writes durable.
    pub fn sealer(&self) -> Sealer {
        Sealer {
            db: self.db.clone(),
            path: self.path.clone(),
        }
    }

    /// Writes `record` (replacing one with the same key), durably.
    pub fn put(&self, record: &Record) -> Result<(), StoreError> {
        self.put_and(Durability::Immediate, record, |_| Ok(()))
    }

    fn put_and(
        &self,
        durability: Durability,
        record: &Record,
        more: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Corrupt {
            path: self.path.display().to_string(),
            key: record.key.clone(),
            reason: e.to_string(),
        })?;
        self.write_as(durability, |txn| {
            let mut table = txn.open_table(ENDPOINTS)?;
            table.insert(record.key.as_str(), bytes.as_slice())?;
            let mut meta = txn.open_table(META)?;
            let next = meta.get("next_id")?.map(|v| v.value()).unwrap_or(1);
            if record.id >= next {
                meta.insert("next_id", record.id + 1)?;
            }
            drop(meta);
            drop(table);
            more(txn)
        })
    }

    /// Docker networks and the overlay network each joins.
    pub fn docker_networks(&self) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(DOCKER_NETWORKS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    pub fn put_docker_network(&self, id: &str, network: &str) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(DOCKER_NETWORKS)?.insert(id, network)?;
            Ok(())
        })
    }

    pub fn remove_docker_network(&self, id: &str) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(DOCKER_NETWORKS)?.remove(id)?;
            Ok(())
        })
    }

    /// Removes the record with `key`, durably; whether there was one.
    pub fn remove(&self, key: &str) -> Result<bool, StoreError> {
        self.write(|txn| {
            let mut table = txn.open_table(ENDPOINTS)?;
            Ok(table.remove(key)?.is_some())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, id: u64, ip: &str) -> Record {
        Record {
            key: key.into(),
            id,
            network: "blue".into(),
            netns: "/run/netns/w".into(),
            ifname: "eth0".into(),
            ip: ip.parse().unwrap(),
            prefix_len: 24,
            gateway: "10.1.0.1".parse().unwrap(),
            mac: "0a:58:0a:01:00:02".parse().unwrap(),
            names: vec!["web".into()],
            ports: vec![],
            owner: "cni".into(),
            default_route: true,
            created_ms: 1,
            reported: false,
            runtime: None,
        }
    }

    #[test]
    fn records_survive_reopening_and_ids_never_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.created());
        let a = store.next_id(0).unwrap();
        store.put(&record("c1/eth0", a, "10.1.0.2")).unwrap();
        let b = store.next_id(0).unwrap();
        assert_ne!(a, b);
        store.put(&record("c2/eth0", b, "10.1.0.3")).unwrap();
        assert!(store.remove("c1/eth0").unwrap());
        assert!(!store.remove("c1/eth0").unwrap(), "a second remove finds nothing");
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert!(!store.created(), "an existing store is not new");
        let all = store.records().unwrap();
        assert_eq!(all, vec![record("c2/eth0", b, "10.1.0.3")]);
        let c = store.next_id(0).unwrap();
        assert!(c > b, "ids keep growing across restarts: {c} after {b}");
        // A record imported with a higher id moves the counter past it.
        store.put(&record("c9/eth0", 500, "10.1.0.9")).unwrap();
        assert!(store.next_id(0).unwrap() > 500);
    }

    #[test]
    fn a_damaged_record_is_reported_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write(|txn| {
                txn.open_table(ENDPOINTS)?.insert("bad", b"{nope".as_slice())?;
                Ok(())
            })
            .unwrap();
        let err = store.records().unwrap_err().to_string();
        assert!(err.contains("\"bad\"") && err.contains("unreadable"), "{err}");
    }
}
