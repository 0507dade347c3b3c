//! Endpoint wiring and lifecycle in the netns lab (root): real controllers and agents.
//!
//! - Issue 14.1: every way of pointing an agent at a namespace that is not a workload's is
//!   tried (its own pid, pid 1, /proc links, symlinks and bind mounts of host namespaces, a
//!   FIFO, a regular file, a namespace of the wrong kind); each is refused with its own message,
//!   the host's and the root namespace's links and routes stay as they were, and the other
//!   endpoints keep being reconciled meanwhile.
//! - Issue 13.7: a namespace that goes away without a detach (deleted, re-created under the
//!   same name, its pid now in another namespace) is reported gone, never wired into whatever
//!   took its place, shown by `doctor`, and released after the agent's grace period; one that
//!   comes back in time is wired again.
//! - Issue 13.8: a namespace on two networks has one stable default route, the other network
//!   routed by its CIDR, with cross-host traffic on both.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use overlay_lab::lab::{Lab, LabConfig, metric};
use overlay_lab::netns::{exec, exec_any, stdout};
use serde_json::Value;

/// A lab whose agents resync every `resync` seconds, keep gone endpoints for `grace` and
/// serve metrics on their underlay address.
fn lab(hosts: usize, tag: &'static str, resync: u64, grace: &str) -> Lab {
    let mut lab = Lab::start(LabConfig {
        hosts,
        controllers: 1,
        tag,
        resync_secs: resync,
    })
    .expect("lab");
    for h in 0..hosts {
        let metrics = format!("{}:9401", lab.hosts[h].ip);
        lab.start_agent_with_env(
            h,
            &[
                ("OVERLAY_GONE_ENDPOINT_GRACE", grace),
                ("OVERLAY_METRICS_LISTEN", &metrics),
            ],
        )
        .expect("agent");
    }
    lab.wait_hosts_up(Duration::from_secs(30)).expect("hosts up");
    lab
}

fn network(lab: &Lab, name: &str, cidr: &str) {
    lab.ctl_ok(&["network", "create", name, "--mode", "vxlan", "--subnet", cidr])
        .expect("network create");
}

/// `overlayctl endpoint attach NETWORK --host hH --netns NETNS EXTRA...`, whatever it answers.
fn attach(lab: &Lab, network: &str, host: usize, netns: &str, extra: &[&str]) -> Output {
    let host = lab.hosts[host].name.clone();
    let mut args = vec!["endpoint", "attach", network, "--host", &host, "--netns", netns];
    args.extend_from_slice(extra);
    lab.ctl(&args).expect("run overlayctl")
}

fn attach_ok(lab: &Lab, network: &str, host: usize, netns: &str, extra: &[&str]) -> Ipv4Addr {
    let out = attach(lab, network, host, netns, extra);
    assert!(
        out.status.success(),
        "attach {netns} to {network}: {}\n{}",
        stderr(&out),
        lab.logs()
    );
    stdout(&out).trim().parse().expect("attach prints the address")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn endpoints(lab: &Lab) -> Vec<Value> {
    lab.ctl_json(&["endpoint", "ls"])
        .expect("endpoint ls")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn endpoint_of(lab: &Lab, network: &str, netns: &str) -> Option<Value> {
    endpoints(lab)
        .into_iter()
        .find(|e| e["network"] == network && e["netns"] == netns)
}

/// The host namespace's devices (index, name, MAC, bridge), IPv4 addresses and routes, as
/// iproute2 shows them; what changes by itself (link state, IPv6 DAD) is left out.
fn host_state(lab: &Lab, host: usize) -> String {
    let links: Value =
        serde_json::from_str(&lab.on_host(host, "ip", &["-j", "link", "show"]).expect("ip link"))
            .expect("json");
    let mut out: Vec<String> = links
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            format!(
                "link {} {} {} {}",
                l["ifindex"], l["ifname"], l["address"], l["master"]
            )
        })
        .collect();
    for args in [
        &["-4", "-o", "addr", "show"][..],
        &["-4", "route", "show", "table", "all"],
    ] {
        let text = lab.on_host(host, "ip", args).expect("ip");
        out.extend(
            text.lines()
                .map(|l| l.split("\\").next().unwrap_or(l).trim().to_string()),
        );
    }
    out.join("\n")
}

