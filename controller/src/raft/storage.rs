//! The one redb file of a replica (`<data-dir>/raft.redb`): Raft log, vote, committed index
//! and the latest state-machine snapshot. Every write transaction commits with redb's default
//! `Durability::Immediate`, i.e. it is fsync'd before Raft is told it is stored.

use std::path::Path;
use std::sync::Arc;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};
use redb::{Database, TableDefinition};

use super::StorageError;

/// Log index → JSON-encoded entry.
pub const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// "vote", "committed", "last_purged" → JSON.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// "meta", "data" of the latest snapshot.
pub const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub const DB_FILE: &str = "raft.redb";

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error(
        "cannot open {path}: {source} (if this replica's store is damaged, move the data directory aside: the replica rejoins empty and receives a snapshot from its peers)"
    )]
    Open {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("cannot initialise {path}: {source}")]
    Init { path: String, source: redb::Error },
    #[error("corrupt state in {path}: {reason}")]
    Corrupt { path: String, reason: String },
}

/// Opens (creating if needed) the replica's database and makes sure every table exists, so
/// readers never meet a missing table.
pub fn open(data_dir: &Path) -> Result<Arc<Database>, OpenError> {
    std::fs::create_dir_all(data_dir).map_err(|source| OpenError::CreateDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let path = data_dir.join(DB_FILE);
    let shown = path.display().to_string();
    // Every page checksum is verified on open: a file damaged outside redb (disk fault, a
    // partial copy, an editor) is refused with an error instead of being served or crashing
    // the replica later. Takes a fraction of a second for a store of this size.
    let db = Database::builder()
        .set_check_integrity_on_open(true)
        .create(&path)
        .map_err(|source| OpenError::Open {
            path: shown.clone(),
            source,
        })?;
    let init = || -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.open_table(SNAPSHOT)?;
        txn.commit()?;
        Ok(())
    };
    init().map_err(|source| OpenError::Init { path: shown, source })?;
    Ok(Arc::new(db))
}

pub fn io_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

pub fn read_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

pub fn write_logs_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// A blocking storage task died (panicked or was cancelled at shutdown).
pub fn join_err(e: tokio::task::JoinError) -> StorageError {
    StorageIOError::write(AnyError::new(&e)).into()
}
