//! The agent's DNS server in namespaces (root): a host namespace with one bridge per network
//! holding the gateway address, workloads wired into the bridges as the agent wires them, the
//! server running in the host namespace, and dnsmasq as the upstream in an "outside"
//! namespace. Queries come from the workloads, with busybox `nslookup` and with a
//! hickory-proto client, over UDP and TCP; hostile clients try malformed packets, huge and
//! slow TCP messages and floods.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use overlay_agent::dns::DnsConfig;
use overlay_lab::dns::{DnsLab, Dnsmasq, ServerInNs, Transport, exchange, query, zone};
use overlay_lab::netns::exec_any;
use overlay_lab::process::Daemon;

const BLUE_GW: Ipv4Addr = Ipv4Addr::new(10, 31, 0, 1);
const RED_GW: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 1);
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 53);
const WAIT: Duration = Duration::from_secs(3);
const WEB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 2);
const DB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 5);

fn blue() -> SocketAddrV4 {
    SocketAddrV4::new(BLUE_GW, 53)
}

fn red() -> SocketAddrV4 {
    SocketAddrV4::new(RED_GW, 53)
}

/// Short timeouts and small bounds, so that the hostile tests reach them quickly.
fn config(resolv_conf: PathBuf) -> DnsConfig {
    let mut c = DnsConfig {
        resolv_conf,
        resolv_poll: Duration::from_millis(200),
        upstream_timeout: Duration::from_millis(700),
        tcp_timeout: Duration::from_secs(1),
        max_tcp_connections: 8,
        max_in_flight: 16,
        ..DnsConfig::default()
    };
    c.cache.max_entries = 50;
    c
}

