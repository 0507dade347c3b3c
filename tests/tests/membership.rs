//! Controller membership changes with real agents (issue #8): a one-replica cluster grows to
//! three, loses its first replica, which is removed, and shrinks to one, while a ping flow
//! between workloads on two hosts runs on and the agents keep converging new changes.

use std::time::Duration;

use overlay_lab::lab::{Lab, LabConfig, PingFlow};

fn voters(lab: &Lab) -> Vec<u64> {
    overlay_lab::api::voters(&lab.ctl_json(&["cluster", "status"]).expect("status"))
}

#[test]
fn grow_lose_and_shrink_while_agents_serve_traffic() {
    let mut lab = Lab::start(LabConfig {
        hosts: 2,
        controllers: 3,
        tag: "mb",
        resync_secs: 10,
    })
    .expect("lab");
    // Start over as a one-replica cluster: replica 1 alone, 2 and 3 empty and waiting.
    for id in 1..=3 {
        lab.controllers.stop(id).unwrap();
    }
    for r in &lab.controllers.replicas {
        let _ = std::fs::remove_dir_all(&r.data_dir);
    }
    lab.controllers.start_alone(1).unwrap();
    lab.controllers.start(2).unwrap();
    lab.controllers.start(3).unwrap();
    lab.wait_leader(Duration::from_secs(30)).unwrap();
    assert_eq!(voters(&lab), vec![1]);

    lab.start_agents().unwrap();
    lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "m",
        "--mode",
        "vxlan",
        "--subnet",
        "10.56.0.0/16",
    ])
    .unwrap();
    let w1 = lab.add_workload("w1").unwrap();
    let w2 = lab.add_workload("w2").unwrap();
    lab.attach("m", 0, &w1).unwrap();
    let ip2 = lab.attach("m", 1, &w2).unwrap();
    let flow = PingFlow::start(&w1, ip2, 20, Duration::from_secs(14)).unwrap();

    let addr = |id: u64| lab.controllers.addr(id);
    let (a2, a3) = (addr(2), addr(3));
    lab.ctl_ok(&["cluster", "add-member", "2", &a2]).unwrap();
    lab.ctl_ok(&["cluster", "add-member", "3", &a3]).unwrap();
    assert_eq!(voters(&lab), vec![1, 2, 3]);

    // Replica 1 dies; the other two carry on and remove it.
    lab.controllers.kill(1).unwrap();
    lab.wait_leader(Duration::from_secs(20)).unwrap();
    lab.ctl_ok(&["cluster", "remove-member", "1"]).unwrap();
    assert_eq!(voters(&lab), vec![2, 3]);
    // Agents follow: a new endpoint on h1 is wired (the agent moved to another replica).
    let w3 = lab.add_workload("w3").unwrap();
    let ip3 = lab.attach("m", 0, &w3).unwrap();
    assert!(
        lab.ping(&w2, ip3),
        "h2 reaches the endpoint attached after the failover"
    );

    // Shrink to one.
    lab.ctl_ok(&["cluster", "remove-member", "3"]).unwrap();
    assert_eq!(voters(&lab), vec![2]);
    let w4 = lab.add_workload("w4").unwrap();
    let ip4 = lab.attach("m", 1, &w4).unwrap();
    assert!(
        lab.ping(&w1, ip4),
        "h1 reaches the endpoint attached on the one-replica cluster"
    );

    let stats = flow.wait().unwrap();
    println!(
        "membership in the lab: 1 -> 3 replicas, replica 1 killed and removed, shrunk to 1; \
         ping flow h1 -> h2: {} sent, {} lost; endpoints attached after each step were wired",
        stats.sent,
        stats.lost()
    );
    assert_eq!(
        stats.lost(),
        0,
        "workload traffic never depends on the controllers"
    );
}
