//! Fault tests in the netns lab (issue #7, root): network partitions between controller
//! replicas, a host whose overlay devices vanish behind the agent's back, and established flows
//! under churn (agent restarts, controller failover, attach/detach elsewhere). Each test prints
//! the faults it injected and what it measured.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use overlay_lab::api::{self, status};
use overlay_lab::lab::{Lab, LabConfig, PingFlow};
use overlay_lab::netns::{block_on_in, exec};
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;

fn lab(hosts: usize, controllers: usize, tag: &'static str) -> Lab {
    Lab::start_with_agents(LabConfig {
        hosts,
        controllers,
        tag,
        resync_secs: 2,
    })
    .expect("lab")
}

fn network(lab: &Lab, name: &str, subnet: &str) {
    lab.ctl_ok(&["network", "create", name, "--mode", "vxlan", "--subnet", subnet])
        .expect("network create");
}

// ---------------------------------------------------------------------------------- partitions

/// Drops every packet between the replica in `ns` and its `peers` (their IP addresses), inside
/// its own namespace: clients still reach it, the other replicas do not.
fn cut_off(ns: &str, peers: &[String]) {
    let set = format!("{{ {} }}", peers.join(", "));
    exec(ns, "nft", &["add", "table", "inet", "overlay_chaos"]).expect("nft table");
    for (chain, hook, dir) in [("in", "input", "saddr"), ("out", "output", "daddr")] {
        exec(
            ns,
            "nft",
            &[
                "add",
                "chain",
                "inet",
                "overlay_chaos",
                chain,
                &format!("{{ type filter hook {hook} priority -10; policy accept; }}"),
            ],
        )
        .expect("nft chain");
        exec(
            ns,
            "nft",
            &[
                "add",
                "rule",
                "inet",
                "overlay_chaos",
                chain,
                "ip",
                dir,
                &set,
                "drop",
            ],
        )
        .expect("nft rule");
    }
}

fn heal(ns: &str) {
    exec(ns, "nft", &["delete", "table", "inet", "overlay_chaos"]).expect("nft delete");
}

