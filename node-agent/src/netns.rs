//! Finding and entering a workload's network namespace, safely.
//!
//! Whoever may attach an endpoint names its namespace (a name under /run/netns, a path, a
//! pid), and the agent acts on it as root: given its own namespace it would wire a veth into
//! the host and take over the host's routes. So [`open`] enters only what is provably a
//! workload's network namespace:
//!
//! - a path is opened `O_PATH | O_NOFOLLOW` first: a symbolic link (including /proc's
//!   namespace links) is refused, a FIFO or a device is never really opened (nothing blocks,
//!   nothing is triggered), and only a file on nsfs is reopened for use;
//! - a pid is resolved through a handle on its /proc directory (checked to be procfs), whose
//!   `ns/net` link is the one link followed, since that is what it is for;
//! - the namespace must be a *network* namespace (`NS_GET_NSTYPE`), and neither the agent's
//!   own nor pid 1's (compared by device and inode).
//!
//! [`Namespace::run`] then does netlink work inside it. A socket belongs to the namespace of
//! the thread that opens it, so the work runs on a fresh OS thread that `setns`'d into the
//! target and drives its own single-threaded runtime. The thread is never reused (tokio's
//! blocking pool would hand a thread stuck in a workload's namespace to unrelated work), and
//! the agent never forks to get there. The thread also reads the namespace's cookie
//! (`SO_NETNS_COOKIE`), which unlike an inode number is never reused while the machine runs:
//! with it, a namespace that replaced another at the same place is told apart even if it got
//! the freed inode number.

use std::fs::File;
use std::future::Future;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open as nix_open, openat};
use nix::sched::{CloneFlags, setns};
use nix::sys::stat::{Mode, SFlag, fstat, stat};
use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC, fstatfs};

use crate::netlink::Netlink;
use crate::spec::NetnsRef;

/// `ioctl(fd, NS_GET_NSTYPE)`: the `CLONE_NEW*` flag of the namespace behind an nsfs file
/// (`_IO(0xb7, 0x3)`, Linux 4.11).
const NS_GET_NSTYPE: u64 = 0xb703;
/// `getsockopt(SOL_SOCKET, SO_NETNS_COOKIE)` (Linux 5.14); absent from older libc crates.
const SO_NETNS_COOKIE: i32 = 71;
/// The inode number of the initial network namespace on kernels that fix it
/// (`PROC_NET_INIT_INO`, Linux 6.13). Below the range handed out to other namespaces
/// (from 0xF0000000), so on older kernels no namespace has it.
const INIT_NET_INO: u64 = 0xEFFF_FFF9;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("namespace {0} not found")]
    NotFound(String),
    #[error(
        "namespace {0} is a symbolic link; overlay does not follow links (give the namespace file itself, or the workload's pid)"
    )]
    Symlink(String),
    #[error("namespace {0} is not a network namespace")]
    NotNamespace(String),
    #[error("namespace {shown} is a {kind} namespace, not a network namespace")]
    WrongKind { shown: String, kind: &'static str },
    #[error("namespace {0} is the host's own namespace")]
    HostOwn(String),
    #[error("namespace {0} is the host's initial namespace (pid 1's)")]
    Init(String),
    #[error("namespace {0} is refused: {1}")]
    Refused(String, &'static str),
    #[error("namespace {0} was replaced: it is no longer the namespace the endpoint was first wired into")]
    Replaced(String),
    #[error("cannot open namespace {path}: {source}")]
    Open { path: String, source: Errno },
    #[error("cannot tell which namespace is the host's own ({0}); refusing to enter any")]
    HostUnknown(String),
    #[error("cannot enter namespace {path}: {source}")]
    Enter { path: String, source: Errno },
    #[error("in namespace {path}: {message}")]
    Inside { path: String, message: String },
    #[error("namespace worker thread failed: {0}")]
    Thread(String),
}

impl NetnsError {
    /// The namespace is not there (any more), or something else is in its place: nothing to
    /// retry, as opposed to a refusal or a failure inside it.
    pub fn is_gone(&self) -> bool {
        matches!(self, NetnsError::NotFound(_) | NetnsError::Replaced(_))
    }
}

/// What tells one namespace from another: the device and inode of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl std::fmt::Display for NsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

/// A network namespace that passed every check of [`open`], held open.
#[derive(Debug)]
pub struct Namespace {
    file: File,
    id: NsId,
    shown: String,
}

/// What [`Namespace::run`] found inside, with the work's result.
#[derive(Debug)]
pub struct Entered<T> {
    pub value: T,
    /// The namespace's cookie, if the kernel has them.
    pub cookie: Option<u64>,
}

impl Namespace {
    pub fn id(&self) -> NsId {
        self.id
    }

    /// The open namespace file, for netlink requests that move a device into it.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// How the namespace was named, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn into_file(self) -> File {
        self.file
    }

    /// Runs `work` with a netlink connection opened inside this namespace. With
    /// `expect_cookie`, a namespace whose cookie differs is refused as [`NetnsError::Replaced`]
    /// before `work` runs.
    pub async fn run<F, Fut, T, E>(
        &self,
        expect_cookie: Option<u64>,
        work: F,
    ) -> Result<Entered<T>, NetnsError>
    where
        F: FnOnce(Netlink) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
        T: Send + 'static,
    {
        let file = self
            .file
            .try_clone()
            .map_err(|e| NetnsError::Thread(format!("dup namespace handle: {e}")))?;
        enter(file, self.shown.clone(), expect_cookie, work).await
    }
}