/// The two networks' zones: blue (dual-stack, fd00:31::/48) has web (IPv4 only), db and `api`
/// on both (with IPv6 addresses); red (IPv4 only) has its own db and cache.
fn zones(with_db: bool) -> Vec<overlay_lab::dns::Zone> {
    let mut blue_names: Vec<(&str, &[&str])> =
        vec![("web", &["10.31.0.2"]), ("api", &["10.31.0.2", "10.31.0.5"])];
    if with_db {
        blue_names.push(("db", &["10.31.0.5"]));
    }
    let many: Vec<String> = (1..=60).map(|i| format!("10.31.2.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    blue_names.push(("many", &many));
    let mut blue = zone("blue", "10.31.0.1", "10.31.0.0/16", &blue_names).unwrap();
    blue.cidr6 = Some("fd00:31::/48".parse().unwrap());
    blue.names6.insert("api".into(), vec![WEB6, DB6]);
    if with_db {
        blue.names6.insert("db".into(), vec![DB6]);
    }
    vec![
        blue,
        zone(
            "red",
            "10.32.0.1",
            "10.32.0.0/16",
            &[("db", &["10.32.0.9"]), ("cache", &["10.32.0.2"])],
        )
        .unwrap(),
    ]
}

/// Host with blue's bridge addressed and red's bridge not yet (the server must bind anyway),
/// workloads web and db on blue and r1 on red, dnsmasq upstream answering example.test.
struct Setup {
    lab: DnsLab,
    web: String,
    r1: String,
    upstream_ns: String,
    upstream: Option<Dnsmasq>,
}

fn setup(tag: &str) -> Setup {
    let mut lab = DnsLab::new(tag).unwrap();
    lab.bridge("ovb-1", Some("10.31.0.1/16")).unwrap();
    lab.bridge("ovb-2", None).unwrap();
    let web = lab.workload("web", "ovb-1", "10.31.0.2/16", BLUE_GW).unwrap();
    lab.workload("db", "ovb-1", "10.31.0.5/16", BLUE_GW).unwrap();
    let r1 = lab.workload("r1", "ovb-2", "10.32.0.2/16", RED_GW).unwrap();
    let upstream_ns = lab.outside("up", "198.51.100.1/24", "198.51.100.53/24").unwrap();
    let log = lab.dir().join("dnsmasq.log");
    let upstream = Dnsmasq::start(&upstream_ns, UPSTREAM, &upstream_args(), &log).unwrap();
    Setup {
        lab,
        web,
        r1,
        upstream_ns,
        upstream: Some(upstream),
    }
}

fn upstream_args() -> Vec<String> {
    [
        "--host-record=www.example.test,198.51.100.80",
        "--address=/flood.test/198.51.100.81",
        "--local=/example.test/",
        "--domain-needed",
        "--local-ttl=60",
    ]
    .map(String::from)
    .to_vec()
}

fn ask(ns: &str, server: SocketAddrV4, name: &str, qtype: RecordType) -> overlay_lab::dns::Answer {
    query(ns, server, name, qtype, Transport::Udp, WAIT)
        .unwrap_or_else(|e| panic!("{name} {qtype} from {ns}: {e}"))
}

/// The AAAA records of an answer.
fn addrs6(answer: &overlay_lab::dns::Answer) -> Vec<Ipv6Addr> {
    answer
        .message
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// `x.x.….ip6.arpa.`, the 32 nibbles of `addr` reversed.
fn arpa6(addr: Ipv6Addr) -> String {
    let nibbles: Vec<u8> = addr.octets().iter().flat_map(|o| [o >> 4, o & 0xf]).collect();
    let mut name: String = nibbles.iter().rev().map(|n| format!("{n:x}.")).collect();
    name.push_str("ip6.arpa.");
    name
}

/// `busybox nslookup NAME SERVER` in `ns`: (exit success, stdout + stderr).
fn nslookup(ns: &str, name: &str, server: Ipv4Addr) -> (bool, String) {
    let out = exec_any(ns, "busybox", &["nslookup", name, &server.to_string()]).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn names_resolve_per_network_over_udp_and_tcp() {
    let mut s = setup("dnsa");
    let resolv = s.lab.resolv_conf("resolv.conf", &[BLUE_GW, UPSTREAM]).unwrap();
    let server = ServerInNs::start(&s.lab.host, config(resolv)).unwrap();
    let (report, listeners) = server.update(zones(true)).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.zones, report.names), (2, 6));
    assert_eq!(listeners.len(), 2);
    assert!(listeners.values().all(Result::is_ok), "{listeners:?}");
    // red's gateway address appears only now, after its listener was bound (IP_FREEBIND).
    s.lab
        .host_ip(&["addr", "add", "10.32.0.1/16", "dev", "ovb-2"])
        .unwrap();

    // busybox, as a workload would ask.
    let (ok, out) = nslookup(&s.web, "db", BLUE_GW);
    assert!(ok && out.contains("10.31.0.5"), "{out}");
    let (ok, out) = nslookup(&s.web, "db.blue.overlay", BLUE_GW);
    assert!(ok && out.contains("10.31.0.5"), "{out}");
    let (ok, out) = nslookup(&s.web, "10.31.0.5", BLUE_GW);
    assert!(ok && out.contains("db.blue.overlay"), "{out}");
    let (ok, out) = nslookup(&s.web, "nope.blue.overlay", BLUE_GW);
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");
    // red's names from blue: neither bare nor in red's zone.
    for name in ["cache", "cache.red.overlay", "db.red.overlay"] {
        let (ok, out) = nslookup(&s.web, name, BLUE_GW);
        assert!(!ok && !out.contains("10.32.0."), "{name}: {out}");
    }
    // red's own.
    let (ok, out) = nslookup(&s.r1, "cache", RED_GW);
    assert!(ok && out.contains("10.32.0.2"), "{out}");
    let (ok, out) = nslookup(&s.r1, "db", RED_GW);
    assert!(
        ok && out.contains("10.32.0.9") && !out.contains("10.31.0.5"),
        "{out}"
    );
    let (ok, out) = nslookup(&s.r1, "web", RED_GW);
    assert!(!ok && !out.contains("10.31.0.2"), "{out}");

    // The hickory client, over both transports.
    for transport in [Transport::Udp, Transport::Tcp] {
        let a = query(
            &s.web,
            blue(),
            "web.blue.overlay.",
            RecordType::A,
            transport,
            WAIT,
        )
        .unwrap();
        assert_eq!(
            (a.rcode, a.addrs.clone(), a.authoritative),
            (ResponseCode::NoError, vec![Ipv4Addr::new(10, 31, 0, 2)], true)
        );
        let a = query(&s.web, blue(), "WEB.", RecordType::A, transport, WAIT).unwrap();
        assert_eq!(a.addrs, vec![Ipv4Addr::new(10, 31, 0, 2)]);
        let ptr = query(
            &s.web,
            blue(),
            "2.0.31.10.in-addr.arpa.",
            RecordType::PTR,
            transport,
            WAIT,
        )
        .unwrap();
        let mut names = ptr.names.clone();
        names.sort();
        assert_eq!(
            names,
            ["api.blue.overlay.", "web.blue.overlay."],
            "both names of 10.31.0.2"
        );
        let nx = query(
            &s.web,
            blue(),
            "nope.blue.overlay.",
            RecordType::A,
            transport,
            WAIT,
        )
        .unwrap();
        assert_eq!(
            (nx.rcode, nx.message.authorities.len()),
            (ResponseCode::NXDomain, 1)
        );
        let nx = query(
            &s.web,
            blue(),
            "77.0.31.10.in-addr.arpa.",
            RecordType::PTR,
            transport,
            WAIT,
        )
        .unwrap();
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
    }
    // AAAA of a known name: NODATA, answered (not left to time out).
    let aaaa = ask(&s.web, blue(), "web.", RecordType::AAAA);
    assert_eq!(
        (aaaa.rcode, aaaa.message.answers.len()),
        (ResponseCode::NoError, 0)
    );
    println!("AAAA of a known name answered in {:?}", aaaa.took);
    // A name with IPv6 addresses (dual-stack blue): AAAA answers them, over both transports.
    for transport in [Transport::Udp, Transport::Tcp] {
        let a = query(
            &s.web,
            blue(),
            "db.blue.overlay.",
            RecordType::AAAA,
            transport,
            WAIT,
        )
        .unwrap();
        assert_eq!(
            (a.rcode, addrs6(&a), a.addrs.len(), a.authoritative),
            (ResponseCode::NoError, vec![DB6], 0, true)
        );
    }
    // Shared: both, in rotating order; ANY: both families.
    let first = addrs6(&ask(&s.web, blue(), "api.", RecordType::AAAA));
    let second = addrs6(&ask(&s.web, blue(), "api.", RecordType::AAAA));
    assert_eq!(first.len(), 2);
    assert_eq!(first.iter().rev().copied().collect::<Vec<_>>(), second);
    let any = ask(&s.web, blue(), "db.", RecordType::ANY);
    assert_eq!(
        (any.addrs.clone(), addrs6(&any)),
        (vec![Ipv4Addr::new(10, 31, 0, 5)], vec![DB6])
    );
    // PTR of an IPv6 address: both names of fd00:31::5.
    let ptr = ask(&s.web, blue(), &arpa6(DB6), RecordType::PTR);
    let mut names = ptr.names.clone();
    names.sort();
    assert_eq!(names, ["api.blue.overlay.", "db.blue.overlay."]);
    // busybox (A and AAAA): both families.
    let (ok, out) = nslookup(&s.web, "api", BLUE_GW);
    assert!(
        ok && out.contains("10.31.0.5") && out.contains("fd00:31::2") && out.contains("fd00:31::5"),
        "{out}"
    );
    // A shared name: both, in rotating order.
    let first = ask(&s.web, blue(), "api.", RecordType::A).addrs;
    let second = ask(&s.web, blue(), "api.", RecordType::A).addrs;
    assert_eq!(first.len(), 2);
    assert_eq!(first.iter().rev().copied().collect::<Vec<_>>(), second);
    // Too many for 512 bytes: truncated over UDP, whole over TCP.
    let big = ask(&s.web, blue(), "many.", RecordType::A);
    assert!(
        big.truncated && big.addrs.is_empty(),
        "{:?}",
        big.message.metadata
    );
    let big = query(&s.web, blue(), "many.", RecordType::A, Transport::Tcp, WAIT).unwrap();
    assert_eq!(
        (big.truncated, big.addrs.len()),
        (false, overlay_agent::dns::zone::MAX_ANSWERS)
    );

    // Red's workload asking blue's gateway (routed through the host): refused.
    let cross = ask(&s.r1, blue(), "web.", RecordType::A);
    assert_eq!((cross.rcode, cross.addrs.len()), (ResponseCode::Refused, 0));

    // Forwarded to dnsmasq (our own gateway in resolv.conf is skipped), then cached.
    let before = server.counts().unwrap();
    let www = ask(&s.web, blue(), "www.example.test.", RecordType::A);
    assert_eq!(
        (www.rcode, www.addrs.clone(), www.authoritative),
        (
            ResponseCode::NoError,
            vec![Ipv4Addr::new(198, 51, 100, 80)],
            false
        )
    );
    let (ok, out) = nslookup(&s.web, "www.example.test", BLUE_GW);
    assert!(ok && out.contains("198.51.100.80"), "{out}");
    let nx = ask(&s.web, blue(), "nope.example.test.", RecordType::A);
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    let again = ask(&s.web, blue(), "WWW.example.test.", RecordType::A);
    assert_eq!(again.addrs, vec![Ipv4Addr::new(198, 51, 100, 80)]);
    let after = server.counts().unwrap();
    // www (A), nope (A) upstream; busybox's AAAA for www too; the second www from the cache
    // (busybox's A may be a hit as well).
    assert_eq!(after.forwarded - before.forwarded, 3, "{after:?}");
    assert!(after.cache_hits - before.cache_hits >= 1, "{after:?}");
    assert_eq!(
        after.upstream_errors, before.upstream_errors,
        "never asked itself"
    );
    println!(
        "forwarded A answered in {:?}, from the cache in {:?}",
        www.took, again.took
    );

    // db detached: gone right after the update.
    let (report, _) = server.update(zones(false)).unwrap();
    assert_eq!(report.names, 5);
    assert_eq!(
        ask(&s.web, blue(), "db.blue.overlay.", RecordType::A).rcode,
        ResponseCode::NXDomain
    );
    // Bare, it is no longer ours: the upstream's answer (dnsmasq: NXDOMAIN for a plain name).
    assert_eq!(
        ask(&s.web, blue(), "db.", RecordType::A).rcode,
        ResponseCode::NXDomain
    );
    let (ok, out) = nslookup(&s.web, "db", BLUE_GW);
    assert!(
        !ok && !out.contains("10.31.0.5") && !out.contains("fd00:31::5"),
        "{out}"
    );
    assert_eq!(
        ask(&s.web, blue(), "web.", RecordType::A).addrs,
        vec![Ipv4Addr::new(10, 31, 0, 2)]
    );

    // red removed: its listener closes (the port is unreachable), blue's stays.
    let (_, listeners) = server.update(zones(false).into_iter().take(1).collect()).unwrap();
    assert_eq!(listeners.keys().copied().collect::<Vec<_>>(), vec![BLUE_GW]);
    let gone = query(
        &s.r1,
        red(),
        "cache.",
        RecordType::A,
        Transport::Udp,
        Duration::from_millis(500),
    );
    assert!(gone.is_err(), "{gone:?}");
    assert_eq!(server.counts().unwrap().listeners, 1);
    drop(s.upstream.take());
    let _ = &s.upstream_ns;
}

fn wait_until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces `path` by rename, as resolvconf and NetworkManager do.
fn write_resolv(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// UDP sockets open in namespace `ns` (the host namespace holds only the server's).
fn udp_sockets(ns: &str) -> usize {
    overlay_lab::netns::blocking_in(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/udp")
            .map(|t| t.lines().count().saturating_sub(1))
            .unwrap_or(0)
    })
    .unwrap()
}

fn raw_query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// Sends every query in `queries` from one socket in `ns` as fast as it can (taking in what
/// comes back meanwhile, so that its own receive buffer does not overflow), then collects
/// responses until all came or `within` passed: how many came, by rcode.
fn flood(
    ns: &str,
    server: SocketAddrV4,
    queries: Vec<Vec<u8>>,
    within: Duration,
) -> std::collections::BTreeMap<String, usize> {
    overlay_lab::netns::blocking_in(ns, move || {
        let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        sock.connect(server).unwrap();
        let mut got = std::collections::BTreeMap::new();
        let mut buf = vec![0u8; 4096];
        let mut n = 0;
        let mut take = |len: usize, buf: &[u8], n: &mut usize| {
            *n += 1;
            let rcode = Message::from_vec(&buf[..len])
                .map(|m| m.metadata.response_code.to_string())
                .unwrap_or_else(|_| "unparsable".into());
            *got.entry(rcode).or_insert(0) += 1;
        };
        sock.set_nonblocking(true).unwrap();
        for q in &queries {
            sock.send(q).unwrap();
            while let Ok(len) = sock.recv(&mut buf) {
                take(len, &buf, &mut n);
            }
        }
        sock.set_nonblocking(false).unwrap();
        let deadline = Instant::now() + within;
        while n < queries.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left)).unwrap();
            let Ok(len) = sock.recv(&mut buf) else { break };
            take(len, &buf, &mut n);
        }
        got
    })
    .unwrap()
}

