//! DNS in the lab: the agent's DNS server run inside a "host" namespace ([`ServerInNs`]), the
//! networks' bridges and workloads around it ([`DnsLab`]), dnsmasq as an upstream or as the
//! reference resolver ([`Dnsmasq`]), and a client ([`query`]) speaking hickory-proto's wire
//! format from any namespace, over UDP or TCP.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
pub use overlay_agent::dns::{DnsConfig, ListenerStatus, UpdateReport, Zone};
pub use overlay_agent::metrics::DnsCounts;

use crate::netns::{Namespaces, exec, unique_prefix};
use crate::process::Daemon;
use crate::{LabError, Result, io};

/// A zone from text: `zone("blue", "10.1.0.1", "10.1.0.0/16", &[("db", &["10.1.0.5"])])`.
pub fn zone(network: &str, gateway: &str, cidr: &str, names: &[(&str, &[&str])]) -> Result<Zone> {
    let bad = |what: &str| LabError::Setup(format!("zone {network}: bad {what}"));
    let mut map = BTreeMap::new();
    for (name, addrs) in names {
        let addrs = addrs
            .iter()
            .map(|a| a.parse().map_err(|_| bad(a)))
            .collect::<Result<Vec<Ipv4Addr>>>()?;
        map.insert(name.to_string(), addrs);
    }
    Ok(Zone {
        network: network.into(),
        domain: overlay_agent::dns::network_domain(network),
        gateway: gateway.parse().map_err(|_| bad(gateway))?,
        cidr: cidr.parse().map_err(|_| bad(cidr))?,
        names: map,
        cidr6: None,
        names6: BTreeMap::new(),
    })
}

enum Cmd {
    Update(Vec<Zone>, std::sync::mpsc::Sender<(UpdateReport, ListenerStatus)>),
    Counts(std::sync::mpsc::Sender<DnsCounts>),
    Upstreams(std::sync::mpsc::Sender<Vec<SocketAddr>>),
}

/// The agent's [`overlay_agent::dns::DnsServer`] running on a thread (and a runtime) that
/// entered namespace `ns`, as the agent's own runtime runs in the host namespace. Every call
/// is carried out on that runtime, so no socket is ever opened elsewhere. Stopped on drop.
pub struct ServerInNs {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Cmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerInNs {
    pub fn start(ns: &str, config: DnsConfig) -> Result<Self> {
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).map_err(io(format!("open {path}")))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let thread = std::thread::Builder::new()
            .name(format!("dns-{ns}"))
            .spawn(move || {
                let setup = || -> Result<tokio::runtime::Runtime> {
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| LabError::Setup(format!("setns {path}: {e}")))?;
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .map_err(io("runtime"))
                };
                let rt = match setup() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let server = match overlay_agent::dns::DnsServer::start(config) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(LabError::Setup(e.to_string())));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    while let Some(cmd) = rx.recv().await {
                        match cmd {
                            Cmd::Update(zones, reply) => {
                                let report = server.update(zones);
                                let status = server.settled().await;
                                let _ = reply.send((report, status));
                            }
                            Cmd::Counts(reply) => {
                                let _ = reply.send(server.metrics().snapshot());
                            }
                            Cmd::Upstreams(reply) => {
                                let _ = reply.send(server.upstreams());
                            }
                        }
                    }
                });
            })
            .map_err(io("spawn the DNS server thread"))?;
        ready_rx
            .recv()
            .map_err(|_| LabError::Setup("the DNS server thread died".into()))??;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn call<T>(&self, make: impl FnOnce(std::sync::mpsc::Sender<T>) -> Cmd) -> Result<T> {
        let (reply, rx) = std::sync::mpsc::channel();
        let gone = || LabError::Setup("the DNS server thread is gone".into());
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send(make(reply))
            .map_err(|_| gone())?;
        rx.recv_timeout(Duration::from_secs(30)).map_err(|_| gone())
    }

    /// `DnsServer::update`, then waits for the listeners to follow.
    pub fn update(&self, zones: Vec<Zone>) -> Result<(UpdateReport, ListenerStatus)> {
        self.call(|reply| Cmd::Update(zones, reply))
    }

    pub fn counts(&self) -> Result<DnsCounts> {
        self.call(Cmd::Counts)
    }

    /// The upstreams it read from its resolv.conf.
    pub fn upstreams(&self) -> Result<Vec<SocketAddr>> {
        self.call(Cmd::Upstreams)
    }
}

