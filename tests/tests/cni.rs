//! overlay-cni against real agents: the CNI spec's commands with their results and errors,
//! real podman on two simulated hosts (by address and by container name), a container started
//! while every controller is down, and 200 parallel ADDs on one host while its agent is killed
//! (no address ever twice).
//! Needs `cargo build --workspace` (the plugin binary) and root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use overlay_lab::cni::{self, Answer};
use overlay_lab::lab::{Lab, LabConfig};
use serde_json::{Value, json};

fn lab(hosts: usize, tag: &'static str) -> Lab {
    Lab::start_with_agents(LabConfig {
        hosts,
        controllers: 1,
        tag,
        resync_secs: 10,
    })
    .expect("lab")
}

fn ns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

fn add(conf: &Value, container: &str, netns: &str, args: &str) -> Answer {
    cni::invoke("ADD", container, netns, "eth0", args, conf).expect("run overlay-cni")
}

fn address_of(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {result}"))
}

/// The spec's commands, each answer checked: results with interfaces (mac, sandbox), ips
/// (gateway) and routes; idempotent retries and DELs; every error a spec error object with its
/// code and one line.
#[test]
fn cni_commands_against_a_real_agent() {
    let mut lab = lab(2, "cni");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.30.0.0/16",
        "--host-prefix",
        "28",
    ])
    .unwrap();
    let conf = cni::plugin_conf("blue", &lab.local_socket(0), "1.0.0");
    let c1 = lab.add_workload("k1").unwrap();

    // ADD: a full result, and the container is on the overlay.
    let t = Instant::now();
    let a = add(&conf, "c1", &ns_path(&c1), "");
    let took = t.elapsed();
    assert!(a.ok, "ADD failed: {}", a.stdout);
    let r = &a.json;
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["interfaces"][0]["name"], "eth0");
    assert_eq!(r["interfaces"][0]["sandbox"], ns_path(&c1));
    let ip = address_of(r);
    assert!(
        "10.30.0.0/28"
            .parse::<ipnetwork::Ipv4Network>()
            .unwrap()
            .contains(ip),
        "{r}"
    );
    assert_eq!(
        r["interfaces"][0]["mac"],
        overlay_proto::ipam::mac_from_ip(ip).to_string()
    );
    assert_eq!(r["ips"][0]["gateway"], "10.30.0.1");
    assert_eq!(r["ips"][0]["interface"], 0);
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    println!("ADD answered in {took:?}: {ip}");
    assert!(lab.ping(&c1, "10.30.0.1".parse().unwrap()), "the gateway answers");
    let far = lab.add_workload("far").unwrap();
    let far_ip = lab.attach("blue", 1, &far).unwrap();
    assert!(lab.ping(&c1, far_ip), "a workload on h2 answers");

    // A retried ADD is the same endpoint; CHECK agrees with the ADD's result.
    let again = add(&conf, "c1", &ns_path(&c1), "");
    assert!(again.ok && address_of(&again.json) == ip, "{}", again.stdout);
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = r.clone();
    let check = cni::invoke("CHECK", "c1", &ns_path(&c1), "eth0", "", &with_prev).unwrap();
    assert!(
        check.ok && check.stdout.trim().is_empty(),
        "CHECK: {}",
        check.stdout
    );

    // The controller hears of it: `endpoint ls` shows it with the CNI key.
    let listed = Lab::wait_until(Duration::from_secs(10), || {
        lab.ctl_json(&["endpoint", "ls", "--network", "blue"])
            .map(|v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|e| e["key"] == "c1/eth0" && e["owner"] == "cni"))
            })
            .unwrap_or(false)
    });
    assert!(listed.is_some(), "endpoint ls never showed the CNI endpoint");

    // A requested address; outside the lease it is refused (101).
    let c2 = lab.add_workload("k2").unwrap();
    let pinned = add(&conf, "c2", &ns_path(&c2), "IgnoreUnknown=1;IP=10.30.0.9");
    assert!(
        pinned.ok && address_of(&pinned.json) == "10.30.0.9".parse::<Ipv4Addr>().unwrap(),
        "{}",
        pinned.stdout
    );
    let c3 = lab.add_workload("k3").unwrap();
    let refused = add(&conf, "c3", &ns_path(&c3), "IP=10.30.0.20");
    assert_eq!(refused.code(), 101, "{}", refused.stdout);
    let taken = add(&conf, "c3", &ns_path(&c3), "IP=10.30.0.9");
    assert_eq!(taken.code(), 101, "{}", taken.stdout);

    // Errors, each with its code and one line.
    let unknown = add(
        &cni::plugin_conf("nope", &lab.local_socket(0), "1.0.0"),
        "c3",
        &ns_path(&c3),
        "",
    );
    assert_eq!(unknown.code(), 7, "{}", unknown.stdout);
    assert!(
        unknown.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown network"),
        "{}",
        unknown.stdout
    );
    let not_ns = add(&conf, "c4", "/etc/passwd", "");
    assert_eq!(not_ns.code(), 102, "{}", not_ns.stdout);
    assert!(
        not_ns.json["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("not a network namespace"),
        "{}",
        not_ns.stdout
    );
    let host_ns = add(&conf, "c4", &ns_path(&lab.hosts[0].ns), "");
    assert_eq!(
        host_ns.code(),
        102,
        "the host's own namespace: {}",
        host_ns.stdout
    );
    for a in [&unknown, &not_ns, &host_ns, &refused] {
        assert!(
            !a.json["msg"].as_str().unwrap_or_default().contains('\n'),
            "{}",
            a.stdout
        );
    }

    // The /28 holds 13 endpoints: exhaustion is code 100, and nothing is left behind by it.
    let mut filled = Vec::new();
    let exhausted = loop {
        let ns = lab.add_workload(&format!("f{}", filled.len())).unwrap();
        let a = add(&conf, &format!("f{}", filled.len()), &ns_path(&ns), "");
        if !a.ok {
            break a;
        }
        filled.push(ns);
        assert!(filled.len() < 14, "more endpoints than a /28 holds");
    };
    assert_eq!(exhausted.code(), 100, "{}", exhausted.stdout);
    println!(
        "pool exhausted after {} more endpoints: {}",
        filled.len(),
        exhausted.json["msg"]
    );

    // DEL frees the address and removes the veth; a second DEL and a DEL of a container that
    // never was are fine; CHECK after DEL says the container is unknown (3).
    let veths = |lab: &Lab| {
        lab.on_host(0, "ip", &["-o", "link", "show"])
            .unwrap()
            .matches(": ovv-")
            .count()
    };
    let before = veths(&lab);
    let del = cni::invoke("DEL", "c1", &ns_path(&c1), "eth0", "", &conf).unwrap();
    assert!(del.ok && del.stdout.trim().is_empty(), "DEL: {}", del.stdout);
    assert_eq!(veths(&lab), before - 1, "the veth goes with DEL");
    assert!(
        cni::invoke("DEL", "c1", &ns_path(&c1), "eth0", "", &conf)
            .unwrap()
            .ok,
        "DEL twice"
    );
    assert!(
        cni::invoke("DEL", "never", "", "eth0", "", &conf).unwrap().ok,
        "DEL of an unknown container"
    );
    let gone = cni::invoke("CHECK", "c1", &ns_path(&c1), "eth0", "", &with_prev).unwrap();
    assert_eq!(gone.code(), 3, "{}", gone.stdout);
    // Free again once the controller has the removal: until then its record of the address
    // is the agent's last guard against giving it out twice (a lost or rebuilt state dir).
    let t = Instant::now();
    let reuse = Lab::wait_until(Duration::from_secs(10), || add(&conf, "c5", &ns_path(&c3), "").ok);
    assert!(reuse.is_some(), "the freed address never became available again");
    println!("freed address given again {:?} after DEL", t.elapsed());

    // STATUS (spec 1.1.0) and GC: GC keeps only the listed attachments of CNI's own.
    let v11 = cni::plugin_conf("blue", &lab.local_socket(0), "1.1.0");
    assert!(cni::invoke("STATUS", "", "", "", "", &v11).unwrap().ok);
    let down = cni::invoke(
        "STATUS",
        "",
        "",
        "",
        "",
        &cni::plugin_conf("nope", &lab.local_socket(0), "1.1.0"),
    )
    .unwrap();
    assert_eq!(down.code(), 50, "{}", down.stdout);
    let mut gc = v11.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c2", "ifname": "eth0"}]);
    let collected = cni::invoke("GC", "", "", "", "", &gc).unwrap();
    assert!(collected.ok, "GC: {}", collected.stdout);
    let left: Vec<String> = lab
        .ctl_json(&["endpoint", "ls", "--host", "h1"])
        .map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["owner"] == "cni")
                .filter_map(|e| e["key"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let settled = Lab::wait_until(Duration::from_secs(10), || {
        lab.ctl_json(&["endpoint", "ls", "--host", "h1"])
            .map(|v| {
                let keys: Vec<&str> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["owner"] == "cni")
                    .filter_map(|e| e["key"].as_str())
                    .collect();
                keys == ["c2/eth0"]
            })
            .unwrap_or(false)
    });
    assert!(settled.is_some(), "GC left {left:?}");
    let requested = lab.ctl_json(&["endpoint", "ls", "--host", "h1"]).unwrap();
    assert!(
        requested.as_array().unwrap().iter().all(|e| e["owner"] == "cni"),
        "GC touched only CNI's own: {requested}"
    );
}