/// Opens the namespace `reference` names, if it is a workload's network namespace.
pub fn open(reference: &NetnsRef) -> Result<Namespace, NetnsError> {
    let shown = reference.to_string();
    let (fd, outer) = match reference {
        NetnsRef::Pid(pid) => (open_pid(*pid, &shown)?, None),
        NetnsRef::Named(_) | NetnsRef::Path(_) => {
            let (fd, outer) = open_path(&reference.path(), &shown)?;
            (fd, Some(outer))
        }
    };
    let id = check_network_namespace(&fd, &shown)?;
    if outer.is_some_and(|o| o != id) {
        // The reopened file is not the one that was checked (a /proc that lies): refuse.
        return Err(NetnsError::NotNamespace(shown));
    }
    let (own, init) = host_namespaces()?;
    if own.contains(&id) {
        return Err(NetnsError::HostOwn(shown));
    }
    if init == Some(id) || (id.ino == INIT_NET_INO && id.dev == own[0].dev) {
        return Err(NetnsError::Init(shown));
    }
    Ok(Namespace {
        file: File::from(fd),
        id,
        shown,
    })
}

/// `/proc/<pid>/ns/net`, reached through a handle on the process's own /proc directory.
fn open_pid(pid: u32, shown: &str) -> Result<OwnedFd, NetnsError> {
    match pid {
        0 => return Err(NetnsError::Refused(shown.to_string(), "pid 0 is not a process")),
        1 => return Err(NetnsError::Init(shown.to_string())),
        p if p == std::process::id() => return Err(NetnsError::HostOwn(shown.to_string())),
        _ => {}
    }
    let dir_path = format!("/proc/{pid}");
    let dir = nix_open(
        dir_path.as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT | Errno::ESRCH => NetnsError::NotFound(shown.to_string()),
        source => NetnsError::Open {
            path: dir_path.clone(),
            source,
        },
    })?;
    match fstatfs(&dir) {
        Ok(fs) if fs.filesystem_type() == PROC_SUPER_MAGIC => {}
        _ => {
            return Err(NetnsError::Refused(
                shown.to_string(),
                "/proc is not procfs here, so a pid cannot be resolved safely",
            ));
        }
    }
    // The one link that is followed: a process's namespace link, from its own directory (if
    // the process exited meanwhile, this fails instead of finding its pid's next owner).
    openat(
        &dir,
        "ns/net",
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT | Errno::ESRCH => NetnsError::NotFound(shown.to_string()),
        source => NetnsError::Open {
            path: format!("{dir_path}/ns/net"),
            source,
        },
    })
}