/// What the root namespace must keep whatever an agent is told: its routes, and no device
/// of an overlay endpoint (their MACs start 0a:58, their temporary names ovp-/ovv-). Read
/// only. (Other labs on this machine create and move veths through the root namespace, so
/// its device list is not compared as a whole.)
fn root_state() -> (String, bool) {
    let routes = overlay_lab::netns::run("ip", &["-4", "route", "show", "table", "all"]).expect("ip route");
    let links = stdout(&overlay_lab::netns::run("ip", &["-o", "link", "show"]).expect("ip link"));
    let overlay_device = links
        .lines()
        .any(|l| l.contains("link/ether 0a:58:") || l.contains(": ovp-") || l.contains(": ovv-"));
    (stdout(&routes), overlay_device)
}

fn passes(lab: &Lab, host: usize) -> f64 {
    let text = lab
        .scrape(&format!("{}:9401", lab.hosts[host].ip))
        .expect("agent metrics");
    metric(&text, "overlay_agent_reconcile_duration_seconds_count").unwrap_or(0.0)
}

/// Unmounts a bind mount made by the test, also when it panics.
struct Mounted(PathBuf);

impl Mounted {
    fn bind(source: &str, target: &Path) -> Self {
        std::fs::write(target, b"").expect("mount point");
        overlay_lab::netns::run("mount", &["--bind", source, &target.display().to_string()])
            .expect("bind mount");
        Mounted(target.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Issue 14.1: each hijack is refused with a message naming the cause; nothing is created in
/// the host or the root namespace; a workload's other endpoints keep working and being
/// repaired, also while a FIFO endpoint is retried on every pass.
#[test]
fn namespace_hijacks_are_refused_and_the_host_is_untouched() {
    let mut lab = lab(2, "eh", 1, "30s");
    network(&lab, "blue", "10.1.0.0/16");
    let w1 = lab.add_workload("w1").expect("w1");
    let w2 = lab.add_workload("w2").expect("w2");
    attach_ok(&lab, "blue", 0, &w1, &[]);
    let ip2 = attach_ok(&lab, "blue", 1, &w2, &[]);
    assert!(lab.ping(&w1, ip2), "w1 -> w2 before the attacks");

    let agent = lab.agent_pid(0).expect("agent h1 runs");
    let me = std::process::id();
    let dir = lab.dir().to_path_buf();
    let host_ns = lab.hosts[0].ns.clone();
    let host_before = host_state(&lab, 0);
    let root_before = root_state();
    assert!(
        !root_before.1,
        "the root namespace already holds an overlay device"
    );

    // Names under /run/netns for host namespaces (what `ip netns attach` makes).
    let own_named = lab
        .name_namespace_of("hostns", agent)
        .expect("name h1's namespace");
    let root_named = lab
        .name_namespace_of("rootns", me)
        .expect("name the root namespace");
    let to_own = dir.join("to-own");
    std::os::unix::fs::symlink(format!("/proc/{agent}/ns/net"), &to_own).expect("symlink");
    let to_named = dir.join("to-named");
    std::os::unix::fs::symlink(format!("/run/netns/{host_ns}"), &to_named).expect("symlink");
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // Under /run/netns, which `ip netns` shares with the agent's mount namespace.
    let uts_name = format!("{}-uts", lab.prefix);
    let _uts = Mounted::bind(
        &format!("/proc/{agent}/ns/uts"),
        &Path::new("/run/netns").join(&uts_name),
    );
    let path = |p: &Path| p.display().to_string();

    let attacks: Vec<(&str, String, String)> = vec![
        (
            "the agent's own pid",
            agent.to_string(),
            format!("namespace pid {agent} is the host's own namespace"),
        ),
        ("pid 1", "1".into(), "pid 1 is the host's init".into()),
        ("pid 0", "0".into(), "pid 0 is not a process".into()),
        (
            "a root-namespace process",
            me.to_string(),
            format!("namespace pid {me} is the host's initial namespace"),
        ),
        (
            "/proc/1/ns/net",
            "/proc/1/ns/net".into(),
            "give the pid instead (--netns 1)".into(),
        ),
        (
            "the agent's /proc link",
            format!("/proc/{agent}/ns/net"),
            format!("--netns {agent}"),
        ),
        (
            "a symlink to the agent's namespace",
            path(&to_own),
            format!("namespace {} is a symbolic link", path(&to_own)),
        ),
        (
            "a symlink to the host's named namespace",
            path(&to_named),
            "is a symbolic link".into(),
        ),
        (
            "the host namespace bind-mounted under /run/netns",
            own_named.clone(),
            format!("namespace {own_named} is the host's own namespace"),
        ),
        (
            "the root namespace bind-mounted under /run/netns",
            root_named.clone(),
            format!("namespace {root_named} is the host's initial namespace"),
        ),
        (
            "/etc/passwd",
            "/etc/passwd".into(),
            "namespace /etc/passwd is not a network namespace".into(),
        ),
        (
            "a uts namespace bind-mounted under /run/netns",
            uts_name.clone(),
            format!("namespace {uts_name} is a uts namespace, not a network namespace"),
        ),
        (
            "a FIFO",
            path(&fifo),
            format!("namespace {} is not a network namespace", path(&fifo)),
        ),
        ("a missing file", path(&dir.join("nothing")), "not found".into()),
    ];
    for (what, netns, says) in &attacks {
        let started = Instant::now();
        let out = attach(&lab, "blue", 0, netns, &["--wait", "20"]);
        assert!(!out.status.success(), "{what}: accepted\n{}", lab.logs());
        let msg = stderr(&out);
        assert!(msg.contains(says.as_str()), "{what}: {msg:?} lacks {says:?}");
        assert_eq!(msg.lines().count(), 1, "{what}: one line: {msg}");
        println!("refused  {what} in {:?}: {msg}", started.elapsed());
        assert_eq!(
            host_state(&lab, 0),
            host_before,
            "{what} changed the host namespace"
        );
        assert_eq!(root_state(), root_before, "{what} changed the root namespace");
    }
    let left: Vec<String> = endpoints(&lab).iter().map(|e| e["netns"].to_string()).collect();
    assert_eq!(left.len(), 2, "refused attaches leave nothing behind: {left:?}");

    // A FIFO endpoint left in place (--no-wait) is refused again on every pass without
    // stalling them: passes go on, and the workload's endpoint is repaired meanwhile.
    let out = attach(&lab, "blue", 0, &path(&fifo), &["--no-wait"]);
    assert!(out.status.success(), "no-wait attach: {}", stderr(&out));
    let before = passes(&lab, 0);
    let started = Instant::now();
    let failed = Lab::wait_until(Duration::from_secs(20), || {
        endpoint_of(&lab, "blue", &path(&fifo)).is_some_and(|e| e["state"] == "failed")
    });
    assert!(failed.is_some(), "the FIFO endpoint is reported failed");
    exec(&w1, "ip", &["route", "del", "default"]).expect("delete w1's default route");
    let repaired = Lab::wait_until(Duration::from_secs(20), || {
        stdout(&exec(&w1, "ip", &["route", "show", "default"]).expect("ip route"))
            .contains("via 10.1.0.1 dev eth0")
    });
    assert!(
        repaired.is_some(),
        "w1's default route was not repaired\n{}",
        lab.logs()
    );
    std::thread::sleep(Duration::from_secs(3));
    let during = passes(&lab, 0) - before;
    let window = started.elapsed();
    println!(
        "with a FIFO endpoint retried every pass: {during} passes in {window:?}, w1's default route repaired in {:?}",
        repaired.unwrap_or_default()
    );
    assert!(during >= 3.0, "reconcile passes stalled: {during} in {window:?}");
    assert!(lab.ping(&w1, ip2), "w1 -> w2 after the attacks");
    let fifo_ep = endpoint_of(&lab, "blue", &path(&fifo)).expect("fifo endpoint");
    assert!(
        fifo_ep["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a network namespace")),
        "{fifo_ep}"
    );
    lab.ctl_ok(&[
        "endpoint",
        "detach",
        "blue",
        "--host",
        "h1",
        "--netns",
        &path(&fifo),
    ])
    .expect("detach the FIFO endpoint");
    assert_eq!(host_state(&lab, 0), host_before, "the host namespace changed");
    assert_eq!(root_state(), root_before, "the root namespace changed");
}

/// Issue 13.7 and the pinning of 14.1: namespaces that go away without a detach are
/// reported gone and released after the grace period, whatever took their place is left
/// alone, and a namespace that comes back in time is wired again.
#[test]
fn gone_namespaces_are_reported_and_released_after_the_grace() {
    const GRACE: Duration = Duration::from_secs(12);
    let mut lab = lab(1, "eg", 1, "12s");
    network(&lab, "blue", "10.1.0.0/16");

    // Deleted without a detach (a container removed by force).
    let deleted = lab.add_workload("del").expect("ns");
    let deleted_ip = attach_ok(&lab, "blue", 0, &deleted, &[]);
    // Deleted and created again under the same name: another namespace.
    let renamed = lab.add_workload("again").expect("ns");
    attach_ok(&lab, "blue", 0, &renamed, &[]);
    // Attached by pid; the process then moves to another namespace (what a reused pid looks
    // like to the agent: the same number, another namespace).
    let first = lab.add_workload("first").expect("ns");
    let stranger = lab.add_workload("stranger").expect("ns");
    let go = lab.dir().join("go");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.1; done; exec nsenter --net=/run/netns/{stranger} sleep 600",
        go.display()
    );
    let mover = lab
        .spawn_in(&first, "sh", &["-c", &script], "mover")
        .expect("process in the first namespace");
    let pid = mover.pid().to_string();
    attach_ok(&lab, "blue", 0, &pid, &[]);
    assert!(
        exec(&first, "ip", &["link", "show", "eth0"]).is_ok(),
        "wired into the pid's namespace"
    );
    // Named, held open by a process, unnamed for a moment, then named again: the same namespace.
    let back = lab.add_workload("back").expect("ns");
    attach_ok(&lab, "blue", 0, &back, &[]);
    let holder = lab.spawn_in(&back, "sleep", &["600"], "holder").expect("holder");

    let started = Instant::now();
    lab.remove_workload(&deleted).expect("delete");
    lab.remove_workload(&renamed).expect("delete");
    let renamed_again = lab.add_workload("again").expect("re-create");
    assert_eq!(renamed_again, renamed);
    std::fs::write(&go, b"").expect("go");
    overlay_lab::netns::ip(&["netns", "del", &back]).expect("unname");

    let state = |lab: &Lab, netns: &str| {
        endpoint_of(lab, "blue", netns).map(|e| e["state"].as_str().unwrap_or("").to_string())
    };
    let all_gone = Lab::wait_until(Duration::from_secs(30), || {
        [&deleted, &renamed, &pid, &back]
            .iter()
            .all(|n| state(&lab, n).as_deref() == Some("gone"))
    });
    assert!(
        all_gone.is_some(),
        "not all reported gone: {:?}\n{}",
        endpoints(&lab),
        lab.logs()
    );
    println!(
        "four namespaces reported gone {:?} after they went",
        started.elapsed()
    );
    let messages: Vec<(String, String)> = endpoints(&lab)
        .iter()
        .map(|e| {
            (
                e["netns"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    println!("{messages:#?}");
    let message = |netns: &str| {
        messages
            .iter()
            .find(|(n, _)| n == netns)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    };
    assert!(message(&deleted).contains("not found"), "{}", message(&deleted));
    assert!(message(&renamed).contains("replaced"), "{}", message(&renamed));
    assert!(message(&pid).contains("replaced"), "{}", message(&pid));

    // doctor says so, as a problem.
    let doctor = lab.ctl(&["doctor"]).expect("doctor");
    assert!(!doctor.status.success(), "doctor must report gone endpoints");
    let text = stdout(&doctor);
    assert!(
        text.contains("gone endpoints") && text.contains(&deleted_ip.to_string()),
        "{text}"
    );
    let json = lab.ctl(&["--output", "json", "doctor"]).expect("doctor json");
    let v: Value = serde_json::from_slice(&json.stdout).expect("doctor json");
    assert_eq!(v["gone_endpoints"].as_array().map(Vec::len), Some(4), "{v}");

    // The namespace that was only unnamed comes back under its name before the grace ends.
    lab.name_namespace_of("back", holder.pid())
        .expect("name it again");
    let ready = Lab::wait_until(Duration::from_secs(20), || {
        state(&lab, &back).as_deref() == Some("ready")
    });
    assert!(
        ready.is_some(),
        "the returning namespace is wired again\n{}",
        lab.logs()
    );
    assert!(
        started.elapsed() < GRACE,
        "came back too late for this check: {:?}",
        started.elapsed()
    );

    // Released after the grace period: the addresses are free again.
    let released = Lab::wait_until(Duration::from_secs(40), || {
        let left: Vec<String> = endpoints(&lab)
            .iter()
            .map(|e| e["netns"].as_str().unwrap_or("").to_string())
            .collect();
        left == [back.clone()]
    });
    assert!(
        released.is_some(),
        "gone endpoints not released: {:?}\n{}",
        endpoints(&lab),
        lab.logs()
    );
    let took = started.elapsed();
    println!("released {took:?} after the namespaces went (grace {GRACE:?})");
    assert!(took >= GRACE, "released before the grace period: {took:?}");
    let reuse = lab.add_workload("reuse").expect("ns");
    let ip = attach_ok(&lab, "blue", 0, &reuse, &["--ip", &deleted_ip.to_string()]);
    assert_eq!(ip, deleted_ip, "the released address is handed out again");

    // Whatever took the namespaces' places never got an interface from overlay.
    for ns in [&renamed, &stranger] {
        let links = stdout(&exec(ns, "ip", &["-o", "link", "show"]).expect("ip link"));
        assert_eq!(links.lines().count(), 1, "{ns} must hold only lo:\n{links}");
    }
    // The first namespace's interface went with its endpoint.
    let first_links = stdout(&exec(&first, "ip", &["-o", "link", "show"]).expect("ip link"));
    assert!(!first_links.contains("eth0"), "{first_links}");
    // One warning per gone endpoint, not one per pass.
    let log = std::fs::read_to_string(lab.agent_log_path(0)).unwrap_or_default();
    let warnings = log.matches("namespace is gone").count();
    let retries = log.matches("endpoint not wired").count();
    println!("agent log: {warnings} gone warnings, {retries} failed wirings");
    assert!(warnings <= 5, "{warnings} gone warnings");
    assert_eq!(retries, 0, "a gone endpoint was retried");
    drop(mover);
    drop(holder);
}

/// Issue 13.8: a namespace on two networks keeps one default route (the first network's)
/// and routes the other network by its CIDR, pass after pass, with cross-host pings on both;
/// `--default-route` moves it, a detach moves it back to the oldest; a default route the
/// agent did not make is never replaced.
#[test]
fn a_namespace_on_two_networks_keeps_one_default_route() {
    let mut lab = lab(2, "er", 1, "30s");
    network(&lab, "blue", "10.1.0.0/16");
    network(&lab, "red", "10.2.0.0/16");
    network(&lab, "green", "10.3.0.0/16");
    let a = lab.add_workload("a").expect("a");
    let b = lab.add_workload("b").expect("b");
    attach_ok(&lab, "blue", 0, &a, &[]);
    attach_ok(&lab, "red", 0, &a, &["--ifname", "eth1"]);
    let b_blue = attach_ok(&lab, "blue", 1, &b, &[]);
    let b_red = attach_ok(&lab, "red", 1, &b, &["--ifname", "eth1"]);
    let eps = endpoints(&lab);
    let flag = |net: &str, ns: &str| {
        eps.iter()
            .find(|e| e["network"] == net && e["netns"] == ns)
            .map(|e| e["default_route"].clone())
    };
    assert_eq!(flag("blue", &a), Some(Value::Bool(true)));
    assert_eq!(flag("red", &a), Some(Value::Bool(false)));
    let table = lab.ctl_ok(&["endpoint", "ls", "--host", "h1"]).expect("ls");
    assert!(
        table.contains("ROUTE") && table.contains("default") && table.contains("network"),
        "{table}"
    );

    let routes = |ns: &str| stdout(&exec(ns, "ip", &["route", "show"]).expect("ip route"));
    let mut checks = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let r = routes(&a);
        assert_eq!(r.matches("default").count(), 1, "{r}");
        assert!(r.contains("default via 10.1.0.1 dev eth0"), "{r}");
        assert!(r.contains("10.2.0.0/16 via 10.2.0.1 dev eth1"), "{r}");
        assert!(lab.ping(&a, b_blue), "a -> b on blue");
        assert!(lab.ping(&a, b_red), "a -> b on red");
        checks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "{checks} checks over {:?} (resync 1 s): one default route, both networks reach h2",
        started.elapsed()
    );

    // --default-route moves it to green; blue is then routed by its CIDR.
    attach_ok(&lab, "green", 0, &a, &["--ifname", "eth2", "--default-route"]);
    let moved = Lab::wait_until(Duration::from_secs(15), || {
        let r = routes(&a);
        r.matches("default").count() == 1
            && r.contains("default via 10.3.0.1 dev eth2")
            && r.contains("10.1.0.0/16 via 10.1.0.1 dev eth0")
            && r.contains("10.2.0.0/16 via 10.2.0.1 dev eth1")
    });
    assert!(
        moved.is_some(),
        "routes after --default-route:\n{}\n{}",
        routes(&a),
        lab.logs()
    );
    println!("default route moved to green in {:?}", moved.unwrap_or_default());
    assert!(
        lab.ping(&a, b_blue) && lab.ping(&a, b_red),
        "both networks still reach h2"
    );
    // Detaching the holder gives it to the oldest endpoint left: blue.
    lab.ctl_ok(&["endpoint", "detach", "green", "--host", "h1", "--netns", &a])
        .expect("detach green");
    let back = Lab::wait_until(Duration::from_secs(15), || {
        let r = routes(&a);
        r.matches("default").count() == 1
            && r.contains("default via 10.1.0.1 dev eth0")
            && !r.contains("10.1.0.0/16 via")
    });
    assert!(back.is_some(), "routes after detaching green:\n{}", routes(&a));
    assert_eq!(
        endpoint_of(&lab, "blue", &a).map(|e| e["default_route"].clone()),
        Some(Value::Bool(true))
    );

    // A namespace with a default route of its own: overlay routes only its network.
    let c = lab.add_workload("c").expect("c");
    exec(
        &c,
        "ip",
        &["link", "add", "x0", "type", "veth", "peer", "name", "x1"],
    )
    .expect("veth");
    exec(&c, "ip", &["addr", "add", "192.168.77.2/24", "dev", "x0"]).expect("addr");
    exec(&c, "ip", &["link", "set", "x0", "up"]).expect("up");
    exec(&c, "ip", &["link", "set", "x1", "up"]).expect("up");
    exec(&c, "ip", &["route", "add", "default", "via", "192.168.77.1"]).expect("own default");
    attach_ok(&lab, "blue", 0, &c, &[]);
    std::thread::sleep(Duration::from_secs(3));
    let r = routes(&c);
    assert!(
        r.contains("default via 192.168.77.1 dev x0"),
        "its own default route stays: {r}"
    );
    assert_eq!(r.matches("default").count(), 1, "{r}");
    assert!(r.contains("10.1.0.0/16 via 10.1.0.1 dev eth0"), "{r}");
    assert!(lab.ping(&c, b_blue), "c reaches h2 on blue by the network route");
    let _ = exec_any(&c, "true", &[]);
}

/// The Agent SyncEndpoints and AllocateAddress calls are reachable by every agent
/// certificate: a host reports, and removes, only its own endpoints, inside its own lease;
/// every other attempt is refused and changes nothing. (Mutual TLS, one replica on loopback,
/// no agents needed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_own_host_reports_and_releases_its_endpoints() {
    use overlay_lab::controllers::{ControllerCluster, client, free_port};
    use overlay_lab::pki::{CertFiles, Pki};
    use overlay_proto::connect::Controllers;
    use overlay_proto::v1 as pb;
    use overlay_proto::v1::agent_client::AgentClient;
    use overlay_proto::v1::overlay_client::OverlayClient;
    use tonic::Code;

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::create(&dir.path().join("pki")).expect("CA");
    let addr = format!("127.0.0.1:{}", free_port().expect("port"));
    let mut cluster = ControllerCluster::new(vec![(addr, None)], dir.path()).expect("cluster");
    let files = pki
        .issue("controller", "c1", &["127.0.0.1", "localhost"])
        .expect("controller cert");
    cluster.set_replica_tls(1, &files).expect("replica tls");
    let admin = pki.issue("admin", "alice", &[]).expect("admin cert");
    cluster.set_client_tls(Some(admin.load().expect("admin").client_config()));
    cluster.start_all().expect("start");
    cluster
        .wait_leader(1, Duration::from_secs(30))
        .await
        .expect("leader");
    let as_client = |files: &CertFiles| -> Controllers {
        client(&cluster.addrs())
            .expect("client")
            .with_tls(Some(files.load().expect("certs").client_config()))
    };
    let admin_c = as_client(&admin);
    let h1 = as_client(&pki.issue("agent", "h1", &["192.0.2.41"]).expect("cert"));
    let h2 = as_client(&pki.issue("agent", "h2", &["192.0.2.42"]).expect("cert"));
    for (c, name, ip) in [(&h1, "h1", "192.0.2.41"), (&h2, "h2", "192.0.2.42")] {
        overlay_lab::api::try_register(c, name, ip)
            .await
            .expect("register");
    }
    let create = pb::CreateNetworkRequest {
        name: "blue".into(),
        mode: pb::NetworkMode::Vxlan as i32,
        subnet: "10.1.0.0/16".into(),
        ..Default::default()
    };
    admin_c
        .call(|ch| {
            let req = create.clone();
            async move { OverlayClient::new(ch).create_network(req).await }
        })
        .await
        .expect("create network");
    async fn sync(
        c: &Controllers,
        host: &str,
        full: bool,
        endpoints: Vec<pb::HostEndpoint>,
        removed: &[&str],
    ) -> Result<pb::SyncEndpointsResponse, tonic::Status> {
        let req = pb::SyncEndpointsRequest {
            host_name: host.into(),
            full,
            endpoints,
            removed: removed.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        };
        c.call(|ch| {
            let req = req.clone();
            async move { AgentClient::new(ch).sync_endpoints(req).await }
        })
        .await
        .map(|r| r.into_inner())
    }
    let held = |key: &str, ip: &str, report: pb::EndpointReport| pb::HostEndpoint {
        key: key.into(),
        host_id: 1,
        network: "blue".into(),
        netns: "/run/netns/w1".into(),
        ifname: "eth0".into(),
        ip: ip.into(),
        default_route: true,
        owner: "cni".into(),
        names: vec![],
        ports: vec![],
        report: report as i32,
        message: if report == pb::EndpointReport::Gone {
            "namespace w1 not found".into()
        } else {
            String::new()
        },
    };
    let held_by = || async {
        let eps = overlay_lab::api::endpoints(&admin_c).await.expect("list");
        eps.into_iter().find(|e| e.key == "c1/eth0" && e.host == "h1")
    };
    // h1 holds 10.1.0.0/24 (registered first), h2 10.1.1.0/24.
    sync(
        &h1,
        "h1",
        false,
        vec![held("c1/eth0", "10.1.0.2", pb::EndpointReport::Ready)],
        &[],
    )
    .await
    .expect("h1 reports its endpoint");
    assert!(held_by().await.is_some());
    let mut refused = 0;
    let mut check =
        |what: &str, result: Result<pb::SyncEndpointsResponse, tonic::Status>, code: Code| match result {
            Ok(r) => panic!("{what}: accepted ({r:?})"),
            Err(s) => {
                assert_eq!(s.code(), code, "{what}: {}", s.message());
                println!("refused  {what}: {:?} {}", s.code(), s.message());
                refused += 1;
            }
        };
    check(
        "h2 reports as h1",
        sync(&h2, "h1", true, vec![], &[]).await,
        Code::PermissionDenied,
    );
    check(
        "an admin calls the agent API",
        sync(&admin_c, "h1", true, vec![], &[]).await,
        Code::PermissionDenied,
    );
    // As itself, h2 touches only its own records: a full report of nothing, a removal of h1's
    // key and a report of h1's address change nothing of h1's.
    sync(&h2, "h2", true, vec![], &["c1/eth0"])
        .await
        .expect("h2 as itself");
    let answer = sync(
        &h2,
        "h2",
        false,
        vec![held("c1/eth0", "10.1.0.2", pb::EndpointReport::Ready)],
        &[],
    )
    .await
    .expect("h2 as itself");
    assert_eq!(answer.refused.len(), 1, "{answer:?}");
    assert!(
        answer.refused[0].message.contains("outside host \"h2\"'s lease"),
        "{answer:?}"
    );
    println!(
        "refused  h2 reports h1's address as its own: {}",
        answer.refused[0].message
    );
    refused += 1;
    let allocate = pb::AllocateAddressRequest {
        host_name: "h2".into(),
        network: "blue".into(),
        key: "x/eth0".into(),
        netns: "/run/netns/x".into(),
        ifname: "eth0".into(),
        ..Default::default()
    };
    let asked = h2
        .call(|ch| {
            let req = allocate.clone();
            async move { AgentClient::new(ch).allocate_address(req).await }
        })
        .await;
    assert_eq!(
        asked.map(|_| ()).map_err(|s| s.code()),
        Err(Code::InvalidArgument),
        "a lease network's address from the controller"
    );
    refused += 1;
    let kept = held_by().await.expect("every refusal leaves h1's endpoint");
    assert_eq!(kept.state, pb::EndpointState::Ready as i32);

    // h1's own report of it gone is heard (and shown by doctor), and its removal frees it.
    sync(
        &h1,
        "h1",
        false,
        vec![held("c1/eth0", "10.1.0.2", pb::EndpointReport::Gone)],
        &[],
    )
    .await
    .expect("h1 reports it gone");
    let gone = held_by().await.expect("still held while gone");
    assert_eq!(gone.state, pb::EndpointState::Gone as i32);
    assert_eq!(gone.message, "namespace w1 not found");
    let doctor = admin_c
        .call(|ch| async move { OverlayClient::new(ch).doctor(pb::DoctorRequest {}).await })
        .await
        .expect("doctor")
        .into_inner();
    assert_eq!(doctor.gone_endpoints.len(), 1, "{doctor:?}");
    sync(&h1, "h1", false, vec![], &["c1/eth0"])
        .await
        .expect("h1 removes it");
    assert!(held_by().await.is_none(), "released");
    println!("{refused} reports refused; the owner's own removal freed 10.1.0.2");
}

/// The MAC of each bridge port's device (`ip -j link`), and the bridge's own.
fn bridge_macs(lab: &Lab, host: usize) -> (String, Vec<String>) {
    let links: Value =
        serde_json::from_str(&lab.on_host(host, "ip", &["-j", "link", "show"]).expect("ip link"))
            .expect("ip -j link");
    let links = links.as_array().cloned().unwrap_or_default();
    let name = |l: &Value| l["ifname"].as_str().unwrap_or_default().to_string();
    let bridge = links
        .iter()
        .find(|l| name(l).starts_with("ovb-"))
        .map(|l| l["address"].as_str().unwrap_or_default().to_string())
        .expect("an overlay bridge");
    let ports = links
        .iter()
        .filter(|l| name(l).starts_with("ovv-"))
        .map(|l| l["address"].as_str().unwrap_or_default().to_string())
        .collect();
    (bridge, ports)
}

/// A bridge that takes its ports' lowest MAC changes it when that port goes, and every other
/// workload of the host loses its gateway (its ARP entry names a MAC nobody answers to) until
/// the entry expires: found with Docker, where a `docker rm -f` cut its neighbours off. The
/// bridge has a MAC of its own, derived from the gateway, whatever ports come and go.
#[test]
fn gateway_mac_stays_when_ports_come_and_go() {
    let mut lab = lab(2, "gmac", 10, "30s");
    network(&lab, "blue", "10.63.0.0/16");
    let far = lab.add_workload("far").unwrap();
    let far_ip = attach_ok(&lab, "blue", 1, &far, &[]);
    let mut near = Vec::new();
    for i in 0..6 {
        let ns = lab.add_workload(&format!("w{i}")).unwrap();
        attach_ok(&lab, "blue", 0, &ns, &[]);
        near.push(ns);
    }
    let keeper = near.pop().expect("a workload that stays");
    let gateway: Ipv4Addr = endpoint_of(&lab, "blue", &keeper).expect("record")["gateway"]
        .as_str()
        .and_then(|g| g.parse().ok())
        .expect("gateway");
    let want = overlay_proto::ipam::mac_from_ip(gateway).to_string();
    let (mac, ports) = bridge_macs(&lab, 0);
    assert_eq!(mac, want, "the bridge's MAC is derived from its gateway");
    println!("bridge MAC {mac} (gateway {gateway}); port MACs {ports:?}");
    assert!(lab.ping(&keeper, far_ip), "keeper reaches far before");
    // The keeper has the gateway's MAC cached; every other port goes, lowest MAC first.
    for ns in near {
        lab.ctl_ok(&[
            "endpoint",
            "detach",
            "blue",
            "--host",
            &lab.hosts[0].name,
            "--netns",
            &ns,
        ])
        .unwrap();
        assert_eq!(
            bridge_macs(&lab, 0).0,
            want,
            "the bridge's MAC moved when {ns} left"
        );
        assert!(
            lab.ping(&keeper, far_ip),
            "keeper lost its gateway when {ns} left"
        );
    }
    let neigh = stdout(&exec(&keeper, "ip", &["neigh", "show", &gateway.to_string()]).unwrap());
    assert!(neigh.contains(&want), "keeper's entry for the gateway: {neigh}");
    println!("five ports detached: the bridge kept {want} and the keeper reached {far_ip} after each");
}