fn client_of(addr: &str) -> Controllers {
    Controllers::new(
        &[addr.to_string()],
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .expect("client")
}

async fn attach(c: &Controllers, host: &str, netns: &str) -> Result<pb::Endpoint, tonic::Status> {
    api::attach(c, "p", host, netns).await
}

async fn endpoints(c: &Controllers) -> Vec<pb::Endpoint> {
    api::endpoints(c).await.expect("list endpoints")
}

/// The leader as `c` sees it, once it names one other than `not`.
async fn leader_other_than(c: &Controllers, not: u64, within: Duration) -> (u64, Duration) {
    let t = Instant::now();
    loop {
        if let Ok(s) = status(c).await
            && s.leader_id != 0
            && s.leader_id != not
        {
            return (s.leader_id, t.elapsed());
        }
        assert!(
            t.elapsed() < within,
            "no leader other than {not} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `c`'s replica has applied everything `reference` has committed; how long it took.
async fn caught_up(c: &Controllers, reference: &Controllers) -> Duration {
    let t = Instant::now();
    let target = status(reference).await.expect("status").commit_index;
    loop {
        if let Ok(s) = status(c).await
            && s.applied_index >= target
        {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "did not catch up to {target}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One isolated follower, then the isolated leader: the majority keeps accepting writes, the
/// cut-off replica refuses them within its request timeout, and after healing it catches up
/// and serves the same state.
#[test]
fn partitioned_replicas_refuse_writes_and_catch_up() {
    let lab = lab(1, 3, "xp");
    network(&lab, "p", "10.50.0.0/16");
    let addrs: Vec<String> = lab.controllers.addrs();
    let namespaces: Vec<String> = lab
        .controllers
        .replicas
        .iter()
        .map(|r| r.netns.clone().expect("replicas in namespaces"))
        .collect();
    let (ns2, addrs2) = (namespaces.clone(), addrs.clone());
    let report = block_on_in(&lab.ul, move || async move {
        let clients: Vec<Controllers> = addrs2.iter().map(|a| client_of(a)).collect();
        let leader = status(&clients[0]).await.expect("status").leader_id;
        let mut lines = Vec::new();
        let mut seq = 0;
        for victim_is_leader in [false, true] {
            let victim = if victim_is_leader {
                leader_now(&clients).await
            } else {
                (1..=3u64).find(|id| *id != leader).unwrap_or(2)
            };
            let v = (victim - 1) as usize;
            let majority: Vec<usize> = (0..3).filter(|i| *i != v).collect();
            let peers: Vec<String> = majority
                .iter()
                .map(|i| addrs2[*i].split(':').next().unwrap_or_default().to_string())
                .collect();
            cut_off(&ns2[v], &peers);
            let (new_leader, elected) = if victim_is_leader {
                leader_other_than(&clients[majority[0]], victim, Duration::from_secs(30)).await
            } else {
                (leader_now(&clients).await, Duration::ZERO)
            };
            // The majority keeps serving writes.
            let t = Instant::now();
            for i in 0..50 {
                seq += 1;
                let c = &clients[majority[i % 2]];
                let mut tries = 0;
                while let Err(e) = attach(c, "h1", &format!("p{seq}")).await {
                    tries += 1;
                    assert!(tries < 50, "majority refused a write: {}", e.message());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            let majority_writes = t.elapsed();
            // The isolated replica refuses, in bounded time and saying why.
            let t = Instant::now();
            let refused = attach(&clients[v], "h1", "never").await;
            let refused_in = t.elapsed();
            let err = refused.expect_err("an isolated replica accepted a write");
            assert!(
                err.message().contains("quorum") || err.message().contains("leader"),
                "unclear refusal: {}",
                err.message()
            );
            assert!(refused_in < Duration::from_secs(8), "refusal took {refused_in:?}");
            heal(&ns2[v]);
            let catch_up = caught_up(&clients[v], &clients[majority[0]]).await;
            // The allocations must agree; their status is h1's agent's view (it reports these
            // namespaces gone), which moves on between the two reads.
            let allocated = |eps: Vec<overlay_proto::v1::Endpoint>| {
                eps.into_iter()
                    .map(|e| (e.id, e.address, e.netns))
                    .collect::<Vec<_>>()
            };
            let (a, b) = (
                allocated(endpoints(&clients[v]).await),
                allocated(endpoints(&clients[majority[0]]).await),
            );
            assert_eq!(a, b, "healed replica {victim} serves a different state");
            assert!(a.iter().all(|e| e.2 != "never"), "a refused write was applied");
            lines.push(format!(
                "cut off {} {victim}: new leader {new_leader} in {elected:?}; majority wrote 50 in \
                 {majority_writes:?}; isolated refused in {refused_in:?} ({}); caught up {catch_up:?} after healing",
                if victim_is_leader { "leader" } else { "follower" },
                err.message()
            ));
        }
        lines
    })
    .expect("driver");
    for l in report {
        println!("{l}");
    }
}

async fn leader_now(clients: &[Controllers]) -> u64 {
    for _ in 0..100 {
        for c in clients {
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), status(c)).await
                && s.leader_id != 0
            {
                return s.leader_id;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader");
}

// ---------------------------------------------------------------------------------- host reboot

fn links(lab: &Lab, host: usize) -> Vec<String> {
    lab.on_host(host, "ip", &["-o", "link", "show"])
        .expect("ip link")
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("ov"))
        .collect()
}

/// Everything overlay made on a host is deleted behind its agent's back (as after a reboot that
/// kept the agent's state): bridge, vxlan device and the workload's veth. The agent notices
/// on its next pass and rebuilds it all; the workload gets its address back and traffic flows.
#[test]
fn deleted_devices_are_rebuilt() {
    let mut lab = lab(2, 1, "xr");
    network(&lab, "r", "10.51.0.0/16");
    let w1 = lab.add_workload("w1").unwrap();
    let w2 = lab.add_workload("w2").unwrap();
    let ip1 = lab.attach("r", 0, &w1).unwrap();
    let ip2 = lab.attach("r", 1, &w2).unwrap();
    assert!(lab.ping(&w1, ip2));
    let before = links(&lab, 0);
    assert!(
        before.len() >= 3,
        "expected bridge, vxlan and veth on h1: {before:?}"
    );
    let indexes = |lab: &Lab| -> Vec<u64> { before.iter().map(|d| lab.ifindex(0, d).unwrap_or(0)).collect() };
    let old_indexes = indexes(&lab);
    let t = Instant::now();
    for dev in &before {
        // The veth goes with its peer inside the workload: the workload loses eth0.
        let _ = lab.on_host(0, "ip", &["link", "del", dev]);
    }
    let back = Lab::wait_until(Duration::from_secs(30), || {
        lab.ping(&w1, ip2) && lab.ping(&w2, ip1)
    });
    let after = links(&lab, 0);
    println!(
        "deleted {before:?} on h1; rebuilt {after:?} and traffic flows again after {:?}",
        back.map(|_| t.elapsed())
    );
    assert!(back.is_some(), "not rebuilt within 30 s\n{}", lab.logs());
    // The agent may have rebuilt a device before the next one was deleted (it repairs on
    // kernel notifications): each must be a new device all the same.
    let new_indexes = indexes(&lab);
    for ((dev, old), new) in before.iter().zip(&old_indexes).zip(&new_indexes) {
        assert_ne!(old, new, "{dev} was not deleted and rebuilt");
    }
    let mut b = before.clone();
    let mut a = after.clone();
    b.sort();
    a.sort();
    assert_eq!(a, b, "the same devices come back");
    let addr = exec(&w1, "ip", &["-4", "-o", "addr", "show", "eth0"]).unwrap();
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&format!("{ip1}/")),
        "the workload got its address back"
    );
}

// ---------------------------------------------------------------------------------- churn

/// A ping flow and a TCP stream between workloads on h1 and h2 keep running, without a lost
/// packet or a reset, while agents restart, the controller leader is killed and replaced, and
/// endpoints are attached and detached on h3.
#[test]
fn established_flows_survive_churn() {
    let mut lab = lab(3, 3, "xc");
    network(&lab, "c", "10.52.0.0/16");
    let w1 = lab.add_workload("w1").unwrap();
    let w2 = lab.add_workload("w2").unwrap();
    lab.attach("c", 0, &w1).unwrap();
    let ip2: Ipv4Addr = lab.attach("c", 1, &w2).unwrap();
    let spares: Vec<String> = (0..4)
        .map(|i| lab.add_workload(&format!("s{i}")).unwrap())
        .collect();
    let _server = lab.spawn_in(&w2, "iperf3", &["-s", "-1"], "iperf3-s").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    const SECONDS: u64 = 24;
    let flow = PingFlow::start(&w1, ip2, 20, Duration::from_secs(SECONDS)).unwrap();
    let w1c = w1.clone();
    let tcp = std::thread::spawn(move || {
        exec(
            &w1c,
            "iperf3",
            &[
                "-c",
                &ip2.to_string(),
                "-t",
                &(SECONDS - 2).to_string(),
                "-b",
                "200M",
                "-J",
            ],
        )
    });
    let started = Instant::now();
    let mut faults = Vec::new();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(SECONDS - 6) {
        round += 1;
        match round % 4 {
            1 => {
                lab.kill_agent(0);
                std::thread::sleep(Duration::from_millis(300));
                lab.start_agent(0).unwrap();
                faults.push("agent h1 SIGKILL+restart".to_string());
            }
            2 => {
                let leader = lab.wait_leader(Duration::from_secs(20)).unwrap();
                lab.controllers.kill(leader).unwrap();
                let t = Instant::now();
                // Back once another replica leads (or after 10 s).
                while t.elapsed() < Duration::from_secs(10) {
                    if lab.wait_leader(Duration::from_secs(1)).is_ok_and(|l| l != leader) {
                        break;
                    }
                }
                lab.controllers.start(leader).unwrap();
                faults.push(format!(
                    "controller {leader} (leader) SIGKILL, failover in {:?}",
                    t.elapsed()
                ));
            }
            3 => {
                lab.stop_agent(1);
                lab.start_agent(1).unwrap();
                faults.push("agent h2 SIGTERM+restart".to_string());
            }
            _ => {
                for s in &spares {
                    lab.attach("c", 2, s).unwrap();
                }
                for s in &spares {
                    lab.ctl_ok(&["endpoint", "detach", "c", "--host", "h3", "--netns", s])
                        .unwrap();
                }
                faults.push(format!("{} attaches + detaches on h3", spares.len()));
            }
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    let stats = flow.wait().unwrap();
    let tcp = tcp.join().expect("iperf3 thread");
    let tcp = tcp.expect("the TCP stream broke");
    let v: serde_json::Value = serde_json::from_slice(&tcp.stdout).expect("iperf3 JSON");
    let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    let mbit = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e6;
    println!(
        "churn: {} faults injected ({faults:?}); ping {} sent, {} lost; TCP stream {mbit:.0} Mbit/s \
         with {retransmits} retransmits, no reset",
        faults.len(),
        stats.sent,
        stats.lost()
    );
    assert!(faults.len() >= 8, "too few faults: {faults:?}");
    assert_eq!(stats.lost(), 0, "pings lost under churn");
    assert!(mbit > 0.0, "no data crossed");
}