/// A namespace file by path: looked at without opening it, reopened only if it is on nsfs.
/// Returns the reopened file and the identity of what was looked at.
fn open_path(path: &Path, shown: &str) -> Result<(OwnedFd, NsId), NetnsError> {
    let handle = nix_open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENOENT | Errno::ENOTDIR => NetnsError::NotFound(shown.to_string()),
        source => NetnsError::Open {
            path: path.display().to_string(),
            source,
        },
    })?;
    let st = fstat(&handle).map_err(|source| NetnsError::Open {
        path: path.display().to_string(),
        source,
    })?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK {
        return Err(NetnsError::Symlink(shown.to_string()));
    }
    match fstatfs(&handle) {
        Ok(fs) if fs.filesystem_type() == NSFS_MAGIC => {}
        _ => return Err(NetnsError::NotNamespace(shown.to_string())),
    }
    let outer = NsId {
        dev: st.st_dev,
        ino: st.st_ino,
    };
    // Reopen the very inode just checked (not the path again, which may have changed).
    let fd = nix_open(
        format!("/proc/self/fd/{}", handle.as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| NetnsError::Open {
        path: path.display().to_string(),
        source,
    })?;
    Ok((fd, outer))
}

/// Checks that `fd` is an nsfs file of a network namespace; returns its identity.
fn check_network_namespace(fd: &OwnedFd, shown: &str) -> Result<NsId, NetnsError> {
    match fstatfs(fd) {
        Ok(fs) if fs.filesystem_type() == NSFS_MAGIC => {}
        _ => return Err(NetnsError::NotNamespace(shown.to_string())),
    }
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the namespace behind `fd`, which
    // stays open for the duration of the call.
    let kind = unsafe { nix::libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Err(NetnsError::NotNamespace(shown.to_string()));
    }
    if kind != CloneFlags::CLONE_NEWNET.bits() {
        return Err(NetnsError::WrongKind {
            shown: shown.to_string(),
            kind: kind_name(kind),
        });
    }
    let st = fstat(fd.as_fd()).map_err(|source| NetnsError::Open {
        path: shown.to_string(),
        source,
    })?;
    Ok(NsId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

fn kind_name(flag: i32) -> &'static str {
    let known = [
        (CloneFlags::CLONE_NEWNS, "mount"),
        (CloneFlags::CLONE_NEWUTS, "uts"),
        (CloneFlags::CLONE_NEWIPC, "ipc"),
        (CloneFlags::CLONE_NEWUSER, "user"),
        (CloneFlags::CLONE_NEWPID, "pid"),
        (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    ];
    known
        .iter()
        .find(|(f, _)| f.bits() == flag)
        .map(|(_, name)| *name)
        .unwrap_or("non-network")
}

fn ns_id_of(path: &str) -> Result<NsId, NetnsError> {
    stat(path)
        .map(|st| NsId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
        .map_err(|e| NetnsError::HostUnknown(format!("stat {path}: {e}")))
}

/// The namespaces an endpoint must never be wired into: the agent's own (its main thread's
/// and the calling thread's) and pid 1's. Pid 1's can be unreadable even to root (a pid 1
/// holding capabilities the agent lacks, as in some containers and VMs): then only
/// [`INIT_NET_INO`] tells the initial namespace, and where the kernel does not fix that
/// number the agent says so once. (Pid 1 itself is refused by number anyway.)
fn host_namespaces() -> Result<([NsId; 2], Option<NsId>), NetnsError> {
    let own = [
        ns_id_of("/proc/self/ns/net")?,
        ns_id_of("/proc/thread-self/ns/net")?,
    ];
    let init = match stat("/proc/1/ns/net") {
        Ok(st) => Some(NsId {
            dev: st.st_dev,
            ino: st.st_ino,
        }),
        Err(Errno::EACCES | Errno::EPERM) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            if own[0].ino != INIT_NET_INO {
                WARNED.call_once(|| {
                    tracing::warn!("pid 1's namespace cannot be read here; the initial namespace is recognised by its fixed inode number only")
                });
            }
            None
        }
        Err(e) => return Err(NetnsError::HostUnknown(format!("stat /proc/1/ns/net: {e}"))),
    };
    Ok((own, init))
}

/// The cookie of the calling thread's network namespace (Linux 5.14), or `None`.
fn current_cookie() -> Option<u64> {
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None).ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: `cookie` and `len` are valid for writes of the sizes given, and the socket stays
    // open for the duration of the call.
    let rc = unsafe {
        nix::libc::getsockopt(
            sock.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}

/// Runs `work` with a netlink connection opened inside the namespace `ns`. For trusted
/// namespace files (tests, tools): the agent goes through [`open`] and [`Namespace::run`].
pub async fn run_in<F, Fut, T, E>(ns: File, shown: String, work: F) -> Result<T, NetnsError>
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
    T: Send + 'static,
{
    enter(ns, shown, None, work).await.map(|e| e.value)
}

async fn enter<F, Fut, T, E>(
    ns: File,
    shown: String,
    expect_cookie: Option<u64>,
    work: F,
) -> Result<Entered<T>, NetnsError>
where
    F: FnOnce(Netlink) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
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
                let cookie = current_cookie();
                if let (Some(want), Some(have)) = (expect_cookie, cookie)
                    && want != have
                {
                    return Err(NetnsError::Replaced(path.clone()));
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetnsError::Thread(e.to_string()))?;
                let value = rt.block_on(async {
                    let nl = Netlink::connect().map_err(|e| NetnsError::Inside {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                    work(nl).await.map_err(|e| NetnsError::Inside {
                        path: path.clone(),
                        message: e.to_string(),
                    })
                })?;
                Ok(Entered { value, cookie })
            })();
            let _ = tx.send(result);
        });
    spawned.map_err(|e| NetnsError::Thread(e.to_string()))?;
    rx.await
        .map_err(|_| NetnsError::Thread(format!("worker for {shown} ended without an answer")))?
}