/// 200 ADDs at once on one host while its agent is SIGKILLed and started again: every ADD
/// either answered with an address or failed with a spec error; no address was ever given to
/// two containers, and every answered one is what the agent and the controller hold.
#[test]
fn parallel_adds_while_the_agent_is_killed_never_share_an_address() {
    const ADDS: usize = 200;
    let mut lab = lab(1, "cnp");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.31.0.0/16",
        "--host-prefix",
        "23",
    ])
    .unwrap();
    let conf = cni::plugin_conf("blue", &lab.local_socket(0), "1.0.0");
    let namespaces: Vec<String> = (0..ADDS)
        .map(|i| lab.add_workload(&format!("p{i}")).unwrap())
        .collect();
    // Each container is ADDed as a runtime that retries "try again later" (11) would: the
    // agent's restart makes some ADDs fail that way, and their retries must not clash either.
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = namespaces
        .chunks(ADDS / 20)
        .enumerate()
        .map(|(w, chunk)| {
            let (conf, chunk, answered) = (conf.clone(), chunk.to_vec(), answered.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut refusals = BTreeMap::new();
                for (i, ns) in chunk.iter().enumerate() {
                    let id = format!("p{}", w * (ADDS / 20) + i);
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let a = loop {
                        let a = add(&conf, &id, &ns_path(ns), "");
                        if a.ok || a.code() != 11 || Instant::now() > deadline {
                            break a;
                        }
                        *refusals.entry(a.code()).or_insert(0usize) += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    };
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    out.push((id, a));
                }
                (out, refusals)
            })
        })
        .collect();
    while answered.load(std::sync::atomic::Ordering::Relaxed) < ADDS / 4 {
        std::thread::sleep(Duration::from_millis(5));
    }
    lab.kill_agent(0);
    let killed_at = (t.elapsed(), answered.load(std::sync::atomic::Ordering::Relaxed));
    std::thread::sleep(Duration::from_millis(300));
    lab.start_agent(0).unwrap();
    let mut answers: Vec<(String, Answer)> = Vec::new();
    let mut retried: BTreeMap<u64, usize> = BTreeMap::new();
    for w in workers {
        let (out, refusals) = w.join().unwrap();
        answers.extend(out);
        for (code, n) in refusals {
            *retried.entry(code).or_default() += n;
        }
    }
    let took = t.elapsed();
    let mut got: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (id, a) in &answers {
        assert!(a.ok, "{id} never succeeded: {}", a.stdout);
        let ip = address_of(&a.json);
        if let Some(other) = got.insert(ip, id.clone()) {
            panic!("{ip} given to {other} and {id}");
        }
    }
    println!(
        "{ADDS} parallel ADDs, agent SIGKILLed after {:?} ({} answered), restarted 300 ms later: all {} answered in {took:?}, retries by code {retried:?}",
        killed_at.0,
        killed_at.1,
        got.len()
    );
    // What the controller holds agrees: one address per container, the one it was told.
    let held = Lab::wait_until(Duration::from_secs(20), || {
        lab.ctl_json(&["endpoint", "ls", "--network", "blue"])
            .map(|v| v.as_array().map(|a| a.len()) == Some(ADDS))
            .unwrap_or(false)
    });
    assert!(held.is_some(), "the controller does not hold {ADDS} endpoints");
    let listed = lab.ctl_json(&["endpoint", "ls", "--network", "blue"]).unwrap();
    let mut seen = BTreeSet::new();
    for e in listed.as_array().unwrap() {
        let ip: Ipv4Addr = e["ip"].as_str().unwrap().parse().unwrap();
        assert!(seen.insert(ip), "{ip} recorded twice");
        let key = e["key"].as_str().unwrap();
        assert_eq!(
            got.get(&ip).map(|id| format!("{id}/eth0")).as_deref(),
            Some(key),
            "{ip}"
        );
    }
    // And every one of them is reachable from the host's gateway side: a sample pings.
    for ns in namespaces.iter().step_by(40) {
        assert!(
            lab.ping(ns, "10.31.0.1".parse().unwrap()),
            "{ns} cannot reach its gateway"
        );
    }
}

