//! `--metrics-listen` on the controller and the agents (issue #8), scraped over HTTP from the
//! lab's underlay while a network with workloads is live.

use std::time::Duration;

use overlay_lab::lab::{Lab, LabConfig, metric as sample};

#[test]
fn controller_and_agents_expose_metrics() {
    let mut lab = Lab::start(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "mx",
        resync_secs: 5,
    })
    .expect("lab");
    // Restart the controller with metrics on (each replica lives in its own namespace).
    lab.controllers.stop(1).unwrap();
    lab.controllers.set_env("OVERLAY_METRICS_LISTEN", "0.0.0.0:9400");
    lab.controllers.start(1).unwrap();
    lab.wait_leader(Duration::from_secs(30)).unwrap();
    for h in 0..2 {
        lab.start_agent_with_env(h, &[("OVERLAY_METRICS_LISTEN", "0.0.0.0:9401")])
            .unwrap();
    }
    // Endpoints are requested of registered hosts only.
    lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "m",
        "--mode",
        "vxlan",
        "--subnet",
        "10.53.0.0/16",
    ])
    .unwrap();
    for h in 0..2 {
        let ns = lab.add_workload(&format!("w{h}")).unwrap();
        lab.attach("m", h, &ns).unwrap();
    }
    lab.ctl_ok(&["network", "inspect", "nosuch"]).unwrap_err();

    let controller = format!(
        "{}:9400",
        lab.controllers.addr(1).split(':').next().unwrap_or_default()
    );
    let agent = format!("{}:9401", lab.hosts[0].ip);
    // Agents report their applied revision with the next heartbeat (every 5 s).
    let mut c = String::new();
    let settled = Lab::wait_until(Duration::from_secs(20), || {
        c = lab.scrape(&controller).expect("scrape");
        sample(&c, "overlay_agent_revision_lag{host=\"h1\"}") == Some(0.0)
            && sample(&c, "overlay_agent_revision_lag{host=\"h2\"}") == Some(0.0)
    });
    assert!(settled.is_some(), "agents did not catch up in the metrics:\n{c}");
    let a = lab.scrape(&agent).expect("scrape");

    let expect = [
        (&c, "overlay_raft_is_leader ", 1.0),
        (&c, "overlay_raft_members ", 1.0),
        (&c, "overlay_raft_apply_lag ", 0.0),
        (&c, "overlay_watch_subscribers ", 2.0),
        (&c, "overlay_endpoints{network=\"m\"}", 2.0),
        (&c, "overlay_ipam_subnets_used{network=\"m\"}", 2.0),
        (&c, "overlay_ipam_subnets_total{network=\"m\"}", 256.0),
        (
            &c,
            "overlay_grpc_requests_total{method=\"/overlay.v1.Overlay/AttachEndpoint\",code=\"OK\"}",
            2.0,
        ),
        (
            &c,
            "overlay_grpc_requests_total{method=\"/overlay.v1.Overlay/InspectNetwork\",code=\"NOT_FOUND\"}",
            1.0,
        ),
        (&a, "overlay_agent_controller_connected ", 1.0),
        (&a, "overlay_agent_endpoints ", 1.0),
        (&a, "overlay_agent_endpoints_failed ", 0.0),
    ];
    for (text, prefix, want) in expect {
        assert_eq!(sample(text, prefix), Some(want), "{prefix} in\n{text}");
    }
    let created = sample(&a, "overlay_agent_objects_total{op=\"created\"}").unwrap_or(0.0);
    let set = sample(&a, "overlay_agent_objects_total{op=\"set\"}").unwrap_or(0.0);
    assert!(
        created >= 3.0,
        "bridge, vxlan device and endpoint created: {created}"
    );
    assert!(set >= 3.0, "address, neighbour, FDB entry and route set: {set}");
    assert_eq!(
        sample(&a, "overlay_agent_applied_revision "),
        sample(&a, "overlay_agent_desired_revision "),
        "the agent applied what it received"
    );
    let passes = sample(&a, "overlay_agent_reconcile_duration_seconds_count").unwrap_or(0.0);
    assert!(passes >= 1.0);
    println!(
        "metrics: controller page {} lines, agent page {} lines; agent h1: {created} objects created, \
         {set} entries set in {passes} passes",
        c.lines().count(),
        a.lines().count()
    );
}
