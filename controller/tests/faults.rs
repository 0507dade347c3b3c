//! Fault tests of the replicated controller (issue #7): a leader SIGKILLed again and again under
//! write load, a replica that lost its disk, a damaged store. Each prints what it did and found.
//!
//! Scale: `OVERLAY_CHAOS_ALLOCS` (default 10,000) allocations in the kill loop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use overlay_lab::controllers::{ControllerCluster, client};
use overlay_proto::connect::Controllers;

mod common;
use common::*;

fn allocs() -> usize {
    std::env::var("OVERLAY_CHAOS_ALLOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// The leader is found and SIGKILLed every ~2 s while clients allocate through random replicas;
/// it is restarted a second later. Afterwards every acknowledged allocation is present with the
/// address it was acknowledged with, no address is held twice, and all replicas agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_loop_loses_nothing() {
    let total = allocs();
    const WORKERS: usize = 32;
    let mut cluster = ControllerCluster::start_loopback(3).expect("cluster");
    cluster.wait_leader(1, ELECTION).await.expect("leader");
    let all = cluster.client().unwrap();
    for h in 0..8 {
        register(&all, &format!("h{h}"), &format!("192.0.2.{}", 21 + h)).await;
    }
    create_macvlan(&all, "chaos", "10.64.0.0/16", "10.64.0.0/18").await;

    let per_replica: Arc<Vec<Controllers>> = Arc::new(
        cluster
            .addrs()
            .iter()
            .map(|a| client(std::slice::from_ref(a)).unwrap())
            .collect(),
    );
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let load = tokio::spawn(allocate_under_faults(
        per_replica,
        AllocationLoad {
            network: "chaos",
            hosts: 8,
            prefix: "c",
            total,
            workers: WORKERS,
            max_attempts: 400,
        },
        done.clone(),
    ));

    // The fault injector: kill whoever leads, let the others elect, bring it back.
    let mut kills = Vec::new();
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        if load.is_finished() {
            break;
        }
        let Some(leader) = current_leader(&cluster).await else {
            continue;
        };
        cluster.kill(leader).unwrap();
        let killed_at = Instant::now();
        // Down until the survivors have elected someone else: a leader back within its
        // followers' election timeout simply resumes its term (openraft restores it).
        let successor = loop {
            if let Some(l) = current_leader_among(&cluster, |id| id != leader).await
                && l != leader
            {
                break l;
            }
            assert!(
                killed_at.elapsed() < ELECTION,
                "no new leader after killing {leader}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        kills.push((leader, successor, killed_at.elapsed().as_millis() as u64));
        cluster.start(leader).unwrap();
    }
    let Allocations { acked, retried } = load.await.expect("allocations");
    let elapsed = started.elapsed();
    assert!(
        kills.len() >= 2,
        "the run was too short to inject faults ({kills:?})"
    );

    // Every replica converges on the same state.
    let leader = cluster.wait_leader(1, ELECTION).await.expect("leader at the end");
    let target = status(&cluster.client_of(leader).unwrap())
        .await
        .unwrap()
        .commit_index;
    let mut views = Vec::new();
    for id in 1..=3u64 {
        let c = cluster.client_of(id).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = status(&c).await
                && s.applied_index >= target
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {id} did not catch up to {target}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        views.push(endpoints(&c).await.expect("list"));
    }
    let final_eps = &views[0];
    let by_netns: BTreeMap<&str, &str> = final_eps
        .iter()
        .map(|e| (e.netns.as_str(), e.address.as_str()))
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(ns, ip)| by_netns.get(ns.as_str()) != Some(&ip.as_str()))
        .collect();
    let ips: BTreeSet<&String> = final_eps.iter().map(|e| &e.address).collect();
    let duplicates = final_eps.len() - ips.len();
    println!(
        "kill loop: {total} allocations in {elapsed:?}, {} acknowledged, {} failed attempts retried, \
         {} leader kills (killed, successor, ms to elect) {kills:?}, lost {}, duplicates {duplicates}, replicas agree: {}",
        acked.len(),
        retried,
        kills.len(),
        lost.len(),
        views.iter().all(|v| v == final_eps)
    );
    assert!(
        lost.is_empty(),
        "acknowledged allocations missing or changed: {lost:?}"
    );
    assert_eq!(duplicates, 0, "duplicate addresses");
    assert_eq!(final_eps.len(), total, "every attach applied exactly once");
    for (i, v) in views.iter().enumerate() {
        assert_eq!(v, final_eps, "replica {} differs", i + 1);
    }
}

/// The leader as the first answering replica reports it.
async fn current_leader(cluster: &ControllerCluster) -> Option<u64> {
    current_leader_among(cluster, |_| true).await
}

/// The leader as the first answering replica among those `ask` accepts reports it.
async fn current_leader_among(cluster: &ControllerCluster, ask: impl Fn(u64) -> bool) -> Option<u64> {
    for id in (1..=3u64).filter(|id| ask(*id)) {
        let Ok(c) = cluster.client_of(id) else { continue };
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), status(&c)).await
            && s.leader_id != 0
        {
            return Some(s.leader_id);
        }
    }
    None
}

