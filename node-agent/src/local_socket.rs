//! The unix socket of the host-local endpoint API (`--local-socket`, default
//! `/run/overlay/agent.sock`): root only.
//!
//! Whoever can talk to this socket can make the agent wire interfaces into namespaces, so it
//! is guarded twice: the socket file is mode 0600 from the moment it has its final name (it is
//! bound under a private name in a 0700 directory, chmod'ed, then renamed into place), and
//! every connection's peer credentials are checked (uid 0) before a byte is read.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("local socket {path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("local socket {0} exists and is not a socket; refusing to replace it")]
    NotASocket(String),
    #[error("local socket {0} is served by another running agent; stop it first")]
    InUse(String),
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SocketError {
    let path = path.display().to_string();
    move |source| SocketError::Io { path, what, source }
}

/// A bound socket; the file is removed when it is dropped.
pub struct LocalSocket {
    pub listener: UnixListener,
    path: PathBuf,
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl LocalSocket {
    /// Binds `path` with mode 0600. A stale socket (no agent answers on it) is replaced; a
    /// live one or anything that is not a socket is refused.
    pub async fn bind(path: &Path) -> Result<Self, SocketError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(parent).map_err(io(parent, "create directory"))?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(SocketError::NotASocket(path.display().to_string()));
            }
            Ok(_) => {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(SocketError::InUse(path.display().to_string()));
                }
                std::fs::remove_file(path).map_err(io(path, "remove stale socket"))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path, "inspect")(e)),
        }
        // Bound under a private directory first, so the socket is never reachable with the
        // process umask's mode, then moved to its name.
        let private = parent.join(format!(".agent-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::create_dir(&private).map_err(io(&private, "create directory"))?;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&private, "chmod"))?;
        let staged = private.join("sock");
        let result = (|| {
            let listener = UnixListener::bind(&staged).map_err(io(&staged, "bind"))?;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                .map_err(io(&staged, "chmod"))?;
            std::fs::rename(&staged, path).map_err(io(path, "rename"))?;
            Ok(listener)
        })();
        let _ = std::fs::remove_dir_all(&private);
        Ok(Self {
            listener: result?,
            path: path.to_path_buf(),
        })
    }

    /// Accepts the next connection from a root process; others are closed unread (and logged).
    pub async fn accept(&self) -> std::io::Result<UnixStream> {
        loop {
            let (stream, _) = self.listener.accept().await?;
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == 0 => return Ok(stream),
                Ok(cred) => tracing::warn!(
                    uid = cred.uid(),
                    pid = cred.pid().unwrap_or(0),
                    "local socket: connection from a non-root process refused"
                ),
                Err(e) => tracing::warn!(error = %e, "local socket: cannot read peer credentials; refused"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn socket_is_private_and_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/overlay/agent.sock");
        let sock = LocalSocket::bind(&path).await.unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        // A second agent on the same socket is refused while the first serves it.
        let accepting = tokio::spawn(async move {
            let _ = sock.accept().await;
            sock
        });
        let err = LocalSocket::bind(&path).await.err().expect("second bind refused");
        assert!(matches!(err, SocketError::InUse(_)), "{err}");
        let sock = accepting.await.unwrap();
        drop(sock);
        assert!(!path.exists(), "removed on drop");
        // A stale socket (nobody listening) is replaced; a regular file never is.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let again = LocalSocket::bind(&path).await.unwrap();
        drop(again);
        std::fs::write(&path, b"precious").unwrap();
        let err = LocalSocket::bind(&path).await.err().expect("file refused");
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }
}