#[cfg(test)]
mod tests {
    //! The refusals that need no lab: the host's own namespaces, links, files that are not
    //! namespaces, other kinds of namespace. (Run as root, like the agent.)

    use super::*;
    use std::path::PathBuf;

    fn refused(r: NetnsRef) -> String {
        match open(&r) {
            Ok(ns) => panic!("{r} was accepted as {}", ns.id()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_hosts_own_namespaces_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to read /proc/1/ns");
            return;
        }
        let me = std::process::id();
        assert_eq!(
            refused(NetnsRef::Pid(me)),
            format!("namespace pid {me} is the host's own namespace")
        );
        assert!(refused(NetnsRef::Pid(1)).contains("pid 1"));
        assert!(refused(NetnsRef::Pid(0)).contains("not a process"));
        // /proc's namespace files are links: refused without being followed.
        for path in ["/proc/1/ns/net", "/proc/self/ns/net", "/proc/thread-self/ns/net"] {
            let msg = refused(NetnsRef::Path(PathBuf::from(path)));
            assert!(msg.contains("symbolic link"), "{path}: {msg}");
        }
        // A thread of this process, by its tid: still this namespace.
        let tid = nix::unistd::gettid().as_raw() as u32;
        if tid != me {
            assert!(refused(NetnsRef::Pid(tid)).contains("host's own"));
        }
    }

    #[test]
    fn files_that_are_not_network_namespaces_are_refused() {
        let dir = tempfile_dir();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).expect("mkfifo");
        // Opening a FIFO for reading would block until a writer comes: it must not.
        let started = std::time::Instant::now();
        assert_eq!(
            refused(NetnsRef::Path(fifo.clone())),
            format!("namespace {} is not a network namespace", fifo.display())
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(
            refused(NetnsRef::Path("/etc/passwd".into())),
            "namespace /etc/passwd is not a network namespace"
        );
        assert!(refused(NetnsRef::Path("/dev/null".into())).contains("not a network namespace"));
        assert!(refused(NetnsRef::Path("/".into())).contains("not a network namespace"));
        assert_eq!(
            refused(NetnsRef::Path(dir.join("missing"))),
            format!("namespace {} not found", dir.join("missing").display())
        );
        // A namespace, but not a network one (bind-mounted like `ip netns` does).
        let uts = dir.join("uts");
        std::fs::write(&uts, b"").expect("mount point");
        let mounted = std::process::Command::new("mount")
            .arg("--bind")
            .arg("/proc/self/ns/uts")
            .arg(&uts)
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            let msg = refused(NetnsRef::Path(uts.clone()));
            let _ = std::process::Command::new("umount").arg(&uts).status();
            assert!(
                msg.contains("is a uts namespace, not a network namespace"),
                "{msg}"
            );
        }
        let link = dir.join("link");
        std::os::unix::fs::symlink("/etc/passwd", &link).expect("symlink");
        assert!(refused(NetnsRef::Path(link)).contains("symbolic link"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("overlay-netns-{}-{}", std::process::id(), line!()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
