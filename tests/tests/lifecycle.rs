//! Daemon lifecycle (issue 13, item 3): a replica that holds a real agent's Watch stream stops
//! promptly and cleanly on SIGTERM, the agent moves to another replica by itself, and the
//! agent too exits promptly on SIGTERM. Each prints how long it took.

use std::time::{Duration, Instant};

use overlay_lab::lab::{Lab, LabConfig};

/// Lines in a replica's log that say a Watch stream for `host` started.
fn watches_started(lab: &Lab, replica: usize, host: &str) -> usize {
    let log = std::fs::read_to_string(lab.controllers.replicas[replica].log_path()).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("watch started") && l.contains(&format!("host={host}")))
        .count()
}

/// Waits until some replica but `except` has started more Watch streams for `host` than
/// `before` says; returns its index.
fn wait_new_watch(lab: &Lab, host: &str, before: &[usize], except: Option<usize>, within: Duration) -> usize {
    let start = Instant::now();
    loop {
        for (i, &n) in before.iter().enumerate() {
            if Some(i) != except && watches_started(lab, i, host) > n {
                return i;
            }
        }
        assert!(
            start.elapsed() < within,
            "no replica took over {host}'s Watch within {within:?}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_ends_watch_streams_and_the_agent_moves_to_another_replica() {
    let mut lab = Lab::start_with_agents(LabConfig {
        hosts: 1,
        controllers: 3,
        tag: "lc",
        resync_secs: 30,
    })
    .expect("lab");
    let host = lab.hosts[0].name.clone();
    let none = vec![0; lab.controllers.replicas.len()];
    let serving = wait_new_watch(&lab, &host, &none, None, Duration::from_secs(30));
    let id = lab.controllers.replicas[serving].id;
    let before: Vec<usize> = (0..lab.controllers.replicas.len())
        .map(|i| watches_started(&lab, i, &host))
        .collect();

    let leader = lab.wait_leader(Duration::from_secs(10)).expect("leader");

    // The replica holding the stream gets SIGTERM: it must exit 0, without waiting for the
    // agent to go away. (Before the fix it served nothing and never exited.)
    let stopped_at = Instant::now();
    let (status, took) = lab
        .controllers
        .terminate(id, Duration::from_secs(15))
        .expect("replica")
        .unwrap_or_else(|| {
            panic!(
                "replica {id} with an open Watch stream did not exit within 15 s of SIGTERM\n{}",
                lab.logs()
            )
        });
    assert!(
        status.success(),
        "replica {id} exited with {status}\n{}",
        lab.logs()
    );
    let log = std::fs::read_to_string(lab.controllers.replicas[serving].log_path()).unwrap_or_default();
    assert!(
        log.contains("watch ended"),
        "the stream was ended by the replica:\n{log}"
    );

    // The agent reconnects to one of the other two.
    let next = wait_new_watch(&lab, &host, &before, Some(serving), Duration::from_secs(30));
    let moved = stopped_at.elapsed();
    lab.wait_hosts_up(Duration::from_secs(30)).expect("host up");
    println!(
        "replica {id} (holding {host}'s Watch stream; leader: {}) exited {status} {took:?} after \
         SIGTERM; the agent watched replica {} {moved:?} after the SIGTERM (its registration \
         first waits for a leader when the leader was the one stopped)",
        if leader == id { "yes" } else { "no" },
        lab.controllers.replicas[next].id
    );

    // The agent itself stops promptly on SIGTERM too, with its stream open.
    let (status, took) = lab
        .terminate_agent(0, Duration::from_secs(15))
        .expect("agent did not exit within 15 s of SIGTERM");
    assert!(
        status.success(),
        "agent exited with {status}\n{}",
        lab.agent_log(0)
    );
    println!("agent {host} exited {status} {took:?} after SIGTERM");
}