impl Drop for ServerInNs {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A host namespace with bridges (one per network, as the agent's `ovb-<id>`), workload
/// namespaces wired into them, and "outside" namespaces routed to the host (for upstream
/// resolvers). Everything is deleted on drop.
pub struct DnsLab {
    pub namespaces: Namespaces,
    pub prefix: String,
    pub host: String,
    dir: tempfile::TempDir,
    links: u32,
}

impl DnsLab {
    pub fn new(tag: &str) -> Result<Self> {
        let prefix = unique_prefix(tag);
        let host = format!("{prefix}-h");
        let mut namespaces = Namespaces::default();
        namespaces.add(&host)?;
        Ok(Self {
            namespaces,
            prefix,
            host,
            dir: tempfile::tempdir().map_err(io("tempdir"))?,
            links: 0,
        })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ip <args>` in the host namespace.
    pub fn host_ip(&self, args: &[&str]) -> Result<()> {
        exec(&self.host, "ip", args).map(|_| ())
    }

    /// A bridge in the host namespace, up, with `address` (CIDR form) if given.
    pub fn bridge(&self, name: &str, address: Option<&str>) -> Result<()> {
        self.host_ip(&["link", "add", name, "type", "bridge"])?;
        self.host_ip(&["link", "set", name, "up"])?;
        if let Some(a) = address {
            self.host_ip(&["addr", "add", a, "dev", name])?;
        }
        Ok(())
    }

    /// A workload namespace `<prefix>-<tag>` with `eth0` on `bridge`, `address` (CIDR form)
    /// and a default route via `gateway`, as the agent wires an endpoint.
    pub fn workload(&mut self, tag: &str, bridge: &str, address: &str, gateway: Ipv4Addr) -> Result<String> {
        let ns = format!("{}-{tag}", self.prefix);
        self.namespaces.add(&ns)?;
        self.links += 1;
        let outer = format!("vw{}", self.links);
        crate::netns::wire(&ns, "eth0", &self.host, &outer, bridge)?;
        exec(&ns, "ip", &["addr", "add", address, "dev", "eth0"])?;
        exec(
            &ns,
            "ip",
            &["route", "add", "default", "via", &gateway.to_string()],
        )?;
        Ok(ns)
    }

    /// A namespace `<prefix>-<tag>` linked to the host by a veth: `host_address` on the host
    /// end, `address` on its `eth0`, each reaching the other (for an upstream resolver).
    pub fn outside(&mut self, tag: &str, host_address: &str, address: &str) -> Result<String> {
        let ns = format!("{}-{tag}", self.prefix);
        self.namespaces.add(&ns)?;
        self.links += 1;
        let outer = format!("vo{}", self.links);
        exec(
            &self.host,
            "ip",
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        self.host_ip(&["addr", "add", host_address, "dev", &outer])?;
        self.host_ip(&["link", "set", &outer, "up"])?;
        exec(&ns, "ip", &["addr", "add", address, "dev", "eth0"])?;
        exec(&ns, "ip", &["link", "set", "eth0", "up"])?;
        Ok(ns)
    }

    /// A resolv.conf in the lab's directory with these nameservers (the server under test
    /// never reads the machine's own, which would send queries off the machine).
    pub fn resolv_conf(&self, name: &str, nameservers: &[Ipv4Addr]) -> Result<PathBuf> {
        let path = self.dir().join(name);
        let text: String = nameservers.iter().map(|n| format!("nameserver {n}\n")).collect();
        std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
        Ok(path)
    }
}

/// dnsmasq (Debian's `dnsmasq-base`) on `listen`:53 in a namespace, answering only what its
/// arguments say (no resolv.conf, no /etc/hosts, no upstream). Killed on drop.
pub struct Dnsmasq {
    daemon: Option<Daemon>,
    pub addr: SocketAddrV4,
}

impl Dnsmasq {
    pub fn start(ns: &str, listen: Ipv4Addr, args: &[String], log: &Path) -> Result<Self> {
        if !Path::new("/usr/sbin/dnsmasq").exists() {
            return Err(LabError::Setup(
                "dnsmasq is missing: apt-get install -y dnsmasq-base".into(),
            ));
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "/usr/sbin/dnsmasq", "--keep-in-foreground"])
            .args([
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--port=53",
                "--user=root",
                "--pid-file",
                "--log-facility=-",
            ])
            .arg(format!("--listen-address={listen}"))
            .args(args);
        let daemon = Daemon::spawn("dnsmasq", cmd, log)?;
        let me = Self {
            daemon: Some(daemon),
            addr: SocketAddrV4::new(listen, 53),
        };
        // Up once it answers anything.
        let start = Instant::now();
        while query(
            ns,
            me.addr,
            "ready.invalid.",
            RecordType::A,
            Transport::Udp,
            Duration::from_millis(200),
        )
        .is_err()
        {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(LabError::Timeout(format!(
                    "dnsmasq on {listen} in {ns}: {}",
                    crate::process::tail(log, 5)
                )));
            }
        }
        Ok(me)
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    /// Stops it now (an upstream that goes away).
    pub fn kill(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One response, decoded.
#[derive(Clone, Debug)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub addrs: Vec<Ipv4Addr>,
    /// PTR targets.
    pub names: Vec<String>,
    pub authoritative: bool,
    pub truncated: bool,
    pub took: Duration,
    pub message: Message,
}

/// Asks `server` for `name`/`qtype` from namespace `ns`, waiting up to `timeout`.
pub fn query(
    ns: &str,
    server: SocketAddrV4,
    name: &str,
    qtype: RecordType,
    transport: Transport,
    timeout: Duration,
) -> Result<Answer> {
    let name = Name::from_ascii(name).map_err(|e| LabError::Setup(format!("name {name}: {e}")))?;
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name, qtype));
    let bytes = msg
        .to_vec()
        .map_err(|e| LabError::Setup(format!("encode: {e}")))?;
    let id = msg.metadata.id;
    let what = format!("query {} {qtype} to {server} from {ns}", msg.queries[0].name());
    let started = Instant::now();
    let raw = exchange(ns, server, bytes, transport, timeout).map_err(io(what.clone()))?;
    let took = started.elapsed();
    let message =
        Message::from_vec(&raw).map_err(|e| LabError::Setup(format!("{what}: bad response: {e}")))?;
    if message.metadata.id != id {
        return Err(LabError::Setup(format!("{what}: response id mismatch")));
    }
    Ok(Answer {
        rcode: message.metadata.response_code,
        addrs: message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
        names: message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect(),
        authoritative: message.metadata.authoritative,
        truncated: message.metadata.truncation,
        took,
        message,
    })
}

/// Sends `bytes` as one DNS message to `server` from namespace `ns` and returns the first
/// response (for raw, possibly malformed, queries too).
pub fn exchange(
    ns: &str,
    server: SocketAddrV4,
    bytes: Vec<u8>,
    transport: Transport,
    timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let ns = ns.to_string();
    crate::netns::blocking_in(&ns, move || match transport {
        Transport::Udp => {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            sock.connect(server)?;
            sock.set_read_timeout(Some(timeout))?;
            sock.send(&bytes)?;
            let mut buf = vec![0u8; 65_535];
            let n = sock.recv(&mut buf)?;
            buf.truncate(n);
            Ok(buf)
        }
        Transport::Tcp => {
            use std::io::{Read, Write};
            let mut s = TcpStream::connect_timeout(&SocketAddr::V4(server), timeout)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            s.write_all(&framed)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf)?;
            Ok(buf)
        }
    })
    .map_err(|e| std::io::Error::other(e.to_string()))?
}
