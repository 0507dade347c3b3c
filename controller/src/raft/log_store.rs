//! Raft log storage on redb.
//!
//! Writes run on tokio's blocking pool (they fsync); the append callback fires only after the
//! transaction is durable, as openraft requires.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, Vote};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::storage::{LOGS, META, io_error, join_err, read_logs_err, write_logs_err};
use super::{Entry, LogId, NodeId, StorageError, TypeConfig};

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Last committed index openraft told us about; shown by `cluster status`.
    committed_index: Arc<AtomicU64>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self {
            db,
            committed_index: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    /// True once this replica holds a vote or a log entry: it belongs to a cluster already.
    pub fn is_initialized(&self) -> Result<bool, StorageError> {
        let vote: Option<Vote<NodeId>> = self.read_meta("vote")?;
        let txn = self.db.begin_read().map_err(read_logs_err)?;
        let logs = txn.open_table(LOGS).map_err(read_logs_err)?;
        let has_log = logs.first().map_err(read_logs_err)?.is_some();
        Ok(vote.is_some() || has_log)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let err = |e: &dyn std::fmt::Display| {
            io_error(
                ErrorSubject::Store,
                ErrorVerb::Read,
                std::io::Error::other(format!("{key}: {e}")),
            )
        };
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(META).map_err(|e| err(&e))?;
        match table.get(key).map_err(|e| err(&e))? {
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(|e| err(&e)),
            None => Ok(None),
        }
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(join_err)?
        .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    serde_json::from_slice(bytes).map_err(read_logs_err)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(read_logs_err)?;
        let logs = txn.open_table(LOGS).map_err(read_logs_err)?;
        let iter = match end {
            Some(end) => logs.range(start..end),
            None => logs.range(start..),
        }
        .map_err(read_logs_err)?;
        let mut out = Vec::new();
        for item in iter {
            let (_, v) = item.map_err(read_logs_err)?;
            out.push(decode_entry(v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta("last_purged")?;
        let txn = self.db.begin_read().map_err(read_logs_err)?;
        let logs = txn.open_table(LOGS).map_err(read_logs_err)?;
        let last = match logs.last().map_err(read_logs_err)? {
            Some((_, v)) => Some(decode_entry(v.value())?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta("vote", vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed_index.store(c.index, Ordering::Relaxed);
        }
        self.write_meta("committed", &committed, ErrorSubject::Store)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let c: Option<Option<LogId>> = self.read_meta("committed")?;
        let c = c.flatten();
        if let Some(c) = c {
            self.committed_index.store(c.index, Ordering::Relaxed);
        }
        Ok(c)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(write_logs_err)?;
            encoded.push((entry.log_id.index, bytes));
        }
        let db = self.db.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut logs = txn.open_table(LOGS)?;
                for (index, bytes) in &encoded {
                    logs.insert(*index, bytes.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(join_err)?;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg)));
                Err(write_logs_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Remove log_id.index and everything after it (conflicting entries from an old leader).
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut logs = txn.open_table(LOGS)?;
                logs.retain_in(log_id.index.., |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(join_err)?
        .map_err(write_logs_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.write_meta("last_purged", &Some(log_id), ErrorSubject::Logs)
            .await?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut logs = txn.open_table(LOGS)?;
                logs.retain_in(..=log_id.index, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(join_err)?
        .map_err(write_logs_err)
    }
}
