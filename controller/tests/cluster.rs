//! Controller replicas as separate processes on loopback: failover, persistence, lost quorum,
//! log compaction and the Watch stream. Each test prints what it measured.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use overlay_lab::controllers::{ControllerCluster, client};
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use overlay_proto::v1::overlay_client::OverlayClient;

mod common;
use common::*;

/// Acceptance 3: 1,000 allocations through random replicas, leader SIGKILLed mid-way. Every
/// acknowledged allocation survives, none is duplicated, and the killed replica catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_loses_no_acknowledged_allocation() {
    const TOTAL: usize = 1000;
    const WORKERS: usize = 8;
    let mut cluster = ControllerCluster::start_loopback(3).expect("cluster");
    let leader = cluster.wait_leader(1, ELECTION).await.expect("leader");
    let all = cluster.client().unwrap();
    for h in 0..4 {
        register(&all, &format!("h{h}"), &format!("192.0.2.{}", 21 + h)).await;
    }
    create_macvlan(&all, "load", "10.64.0.0/16", "10.64.0.0/18").await;

    // One client per replica; each request picks one pseudo-randomly.
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
            network: "load",
            hosts: 4,
            prefix: "w",
            total: TOTAL,
            workers: WORKERS,
            max_attempts: 200,
        },
        done.clone(),
    ));
    while done.load(Ordering::Relaxed) < TOTAL * 2 / 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = done.load(Ordering::Relaxed);
    cluster.kill(leader).unwrap();
    let kill_time = Instant::now();
    let Allocations { acked, retried } = load.await.expect("allocations");
    let elapsed = started.elapsed();
    let survivor = if leader == 1 { 2 } else { 1 };
    let new_leader = cluster.wait_leader(survivor, ELECTION).await.expect("new leader");
    assert_ne!(new_leader, leader, "a new leader must be elected");

    let final_eps = endpoints(&cluster.client_of(survivor).unwrap())
        .await
        .expect("list");
    let by_netns: BTreeMap<String, String> = final_eps
        .iter()
        .map(|e| (e.netns.clone(), e.address.clone()))
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(ns, ip)| by_netns.get(*ns) != Some(ip))
        .collect();
    let ips: BTreeSet<&String> = final_eps.iter().map(|e| &e.address).collect();
    println!(
        "allocations: {TOTAL} in {elapsed:?} ({:.0}/s), acked {}, retried {}, leader {leader} killed after {killed_at}, \
         new leader {new_leader}, lost {}, duplicates {}",
        TOTAL as f64 / elapsed.as_secs_f64(),
        acked.len(),
        retried,
        lost.len(),
        final_eps.len() - ips.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged allocations missing or changed: {lost:?}"
    );
    assert_eq!(ips.len(), final_eps.len(), "duplicate addresses");
    assert_eq!(final_eps.len(), TOTAL, "every attach was eventually applied once");

    // The killed replica restarts from its own disk and catches up.
    cluster.start(leader).unwrap();
    let target = status(&cluster.client_of(new_leader).unwrap())
        .await
        .unwrap()
        .commit_index;
    let rejoined = cluster.client_of(leader).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = status(&rejoined).await
            && s.applied_index >= target
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted replica did not catch up to index {target}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "restarted replica {leader} caught up to index {target} in {:?} after the kill",
        kill_time.elapsed()
    );
    let from_rejoined = endpoints(&rejoined).await.expect("list via rejoined replica");
    assert_eq!(from_rejoined, final_eps, "rejoined replica serves the same state");
}

/// Acceptance 4: a single-node cluster works and keeps its state across SIGKILL; a whole
/// 3-replica cluster stopped and started again keeps its state too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_restarts() {
    let mut single = ControllerCluster::start_loopback(1).expect("cluster");
    single.wait_leader(1, ELECTION).await.expect("leader");
    let c = single.client().unwrap();
    let host = register(&c, "h1", "192.0.2.21").await;
    create_network(&c, "leased", "10.2.0.0/16", 24).await;
    create_macvlan(&c, "blue", "10.1.0.0/16", "10.1.0.0/18").await;
    let inspected = c
        .call(|ch| async move {
            OverlayClient::new(ch)
                .inspect_host(pb::HostRef { name: "h1".into() })
                .await
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(inspected.leases.len(), 1);
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(allocate(&c, "blue", "h1", &format!("w{i}")).await.unwrap());
    }
    single.kill(1).unwrap();
    single.start(1).unwrap();
    single
        .wait_leader(1, ELECTION)
        .await
        .expect("leader after restart");
    let c = single.client().unwrap();
    assert_eq!(endpoints(&c).await.unwrap(), before, "endpoints survive SIGKILL");
    let again = register(&c, "h1", "192.0.2.21").await;
    assert_eq!(
        again.vtep_mac, host.vtep_mac,
        "VTEP MAC is stable across restarts"
    );
    assert_eq!(again.leases, inspected.leases, "lease kept across restarts");
    let next = allocate(&c, "blue", "h1", "w5").await.unwrap();
    assert!(
        before.iter().all(|e| e.address != next.address),
        "no address reused after restart"
    );

    let mut three = ControllerCluster::start_loopback(3).expect("cluster");
    three.wait_leader(1, ELECTION).await.expect("leader");
    let c = three.client().unwrap();
    register(&c, "h1", "192.0.2.21").await;
    create_macvlan(&c, "blue", "10.1.0.0/16", "10.1.0.0/18").await;
    let ep = allocate(&c, "blue", "h1", "w0").await.unwrap();
    for id in 1..=3 {
        three.stop(id).unwrap();
    }
    three.start_all().unwrap();
    three
        .wait_leader(2, ELECTION)
        .await
        .expect("leader after full restart");
    assert_eq!(endpoints(&three.client().unwrap()).await.unwrap(), vec![ep]);
}

