//! Controller membership changes through `overlayctl cluster add-member/remove-member`: grow a
//! one-replica cluster to three, replace a dead replica by a new one, shrink back to one, while
//! a Watch stream (what an agent holds) keeps receiving changes. Needs the workspace's binaries
//! (`cargo test --workspace` builds them).

use std::time::{Duration, Instant};

use futures::StreamExt;
use overlay_lab::bins;
use overlay_lab::controllers::{ControllerCluster, free_port};
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use serde_json::Value;

mod common;
use common::*;

/// `overlayctl -o json ARGS` against `controllers`; (success, stdout JSON or stderr line).
fn ctl(controllers: &str, args: &[&str]) -> (bool, Value, String) {
    let bin = bins::bin("overlayctl").expect("overlayctl built");
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["--controller", controllers, "--output", "json"])
        .args(args);
    overlay_lab::plaintext::insecure_unless_tls(&mut cmd);
    let out = cmd.output().expect("run overlayctl");
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_replace_and_shrink_keep_state_and_watchers() {
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<(String, Option<String>)> = (0..4)
        .map(|_| (format!("127.0.0.1:{}", free_port().unwrap()), None))
        .collect();
    let mut cluster = ControllerCluster::new(addrs, dir.path()).unwrap();
    let addr = |id: u64| cluster.addr(id);
    let (a1, a2, a3, a4) = (addr(1), addr(2), addr(3), addr(4));
    cluster.start_alone(1).unwrap();
    cluster.wait_leader(1, ELECTION).await.expect("seed leader");
    let c = cluster.client_of(1).unwrap();
    register(&c, "h1", "192.0.2.21").await;
    create_network(&c, "m", "10.60.0.0/16", 24).await;
    for i in 0..20 {
        attach(&c, "m", "h1", &format!("before{i}")).await.unwrap();
    }

    // What an agent holds: a Watch stream on the seed replica.
    let mut watch = {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{a1}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AgentClient::new(ch)
            .watch(pb::WatchRequest {
                host_name: "h1".into(),
                instance_id: String::new(),
            })
            .await
            .expect("watch")
            .into_inner()
    };
    let first = watch.next().await.expect("full state").expect("event");
    let mut events = 1;

    // Grow 1 -> 3: start the new replicas, then add them.
    cluster.start(2).unwrap();
    cluster.start(3).unwrap();
    let t = Instant::now();
    for (id, a) in [(2u64, &a2), (3, &a3)] {
        let (ok, status, err) = ctl(&a1, &["cluster", "add-member", &id.to_string(), a]);
        assert!(ok, "add-member {id}: {err}");
        assert!(voters(&status).contains(&id), "{id} not a voter: {status}");
    }
    let grown_in = t.elapsed();
    let (_, status, _) = ctl(&a1, &["cluster", "status"]);
    assert_eq!(voters(&status), vec![1, 2, 3]);
    assert_eq!(status["health"], "ok", "{status}");
    // The new members hold the state.
    let reference = endpoints(&c).await.unwrap();
    assert_eq!(
        endpoints(&cluster.client_of(3).unwrap()).await.unwrap(),
        reference
    );

    // The watcher saw nothing break and still gets changes.
    attach(&c, "m", "h1", "after-grow").await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a change reaches the watcher")
        .expect("stream open")
        .expect("event");
    assert!(ev.revision > first.revision);
    events += 1;

    // Replace a dead replica: kill 1, the others carry on; remove it, add a new node 4.
    cluster.kill(1).unwrap();
    let survivors = format!("{a2},{a3}");
    let t = Instant::now();
    let (ok, _, err) = ctl(&survivors, &["cluster", "remove-member", "1"]);
    assert!(ok, "remove dead member: {err}");
    cluster.start(4).unwrap();
    let (ok, status, err) = ctl(&survivors, &["cluster", "add-member", "4", &a4]);
    assert!(ok, "add-member 4: {err}");
    assert_eq!(voters(&status), vec![2, 3, 4]);
    let replaced_in = t.elapsed();
    let c4 = cluster.client_of(4).unwrap();
    attach(&c4, "m", "h1", "after-replace").await.unwrap();

    // Shrink back to one member.
    let t = Instant::now();
    for id in [3u64, 4] {
        let (ok, status, err) = ctl(&survivors, &["cluster", "remove-member", &id.to_string()]);
        assert!(ok, "remove-member {id}: {err}");
        assert!(!voters(&status).contains(&id));
    }
    let shrunk_in = t.elapsed();
    let (_, status, _) = ctl(&a2, &["cluster", "status"]);
    assert_eq!(voters(&status), vec![2], "{status}");
    let c2 = cluster.client_of(2).unwrap();
    attach(&c2, "m", "h1", "after-shrink").await.unwrap();
    let eps = endpoints(&c2).await.unwrap();
    assert_eq!(eps.len(), 23, "every endpoint kept through the changes");

    // Refusals, each with its reason and no change.
    for (args, why) in [
        (vec!["cluster", "remove-member", "2"], "last member"),
        (
            vec!["cluster", "add-member", "2", a2.as_str()],
            "already a member",
        ),
        (vec!["cluster", "remove-member", "7"], "not a member"),
        (
            vec!["cluster", "add-member", "9", "nohostport"],
            "invalid member address",
        ),
        (vec!["cluster", "add-member", "0", "127.0.0.1:1"], "1 or more"),
    ] {
        let (ok, _, err) = ctl(&a2, &args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let (_, status, _) = ctl(&a2, &["cluster", "status"]);
    assert_eq!(voters(&status), vec![2]);
    println!(
        "membership: grew 1 -> 3 in {grown_in:?}, replaced dead replica 1 by 4 in {replaced_in:?}, \
         shrank to 1 in {shrunk_in:?}; {} endpoints kept; the watcher got {events} events without a break",
        eps.len()
    );
}
