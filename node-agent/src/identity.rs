//! This agent's instance id (see `overlay_proto::instance`): made on first start, kept in the
//! state dir, sent with every call. It is what tells this machine's agent from a second one
//! started with the same `--host-name` (or a copy of the same certificate): the controller
//! lets one instance hold a host name at a time.
//!
//! A new state dir means a new instance: a reinstalled machine takes its host name back once
//! the old instance has been silent for the controller's `--host-claim-timeout` (or after
//! `overlayctl host rm`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use overlay_proto::instance;

/// The file in the state dir.
pub const FILE: &str = "instance-id";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or make this agent's instance id {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{} does not hold an instance id ({reason}); remove it to make a new one (the host name then stays with the old id until it has been silent for the controller's --host-claim-timeout)",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: &'static str },
}

/// The instance id kept in `state_dir`, made (128 random bits, hex) if there is none yet.
pub fn load_or_create(state_dir: &Path) -> Result<String, IdentityError> {
    let path = state_dir.join(FILE);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            instance::validate(&id).map_err(|reason| IdentityError::Corrupt {
                path: path.clone(),
                reason,
            })?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = random_id().map_err(io)?;
            // Written aside, synced, then put in place: a crash leaves the old state (no
            // file) or the whole id, never half of one.
            let tmp = state_dir.join(format!("{FILE}.tmp"));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            file.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

fn random_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; instance::LEN / 2];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("overlay-identity-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Self(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn an_id_is_made_once_and_kept() {
        let dir = Scratch::new("a");
        let first = load_or_create(&dir.0).expect("made");
        assert!(instance::validate(&first).is_ok(), "{first}");
        assert_eq!(first.len(), instance::LEN);
        assert_eq!(load_or_create(&dir.0).expect("kept"), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.0.join(FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = Scratch::new("b");
        assert_ne!(load_or_create(&other.0).expect("made"), first);
        std::fs::write(dir.0.join(FILE), "not an id\n").expect("write");
        let err = load_or_create(&dir.0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("remove it"), "{err}");
    }
}
