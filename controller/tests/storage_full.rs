//! A full disk (issue 13, item 4): a replica whose data directory fills up (ENOSPC) must exit
//! non-zero with one line naming the cause, so that its supervisor restarts it, instead of
//! staying up refusing everything forever; once space is freed, a restart finds its log
//! intact and rejoins.
//!
//! The data directory is a small tmpfs mounted in a private mount namespace (held by a
//! `sleep`), so nothing outside the test sees it; the replica runs in that namespace through
//! `nsenter`, and the test fills and frees the tmpfs through `/proc/<holder>/root`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use overlay_lab::controllers::{ControllerCluster, client, free_port};
use overlay_proto::connect::Controllers;

mod common;
use common::*;

/// A private mount namespace with a tmpfs of `size` on `dir`, alive while this lives.
struct TmpfsNamespace {
    holder: Child,
    dir: PathBuf,
}

impl TmpfsNamespace {
    fn new(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let script = format!(
            "mount -t tmpfs -o size={size} tmpfs '{}' && exec sleep 3600",
            dir.display()
        );
        let holder = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .spawn()
            .expect("unshare");
        let ns = Self {
            holder,
            dir: dir.to_path_buf(),
        };
        let mountinfo = format!("/proc/{}/mountinfo", ns.holder.id());
        let needle = format!(" {} ", dir.display());
        let start = Instant::now();
        while !std::fs::read_to_string(&mountinfo)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&needle) && l.contains("tmpfs"))
        {
            assert!(start.elapsed() < Duration::from_secs(10), "tmpfs not mounted");
            std::thread::sleep(Duration::from_millis(20));
        }
        ns
    }

    /// `nsenter` arguments that run a command in this namespace.
    fn enter(&self) -> Vec<String> {
        ["nsenter", "-t", &self.holder.id().to_string(), "-m", "--"]
            .map(String::from)
            .to_vec()
    }

    /// A path inside the tmpfs, as the test (outside the namespace) reaches it.
    fn inside(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.dir.strip_prefix("/").expect("absolute"))
            .join(name)
    }

    /// Writes a file until the tmpfs is full; returns the bytes written.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.inside("filler")).expect("filler");
        let chunk = vec![0u8; 64 << 10];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC: {e}");
                    break;
                }
            }
        }
        let _ = f.sync_all();
        written
    }

    fn free(&self) {
        std::fs::remove_file(self.inside("filler")).expect("remove filler");
    }
}