/// Bad input: with 2 of 3 replicas down, requests fail within a bounded time with a message
/// naming the cause, and nothing is lost once the replicas are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_quorum_fails_fast_and_loses_nothing() {
    let mut cluster = ControllerCluster::start_loopback(3).expect("cluster");
    let leader = cluster.wait_leader(1, ELECTION).await.expect("leader");
    let c = cluster.client().unwrap();
    register(&c, "h1", "192.0.2.21").await;
    create_macvlan(&c, "blue", "10.1.0.0/16", "10.1.0.0/18").await;
    let ep = allocate(&c, "blue", "h1", "w0").await.unwrap();

    // Keep one follower; kill the leader and the other follower.
    let keep = (1..=3).find(|id| *id != leader).unwrap();
    for id in (1..=3).filter(|id| *id != keep) {
        cluster.kill(id).unwrap();
    }
    let alone = cluster.client_of(keep).unwrap();
    let t = Instant::now();
    let err = allocate(&alone, "blue", "h1", "w1")
        .await
        .expect_err("write without quorum");
    let write_took = t.elapsed();
    let t = Instant::now();
    let read_err = endpoints(&alone)
        .await
        .expect_err("consistent read without quorum");
    let read_took = t.elapsed();
    println!(
        "without quorum: write refused in {write_took:?} ({}), read in {read_took:?} ({})",
        err.message(),
        read_err.message()
    );
    for e in [&err, &read_err] {
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(
            e.message().contains("no quorum") || e.message().contains("no leader"),
            "{}",
            e.message()
        );
    }
    assert!(
        write_took < Duration::from_secs(10) && read_took < Duration::from_secs(10),
        "bounded time"
    );

    for id in (1..=3).filter(|id| *id != keep) {
        cluster.start(id).unwrap();
    }
    cluster
        .wait_leader(keep, ELECTION)
        .await
        .expect("leader after recovery");
    let c = cluster.client().unwrap();
    let eps = endpoints(&c).await.unwrap();
    assert!(eps.contains(&ep), "acknowledged endpoint kept");
    assert!(eps.len() <= 2, "at most the unacknowledged attempt was applied");
    allocate(&c, "blue", "h1", "w2").await.expect("writes work again");
}

/// The log does not grow forever: after thousands of writes a snapshot exists and the log was
/// purged behind it; a restart rebuilds the same state from snapshot + log tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshots_compact_the_log() {
    const WRITES: usize = 2600;
    let mut cluster = ControllerCluster::start_loopback(1).expect("cluster");
    cluster.wait_leader(1, ELECTION).await.expect("leader");
    let c = Arc::new(cluster.client().unwrap());
    register(&c, "h1", "192.0.2.21").await;
    create_macvlan(&c, "blue", "10.0.0.0/16", "10.0.0.0/18").await;
    // One write at a time: concurrent writes would share log entries (the leader batches
    // them), and this test needs thousands of entries.
    for i in 0..WRITES {
        allocate(&c, "blue", "h1", &format!("w{i}"))
            .await
            .expect("attach");
    }
    let before = endpoints(&c).await.unwrap();
    let revision = status(&c).await.unwrap().revision;
    cluster.stop(1).unwrap();

    let db_path = cluster.replicas[0].data_dir.join("raft.redb");
    let (log_entries, first_index, snapshot_bytes) = inspect_store(&db_path);
    println!(
        "after {WRITES} writes: {log_entries} log entries kept (first index {first_index}), snapshot {snapshot_bytes} bytes"
    );
    assert!(snapshot_bytes > 0, "a snapshot was persisted");
    assert!(
        log_entries < 1600,
        "log purged behind the snapshot ({log_entries} entries left)"
    );

    cluster.start(1).unwrap();
    cluster
        .wait_leader(1, ELECTION)
        .await
        .expect("leader after restart");
    let c = cluster.client().unwrap();
    assert_eq!(
        endpoints(&c).await.unwrap(),
        before,
        "state rebuilt from snapshot + log"
    );
    assert_eq!(status(&c).await.unwrap().revision, revision);
}