/// Replica 1 (the one that bootstraps empty clusters) loses its data directory while the others
/// move on far enough that the log it missed is purged. Restarted empty, it must not found a
/// second cluster: it rejoins, receives a snapshot and serves the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_without_its_disk_rejoins_through_a_snapshot() {
    const WRITES: usize = 2200;
    let mut cluster = ControllerCluster::start_loopback(3).expect("cluster");
    cluster.wait_leader(1, ELECTION).await.expect("leader");
    let all = cluster.client().unwrap();
    register(&all, "h1", "192.0.2.21").await;
    create_macvlan(&all, "blue", "10.0.0.0/16", "10.0.0.0/18").await;

    cluster.kill(1).unwrap();
    let deadline = Instant::now() + ELECTION;
    while current_leader(&cluster).await.is_none_or(|l| l == 1) {
        assert!(Instant::now() < deadline, "no survivor took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let data_dir = cluster.replicas[0].data_dir.clone();
    std::fs::remove_dir_all(&data_dir).expect("wipe replica 1");
    // One write at a time, so that each is its own log entry and snapshots + purges happen.
    let survivors = client(&[cluster.addr(2), cluster.addr(3)]).unwrap();
    for i in 0..WRITES {
        allocate(&survivors, "blue", "h1", &format!("w{i}"))
            .await
            .expect("attach while replica 1 is gone");
    }
    let reference = endpoints(&survivors).await.expect("list");
    let target = status(&survivors).await.unwrap().commit_index;

    let log_path = cluster.replicas[0].log_path().to_path_buf();
    let seen = std::fs::metadata(&log_path)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let t = Instant::now();
    cluster.start(1).unwrap();
    let c1 = cluster.client_of(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = status(&c1).await
            && s.applied_index >= target
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica 1 did not catch up to {target}\n{}",
            cluster.logs(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = t.elapsed();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let log = log.get(seen..).unwrap_or(&log);
    assert!(
        log.contains("snapshot installed"),
        "replica 1 caught up without a snapshot; was the log not purged?\n{log}"
    );
    assert!(
        !log.contains("initialised a new cluster"),
        "the wiped replica founded a second cluster"
    );
    assert_eq!(
        endpoints(&c1).await.expect("list via replica 1"),
        reference,
        "replica 1 serves the cluster's state"
    );
    println!("wiped replica 1 rejoined through a snapshot and reached index {target} in {caught_up:?}");
}

/// Something done to the bytes of a store file.
type Damage = fn(&mut Vec<u8>);

/// A store cut short or overwritten in the middle is refused with a clear error, or (if the
/// damage hit only unused space) the replica serves exactly what it had: never something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_store_is_detected_not_served() {
    let mut cluster = ControllerCluster::start_loopback(1).expect("cluster");
    cluster.wait_leader(1, ELECTION).await.expect("leader");
    let c = cluster.client().unwrap();
    register(&c, "h1", "192.0.2.21").await;
    create_macvlan(&c, "blue", "10.0.0.0/16", "10.0.0.0/18").await;
    for i in 0..300 {
        allocate(&c, "blue", "h1", &format!("w{i}"))
            .await
            .expect("attach");
    }
    let reference = endpoints(&c).await.unwrap();
    cluster.stop(1).unwrap();
    let db = cluster.replicas[0].data_dir.join("raft.redb");
    let pristine = std::fs::read(&db).expect("read store");

    let damages: [(&str, Damage); 3] = [
        ("truncated to half", |b: &mut Vec<u8>| b.truncate(b.len() / 2)),
        ("header overwritten", |b: &mut Vec<u8>| {
            let n = 512.min(b.len());
            b[..n].fill(0xa5)
        }),
        ("middle overwritten", |b: &mut Vec<u8>| {
            let mid = b.len() / 2;
            let end = (mid + 64 * 1024).min(b.len());
            b[mid..end].fill(0x5a);
        }),
    ];
    for (what, damage) in damages {
        let mut bytes = pristine.clone();
        damage(&mut bytes);
        std::fs::write(&db, &bytes).unwrap();
        let log_path = cluster.replicas[0].log_path().to_path_buf();
        let seen = std::fs::metadata(&log_path)
            .map(|m| m.len() as usize)
            .unwrap_or(0);
        cluster.start(1).unwrap();
        // Either it exits with an error, or it comes up: then it must serve the same state.
        let deadline = Instant::now() + Duration::from_secs(15);
        let outcome = loop {
            if !cluster.replicas[0].is_running() {
                break "refused";
            }
            let c = cluster.client_of(1).unwrap();
            if let Ok(Ok(eps)) = tokio::time::timeout(Duration::from_secs(2), endpoints(&c)).await {
                assert_eq!(eps, reference, "{what}: the replica served a different state");
                break "served the original state";
            }
            assert!(
                Instant::now() < deadline,
                "{what}: neither refused nor serving\n{}",
                cluster.logs(20)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let log = log.get(seen..).unwrap_or(&log);
        if outcome == "refused" {
            // The one line a failed start prints: "overlay-controller: <cause>".
            let error = log
                .lines()
                .find(|l| l.starts_with("overlay-controller: "))
                .unwrap_or_default();
            assert!(
                error.contains("raft.redb"),
                "{what}: exited without a clear error naming the store\n{log}"
            );
            println!("{what}: refused to start: {error}");
        } else {
            println!("{what}: damage hit unused space; served the original state");
        }
        cluster.stop(1).unwrap();
    }
}
