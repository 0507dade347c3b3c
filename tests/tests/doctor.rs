//! `overlayctl doctor` (issue #8): kernel drift made behind an agent's back is reported, then
//! repaired by the agent's next pass and no longer reported; a stopped agent is reported.

use std::time::{Duration, Instant};

use overlay_lab::lab::{Lab, LabConfig};
use serde_json::Value;

/// (exit success, JSON) of `overlayctl -o json doctor`.
fn doctor(lab: &Lab) -> (bool, Value) {
    let out = lab.ctl(&["--output", "json", "doctor"]).expect("run doctor");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), v)
}

fn wait_doctor(lab: &Lab, within: Duration, what: &str, cond: impl Fn(bool, &Value) -> bool) -> Duration {
    let t = Instant::now();
    loop {
        let (ok, v) = doctor(lab);
        if cond(ok, &v) {
            return t.elapsed();
        }
        assert!(t.elapsed() < within, "{what} within {within:?}; doctor said {v}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn host<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["host"] == name))
        .unwrap_or(&Value::Null)
}

#[test]
fn doctor_reports_drift_until_repaired_and_stopped_agents() {
    let mut lab = Lab::start(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "dr",
        resync_secs: 15,
    })
    .expect("lab");
    lab.start_agents().unwrap();
    lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "d",
        "--mode",
        "vxlan",
        "--subnet",
        "10.54.0.0/16",
    ])
    .unwrap();
    for h in 0..2 {
        let ns = lab.add_workload(&format!("w{h}")).unwrap();
        lab.attach("d", h, &ns).unwrap();
    }
    let clean = wait_doctor(&lab, Duration::from_secs(30), "a clean bill", |ok, _| ok);
    let (_, v) = doctor(&lab);
    assert_eq!(v["healthy"], true);

    // Behind h1's agent: its FDB entry and route towards h2 disappear.
    let fdb = lab
        .on_host(0, "bridge", &["fdb", "show", "dev", "ovx-1"])
        .unwrap();
    let line = fdb
        .lines()
        .find(|l| l.contains(" dst "))
        .expect("an fdb entry towards h2");
    let mac = line.split_whitespace().next().unwrap().to_string();
    let dst = line
        .split_whitespace()
        .skip_while(|w| *w != "dst")
        .nth(1)
        .unwrap()
        .to_string();
    lab.on_host(
        0,
        "bridge",
        &["fdb", "del", &mac, "dev", "ovx-1", "dst", &dst, "self"],
    )
    .unwrap();
    let routes = lab.on_host(0, "ip", &["route", "show", "proto", "79"]).unwrap();
    let route = routes
        .split_whitespace()
        .next()
        .expect("a route towards h2")
        .to_string();
    lab.on_host(0, "ip", &["route", "del", &route]).unwrap();

    let seen = wait_doctor(&lab, Duration::from_secs(20), "drift reported", |ok, v| {
        let drift = host(v, "h1")["drift"].to_string();
        !ok && drift.contains("fdb") && drift.contains(&route)
    });
    let (_, v) = doctor(&lab);
    assert_eq!(
        host(&v, "h2")["drift"],
        Value::Array(vec![]),
        "h2 is not affected: {v}"
    );
    println!("doctor after the deletion: {}", host(&v, "h1")["drift"]);

    let repaired = wait_doctor(&lab, Duration::from_secs(30), "drift repaired", |ok, _| ok);
    let fdb = lab
        .on_host(0, "bridge", &["fdb", "show", "dev", "ovx-1"])
        .unwrap();
    assert!(fdb.contains(&mac), "the agent put the FDB entry back");

    // A stopped agent.
    lab.stop_agent(1);
    let stopped = wait_doctor(
        &lab,
        Duration::from_secs(20),
        "stopped agent reported",
        |ok, v| !ok && host(v, "h2")["connected"] == false,
    );
    let out = lab.ctl(&["doctor"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("h2: agent not connected"), "{stderr}");
    println!(
        "doctor: clean after {clean:?}; drift (fdb + route deleted on h1) reported after {seen:?}, \
         repaired and clean {:?} after the deletion; stopped agent h2 reported after {stopped:?}\n{}",
        seen + repaired,
        String::from_utf8_lossy(&out.stdout)
    );
}