/// A stream closed by the peer: end of file, or a reset (closed with our bytes unread).
fn closed(r: std::io::Result<usize>) -> bool {
    matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

#[test]
fn upstreams_follow_resolv_conf_fail_fast_and_stay_bounded() {
    let mut s = setup("dnsb");
    let resolv = s.lab.resolv_conf("resolv.conf", &[]).unwrap();
    let server = ServerInNs::start(&s.lab.host, config(resolv.clone())).unwrap();
    server.update(zones(true)).unwrap();

    // No upstream: SERVFAIL at once, nothing sent anywhere.
    let none = ask(&s.web, blue(), "www.example.test.", RecordType::A);
    assert_eq!(none.rcode, ResponseCode::ServFail);
    assert_eq!(server.counts().unwrap().forwarded, 0);
    println!("no upstream: SERVFAIL in {:?}", none.took);
    // Our names do not need one.
    assert_eq!(
        ask(&s.web, blue(), "web.", RecordType::A).addrs,
        vec![Ipv4Addr::new(10, 31, 0, 2)]
    );

    // resolv.conf gains the upstream: used without a restart.
    write_resolv(&resolv, "nameserver 198.51.100.53\n");
    wait_until("the new upstream", Duration::from_secs(10), || {
        let a = ask(&s.web, blue(), "www.example.test.", RecordType::A);
        (a.addrs == [Ipv4Addr::new(198, 51, 100, 80)]).then_some(())
    });

    // The upstream dies: what is cached still resolves, the rest fails quickly.
    s.upstream.as_mut().unwrap().kill();
    let cached = ask(&s.web, blue(), "www.example.test.", RecordType::A);
    assert_eq!(cached.addrs, vec![Ipv4Addr::new(198, 51, 100, 80)]);
    let before = server.counts().unwrap();
    let dead = ask(&s.web, blue(), "other.example.test.", RecordType::A);
    assert_eq!(dead.rcode, ResponseCode::ServFail);
    let after = server.counts().unwrap();
    assert_eq!(after.upstream_errors - before.upstream_errors, 1);
    println!("dead upstream: SERVFAIL in {:?}", dead.took);

    // An upstream that swallows every query: the flood meets the in-flight bound.
    exec_any(
        &s.upstream_ns,
        "ip",
        &["addr", "add", "198.51.100.54/24", "dev", "eth0"],
    )
    .unwrap();
    let sink_log = s.lab.dir().join("sink.log");
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &s.upstream_ns, "python3", "-u", "-c"])
        .arg(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.bind(('198.51.100.54', 53))\nprint('ready')\nwhile True: s.recv(4096)\n",
        );
    let _sink = Daemon::spawn("sink", cmd, &sink_log).unwrap();
    wait_until("the sink", Duration::from_secs(10), || {
        std::fs::read_to_string(&sink_log)
            .ok()?
            .contains("ready")
            .then_some(())
    });
    write_resolv(&resolv, "nameserver 198.51.100.54\n");
    wait_until("the sink as upstream", Duration::from_secs(10), || {
        (server.upstreams().unwrap() == ["198.51.100.54:53".parse().unwrap()]).then_some(())
    });
    let baseline = udp_sockets(&s.lab.host);
    let queries: Vec<Vec<u8>> = (0..400u16)
        .map(|i| raw_query(i, &format!("f{i}.example.test."), RecordType::A))
        .collect();
    let web = s.web.clone();
    let flooder = std::thread::spawn(move || flood(&web, blue(), queries, Duration::from_secs(10)));
    let (mut max_in_flight, mut max_sockets) = (0, 0);
    while !flooder.is_finished() {
        max_in_flight = max_in_flight.max(server.counts().unwrap().in_flight);
        max_sockets = max_sockets.max(udp_sockets(&s.lab.host));
        // Our own names stay answered during the flood.
        assert_eq!(
            ask(&s.web, blue(), "db.", RecordType::A).addrs,
            vec![Ipv4Addr::new(10, 31, 0, 5)]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = flooder.join().unwrap();
    let counts = server.counts().unwrap();
    println!(
        "flood of 400 to a silent upstream: responses {got:?}; in flight at most {max_in_flight}, \
         UDP sockets at most {max_sockets} (listeners: {baseline}); busy {}",
        counts.dropped["busy"]
    );
    // UDP: on a loaded machine the kernel may drop some of 400 datagrams sent at once (before
    // the server reads them, or its answers before the client does). Every answer that
    // arrives is the prompt SERVFAIL, and the server refused as busy all but the in-flight few.
    let answered = got.values().sum::<usize>();
    assert!(answered >= 200, "most queries answered: {got:?}");
    assert_eq!(got.get("Server Failure").copied(), Some(answered), "{got:?}");
    assert!(max_in_flight <= 16, "{max_in_flight}");
    assert!(max_sockets <= baseline + 16, "{max_sockets} > {baseline} + 16");
    assert!(counts.dropped["busy"] + 16 >= answered as u64, "{counts:?}");
    wait_until("no query in flight", Duration::from_secs(10), || {
        (server.counts().unwrap().in_flight == 0 && udp_sockets(&s.lab.host) == baseline).then_some(())
    });
}

#[test]
fn hostile_clients_leave_it_answering_and_bounded() {
    use std::io::{Read, Write};
    let s = setup("dnsc");
    let resolv = s.lab.resolv_conf("resolv.conf", &[UPSTREAM]).unwrap();
    let server = ServerInNs::start(&s.lab.host, config(resolv)).unwrap();
    server.update(zones(true)).unwrap();
    let up = |what: &str| {
        let a = query(&s.web, blue(), "web.", RecordType::A, Transport::Udp, WAIT)
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
        assert_eq!(a.addrs, vec![Ipv4Addr::new(10, 31, 0, 2)], "after {what}");
    };

    // Garbage datagrams of every size, none answered with anything but FORMERR.
    let mut seed: u32 = 12345;
    let mut garbage: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            (0..(i * 7) % 700)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (seed >> 16) as u8 & 0x7f // QR clear: looks like a query
                })
                .collect()
        })
        .collect();
    garbage.push(Vec::new());
    let got = flood(&s.web, blue(), garbage, Duration::from_secs(2));
    println!("300 garbage datagrams: responses {got:?}");
    assert!(got.keys().all(|r| r == "Form Error"), "{got:?}");
    up("garbage");
    // Questions announced but absent: FORMERR with our id.
    let mut bad = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0];
    bad.extend_from_slice(b"\x03abc");
    let out = exchange(&s.web, blue(), bad, Transport::Udp, WAIT).unwrap();
    let m = Message::from_vec(&out).unwrap();
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0x1234, ResponseCode::FormErr)
    );
    // A response sent to us is never answered (no ping-pong between servers).
    let mut resp = Message::from_vec(&raw_query(7, "web.", RecordType::A)).unwrap();
    resp.metadata.message_type = hickory_proto::op::MessageType::Response;
    let silent = exchange(
        &s.web,
        blue(),
        resp.to_vec().unwrap(),
        Transport::Udp,
        Duration::from_millis(500),
    );
    assert!(silent.is_err(), "{silent:?}");
    up("a response");

    let web = s.web.clone();
    let tcp = move |work: Box<dyn FnOnce() -> std::io::Result<String> + Send>| {
        overlay_lab::netns::blocking_in(&web, work).unwrap().unwrap()
    };
    // A TCP client that announces 65,535 bytes and sends ten: cut off, nothing held.
    let took = tcp(Box::new(|| {
        let mut c = std::net::TcpStream::connect(blue())?;
        c.write_all(&[0xff, 0xff])?;
        c.write_all(&[0u8; 10])?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let start = Instant::now();
        let r = c.read(&mut [0u8; 16]);
        Ok(format!("closed: {}, after {:?}", closed(r), start.elapsed()))
    }));
    println!("huge TCP length: {took}");
    assert!(took.starts_with("closed: true"), "{took}");
    // A length too short for a header: closed at once.
    let short = tcp(Box::new(|| {
        let mut c = std::net::TcpStream::connect(blue())?;
        c.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5])?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(format!("closed: {}", closed(c.read(&mut [0u8; 16]))))
    }));
    assert_eq!(short, "closed: true");
    // A query trickled one byte at a time: cut off before it completes.
    let trickle = tcp(Box::new(|| {
        let q = raw_query(9, "web.", RecordType::A);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        let mut c = std::net::TcpStream::connect(blue())?;
        for b in framed {
            if c.write_all(&[b]).is_err() {
                return Ok("cut".into());
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = [0u8; 512];
        Ok(match c.read(&mut buf) {
            Ok(n) if n > 0 => format!("answered {n} bytes"),
            _ => "cut".into(),
        })
    }));
    assert_eq!(trickle, "cut");
    up("slow TCP");
    // More idle connections than allowed: the extra ones are closed at once, the others at
    // the timeout; UDP answers all along, and TCP again afterwards.
    let idle = tcp(Box::new(|| {
        let conns: Vec<std::net::TcpStream> = (0..12)
            .map(|_| std::net::TcpStream::connect(blue()))
            .collect::<std::io::Result<_>>()?;
        std::thread::sleep(Duration::from_millis(300));
        let mut closed_at_once = 0;
        for c in &conns {
            c.set_nonblocking(true)?;
            if closed((&*c).read(&mut [0u8; 1])) {
                closed_at_once += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1500));
        let mut closed_later = 0;
        for c in &conns {
            if closed((&*c).read(&mut [0u8; 1])) {
                closed_later += 1;
            }
        }
        Ok(format!("{closed_at_once} {closed_later}"))
    }));
    println!("12 idle TCP connections, 8 allowed: closed at once / after the timeout: {idle}");
    assert_eq!(idle, "4 12");
    up("idle TCP");
    let counts = server.counts().unwrap();
    assert!(
        counts.dropped["tcp_busy"] >= 4 && counts.dropped["tcp_timeout"] >= 10,
        "{counts:?}"
    );
    let a = query(&s.web, blue(), "web.", RecordType::A, Transport::Tcp, WAIT).unwrap();
    assert_eq!(a.addrs, vec![Ipv4Addr::new(10, 31, 0, 2)]);

    // Many different forwarded names: the cache stays within its bounds.
    let queries: Vec<Vec<u8>> = (0..300u16)
        .map(|i| raw_query(i, &format!("n{i}.flood.test."), RecordType::A))
        .collect();
    let mut answered = 0;
    for chunk in queries.chunks(10) {
        answered += flood(&s.web, blue(), chunk.to_vec(), WAIT)
            .values()
            .sum::<usize>();
    }
    let counts = server.counts().unwrap();
    println!(
        "300 distinct forwarded names: {answered} answered; cache {} entries, {} bytes",
        counts.cache_entries, counts.cache_bytes
    );
    assert_eq!(answered, 300);
    assert!(
        counts.cache_entries <= 50 && counts.cache_entries > 0,
        "{counts:?}"
    );
    assert!(counts.cache_bytes <= 8 << 20, "{counts:?}");
    up("the cache flood");
}

/// A burst from one client, as fast as it can send: the server takes queued datagrams in
/// batches (`recvmmsg`), and each query must still get exactly its own answer.
#[test]
fn a_burst_of_queries_is_answered_one_for_one() {
    let s = setup("dnsd");
    let resolv = s.lab.resolv_conf("resolv.conf", &[UPSTREAM]).unwrap();
    let server = ServerInNs::start(&s.lab.host, config(resolv)).unwrap();
    server.update(zones(true)).unwrap();
    const BURST: u16 = 2000;
    const WAVE: u16 = 100;
    let answers = overlay_lab::netns::blocking_in(&s.web, move || {
        let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        sock.connect(blue()).unwrap();
        // Room for every answer, so none is lost on our side.
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(4 << 20)
            .unwrap();
        let names = ["web.", "db."];
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 4096];
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        // Waves of WAVE outstanding queries (as dnsperf keeps them): the server finds them
        // queued, and they fit the smallest default socket buffer (212992 bytes).
        for wave in (0..BURST).step_by(usize::from(WAVE)) {
            for id in wave..wave + WAVE {
                sock.send(&raw_query(id, names[usize::from(id % 2)], RecordType::A))
                    .unwrap();
            }
            while answers.len() < usize::from(wave + WAVE) {
                let Ok(len) = sock.recv(&mut buf) else { break };
                answers.push(Message::from_vec(&buf[..len]).unwrap());
            }
        }
        answers
    })
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for m in &answers {
        assert!(seen.insert(m.metadata.id), "id {} answered twice", m.metadata.id);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "id {}",
            m.metadata.id
        );
        let want = match m.metadata.id % 2 {
            0 => Ipv4Addr::new(10, 31, 0, 2),
            _ => Ipv4Addr::new(10, 31, 0, 5),
        };
        let got: Vec<Ipv4Addr> = m
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![want], "id {}", m.metadata.id);
    }
    assert_eq!(
        answers.len(),
        usize::from(BURST),
        "answered {} of {BURST}",
        answers.len()
    );
}
