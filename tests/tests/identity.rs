//! Host identity (issue 13 items 5, 6): one agent holds a host name at a time. A second
//! `overlay-agent --host-name h1` on another machine is refused while h1's agent lives (h1's
//! traffic keeps flowing, doctor shows the conflict), takes the name over once the first has
//! been silent for `--host-claim-timeout`; a host record changed behind the agent's back is
//! put right by the agent; `host rm` refuses a connected host unless forced.
//!
//! Each test prints what it tried and how long things took.

use std::time::{Duration, Instant};

use overlay_lab::lab::{Lab, LabConfig, PingFlow};
use overlay_lab::process::Daemon;
use serde_json::Value;

/// What the lab's controllers are started with (the shortest the controller accepts).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(20);

/// The line the controller refuses a second claimant with (see `StateError::HostClaimed`).
const REFUSAL: &str = "is held by another agent";

/// (exit success, JSON) of `overlayctl -o json doctor`.
fn doctor(lab: &Lab) -> (bool, Value) {
    let out = lab.ctl(&["--output", "json", "doctor"]).expect("run doctor");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v)
}

fn host_health<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["host"] == name))
        .unwrap_or(&Value::Null)
}

fn underlay_of(lab: &Lab, host: &str) -> String {
    lab.ctl_json(&["host", "inspect", host])
        .map(|v| v["underlay_ip"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// Waits until `daemon`'s log contains `needle`; how long it took.
fn wait_log(daemon: &Daemon, needle: &str, within: Duration) -> Duration {
    Lab::wait_until(within, || {
        std::fs::read_to_string(daemon.log_path()).is_ok_and(|log| log.contains(needle))
    })
    .unwrap_or_else(|| {
        panic!(
            "{} never logged {needle:?}:\n{}",
            daemon.name(),
            daemon.log_tail(40)
        )
    })
}

/// Restarts the lab's controllers with `--host-claim-timeout CLAIM_TIMEOUT`.
fn with_claim_timeout(lab: &mut Lab) {
    let ids: Vec<u64> = lab.controllers.replicas.iter().map(|r| r.id).collect();
    for &id in &ids {
        lab.controllers.stop(id).expect("stop");
    }
    lab.controllers.set_env(
        "OVERLAY_HOST_CLAIM_TIMEOUT",
        &format!("{}s", CLAIM_TIMEOUT.as_secs()),
    );
    for &id in &ids {
        lab.controllers.start(id).expect("start");
    }
    lab.wait_leader(Duration::from_secs(30)).expect("leader");
}

/// Plaintext lab: h1 and h2 run their agents with workloads; a third machine starts an agent
/// that also calls itself h1.
#[test]
fn a_second_agent_for_a_host_name_waits_until_the_first_is_silent() {
    let mut lab = Lab::start(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "idn",
        resync_secs: 10,
    })
    .expect("lab");
    with_claim_timeout(&mut lab);
    lab.start_agents().expect("agents");
    lab.wait_hosts_up(Duration::from_secs(30)).expect("agents up");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.80.0.0/16",
    ])
    .expect("network");
    let w1 = lab.add_workload("w1").expect("w1");
    let w2 = lab.add_workload("w2").expect("w2");
    let ip1 = lab.attach("blue", 0, &w1).expect("attach w1");
    lab.attach("blue", 1, &w2).expect("attach w2");
    assert!(
        Lab::wait_until(Duration::from_secs(10), || lab.ping(&w2, ip1)).is_some(),
        "w2 -> w1 before anything happened\n{}",
        lab.logs()
    );
    let h1_ip = lab.hosts[0].ip.to_string();

    // The impostor: machine h3 runs `overlay-agent --host-name h1`, while h2's workload pings
    // h1's.
    let m3 = lab.add_host().expect("third machine");
    let m3_ip = lab.hosts[m3].ip.to_string();
    let flow = PingFlow::start(&w2, ip1, 100, Duration::from_secs(15)).expect("ping flow");
    let started = Instant::now();
    let impostor = lab.spawn_agent_as(m3, "h1", None).expect("impostor agent");
    let refused_in = wait_log(&impostor, REFUSAL, Duration::from_secs(20));
    let line = std::fs::read_to_string(impostor.log_path())
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains(REFUSAL))
        .unwrap_or_default()
        .to_string();
    println!("impostor refused after {refused_in:?}: {line}");
    let real_id = lab.hosts[0].instance_id().expect("h1's instance id");
    assert!(
        line.contains(&real_id[..8]) && !line.contains(&real_id) && line.contains(&h1_ip),
        "the refusal names the holder by its short id and underlay only: {line}"
    );
    for _ in 0..3 {
        assert_eq!(underlay_of(&lab, "h1"), h1_ip, "h1's underlay flipped");
        std::thread::sleep(Duration::from_secs(2));
    }
    let stats = flow.wait().expect("ping flow");
    println!(
        "w2 -> w1 while the impostor ran {:?}: {}/{} answered",
        started.elapsed(),
        stats.received,
        stats.sent
    );
    assert!(
        stats.sent > 0 && stats.lost() <= 1,
        "h1's traffic was disturbed: {stats:?}"
    );

    // doctor shows who holds h1 and who else asked for it, and counts it as a problem.
    let (healthy, v) = doctor(&lab);
    let h1 = host_health(&v, "h1");
    let claims = h1["refused_claims"].as_array().cloned().unwrap_or_default();
    let impostor_id = std::fs::read_to_string(lab.dir().join("agent-h1-on-h3/instance-id"))
        .map(|s| s.trim().to_string())
        .expect("impostor's instance id");
    assert!(!healthy, "doctor is silent about two agents claiming h1: {v}");
    assert_eq!(h1["instance"], real_id[..8], "{h1}");
    assert!(
        claims.iter().any(|c| c["source"] == m3_ip.as_str()
            && c["instance"] == impostor_id[..8]
            && c["underlay_ip"] == m3_ip.as_str()
            && c["refusals"].as_u64().unwrap_or(0) >= 1),
        "doctor does not show the impostor's claim: {h1}"
    );
    println!("doctor: {}", v["problems"]);
    let out = lab.ctl(&["doctor"]).expect("doctor table");
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.contains("were refused") && table.contains(&m3_ip),
        "{table}"
    );

    // `host rm` of a connected host is refused and removes nothing.
    let out = lab.ctl(&["host", "rm", "h1"]).expect("host rm");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        !out.status.success() && err.contains("is connected") && err.contains("--force"),
        "{err}"
    );
    let endpoints = lab
        .ctl_json(&["endpoint", "ls", "--host", "h1"])
        .expect("endpoints");
    assert_eq!(endpoints.as_array().map(Vec::len), Some(1), "{endpoints}");
    println!("refused  host rm h1 while connected: {err}");

    // The real agent puts right a record changed behind its back (plaintext: anyone may
    // register; here with its own instance id and a wrong address).
    let c = overlay_lab::controllers::client(&lab.controllers.addrs()).expect("client");
    let ul = lab.ul.clone();
    let id = real_id.clone();
    overlay_lab::netns::block_on_in(&ul, move || async move {
        overlay_lab::api::try_register_as(&c, "h1", "192.0.2.99", &id).await
    })
    .expect("in the underlay namespace")
    .expect("rewrite h1's record");
    let t = Instant::now();
    let back = Lab::wait_until(Duration::from_secs(20), || underlay_of(&lab, "h1") == h1_ip);
    assert!(
        back.is_some(),
        "the agent did not notice its record changed\n{}",
        lab.agent_log(0)
    );
    println!(
        "h1's record rewritten to 192.0.2.99: its agent registered {h1_ip} again in {:?}",
        t.elapsed()
    );
    assert!(
        Lab::wait_until(Duration::from_secs(10), || lab.ping(&w2, ip1)).is_some(),
        "w2 -> w1 after the record was put right"
    );

    // The real h1 stops for good: after the claim timeout the newcomer takes the name over
    // (a replacement machine). Its workload goes first: the two machines share /run/netns.
    lab.ctl_ok(&["endpoint", "detach", "blue", "--host", "h1", "--netns", &w1])
        .expect("detach w1");
    let stopped = Instant::now();
    lab.stop_agent(0);
    let took_over = Lab::wait_until(CLAIM_TIMEOUT * 3, || underlay_of(&lab, "h1") == m3_ip);
    assert!(
        took_over.is_some(),
        "the newcomer never took h1 over\n{}",
        impostor.log_tail(40)
    );
    let after = stopped.elapsed();
    println!(
        "h1's agent stopped: the agent on {m3_ip} took h1 over after {after:?} (claim timeout {CLAIM_TIMEOUT:?})"
    );
    assert!(
        after >= CLAIM_TIMEOUT,
        "taken over after {after:?}, before the claim timeout"
    );

    // The old h1 comes back: now it is the stranger, refused with the same line, and retrying.
    lab.start_agent(0).expect("restart h1's agent");
    let back_in = Lab::wait_until(Duration::from_secs(20), || lab.agent_log(0).contains(REFUSAL));
    assert!(
        back_in.is_some(),
        "the old h1 was not refused\n{}",
        lab.agent_log(0)
    );
    assert_eq!(underlay_of(&lab, "h1"), m3_ip);
    println!(
        "old h1 back: refused after {:?}; h1 stays with {m3_ip}",
        back_in.unwrap_or_default()
    );
    lab.kill_agent(0);

    // `host rm --force` of a connected host removes it and says the agent will be back.
    let out = lab.ctl_ok(&["host", "rm", "h2", "--force"]).expect("forced rm");
    assert!(
        out.contains("removed host h2") && out.contains("will register h2 again"),
        "{out}"
    );
    let again = Lab::wait_until(Duration::from_secs(20), || {
        lab.ctl_json(&["host", "inspect", "h2"]).is_ok()
    });
    assert!(again.is_some(), "h2's agent did not register again");
    println!(
        "host rm h2 --force: {}; registered again in {:?}",
        out.trim().replace('\n', " / "),
        again.unwrap_or_default()
    );
    impostor.kill();
}
