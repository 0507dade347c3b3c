//! Raft log storage on redb, with group commit.
//!
//! Every mutation (append, vote, committed index, truncate, purge) goes, in order, to one
//! writer thread. The writer takes everything queued at that moment, applies it in a single
//! redb transaction and commits it with one fsync, then reports completion: openraft's append
//! callback fires only once the entries are durable, as it requires, but a burst of writes
//! costs one fsync instead of one each.
//!
//! Appended entries are readable at once (replication reads them before they are durable):
//! until their transaction commits they are served from an in-memory map.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, Vote};
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::storage::{LOGS, META, io_error, read_logs_err, write_logs_err};
use super::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// One queued mutation for the writer thread.
enum WriteOp {
    Append {
        entries: Vec<(u64, u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    Meta {
        key: &'static str,
        bytes: Vec<u8>,
        done: Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    },
    Truncate {
        from: u64,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    Purge {
        upto: u64,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// Appended entries not yet committed to redb: index → (sequence, entry).
type Pending = Arc<Mutex<BTreeMap<u64, (u64, Entry)>>>;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Last committed index openraft told us about; shown by `cluster status`.
    committed_index: Arc<AtomicU64>,
    writer: mpsc::Sender<WriteOp>,
    pending: Pending,
    sequence: Arc<AtomicU64>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        let (writer, queue) = mpsc::channel();
        let pending: Pending = Arc::default();
        let (db2, pending2) = (db.clone(), pending.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(db2, queue, pending2))
            .expect("spawn the raft log writer thread");
        Self {
            db,
            committed_index: Arc::new(AtomicU64::new(0)),
            writer,
            pending,
            sequence: Arc::default(),
        }
    }

    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (u64, Entry)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once this replica holds a vote or a log entry: it belongs to a cluster already.
    pub fn is_initialized(&self) -> Result<bool, StorageError> {
        let vote: Option<Vote<NodeId>> = self.read_meta("vote")?;
        let txn = self.db.begin_read().map_err(read_logs_err)?;
        let logs = txn.open_table(LOGS).map_err(read_logs_err)?;
        let has_log = logs.first().map_err(read_logs_err)?.is_some();
        Ok(vote.is_some() || has_log || !self.pending().is_empty())
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

    fn send(&self, op: WriteOp, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        self.writer.send(op).map_err(|_| {
            io_error(
                subject,
                ErrorVerb::Write,
                std::io::Error::other("raft log writer has stopped"),
            )
        })
    }

    /// Queues a mutation and waits until it is durable.
    async fn write_and_wait(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> WriteOp,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(make(done), subject.clone())?;
        let result = wait
            .await
            .unwrap_or_else(|_| Err("raft log writer has stopped".into()));
        result.map_err(|e| io_error(subject, ErrorVerb::Write, std::io::Error::other(e)))
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(value).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        self.write_and_wait(
            |done| WriteOp::Meta {
                key,
                bytes,
                done: Some(done),
            },
            subject,
        )
        .await
    }
}

/// The writer thread: group commit of everything queued, in order.
fn write_loop(db: Arc<Database>, queue: mpsc::Receiver<WriteOp>, pending: Pending) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut logs = txn.open_table(LOGS)?;
                let mut meta = txn.open_table(META)?;
                for op in &batch {
                    match op {
                        WriteOp::Append { entries, .. } => {
                            for (index, _, bytes) in entries {
                                logs.insert(*index, bytes.as_slice())?;
                            }
                        }
                        WriteOp::Meta { key, bytes, .. } => {
                            meta.insert(*key, bytes.as_slice())?;
                        }
                        WriteOp::Truncate { from, .. } => {
                            logs.retain_in(*from.., |_, _| false)?;
                        }
                        WriteOp::Purge { upto, .. } => {
                            logs.retain_in(..=*upto, |_, _| false)?;
                        }
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        let error = result.as_ref().err().map(|e| e.to_string());
        for op in batch {
            match op {
                WriteOp::Append { entries, callback } => {
                    if error.is_none() {
                        // Durable now: served from redb from here on (unless replaced meanwhile).
                        let mut p = pending.lock().unwrap_or_else(|p| p.into_inner());
                        for (index, seq, _) in &entries {
                            if p.get(index).is_some_and(|(s, _)| s == seq) {
                                p.remove(index);
                            }
                        }
                    }
                    callback.log_io_completed(match &error {
                        None => Ok(()),
                        Some(e) => Err(std::io::Error::other(e.clone())),
                    });
                }
                WriteOp::Meta { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(error.clone().map_or(Ok(()), Err));
                    }
                }
                WriteOp::Truncate { done, .. } | WriteOp::Purge { done, .. } => {
                    let _ = done.send(error.clone().map_or(Ok(()), Err));
                }
            }
        }
        if let Some(e) = error {
            tracing::error!(error = %e, "raft log write failed");
        }
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
        let mut out: BTreeMap<u64, Entry> = BTreeMap::new();
        {
            let txn = self.db.begin_read().map_err(read_logs_err)?;
            let logs = txn.open_table(LOGS).map_err(read_logs_err)?;
            let iter = match end {
                Some(end) => logs.range(start..end),
                None => logs.range(start..),
            }
            .map_err(read_logs_err)?;
            for item in iter {
                let (k, v) = item.map_err(read_logs_err)?;
                out.insert(k.value(), decode_entry(v.value())?);
            }
        }
        // Entries not yet durable win: they are newer than anything redb holds at that index.
        let pending = self.pending();
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        for (index, (_, entry)) in pending.range((Bound::Included(start), upper)) {
            out.insert(*index, entry.clone());
        }
        Ok(out.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta("last_purged")?;
        let pending_last = self.pending().last_key_value().map(|(_, (_, e))| e.log_id);
        let last = match pending_last {
            Some(l) => Some(l),
            None => {
                let txn = self.db.begin_read().map_err(read_logs_err)?;
                let logs = txn.open_table(LOGS).map_err(read_logs_err)?;
                match logs.last().map_err(read_logs_err)? {
                    Some((_, v)) => Some(decode_entry(v.value())?.log_id),
                    None => None,
                }
            }
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
        // Not waited for: the committed index only saves re-applying entries after a restart,
        // and it rides along with the next group commit.
        let bytes =
            serde_json::to_vec(&committed).map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.send(
            WriteOp::Meta {
                key: "committed",
                bytes,
                done: None,
            },
            ErrorSubject::Store,
        )
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
        {
            let mut pending = self.pending();
            for entry in entries {
                let bytes = serde_json::to_vec(&entry).map_err(write_logs_err)?;
                let seq = self.sequence.fetch_add(1, Ordering::Relaxed);
                let index = entry.log_id.index;
                pending.insert(index, (seq, entry));
                encoded.push((index, seq, bytes));
            }
        }
        self.send(
            WriteOp::Append {
                entries: encoded,
                callback,
            },
            ErrorSubject::Logs,
        )
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Remove log_id.index and everything after it (conflicting entries from an old leader).
        self.pending().retain(|index, _| *index < log_id.index);
        self.write_and_wait(
            |done| WriteOp::Truncate {
                from: log_id.index,
                done,
            },
            ErrorSubject::Logs,
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.write_meta("last_purged", &Some(log_id), ErrorSubject::Logs)
            .await?;
        self.pending().retain(|index, _| *index > log_id.index);
        self.write_and_wait(
            |done| WriteOp::Purge {
                upto: log_id.index,
                done,
            },
            ErrorSubject::Logs,
        )
        .await
    }
}
