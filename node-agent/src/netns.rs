//! Running netlink inside another network namespace.
//!
//! A socket belongs to the namespace of the thread that opens it, so the work runs on a fresh
//! OS thread that `setns`'d into the target and drives its own single-threaded runtime. The
//! thread is never reused (tokio's blocking pool would hand a thread stuck in a workload's
//! namespace to unrelated work), and the agent never forks to get there.

use std::fs::File;
use std::future::Future;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::netlink::Netlink;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("namespace {0} not found")]
    NotFound(String),
    #[error("cannot open namespace {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("cannot enter namespace {path}: {source}")]
    Enter { path: String, source: nix::Error },
    #[error("in namespace {path}: {message}")]
    Inside { path: String, message: String },
    #[error("namespace worker thread failed: {0}")]
    Thread(String),
}

/// Opens a namespace file, telling "not there" apart from other failures.
pub fn open(path: &Path) -> Result<File, NetnsError> {
    File::open(path).map_err(|source| {
        let shown = path.display().to_string();
        if source.kind() == std::io::ErrorKind::NotFound {
            NetnsError::NotFound(shown)
        } else {
            NetnsError::Open { path: shown, source }
        }
    })
}

/// Runs `work` with a netlink connection opened inside the namespace `ns`.
pub async fn run_in<F, Fut, T>(ns: File, shown: String, work: F) -> Result<T, NetnsError>
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path = shown.clone();
    let spawned = std::thread::Builder::new()
        .name("overlay-netns".into())
        .spawn(move || {
            let result = (|| {
                setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                    path: path.clone(),
                    source,
                })?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetnsError::Thread(e.to_string()))?;
                rt.block_on(async {
                    let nl = Netlink::connect().map_err(|e| NetnsError::Inside {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                    work(nl).await.map_err(|message| NetnsError::Inside {
                        path: path.clone(),
                        message,
                    })
                })
            })();
            let _ = tx.send(result);
        });
    spawned.map_err(|e| NetnsError::Thread(e.to_string()))?;
    rx.await
        .map_err(|_| NetnsError::Thread(format!("worker for {shown} ended without an answer")))?
}