/// The reachability check from inside a podman container: ICMP from its namespace (the
/// container's process pid, as podman reports it).
fn container_pid(
    pm: &overlay_lab::podman::Podman,
    mount_ns: &overlay_lab::mountns::MountNs,
    name: &str,
) -> u32 {
    let out = pm
        .run(mount_ns, &["inspect", "--format", "{{.State.Pid}}", name])
        .expect("podman inspect");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid for {name}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn container_ip(
    pm: &overlay_lab::podman::Podman,
    mount_ns: &overlay_lab::mountns::MountNs,
    name: &str,
) -> Ipv4Addr {
    let out = pm
        .run(
            mount_ns,
            &[
                "inspect",
                "--format",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                name,
            ],
        )
        .expect("podman inspect");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no address for {name}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// ICMP echo from the network namespace of process `pid` (a container's).
/// The body of `GET http://host:port/` from namespace `ns` (2 s timeout), trimmed.
fn http_get(ns: &str, host: &str, port: u16) -> Option<String> {
    let script = "import sys, urllib.request\n\
        print(urllib.request.urlopen(f'http://{sys.argv[1]}:{sys.argv[2]}/', timeout=2).read().decode().strip())";
    let out = overlay_lab::netns::exec_any(ns, "python3", &["-c", script, host, &port.to_string()]).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn ping_from_pid(pid: u32, ip: Ipv4Addr) -> bool {
    let path = format!("/proc/{pid}/ns/net");
    let Ok(file) = std::fs::File::open(&path) else {
        return false;
    };
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
            && overlay_agent::probe::echo(
                Ipv4Addr::UNSPECIFIED.into(),
                ip.into(),
                56,
                1,
                Duration::from_secs(1),
            )
            .is_ok_and(|s| s.received == 1)
    })
    .join()
    .unwrap_or(false)
}

struct PodmanHost {
    podman: overlay_lab::podman::Podman,
}

/// Real podman (its CNI backend) on two simulated hosts, each in a mount namespace of its own
/// with its agent inside: containers started with `--network blue` reach each other across
/// hosts; `podman rm -f` removes the veth and frees the address; containers keep working
/// through an agent restart; and with every controller stopped a new container still starts
/// and reaches the other host, and shows up in `endpoint ls` once the controllers are back.
#[test]
fn podman_containers_on_two_hosts() {
    if !overlay_lab::prereq::on_path("podman") {
        panic!("podman is not installed: apt-get install podman (CI installs it)");
    }
    let mut lab = Lab::start(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "pdm",
        resync_secs: 10,
    })
    .expect("lab");
    let plugins = cni::plugin_dir(lab.dir()).unwrap();
    let mut hosts = Vec::new();
    for h in 0..2 {
        lab.give_mount_namespace(h).unwrap();
        lab.start_agent(h).unwrap();
        let dir = lab.dir().join(format!("podman-h{}", h + 1));
        let podman =
            overlay_lab::podman::Podman::new(lab.hosts[h].mount_ns.as_ref().unwrap(), &dir, &plugins)
                .expect("podman");
        podman
            .add_network("blue", &cni::conflist("blue", &lab.local_socket(h)).unwrap())
            .unwrap();
        hosts.push(PodmanHost { podman });
    }
    lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.32.0.0/16",
    ])
    .unwrap();
    let run = |lab: &Lab, h: usize, name: &str| {
        let m = lab.hosts[h].mount_ns.as_ref().unwrap();
        let t = Instant::now();
        let out = hosts[h]
            .podman
            .run_container(m, name, &["--network", "blue"], &["sleep", "3600"])
            .expect("podman run");
        assert!(
            out.status.success(),
            "podman run {name} on h{}: {}",
            h + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    };
    let took = run(&lab, 0, "c1");
    run(&lab, 1, "c2");
    let (ip1, ip2, pid1, pid2) = {
        let (m1, m2) = (
            lab.hosts[0].mount_ns.as_ref().unwrap(),
            lab.hosts[1].mount_ns.as_ref().unwrap(),
        );
        (
            container_ip(&hosts[0].podman, m1, "c1"),
            container_ip(&hosts[1].podman, m2, "c2"),
            container_pid(&hosts[0].podman, m1, "c1"),
            container_pid(&hosts[1].podman, m2, "c2"),
        )
    };
    println!("podman run c1 on h1 took {took:?}: c1 {ip1}, c2 {ip2}");
    assert!(ping_from_pid(pid1, ip2), "c1 on h1 cannot reach c2 on h2");
    assert!(ping_from_pid(pid2, ip1), "c2 on h2 cannot reach c1 on h1");

    // Names: podman passes the container name through the aliases capability; c1 on h1 finds
    // c2 on h2 by name, through the DNS the ADD result named.
    let m1 = lab.hosts[0].mount_ns.as_ref().unwrap();
    let resolv = hosts[0]
        .podman
        .run(m1, &["exec", "c1", "cat", "/etc/resolv.conf"])
        .unwrap();
    let resolv = String::from_utf8_lossy(&resolv.stdout).to_string();
    let gateway = lab
        .ctl_json(&["endpoint", "ls"])
        .ok()
        .and_then(|v| {
            v.as_array()
                .and_then(|a| a.iter().find(|e| e["ip"] == ip1.to_string()))
                .and_then(|e| e["gateway"].as_str().map(str::to_string))
        })
        .expect("c1's gateway");
    assert!(
        resolv.contains(&format!("nameserver {gateway}")) && resolv.contains("search blue.overlay"),
        "podman wrote the result's dns into resolv.conf: {resolv}"
    );
    let mut text = String::new();
    let found = Lab::wait_until(Duration::from_secs(10), || {
        let out = hosts[0]
            .podman
            .run(m1, &["exec", "c1", "nslookup", "c2"])
            .unwrap();
        text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        text.contains(&ip2.to_string())
    });
    assert!(found.is_some(), "c1 on h1 cannot resolve c2: {text}");
    let out = hosts[0]
        .podman
        .run(m1, &["exec", "c1", "ping", "-c", "1", "-W", "2", "c2"])
        .unwrap();
    assert!(
        out.status.success(),
        "c1 cannot ping c2 by name: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!("podman containers by name across hosts: c1 on h1 resolves and pings c2 on h2");

    // `podman run -p`: portMappings through CNI, published at h1's underlay address.
    let m1 = lab.hosts[0].mount_ns.as_ref().unwrap();
    let out = hosts[0]
        .podman
        .run_container(
            m1,
            "web",
            &["--network", "blue", "-p", "8085:80"],
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo hello-from-podman > /www/index.html && exec httpd -f -p 80 -h /www",
            ],
        )
        .expect("podman run web");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let h2 = lab.hosts[1].ns.clone();
    let mut page = None;
    Lab::wait_until(Duration::from_secs(10), || {
        page = http_get(&h2, "192.0.2.11", 8085);
        page.is_some()
    });
    println!("h2 -> 192.0.2.11:8085 (podman -p 8085:80): {page:?}");
    assert_eq!(
        page.as_deref(),
        Some("hello-from-podman"),
        "published: {}\nendpoints: {}\nweb: {}",
        lab.on_host(0, "nft", &["list", "map", "inet", "overlay", "published"])
            .unwrap_or_default(),
        lab.ctl_ok(&["endpoint", "ls", "--host", "h1"])
            .unwrap_or_default(),
        hosts[0]
            .podman
            .run(m1, &["logs", "web"])
            .map(|o| String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout))
            .unwrap_or_default()
    );
    let out = hosts[0].podman.run(m1, &["rm", "-f", "-t", "0", "web"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        http_get(&h2, "192.0.2.11", 8085),
        None,
        "8085 answers after podman rm"
    );

    // podman rm -f: the veth goes and the address is free.
    let veths = |lab: &Lab| {
        lab.on_host(0, "ip", &["-o", "link", "show"])
            .unwrap()
            .matches(": ovv-")
            .count()
    };
    run(&lab, 0, "c3");
    let m1 = lab.hosts[0].mount_ns.as_ref().unwrap();
    let ip3 = container_ip(&hosts[0].podman, m1, "c3");
    let before = veths(&lab);
    let out = hosts[0].podman.run(m1, &["rm", "-f", "-t", "0", "c3"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(veths(&lab), before - 1, "the veth goes with the container");
    let gone = Lab::wait_until(Duration::from_secs(10), || {
        lab.ctl_json(&["endpoint", "ls"])
            .map(|v| !v.as_array().unwrap().iter().any(|e| e["ip"] == ip3.to_string()))
            .unwrap_or(false)
    });
    assert!(gone.is_some(), "{ip3} still recorded after podman rm -f");

    // An agent restart leaves running containers connected.
    lab.stop_agent(0);
    lab.start_agent(0).unwrap();
    let status = cni::plugin_conf("blue", &lab.local_socket(0), "1.1.0");
    let ready = Lab::wait_until(Duration::from_secs(30), || {
        cni::invoke("STATUS", "", "", "", "", &status).is_ok_and(|a| a.ok)
    });
    assert!(ready.is_some(), "the restarted agent never became ready for blue");
    assert!(ping_from_pid(pid1, ip2), "c1 lost c2 through an agent restart");

    // Every controller stopped: a new container still starts and reaches the other host.
    lab.controllers.stop(1).unwrap();
    let took = run(&lab, 0, "c4");
    let m1 = lab.hosts[0].mount_ns.as_ref().unwrap();
    let ip4 = container_ip(&hosts[0].podman, m1, "c4");
    let pid4 = container_pid(&hosts[0].podman, m1, "c4");
    println!("with every controller stopped, podman run c4 took {took:?}: {ip4}");
    assert!(
        ping_from_pid(pid4, ip2),
        "c4 (started without controllers) cannot reach c2"
    );
    lab.controllers.start_all().unwrap();
    lab.wait_leader(Duration::from_secs(30)).unwrap();
    let listed = Lab::wait_until(Duration::from_secs(30), || {
        lab.ctl_json(&["endpoint", "ls"])
            .map(|v| v.as_array().unwrap().iter().any(|e| e["ip"] == ip4.to_string()))
            .unwrap_or(false)
    });
    println!("c4 listed by the controller {listed:?} after it came back");
    assert!(listed.is_some(), "c4 never showed up in endpoint ls");
    for (h, host) in hosts.iter().enumerate() {
        host.podman.remove_all(lab.hosts[h].mount_ns.as_ref().unwrap());
    }
}
