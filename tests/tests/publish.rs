//! Port publishing (`endpoint attach --publish`, issue 16), in the netns lab (root): a
//! workload's port is reachable at its host's underlay address from other hosts and from the
//! host itself, over TCP and UDP, in vxlan and nat networks; a port already published, or one
//! overlay uses itself, is refused and leaves nothing behind; detach takes the rule away.

use std::time::Duration;

use overlay_lab::lab::{Lab, LabConfig};
use overlay_lab::netns::{exec, exec_any, stdout};
use serde_json::Value;

/// Answers every TCP connection with "<name> sees <peer address>" and echoes UDP datagrams
/// prefixed with "<name> ", on one port.
const SERVER: &str = r#"
import socket, sys, threading
port, name = int(sys.argv[1]), sys.argv[2].encode()
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port)); t.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
def udp():
    while True:
        data, peer = u.recvfrom(2048); u.sendto(name + b" " + data, peer)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, peer = t.accept(); c.sendall(name + b" sees " + peer[0].encode() + b"\n"); c.close()
"#;

/// Prints what a TCP connection (or a UDP datagram "ping") to HOST PORT gets back.
const CLIENT: &str = r#"
import socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(2)
if proto == "tcp":
    s.connect((host, port)); print(s.recv(256).decode().strip())
else:
    s.sendto(b"ping", (host, port)); print(s.recvfrom(256)[0].decode().strip())
"#;

const H1: &str = "192.0.2.11";