/// The next Watch event applied to `state` (a full state first, deltas after); returns the
/// resulting state and whether the event was a full one.
async fn next(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
    state: &mut pb::HostDesiredState,
) -> (pb::HostDesiredState, bool) {
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("watch message in time")
        .expect("stream ok")
        .expect("stream open");
    let full = matches!(event.event, Some(pb::watch_event::Event::Full(_)));
    overlay_proto::watch::apply(state, event).expect("event applies");
    (state.clone(), full)
}

fn inspect_store(path: &std::path::Path) -> (u64, u64, usize) {
    use overlay_controller::raft::storage::{LOGS, SNAPSHOT};
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
    let db = redb::Database::open(path).expect("open redb");
    let txn = db.begin_read().unwrap();
    let logs = txn.open_table(LOGS).unwrap();
    let first = logs.first().unwrap().map(|(k, _)| k.value()).unwrap_or(0);
    let snap = txn.open_table(SNAPSHOT).unwrap();
    let bytes = snap.get("data").unwrap().map(|v| v.value().len()).unwrap_or(0);
    (logs.len().unwrap(), first, bytes)
}

/// Acceptance 6: a Watch client sees its host's full desired state, then each change that
/// concerns the host, in revision order, and nothing for changes that do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_initial_state_then_each_change() {
    let cluster = ControllerCluster::start_loopback(1).expect("cluster");
    cluster.wait_leader(1, ELECTION).await.expect("leader");
    let c = cluster.client().unwrap();
    register(&c, "h1", "192.0.2.21").await;
    let h2 = register(&c, "h2", "192.0.2.22").await;
    create_network(&c, "blue", "10.1.0.0/16", 24).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(1)))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut stream = AgentClient::new(channel)
        .watch(pb::WatchRequest {
            host_name: "h1".into(),
            instance_id: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();

    let mut state = pb::HostDesiredState::default();
    let (first, full) = next(&mut stream, &mut state).await;
    assert!(full, "a stream starts with the full state");
    assert_eq!(first.host_name, "h1");
    let net = &first.networks[0];
    assert_eq!(
        (net.name.as_str(), net.subnet.as_str(), net.gateway.as_str()),
        ("blue", "10.1.0.0/24", "10.1.0.1")
    );
    assert_eq!(net.peers.len(), 1);
    assert_eq!(
        (net.peers[0].host.as_str(), net.peers[0].vtep_mac.as_str()),
        ("h2", h2.vtep_mac.as_str())
    );
    assert!(net.endpoints.is_empty());

    // h1's agent reports an endpoint (from its lease): h1's list shows it.
    report(&c, "h1", "c1/eth0", "blue", "10.1.0.2").await;
    let (second, full) = next(&mut stream, &mut state).await;
    assert!(!full, "then deltas");
    assert!(second.revision > first.revision);
    assert_eq!(second.networks[0].endpoints.len(), 1);
    assert_eq!(second.networks[0].endpoints[0].address, "10.1.0.2/24");
    assert_eq!(second.networks[0].endpoints[0].key, "c1/eth0");

    // Irrelevant to h1: an endpoint on h2. No message for it; the next one is h3 joining.
    report(&c, "h2", "c2/eth0", "blue", "10.1.1.2").await;
    register(&c, "h3", "192.0.2.23").await;
    let (third, _) = next(&mut stream, &mut state).await;
    assert!(
        third.revision > second.revision + 1,
        "the h2-only change was skipped"
    );
    let peers: Vec<_> = third.networks[0].peers.iter().map(|p| p.host.as_str()).collect();
    assert_eq!(peers, ["h2", "h3"]);
    assert_eq!(third.networks[0].endpoints.len(), 1);

    c.call(|ch| async move {
        OverlayClient::new(ch)
            .remove_host(pb::RemoveHostRequest {
                name: "h2".into(),
                // Registered a moment ago by this test, h2 counts as connected.
                force: true,
            })
            .await
    })
    .await
    .unwrap();
    let (fourth, _) = next(&mut stream, &mut state).await;
    let peers: Vec<_> = fourth.networks[0].peers.iter().map(|p| p.host.as_str()).collect();
    assert_eq!(peers, ["h3"]);
    assert!(fourth.revision > third.revision);
}
