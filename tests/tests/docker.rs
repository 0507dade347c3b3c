//! The Docker network and IPAM plugin (issue 16) with real dockerd (Debian's docker.io), one
//! per simulated host, each in its host's mount namespace with that host's agent serving
//! `/run/docker/plugins/overlay-net.sock` there (DESIGN.md's recipe): containers on two hosts
//! reach each other on one overlay network, `--ip` and `-p` work, `docker rm -f` frees the
//! address and the veth, one host's `docker network rm` leaves the other's containers alone,
//! and every bad request is refused in docker's own output with nothing left half done.

use std::net::Ipv4Addr;
use std::process::Output;
use std::time::{Duration, Instant};

use overlay_lab::docker::{Dockerd, IMAGE};
use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::mountns::MountNs;

/// POSTs BODY to PATH on the unix socket SOCK (HTTP/1.1); prints the status and the body.
/// A BODY of `@bytes:N` is N bytes of filler.
const PLUGIN_CALL: &str = r#"
import socket, sys
sock, path, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
if body.startswith(b"@bytes:"):
    body = b"x" * int(body[7:])
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sock)
s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: plugin\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk: break
    data += chunk
head, _, rest = data.partition(b"\r\n\r\n")
print(head.split(b" ")[1].decode(), rest.decode(errors="replace"))
"#;

struct Host {
    dockerd: Dockerd,
}

fn ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Asserts that docker failed and said one of `says`.
fn refused(what: &str, out: Output, says: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    println!("refused {what}: {stderr}");
    assert!(!out.status.success(), "{what} succeeded");
    assert!(
        says.iter().any(|s| stderr.contains(s)),
        "{what}: expected one of {says:?} in {stderr:?}"
    );
    stderr
}

fn mount_ns(lab: &Lab, h: usize) -> &MountNs {
    lab.hosts[h].mount_ns.as_ref().expect("mount namespace")
}

fn docker(lab: &Lab, hosts: &[Host], h: usize, args: &[&str]) -> Output {
    hosts[h].dockerd.docker(mount_ns(lab, h), args).expect("docker")
}

fn container_ip(lab: &Lab, hosts: &[Host], h: usize, name: &str) -> Ipv4Addr {
    container_ip_on(lab, hosts, h, name, "blue")
}

/// Container `name`'s address on docker network `network`.
fn container_ip_on(lab: &Lab, hosts: &[Host], h: usize, name: &str, network: &str) -> Ipv4Addr {
    let format = format!("{{{{.NetworkSettings.Networks.{network}.IPAddress}}}}");
    let text = ok(
        "docker inspect",
        docker(lab, hosts, h, &["inspect", "-f", &format, name]),
    );
    text.parse()
        .unwrap_or_else(|_| panic!("{name} has no address on {network}: {text:?}"))
}

fn pings(lab: &Lab, hosts: &[Host], h: usize, from: &str, to: Ipv4Addr) -> bool {
    docker(
        lab,
        hosts,
        h,
        &["exec", from, "ping", "-c", "1", "-W", "2", &to.to_string()],
    )
    .status
    .success()
}

/// Containers `a` and `b` (host, name, address) ping each other, both ways.
fn reach_each_other(lab: &Lab, hosts: &[Host], a: (usize, &str, Ipv4Addr), b: (usize, &str, Ipv4Addr)) {
    for ((h, from, _), (th, to, ip)) in [(a, b), (b, a)] {
        assert!(
            pings(lab, hosts, h, from, ip),
            "{from} on h{} cannot reach {to} ({ip}) on h{}",
            h + 1,
            th + 1
        );
    }
}

fn veths(lab: &Lab, h: usize) -> usize {
    lab.on_host(h, "ip", &["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(": ovv-") || l.contains(": ovr-"))
        .count()
}

fn recorded(lab: &Lab, ip: Ipv4Addr) -> bool {
    lab.ctl_json(&["endpoint", "ls"])
        .map(|v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|e| e["ip"] == ip.to_string()))
        })
        .unwrap_or(false)
}

/// The controller's record of the endpoint with address `ip` (`Null` if none).
fn record_of(lab: &Lab, ip: Ipv4Addr) -> serde_json::Value {
    lab.ctl_json(&["endpoint", "ls"])
        .ok()
        .and_then(|v| {
            v.as_array()
                .and_then(|a| a.iter().find(|e| e["ip"] == ip.to_string()).cloned())
        })
        .unwrap_or_default()
}

