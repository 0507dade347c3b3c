//! openraft's own storage test suite against the redb log store and the state machine.

use openraft::testing::{StoreBuilder, Suite};
use overlay_controller::raft::storage;
use overlay_controller::raft::{LogStore, StateMachineStore, StorageError, TypeConfig};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = storage::open(dir.path()).expect("open redb");
        let sm = StateMachineStore::open(db.clone())?;
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_redb() {
    Suite::test_all(RedbBuilder).expect("openraft storage suite");
}