impl Drop for TmpfsNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Attaches endpoints from `workers` clients until `stop`; returns what was acknowledged
/// (netns → address) and how many attempts failed.
fn load(
    clients: Arc<Vec<Controllers>>,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(BTreeMap<String, String>, u32)>> {
    (0..workers)
        .map(|w| {
            let (clients, stop) = (clients.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = BTreeMap::new();
                let mut failed = 0;
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let netns = format!("w{w}-{i}");
                    let c = &clients[i % clients.len()];
                    match allocate(c, "full", &format!("h{}", i % 4), &netns).await {
                        Ok(ep) => {
                            acked.insert(netns, ep.address);
                            i += 1;
                        }
                        Err(_) => {
                            failed += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                (acked, failed)
            })
        })
        .collect()
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<(BTreeMap<String, String>, u32)>>,
) -> (BTreeMap<String, String>, u32) {
    let mut all = BTreeMap::new();
    let mut failed = 0;
    for t in tasks {
        let (acked, f) = t.await.expect("load worker");
        all.extend(acked);
        failed += f;
    }
    (all, failed)
}

/// The last line of a replica's log (its exit line).
fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// Hosts, a network and [`BEFORE`] endpoints written while the disk has room.
async fn setup(cluster: &ControllerCluster) -> (Controllers, BTreeMap<String, String>) {
    let all = cluster.client().expect("client");
    for h in 0..4 {
        register(&all, &format!("h{h}"), &format!("192.0.2.{}", 21 + h)).await;
    }
    create_macvlan(&all, "full", "10.64.0.0/16", "10.64.0.0/18").await;
    let mut acked = BTreeMap::new();
    for i in 0..BEFORE {
        let netns = format!("before-{i}");
        let ep = allocate(&all, "full", &format!("h{}", i % 4), &netns)
            .await
            .expect("attach before the disk fills");
        acked.insert(netns, ep.address);
    }
    (all, acked)
}

const BEFORE: usize = 300;

/// Drives writes until replica `id` exits by itself (at most `within`); its exit status.
async fn until_exit(cluster: &mut ControllerCluster, id: u64, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = cluster.wait_exit(id, Duration::ZERO).expect("replica") {
            return status;
        }
        assert!(
            start.elapsed() < within,
            "replica {id} still running {within:?} after its disk filled up\n{}",
            cluster.logs(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One replica alone: every write it acknowledged before the disk filled is there after the
/// restart, and it takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_replica_exits_on_enospc_and_restarts_with_its_log_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = format!("127.0.0.1:{}", free_port().expect("port"));
    let mut cluster = ControllerCluster::new(vec![(addr, None)], dir.path()).expect("cluster");
    let ns = TmpfsNamespace::new(&cluster.replicas[0].data_dir, "16m");
    let enter = ns.enter();
    cluster
        .set_replica_wrapper(1, &enter.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("wrapper");
    cluster.start_all().expect("start");
    cluster.wait_leader(1, ELECTION).await.expect("leader");
    let (all, before) = setup(&cluster).await;

    let filled = ns.fill();
    let full_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(Arc::new(vec![all]), 8, stop.clone());
    let status = until_exit(&mut cluster, 1, Duration::from_secs(120)).await;
    let exited_after = full_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut acked, failed) = collect(workers).await;
    let line = last_line(cluster.replicas[0].log_path());
    println!(
        "tmpfs filled with {} KiB more; the replica exited ({status}) {exited_after:.1?} later \
         after {} more acknowledged writes ({failed} refused): {line}",
        filled >> 10,
        acked.len()
    );
    acked.extend(before);
    assert_eq!(status.code(), Some(1), "exit code");
    assert!(line.starts_with("overlay-controller: raft stopped"), "{line}");
    assert!(
        line.contains("No space left on device"),
        "the cause is named: {line}"
    );

    ns.free();
    let restarted = Instant::now();
    cluster.start(1).expect("restart");
    cluster
        .wait_leader(1, ELECTION)
        .await
        .expect("leader after restart");
    let c = cluster.client().expect("client");
    let eps: BTreeMap<String, String> = endpoints(&c)
        .await
        .expect("list")
        .into_iter()
        .map(|e| (e.netns, e.address))
        .collect();
    let lost: Vec<_> = acked.iter().filter(|(n, a)| eps.get(*n) != Some(a)).collect();
    println!(
        "restarted with space freed: leader again after {:.1?}; {} of {} acknowledged endpoints \
         present with their address",
        restarted.elapsed(),
        acked.len() - lost.len(),
        acked.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    allocate(&c, "full", "h0", "after-restart")
        .await
        .expect("writes work again");
    let log = std::fs::read_to_string(cluster.replicas[0].log_path()).unwrap_or_default();
    assert!(
        log.contains("existing raft state found"),
        "the store was reopened, not recreated"
    );
}

/// Three replicas: the one whose disk fills exits, the other two carry on, and after the
/// restart it rejoins and serves exactly what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_three_exits_on_enospc_the_cluster_carries_on_and_it_rejoins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addrs = (0..3)
        .map(|_| (format!("127.0.0.1:{}", free_port().expect("port")), None))
        .collect();
    let mut cluster = ControllerCluster::new(addrs, dir.path()).expect("cluster");
    let victim = 3;
    let ns = TmpfsNamespace::new(&cluster.replicas[2].data_dir, "16m");
    let enter = ns.enter();
    cluster
        .set_replica_wrapper(victim, &enter.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("wrapper");
    cluster.start_all().expect("start");
    cluster.wait_leader(1, ELECTION).await.expect("leader");
    let (_, before) = setup(&cluster).await;
    // Load through the other two, so the clients' own view is not the victim's.
    let healthy = Arc::new(vec![
        client(&[cluster.addr(1)]).expect("client"),
        client(&[cluster.addr(2)]).expect("client"),
    ]);

    let filled = ns.fill();
    let full_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(healthy.clone(), 8, stop.clone());
    let status = until_exit(&mut cluster, victim, Duration::from_secs(120)).await;
    let exited_after = full_at.elapsed();
    // The cluster keeps taking writes without it for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, failed) = collect(workers).await;
    let line = last_line(cluster.replicas[2].log_path());
    println!(
        "tmpfs of replica {victim} filled with {} KiB more; it exited ({status}) \
         {exited_after:.1?} later: {line}; the cluster acknowledged {} writes meanwhile \
         ({failed} attempts refused, e.g. while a new leader was elected)",
        filled >> 10,
        acked.len()
    );
    assert_eq!(status.code(), Some(1), "exit code");
    assert!(
        line.contains("No space left on device"),
        "the cause is named: {line}"
    );
    acked.extend(before);

    ns.free();
    let restarted = Instant::now();
    cluster.start(victim).expect("restart");
    // Through the restarted replica alone: a linearizable read answers only once it has
    // caught up with the leader.
    let own = cluster.client_of(victim).expect("client");
    let start = Instant::now();
    let seen = loop {
        if let Ok(eps) = endpoints(&own).await {
            let eps: BTreeMap<String, String> = eps.into_iter().map(|e| (e.netns, e.address)).collect();
            if eps == acked {
                break eps;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "replica {victim} did not rejoin\n{}",
            cluster.logs(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let status = overlay_lab::api::status(&own).await.expect("status");
    let member = status.members.iter().find(|m| m.id == victim).expect("member");
    println!(
        "replica {victim} restarted with space freed: rejoined and serving all {} endpoints \
         after {:.1?} (healthy: {}, matched index {} of commit {})",
        seen.len(),
        restarted.elapsed(),
        member.healthy,
        member.matched_index,
        status.commit_index
    );
    let log = std::fs::read_to_string(cluster.replicas[2].log_path()).unwrap_or_default();
    assert!(
        log.contains("existing raft state found"),
        "the store was reopened, not recreated"
    );
}