fn names_of(lab: &Lab, ip: Ipv4Addr) -> Vec<String> {
    record_of(lab, ip)["names"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The body of `GET http://host:port/` from namespace `ns` (2 s timeout), trimmed.
fn http_get(ns: &str, host: &str, port: u16) -> Option<String> {
    let script = "import sys, urllib.request\n\
        print(urllib.request.urlopen(f'http://{sys.argv[1]}:{sys.argv[2]}/', timeout=2).read().decode().strip())";
    let out = overlay_lab::netns::exec_any(ns, "python3", &["-c", script, host, &port.to_string()]).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn docker_containers_on_two_hosts() {
    if !overlay_lab::prereq::on_path("dockerd") {
        panic!("dockerd is not installed: apt-get install docker.io (CI installs it)");
    }
    let mut lab = Lab::start(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "dk",
        resync_secs: 10,
    })
    .expect("lab");
    overlay_lab::docker::start_plugin_hosts(&mut lab).unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.40.0.0/16",
    ])
    .unwrap();
    let mut hosts = Vec::new();
    for h in 0..2 {
        let dockerd =
            Dockerd::start(mount_ns(&lab, h), lab.dir(), &format!("dockerd-h{}", h + 1)).expect("dockerd");
        hosts.push(Host { dockerd });
    }
    let leases = lab.ctl_json(&["network", "inspect", "blue"]).unwrap()["host_leases"].clone();
    let lease_of = |host: &str| -> ipnetwork::Ipv4Network {
        leases
            .as_array()
            .and_then(|l| l.iter().find(|l| l["host"] == host))
            .and_then(|l| l["subnet"].as_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no lease of {host} in {leases}"))
    };
    let (lease1, lease2) = (lease_of("h1"), lease_of("h2"));

    // Each host joins its docker network "blue" to overlay network blue (the overlay CIDR as
    // --subnet, so that --ip works), then runs a container on it.
    for h in 0..2 {
        let t = Instant::now();
        ok(
            "docker network create",
            docker(
                &lab,
                &hosts,
                h,
                &[
                    "network",
                    "create",
                    "--driver",
                    "overlay-net",
                    "--ipam-driver",
                    "overlay-net",
                    "--subnet",
                    "10.40.0.0/16",
                    "blue",
                ],
            ),
        );
        println!("docker network create on h{}: {:?}", h + 1, t.elapsed());
    }
    let run = |lab: &Lab, hosts: &[Host], h: usize, name: &str, extra: &[&str], cmd: &[&str]| {
        let mut args = vec!["run", "-d", "--name", name, "--network", "blue"];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        let t = Instant::now();
        let out = docker(lab, hosts, h, &args);
        (out, t.elapsed())
    };
    let (out, took) = run(&lab, &hosts, 0, "c1", &[], &["sleep", "3600"]);
    ok("docker run c1", out);
    let (out, _) = run(&lab, &hosts, 1, "c2", &[], &["sleep", "3600"]);
    ok("docker run c2", out);
    let (ip1, ip2) = (
        container_ip(&lab, &hosts, 0, "c1"),
        container_ip(&lab, &hosts, 1, "c2"),
    );
    println!("docker run c1 on h1 took {took:?}: c1 {ip1}, c2 {ip2}");
    assert!(
        lease1.contains(ip1) && lease2.contains(ip2),
        "addresses come from each host's lease"
    );
    reach_each_other(&lab, &hosts, (0, "c1", ip1), (1, "c2", ip2));
    let seen = Lab::wait_until(Duration::from_secs(10), || {
        recorded(&lab, ip1) && recorded(&lab, ip2)
    });
    assert!(seen.is_some(), "endpoint ls does not show the containers");

    // --ip: one of this host's lease.
    let wanted = Ipv4Addr::from(u32::from(lease1.network()) + 50);
    let (out, _) = run(
        &lab,
        &hosts,
        0,
        "c3",
        &["--ip", &wanted.to_string()],
        &["sleep", "3600"],
    );
    ok("docker run --ip", out);
    assert_eq!(container_ip(&lab, &hosts, 0, "c3"), wanted);
    assert!(pings(&lab, &hosts, 0, "c3", ip2), "c3 (--ip) cannot reach c2");

    // -p: published at h1's underlay address, for another host's namespace and h1 itself.
    let (out, _) = run(
        &lab,
        &hosts,
        0,
        "web",
        &["-p", "8086:80"],
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-docker > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    );
    ok("docker run -p", out);
    let h2 = lab.hosts[1].ns.clone();
    let h1 = lab.hosts[0].ns.clone();
    let mut page = None;
    Lab::wait_until(Duration::from_secs(10), || {
        page = http_get(&h2, "192.0.2.11", 8086);
        page.is_some()
    });
    println!("h2 -> 192.0.2.11:8086 (docker run -p 8086:80): {page:?}");
    assert_eq!(page.as_deref(), Some("hello-from-docker"));
    assert_eq!(
        http_get(&h1, "192.0.2.11", 8086).as_deref(),
        Some("hello-from-docker")
    );

    // Names: the plugin learns each container's name and network aliases from dockerd, and
    // every host's agent answers them on its gateway. Docker's own resolver (127.0.0.11 in
    // the container) answers this engine's containers and forwards the rest to the gateway
    // given with --dns.
    let (out, _) = run(
        &lab,
        &hosts,
        1,
        "c5",
        &["--network-alias", "api"],
        &["sleep", "3600"],
    );
    ok("docker run --network-alias", out);
    let ip5 = container_ip(&lab, &hosts, 1, "c5");
    let learnt = Lab::wait_until(Duration::from_secs(10), || {
        names_of(&lab, ip2) == ["c2"]
            && names_of(&lab, ip5) == ["c5", "api"]
            && names_of(&lab, ip1) == ["c1"]
            && !names_of(&lab, container_ip(&lab, &hosts, 0, "web")).is_empty()
    });
    assert!(
        learnt.is_some(),
        "names not recorded: c2 {:?}, c5 {:?}",
        names_of(&lab, ip2),
        names_of(&lab, ip5)
    );
    let gw1 = record_of(&lab, ip1)["gateway"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (out, _) = run(
        &lab,
        &hosts,
        0,
        "asker",
        &["--dns", &gw1, "--dns-search", "blue.overlay"],
        &["sleep", "3600"],
    );
    ok("docker run --dns", out);
    for (name, want) in [("c2", ip2), ("api", ip5), ("c5.blue.overlay", ip5), ("c1", ip1)] {
        let mut text = String::new();
        let found = Lab::wait_until(Duration::from_secs(10), || {
            let out = docker(&lab, &hosts, 0, &["exec", "asker", "nslookup", name]);
            text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains(&want.to_string())
        });
        assert!(
            found.is_some(),
            "asker on h1 cannot resolve {name} ({want}): {text}"
        );
    }
    assert!(
        docker(
            &lab,
            &hosts,
            0,
            &["exec", "asker", "ping", "-c", "1", "-W", "2", "c2"]
        )
        .status
        .success(),
        "asker on h1 cannot ping c2 (h2) by name"
    );
    println!(
        "docker containers by name across engines: asker on h1 resolves and pings c2, api (c5's alias) on h2 through --dns {gw1}"
    );

    // Neither --subnet nor --ipam-opt: the docker network joins the overlay network of its own
    // name (h1) or the one --opt network= names (h2); the pool Docker records is a
    // placeholder, the addresses are each host's lease's.
    lab.ctl_ok(&[
        "network",
        "create",
        "green",
        "--mode",
        "vxlan",
        "--subnet",
        "10.41.0.0/16",
    ])
    .unwrap();
    let plain = |h: usize, args: &[&str]| {
        let mut all = vec![
            "network",
            "create",
            "--driver",
            "overlay-net",
            "--ipam-driver",
            "overlay-net",
        ];
        all.extend_from_slice(args);
        docker(&lab, &hosts, h, &all)
    };
    let joined = Lab::wait_until(Duration::from_secs(10), || plain(0, &["green"]).status.success());
    assert!(
        joined.is_some(),
        "docker network create green (no options) failed"
    );
    ok(
        "docker network create --opt network=green",
        plain(1, &["--opt", "network=green", "g2"]),
    );
    let on = |h: usize, name: &str, network: &str| {
        let out = docker(
            &lab,
            &hosts,
            h,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                network,
                IMAGE,
                "sleep",
                "3600",
            ],
        );
        ok(&format!("docker run --network {network}"), out);
        container_ip_on(&lab, &hosts, h, name, network)
    };
    let (g1, g2) = (on(0, "gc1", "green"), on(1, "gc2", "g2"));
    let green: ipnetwork::Ipv4Network = "10.41.0.0/16".parse().unwrap();
    println!("docker networks without --subnet: gc1 {g1} (green on h1), gc2 {g2} (g2 on h2)");
    assert!(
        green.contains(g1) && green.contains(g2),
        "addresses come from overlay network green"
    );
    reach_each_other(&lab, &hosts, (0, "gc1", g1), (1, "gc2", g2));
    assert!(
        recorded(&lab, g1) && recorded(&lab, g2),
        "endpoint ls does not show gc1 and gc2"
    );
    // What a placeholder stands for is in the agent's store: restarted with dockerd's API
    // out of reach (as when dockerd shuts down before releasing), h1's agent still releases
    // gc1's address.
    let restart_h1 = |lab: &mut Lab, env: &[(&str, &str)]| {
        lab.stop_agent(0);
        lab.start_agent_with_env(0, env).unwrap();
        lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    };
    restart_h1(
        &mut lab,
        &[
            ("OVERLAY_DOCKER_PLUGIN", "true"),
            ("OVERLAY_DOCKER_API", "/nonexistent/docker.sock"),
        ],
    );
    for (h, c) in [(0, "gc1"), (1, "gc2")] {
        ok("docker rm -f", docker(&lab, &hosts, h, &["rm", "-f", c]));
    }
    let freed = Lab::wait_until(Duration::from_secs(10), || {
        !recorded(&lab, g1) && !recorded(&lab, g2)
    });
    assert!(freed.is_some(), "gc1/gc2 still recorded after docker rm -f");
    restart_h1(&mut lab, &[("OVERLAY_DOCKER_PLUGIN", "true")]);
    ok(
        "docker network rm green",
        docker(&lab, &hosts, 0, &["network", "rm", "green"]),
    );
    ok(
        "docker network rm g2",
        docker(&lab, &hosts, 1, &["network", "rm", "g2"]),
    );

    // Bad input, each refused in docker's own output, nothing left behind. What the
    // controller lists is taken once it has settled: the agent batches reports of its own
    // changes for 50 ms, so right after the restart above a state may still be on its way.
    let snapshot = || (veths(&lab, 0), lab.ctl_json(&["endpoint", "ls"]).unwrap());
    let mut before = snapshot();
    let steady = Lab::wait_until(Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let now = snapshot();
        std::mem::replace(&mut before, now) == before
    });
    assert!(steady.is_some(), "the endpoint list does not settle: {before:?}");
    let (out, _) = run(
        &lab,
        &hosts,
        0,
        "bad1",
        &[
            "--ip",
            &Ipv4Addr::from(u32::from(lease2.network()) + 9).to_string(),
        ],
        &["sleep", "1"],
    );
    // Docker itself checks the address against the pool (this host's lease) first.
    refused(
        "--ip of another host's lease",
        out,
        &[
            "not this host's to give",
            "does not belong to any of this network's subnets",
        ],
    );
    let (out, _) = run(&lab, &hosts, 0, "bad2", &["-p", "8086:80"], &["sleep", "3600"]);
    refused("-p of a port already published", out, &["already published"]);
    let (out, _) = run(
        &lab,
        &hosts,
        0,
        "bad3",
        &["-p", "4789:80/udp"],
        &["sleep", "3600"],
    );
    refused("-p of the VXLAN port", out, &["overlay's own"]);
    for bad in ["bad1", "bad2", "bad3"] {
        let _ = docker(&lab, &hosts, 0, &["rm", "-f", bad]);
    }
    let settled = Lab::wait_until(Duration::from_secs(10), || snapshot() == before);
    assert!(
        settled.is_some(),
        "refused containers left devices or records behind: before {before:?}, now {:?}",
        snapshot()
    );
    let create = |args: &[&str]| {
        let mut all = vec![
            "network",
            "create",
            "--driver",
            "overlay-net",
            "--ipam-driver",
            "overlay-net",
        ];
        all.extend_from_slice(args);
        docker(&lab, &hosts, 0, &all)
    };
    refused(
        "an unknown overlay network",
        create(&["--ipam-opt", "network=nosuch", "x1"]),
        &["unknown overlay network"],
    );
    refused(
        "a subnet of no overlay network",
        create(&["--subnet", "172.31.0.0/16", "x2"]),
        &["not inside any overlay network"],
    );
    // No overlay network of that name: Docker creates its network before saying the name,
    // so the first container is what is refused.
    ok("docker network create x3 (no options)", create(&["x3"]));
    let out = docker(
        &lab,
        &hosts,
        0,
        &[
            "run",
            "-d",
            "--name",
            "bad4",
            "--network",
            "x3",
            IMAGE,
            "sleep",
            "1",
        ],
    );
    refused(
        "a docker network named after no overlay network",
        out,
        &["means overlay network \"x3\""],
    );
    let _ = docker(&lab, &hosts, 0, &["rm", "-f", "bad4"]);
    ok(
        "docker network rm x3",
        docker(&lab, &hosts, 0, &["network", "rm", "x3"]),
    );
    refused(
        "--opt network disagreeing with --subnet",
        create(&["--subnet", "10.40.0.0/16", "--opt", "network=red", "x4"]),
        &["--opt network=red"],
    );

    // The plugin socket, tried directly: only root may connect; garbage, oversized and
    // unknown requests get an error, never a change.
    let m1 = mount_ns(&lab, 0);
    let call = |user: Option<&str>, path: &str, body: &str| -> String {
        let mut args: Vec<String> = Vec::new();
        if let Some(u) = user {
            args.extend(
                [
                    "setpriv",
                    &format!("--reuid={u}"),
                    &format!("--regid={u}"),
                    "--clear-groups",
                ]
                .map(String::from),
            );
        }
        args.extend(
            [
                "/usr/bin/python3",
                "-c",
                PLUGIN_CALL,
                "/run/docker/plugins/overlay-net.sock",
                path,
                body,
            ]
            .map(String::from),
        );
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = m1.run(argv[0], &argv[1..]).expect("plugin call");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };
    let as_nobody = call(Some("65534"), "/Plugin.Activate", "");
    println!("plugin socket as uid 65534: {as_nobody}");
    assert!(
        as_nobody.contains("PermissionError") || as_nobody.contains("Errno 13"),
        "{as_nobody}"
    );
    let garbage = call(None, "/IpamDriver.RequestAddress", "{not json");
    println!("garbage request: {garbage}");
    assert!(
        garbage.contains("200") && garbage.contains("\"Error\":\"malformed request"),
        "{garbage}"
    );
    let big = call(None, "/NetworkDriver.CreateEndpoint", "@bytes:300000");
    println!("300 kB request: {}", big.chars().take(80).collect::<String>());
    assert!(big.starts_with("413"), "{big}");
    let unknown = call(
        None,
        "/NetworkDriver.Join",
        r#"{"NetworkID":"nope","EndpointID":"e1","SandboxKey":"/proc/1/ns/net"}"#,
    );
    println!("join of an unknown endpoint: {unknown}");
    assert!(
        unknown.contains("\"Err\"") && unknown.contains("unknown to overlay-net"),
        "{unknown}"
    );
    // Placeholder pools this agent never handed out: not accepted for a network, not
    // answered with an address, and a stored row cannot be reached by a forged network id.
    let id = "ab".repeat(32);
    let forged = call(
        None,
        "/NetworkDriver.CreateNetwork",
        &format!(
            r#"{{"NetworkID":"{id}","Options":{{}},"IPv4Data":[{{"AddressSpace":"overlay","Pool":"0.250.250.0/24","Gateway":"0.250.250.1/24"}}]}}"#
        ),
    );
    println!("CreateNetwork with a placeholder not handed out: {forged}");
    assert!(forged.contains("not one overlay-net handed out"), "{forged}");
    let asked = call(
        None,
        "/IpamDriver.RequestAddress",
        r#"{"PoolID":"overlay-net/deferred/10.40.0.0/24"}"#,
    );
    assert!(asked.contains("is not one overlay-net handed out"), "{asked}");
    let row = call(
        None,
        "/NetworkDriver.DeleteNetwork",
        r#"{"NetworkID":"placeholder:0.1.2.0/24"}"#,
    );
    assert!(row.contains("is not one Docker makes"), "{row}");

    // docker rm -f: the veth goes and the address is free.
    let before = veths(&lab, 0);
    ok("docker rm -f c1", docker(&lab, &hosts, 0, &["rm", "-f", "c1"]));
    assert_eq!(veths(&lab, 0), before - 1, "the veth goes with the container");
    let gone = Lab::wait_until(Duration::from_secs(10), || !recorded(&lab, ip1));
    assert!(gone.is_some(), "{ip1} still recorded after docker rm -f");

    // The agent restarted: running containers stay connected. While it is down, docker run
    // fails in docker's own words and leaves nothing behind.
    lab.stop_agent(0);
    let before = veths(&lab, 0);
    let (out, _) = run(&lab, &hosts, 0, "down1", &[], &["sleep", "3600"]);
    refused("docker run with the agent down", out, &["overlay-net"]);
    let _ = docker(&lab, &hosts, 0, &["rm", "-f", "down1"]);
    assert_eq!(
        veths(&lab, 0),
        before,
        "a refused docker run left a device behind"
    );
    lab.start_agent_with_env(0, &[("OVERLAY_DOCKER_PLUGIN", "true")])
        .unwrap();
    lab.wait_hosts_up(Duration::from_secs(30)).unwrap();
    assert!(
        pings(&lab, &hosts, 0, "c3", ip2),
        "c3 lost c2 through an agent restart"
    );

    // dockerd restarted (--live-restore): running containers stay connected, and the plugin
    // serves the restarted engine (a new container, then its removal).
    let t = Instant::now();
    hosts[0]
        .dockerd
        .restart(mount_ns(&lab, 0))
        .expect("dockerd restart");
    println!("dockerd on h1 restarted in {:?}", t.elapsed());
    assert!(
        pings(&lab, &hosts, 0, "c3", ip2),
        "c3 lost c2 through a dockerd restart"
    );
    let (out, _) = run(&lab, &hosts, 0, "c6", &[], &["sleep", "3600"]);
    ok("docker run after a dockerd restart", out);
    let ip6 = container_ip(&lab, &hosts, 0, "c6");
    assert!(
        pings(&lab, &hosts, 0, "c6", ip2),
        "c6 (after the restart) cannot reach c2"
    );
    ok("docker rm -f c6", docker(&lab, &hosts, 0, &["rm", "-f", "c6"]));
    let released = Lab::wait_until(Duration::from_secs(10), || !recorded(&lab, ip6));
    assert!(released.is_some(), "{ip6} still recorded after docker rm -f");
    println!("after the dockerd restart: c3 still reaches c2; c6 ran, reached c2 and was removed");

    // dockerd restarted without --live-restore: it stops its containers on the way down (the
    // plugin releases their addresses) and starts the one with a restart policy anew, on a new
    // endpoint that reaches the other host.
    let (out, _) = run(
        &lab,
        &hosts,
        1,
        "cr",
        &["--restart", "always"],
        &["sleep", "3600"],
    );
    ok("docker run --restart always", out);
    let ip_before = container_ip(&lab, &hosts, 1, "cr");
    let t = Instant::now();
    hosts[1]
        .dockerd
        .restart_without_live_restore(mount_ns(&lab, 1))
        .expect("dockerd restart");
    let back = Lab::wait_until(Duration::from_secs(30), || {
        let out = docker(&lab, &hosts, 1, &["inspect", "-f", "{{.State.Running}}", "cr"]);
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    });
    assert!(
        back.is_some(),
        "cr did not come back after a dockerd restart without --live-restore"
    );
    let ip_after = container_ip(&lab, &hosts, 1, "cr");
    println!(
        "dockerd on h2 restarted without --live-restore in {:?}: cr {ip_before} -> {ip_after}",
        t.elapsed()
    );
    let c3_ip = container_ip(&lab, &hosts, 0, "c3");
    assert!(
        pings(&lab, &hosts, 1, "cr", c3_ip),
        "cr (restarted by dockerd) cannot reach c3 on h1"
    );
    // Exactly the live containers hold addresses: c2 and c5 were stopped, cr holds one.
    let settled = Lab::wait_until(Duration::from_secs(10), || {
        recorded(&lab, ip_after)
            && !recorded(&lab, ip2)
            && !recorded(&lab, ip5)
            && (ip_before == ip_after || !recorded(&lab, ip_before))
    });
    assert!(
        settled.is_some(),
        "after the restart: cr {ip_after} recorded {}, stopped c2 {ip2} {}, c5 {ip5} {}",
        recorded(&lab, ip_after),
        recorded(&lab, ip2),
        recorded(&lab, ip5)
    );
    ok("docker rm -f cr", docker(&lab, &hosts, 1, &["rm", "-f", "cr"]));

    // One host's docker network removed: the other host's containers carry on.
    for c in ["c2", "c5"] {
        ok("docker rm -f", docker(&lab, &hosts, 1, &["rm", "-f", c]));
    }
    ok(
        "docker network rm",
        docker(&lab, &hosts, 1, &["network", "rm", "blue"]),
    );
    let (out, _) = run(&lab, &hosts, 0, "c4", &[], &["sleep", "3600"]);
    ok("docker run c4", out);
    let ip4 = container_ip(&lab, &hosts, 0, "c4");
    assert!(
        pings(&lab, &hosts, 0, "c3", ip4),
        "h1's containers lost each other after h2's docker network rm"
    );

    for (h, host) in hosts.iter_mut().enumerate() {
        host.dockerd.shut_down(mount_ns(&lab, h));
    }
}