/// What `ns` gets from `host:port` over `proto`; `None` when nothing answers.
fn fetch(ns: &str, host: &str, port: u16, proto: &str) -> Option<String> {
    let out = exec_any(ns, "python3", &["-c", CLIENT, host, &port.to_string(), proto]).ok()?;
    out.status
        .success()
        .then(|| stdout(&out).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn serve(lab: &Lab, ns: &str, port: u16, name: &str) -> overlay_lab::process::Daemon {
    let d = lab
        .spawn_in(
            ns,
            "python3",
            &["-u", "-c", SERVER, &port.to_string(), name],
            name,
        )
        .expect("server");
    let up = Lab::wait_until(Duration::from_secs(10), || d.log_tail(5).contains("ready"));
    assert!(up.is_some(), "server {name} did not start: {}", d.log_tail(5));
    d
}

fn attach(lab: &Lab, network: &str, host: &str, ns: &str, publish: &[&str]) -> std::process::Output {
    let mut args = vec!["endpoint", "attach", network, "--host", host, "--netns", ns];
    for p in publish {
        args.extend(["--publish", p]);
    }
    lab.ctl(&args).expect("overlayctl")
}

fn published_map(lab: &Lab, host: usize) -> String {
    exec(
        &lab.hosts[host].ns,
        "nft",
        &["list", "map", "inet", "overlay", "published"],
    )
    .map(|o| stdout(&o))
    .unwrap_or_default()
}

#[test]
fn published_ports_answer_at_the_hosts_address_and_nothing_else() {
    let mut lab = Lab::start_with_agents(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "pb",
        resync_secs: 5,
    })
    .expect("lab");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.1.0.0/16",
    ])
    .unwrap();
    lab.ctl_ok(&[
        "network",
        "create",
        "red",
        "--mode",
        "nat",
        "--subnet",
        "10.3.0.0/16",
    ])
    .unwrap();
    let (h1, h2) = (lab.hosts[0].ns.clone(), lab.hosts[1].ns.clone());
    let w1 = lab.add_workload("w1").unwrap();
    let w2 = lab.add_workload("w2").unwrap();
    let w3 = lab.add_workload("w3").unwrap();

    // A vxlan workload publishes TCP 8080 -> 80 and UDP 5353 -> 80.
    let out = attach(&lab, "blue", "h1", &w1, &["8080:80", "5353:80/udp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _s1 = serve(&lab, &w1, 80, "w1");
    let listed = lab.ctl_json(&["endpoint", "ls", "--host", "h1"]).unwrap();
    let ports: Vec<Value> = listed[0]["ports"].as_array().cloned().unwrap_or_default();
    assert_eq!(ports.len(), 2, "endpoint ls shows the published ports: {listed}");
    let table = lab.ctl_ok(&["endpoint", "ls", "--host", "h1"]).unwrap();
    assert!(table.contains("8080:80/tcp, 5353:80/udp"), "{table}");

    // From another host: the connection arrives with that host's own address (DNAT only).
    let from_h2 = fetch(&h2, H1, 8080, "tcp");
    println!("h2 -> {H1}:8080/tcp: {from_h2:?}");
    assert_eq!(from_h2.as_deref(), Some("w1 sees 192.0.2.12"));
    let udp = fetch(&h2, H1, 5353, "udp");
    println!("h2 -> {H1}:5353/udp: {udp:?}");
    assert_eq!(udp.as_deref(), Some("w1 ping"));
    // From the host itself, at its own underlay address.
    let from_h1 = fetch(&h1, H1, 8080, "tcp");
    println!("h1 -> {H1}:8080/tcp: {from_h1:?}");
    assert_eq!(from_h1.as_deref(), Some("w1 sees 192.0.2.11"));
    // Only what was published: the workload's port 80 at the host's address is not forwarded,
    // nor is a port nobody published.
    assert_eq!(fetch(&h2, H1, 80, "tcp"), None, "unpublished port 80 on h1");
    assert_eq!(fetch(&h2, H1, 8081, "tcp"), None, "unpublished port 8081 on h1");

    // Taken: the same host port again (other target, other network) is refused, one line,
    // and nothing is left behind: no endpoint, no veth, the rule still points at w1.
    let before = published_map(&lab, 0);
    for (network, ns, publish) in [("blue", &w2, "8080:81"), ("red", &w2, "8080:80/tcp")] {
        let out = attach(&lab, network, "h1", ns, &[publish]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("taken {publish} in {network}: {}", stderr.trim());
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr.contains("is already published on host \"h1\""), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1);
    }
    let listed = lab.ctl_json(&["endpoint", "ls", "--host", "h1"]).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(published_map(&lab, 0), before);
    let links = stdout(&exec(&w2, "ip", &["-o", "link"]).unwrap());
    assert!(!links.contains("eth0"), "w2 got an interface: {links}");
    // The same port on another host is that host's to give.
    let out = attach(&lab, "blue", "h2", &w3, &["8080:80"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Ports overlay uses itself are not for workloads: VXLAN, and malformed lists.
    for (publish, says) in [
        ("4789:80/udp", "overlay's own"),
        ("0:80", "out of range"),
        ("9000:80/sctp", "tcp or udp"),
    ] {
        let out = attach(&lab, "blue", "h1", &w2, &[publish]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("refused {publish}: {}", stderr.trim());
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr.contains(says), "{publish}: {stderr}");
    }

    // In a nat network a published port is how anyone reaches the workload at all.
    let out = attach(&lab, "red", "h1", &w2, &["8090:80"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _s2 = serve(&lab, &w2, 80, "w2");
    let nat = fetch(&h2, H1, 8090, "tcp");
    println!("h2 -> {H1}:8090/tcp (nat network): {nat:?}");
    assert_eq!(nat.as_deref(), Some("w2 sees 192.0.2.12"));

    // Detach takes the rule with the endpoint.
    lab.ctl_ok(&["endpoint", "detach", "blue", "--host", "h1", "--netns", &w1])
        .unwrap();
    let gone = Lab::wait_until(Duration::from_secs(5), || {
        !published_map(&lab, 0).contains("8080")
    });
    assert!(gone.is_some(), "8080 still published: {}", published_map(&lab, 0));
    assert_eq!(fetch(&h2, H1, 8080, "tcp"), None, "8080 answers after detach");
    assert_eq!(fetch(&h2, H1, 8090, "tcp").as_deref(), Some("w2 sees 192.0.2.12"));
}
