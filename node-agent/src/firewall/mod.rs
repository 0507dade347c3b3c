//! nftables: the datapath filtering of overlay networks, as part of the desired state.
//!
//! What is enforced, and why, is in [`rules`]. The tables are rebuilt whole, in one `nft`
//! transaction, whenever what they depend on ([`FirewallSpec`]) changes; no other table on
//! the host is read for anything but this comparison, and none is touched.
//!
//! The rules are audited like every other kernel object: [`Firewall::audit`] compares the
//! kernel's tables with what the agent would write ([`listing`]) and [`Firewall::converge`]
//! rebuilds them when they differ. The nftables generation ([`generation`]) says cheaply
//! whether anything changed at all since the last look, so this costs a process spawn only
//! after a change.
//!
//! Without a working `nft` there is no isolation: the agent refuses to start
//! ([`preflight`]), and a later failure to write is reported (pass errors, audit drift) until
//! a write succeeds.

mod elements;
pub mod generation;
pub mod listing;
mod nfnetlink;
mod nft;
pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use overlay_proto::mac::MacAddr;
use overlay_proto::ports::Protocol;

pub use generation::Changes;

use rules::Family;
pub use rules::{Name, TABLE};

use crate::spec::{Attachment, HostSpec};
use listing::{Bodies, Listing};

/// One network with a bridge on this host (vxlan and nat modes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPorts {
    pub bridge: Name,
    pub vxlan: Option<Name>,
    /// This host's gateway address in the network (the bridge's).
    pub gateway: Ipv4Addr,
    /// Its IPv6 gateway, in a dual-stack network.
    pub gateway6: Option<Ipv6Addr>,
    /// The IPv6 addresses of the network's endpoints on this host: the only ones the host
    /// forwards to on the bridge.
    pub endpoints6: BTreeSet<Ipv6Addr>,
    pub nat_egress: bool,
    /// Routed on the underlay without a tunnel (route mode, vxlan `--direct-routing`).
    pub routed: Option<Routed>,
}

/// A network whose traffic with the other hosts crosses the underlay device unencapsulated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Routed {
    /// The whole network, e.g. 10.80.0.0/16.
    pub cidr: ipnetwork::Ipv4Network,
    /// The subnets of the other hosts this one routes directly (not the tunnelled ones, not
    /// the unreachable ones): the only sources accepted from the underlay and the only
    /// destinations a workload may send to there. Empty: nothing crosses.
    pub peers: BTreeSet<ipnetwork::Ipv4Network>,
}

/// Who may send from a workload port: the endpoint's MAC and addresses.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortIdentity {
    pub port: Name,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Its IPv6 address, in a dual-stack network (then its link-local address, the one the
    /// kernel derives from `mac`, is allowed too: see [`rules`]).
    pub ip6: Option<Ipv6Addr>,
}

/// Everything the rules depend on; compared with what was last written to skip no-op rebuilds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FirewallSpec {
    /// The underlay interface: VXLAN arrives and NAT egress leaves through it (`None`: its
    /// name cannot be written into rules; then neither is allowed).
    pub underlay: Option<Name>,
    pub networks: Vec<NetworkPorts>,
    pub endpoints: BTreeSet<PortIdentity>,
    /// Underlay addresses of the hosts this one exchanges VXLAN with, by family.
    pub peers: BTreeSet<Ipv4Addr>,
    pub peers6: BTreeSet<Ipv6Addr>,
    /// Addresses no NAT egress may reach: the peers and the controllers.
    pub underlay_hosts: BTreeSet<Ipv4Addr>,
    /// Ports of this host forwarded to its endpoints (DNAT).
    pub published: BTreeSet<Published>,
}

/// `host_ip:host_port/protocol` of this host forwards to `to_ip:to_port`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Published {
    pub host_ip: Ipv4Addr,
    pub protocol: Protocol,
    pub host_port: u16,
    pub to_ip: Ipv4Addr,
    pub to_port: u16,
}

impl FirewallSpec {
    /// The rules `spec` calls for on a host whose underlay is `underlay_iface` / `underlay_ip`,
    /// with controllers at `control_plane`; also what had to be left out, and why. Whatever
    /// is left out fails closed: a port without its entry drops, a bridge without its
    /// network's entries reaches nothing.
    pub fn from_host(
        spec: &HostSpec,
        underlay_iface: &str,
        underlay_ip: IpAddr,
        control_plane: &BTreeSet<Ipv4Addr>,
        direct: &BTreeMap<String, BTreeSet<ipnetwork::Ipv4Network>>,
    ) -> (Self, Vec<String>) {
        let mut problems = Vec::new();
        let mut unpublished = Vec::new();
        let mut name = |what: &str, n: &str| {
            Name::new(n)
                .map_err(|e| problems.push(format!("firewall: {what}: {e}")))
                .ok()
        };
        let underlay = name("underlay", underlay_iface);
        let mut out = FirewallSpec {
            underlay,
            ..Default::default()
        };
        // Macvlan networks have no bridge: their workloads sit on the LAN (see `rules`).
        for n in &spec.networks {
            let Some(bridge) = &n.bridge else { continue };
            let Some(bridge_name) = name(&format!("network {}", n.name), &bridge.name) else {
                continue;
            };
            let vxlan = match &n.vxlan {
                Some(vx) => match name(&format!("network {}", n.name), &vx.name) {
                    Some(v) => Some(v),
                    None => continue,
                },
                None => None,
            };
            out.networks.push(NetworkPorts {
                bridge: bridge_name,
                vxlan,
                gateway: bridge.address.ip(),
                gateway6: bridge.address6.map(|a| a.ip()),
                endpoints6: n
                    .endpoints
                    .iter()
                    .filter_map(|e| e.address6.map(|(a, _)| a.ip()))
                    .collect(),
                nat_egress: n.nat_egress,
                routed: crate::modes::crosses_underlay(n).then(|| Routed {
                    cidr: n.cidr,
                    peers: direct.get(&n.name).cloned().unwrap_or_default(),
                }),
            });
            for ep in &n.endpoints {
                if let Attachment::Veth { host_ifname, .. } = &ep.attachment
                    && let Some(port) = name(&format!("endpoint {}", ep.id), host_ifname)
                {
                    out.endpoints.insert(PortIdentity {
                        port,
                        mac: ep.mac,
                        ip: ep.address.ip(),
                        ip6: ep.address6.map(|(a, _)| a.ip()),
                    });
                    // On the underlay address unless the endpoint names another of the host's
                    // (an IPv4 one: workloads are IPv4, so is the DNAT map).
                    for p in &ep.ports {
                        let host_ip = match (p.host_ip, underlay_ip) {
                            (Some(ip), _) | (None, IpAddr::V4(ip)) => ip,
                            (None, IpAddr::V6(_)) => {
                                unpublished.push(format!(
                                    "firewall: endpoint {}: port {} is not published: this host's underlay address is IPv6 and published ports are IPv4; name one of the host's IPv4 addresses for it",
                                    ep.id, p.host_port
                                ));
                                continue;
                            }
                        };
                        out.published.insert(Published {
                            host_ip,
                            protocol: p.protocol,
                            host_port: p.host_port,
                            to_ip: ep.address.ip(),
                            to_port: p.container_port,
                        });
                    }
                }
            }
            for p in n.peers.iter().filter(|p| p.underlay_ip != underlay_ip) {
                match p.underlay_ip {
                    IpAddr::V4(ip) => out.peers.insert(ip),
                    IpAddr::V6(ip) => out.peers6.insert(ip),
                };
            }
        }
        // What NAT egress (IPv4) could reach: IPv4 peers and controllers.
        out.underlay_hosts = out
            .peers
            .iter()
            .chain(control_plane)
            .copied()
            .filter(|ip| IpAddr::V4(*ip) != underlay_ip)
            .collect();
        problems.extend(unpublished);
        (out, problems)
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }
}

/// The controllers at `addrs`, as [`Controllers`](overlay_proto::connect::Controllers)
/// dials them (URIs, each validated there): their IPv4 addresses, and `host:port` for those
/// that name a host instead (to resolve, see [`resolve_controllers`]). IPv6 addresses are
/// left out, IPv4-mapped ones counted as IPv4: NAT egress is IPv4 only.
pub fn addresses_in(addrs: &[String]) -> (BTreeSet<Ipv4Addr>, Vec<String>) {
    let mut addresses = BTreeSet::new();
    let mut names = Vec::new();
    for addr in addrs {
        let Ok(uri) = addr.parse::<tonic::codegen::http::Uri>() else {
            continue;
        };
        let Some(host) = uri.host() else { continue };
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(IpAddr::V4(ip)) => {
                addresses.insert(ip);
            }
            Ok(IpAddr::V6(ip)) => addresses.extend(ip.to_ipv4_mapped()),
            Err(_) => names.push(match uri.port_u16() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            }),
        }
    }
    (addresses, names)
}

/// The IPv4 addresses of every controller at `addrs`, names resolved (within `within`);
/// and one line for each name that did not resolve, so the operator hears that NAT-egress
/// workloads are not kept from that controller.
pub async fn resolve_controllers(
    addrs: &[String],
    within: std::time::Duration,
) -> (BTreeSet<Ipv4Addr>, Vec<String>) {
    let (mut addresses, names) = addresses_in(addrs);
    // All at once: names that do not resolve delay the agent's start by `within`, not by
    // `within` each.
    let lookups = names.into_iter().map(|name| async move {
        // The port plays no part in the guard; the lookup wants one.
        let query = match name.contains(':') {
            true => name.clone(),
            false => format!("{name}:0"),
        };
        let found = tokio::time::timeout(within, tokio::net::lookup_host(query)).await;
        (name, found)
    });
    let mut unresolved = Vec::new();
    for (name, found) in futures::future::join_all(lookups).await {
        let found = match found {
            Ok(Ok(found)) => found
                .filter_map(|s| match s.ip() {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                })
                .collect::<BTreeSet<_>>(),
            Ok(Err(e)) => {
                unresolved.push(format!("controller {name}: cannot be resolved ({e})"));
                continue;
            }
            Err(_) => {
                unresolved.push(format!(
                    "controller {name}: not resolved within {}s",
                    within.as_secs()
                ));
                continue;
            }
        };
        if found.is_empty() {
            unresolved.push(format!("controller {name}: resolves to no IPv4 address"));
        }
        addresses.extend(found);
    }
    (addresses, unresolved)
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FirewallError {
    #[error(
        "`nft` not found in PATH: overlay needs it to filter and isolate networks (install the Debian package `nftables`)"
    )]
    Missing,
    #[error("cannot run nft: {0}")]
    Spawn(String),
    #[error("nft {what} failed: {detail}")]
    Failed { what: &'static str, detail: String },
    #[error("cannot read nft's listing: {0}")]
    Listing(String),
    #[error("the kernel's nftables tables differ from what was just written: {0}")]
    Mismatch(String),
}

/// The start-up check: `nft` is there and the kernel accepts every construct the rules use
/// (the bridge family, concatenated sets and maps, conntrack, masquerade, DNAT), checked on a sample
/// ruleset without committing anything.
pub fn preflight() -> Result<(), FirewallError> {
    let sample = FirewallSpec {
        underlay: Name::new("eth0").ok(),
        networks: vec![NetworkPorts {
            bridge: Name::new("ovb-0").map_err(FirewallError::Spawn)?,
            vxlan: Name::new("ovx-0").ok(),
            gateway: Ipv4Addr::new(192, 0, 2, 1),
            gateway6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            endpoints6: [Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)].into(),
            nat_egress: true,
            // Not a combination the controller makes: here only to check the rules parse.
            routed: "192.0.2.0/24".parse().ok().map(|cidr| Routed {
                cidr,
                peers: ["192.0.2.128/25".parse().ok()].into_iter().flatten().collect(),
            }),
        }],
        endpoints: [PortIdentity {
            port: Name::new("ovv-0").map_err(FirewallError::Spawn)?,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            ip: Ipv4Addr::new(192, 0, 2, 2),
            ip6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        }]
        .into(),
        peers: [Ipv4Addr::new(192, 0, 2, 3)].into(),
        peers6: [Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3)].into(),
        underlay_hosts: [Ipv4Addr::new(192, 0, 2, 3)].into(),
        published: [Published {
            host_ip: Ipv4Addr::new(192, 0, 2, 1),
            protocol: Protocol::Tcp,
            host_port: 8080,
            to_ip: Ipv4Addr::new(192, 0, 2, 2),
            to_port: 80,
        }]
        .into(),
    };
    nft::check(&rules::transaction(&rules::tables(&sample))).map_err(|e| match e {
        FirewallError::Failed { detail, .. } => FirewallError::Failed {
            what: "check",
            detail: format!(
                "{detail} (overlay needs nftables, Debian package `nftables`, with the bridge and inet families, run as root)"
            ),
        },
        other => other,
    })
}

/// What a [`Firewall::converge`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Converged {
    /// The kernel already held the rules.
    Unchanged,
    /// Written because what they depend on changed (or nothing was known yet).
    Written,
    /// Written because the kernel's tables had drifted: what was found.
    Repaired(Vec<String>),
}

/// What the agent knows of the kernel's tables. Every method blocks (processes, netlink).
#[derive(Debug, Default)]
pub struct Firewall {
    /// The spec last written successfully (`None`: unknown, e.g. at start or after a failure).
    written: Option<FirewallSpec>,
    /// The kernel's listing of each rule text written.
    bodies: Bodies,
    /// The nftables generation at which the kernel was known to match `written`.
    generation: Option<u32>,
    /// Why the last write failed, until one succeeds.
    error: Option<FirewallError>,
    /// How the last successful write was made.
    last_write: Option<Write>,
    /// Sets written in place at least once and then listed: the encoding of their elements
    /// has been seen to match what the kernel stores.
    verified: BTreeSet<(Family, &'static str)>,
}

/// How the rules were last written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// Set elements added and removed, in-process over nfnetlink.
    Elements,
    /// Every table rebuilt by `nft -f`.
    Rebuild,
}

impl Firewall {
    /// The kernel's tables changed behind the agent's back (a notification said so): the next
    /// audit or pass lists them instead of trusting the generation it saw last.
    pub fn invalidate(&mut self) {
        self.generation = None;
    }

    /// How the last successful write was made (`None` before the first).
    pub fn last_write(&self) -> Option<Write> {
        self.last_write
    }

    /// Makes the kernel hold the rules for `wanted`: nothing when it does, set elements
    /// added and removed when only they differ, otherwise a rebuild.
    pub fn converge(&mut self, wanted: &FirewallSpec) -> Result<Converged, FirewallError> {
        let (why, small_step) = match self.written.clone() {
            Some(written) => {
                let drift = self.drift(&written)?;
                match (drift.is_empty(), written == *wanted) {
                    (true, true) => return Ok(Converged::Unchanged),
                    (true, false) => (Converged::Written, Some(written)),
                    (false, _) => (Converged::Repaired(drift), None),
                }
            }
            None => (Converged::Written, None),
        };
        let result = match small_step {
            Some(written) => match self.update(&written, wanted) {
                Ok(true) => Ok(()),
                // More than elements differ: a rebuild is the way.
                Ok(false) => self.write(wanted),
                Err(e) => {
                    tracing::warn!(error = %e, "set elements not updated in place; rebuilding the tables");
                    self.write(wanted)
                }
            },
            None => self.write(wanted),
        };
        match result {
            Ok(()) => {
                self.error = None;
                Ok(why)
            }
            Err(e) => {
                self.written = None;
                self.generation = None;
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Where the kernel's tables differ from the rules for `wanted`, one line each, without
    /// changing anything; a failed last write is reported too.
    pub fn audit(&mut self, wanted: &FirewallSpec) -> Vec<String> {
        let mut out: Vec<String> = self
            .error
            .iter()
            .map(|e| format!("nftables rules not written: {e}"))
            .collect();
        match self.drift(wanted) {
            Ok(drift) => out.extend(drift),
            Err(e) => out.push(format!("nftables rules cannot be checked: {e}")),
        }
        out
    }

    /// Where the kernel differs from the rules for `spec`: nothing when `spec` is what was
    /// written and the generation has not moved since; otherwise from a listing.
    fn drift(&mut self, spec: &FirewallSpec) -> Result<Vec<String>, FirewallError> {
        let current = generation::current().ok();
        let known = self.written.as_ref() == Some(spec);
        if known && current.is_some() && current == self.generation {
            return Ok(Vec::new());
        }
        let drift = listing::diff(&rules::tables(spec), &list()?, &self.bodies);
        if drift.is_empty() && known {
            self.generation = current;
        }
        Ok(drift)
    }

    /// Commits `transaction`; the generation stays known if no one else committed meanwhile.
    fn commit(&mut self, transaction: &str) -> Result<(), FirewallError> {
        self.committing(|| nft::apply(transaction))
    }

    /// Runs `write`, one transaction; the generation stays known if no one else committed
    /// meanwhile.
    fn committing(&mut self, write: impl FnOnce() -> Result<(), FirewallError>) -> Result<(), FirewallError> {
        let before = generation::current().ok();
        write()?;
        let after = generation::current().ok();
        self.generation = match (before, after) {
            (Some(b), Some(a)) if a == b.wrapping_add(1) => Some(a),
            _ => None,
        };
        Ok(())
    }

    /// From `written` (which the kernel holds) to `wanted` by set elements alone, over
    /// nfnetlink in this process (no `nft` to start: see [`elements`]); `false` when more
    /// than elements differ.
    fn update(&mut self, written: &FirewallSpec, wanted: &FirewallSpec) -> Result<bool, FirewallError> {
        let Some(changes) = rules::changes(&rules::tables(written), &rules::tables(wanted)) else {
            return Ok(false);
        };
        if !changes.is_empty() {
            self.committing(|| {
                elements::apply(&changes).map_err(|e| FirewallError::Failed {
                    what: "set elements",
                    detail: e.to_string(),
                })
            })?;
            // A set written this way for the first time: the next look lists the tables
            // instead of trusting the generation, so a wrong encoding shows as drift once.
            let first: Vec<(Family, &'static str)> = changes
                .iter()
                .map(|c| (c.family, c.set))
                .filter(|k| !self.verified.contains(k))
                .collect();
            if !first.is_empty() {
                self.generation = None;
                self.verified.extend(first);
            }
        }
        self.written = Some(wanted.clone());
        self.last_write = Some(Write::Elements);
        Ok(true)
    }

    /// Rebuilds every table.
    fn write(&mut self, wanted: &FirewallSpec) -> Result<(), FirewallError> {
        let tables = rules::tables(wanted);
        self.commit(&rules::transaction(&tables))?;
        if !listing::knows_all(&tables, &self.bodies) {
            // New rule texts: learn how the kernel lists them, and check it holds the model.
            let current = generation::current().ok();
            let listing = list()?;
            let mismatch = listing::diff(&tables, &listing, &Bodies::new());
            if !mismatch.is_empty() {
                return Err(FirewallError::Mismatch(mismatch.join("; ")));
            }
            listing::learn(&tables, &listing, &mut self.bodies);
            self.generation = current;
        }
        self.written = Some(wanted.clone());
        self.last_write = Some(Write::Rebuild);
        Ok(())
    }
}

fn list() -> Result<Listing, FirewallError> {
    Listing::parse(&nft::list_ruleset()?).map_err(|e| FirewallError::Listing(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay_proto::v1 as pb;

    fn host_spec() -> HostSpec {
        let mut d = pb::HostDesiredState {
            revision: 1,
            host_name: "h1".into(),
            underlay_ip: "192.0.2.11".into(),
            vtep_mac: "02:00:00:00:00:01".into(),
            ..Default::default()
        };
        d.networks.push(pb::NetworkState {
            name: "blue".into(),
            id: 1,
            mode: pb::NetworkMode::Vxlan as i32,
            cidr: "10.1.0.0/16".into(),
            subnet: "10.1.0.0/24".into(),
            gateway: "10.1.0.1".into(),
            vni: 4096,
            mtu: 1450,
            bridge_name: "ovb-1".into(),
            vxlan_name: "ovx-1".into(),
            peers: vec![
                pb::Peer {
                    host: "h2".into(),
                    underlay_ip: "192.0.2.12".into(),
                    vtep_mac: "02:00:00:00:00:02".into(),
                    subnet: "10.1.1.0/24".into(),
                    ..Default::default()
                },
                // A stale copy of this host itself never counts as a peer.
                pb::Peer {
                    host: "h1".into(),
                    underlay_ip: "192.0.2.11".into(),
                    vtep_mac: "02:00:00:00:00:01".into(),
                    subnet: "10.1.0.0/24".into(),
                    ..Default::default()
                },
            ],
            endpoints: vec![
                pb::LocalEndpoint {
                    id: 1,
                    netns: "w1".into(),
                    ifname: "eth0".into(),
                    address: "10.1.0.2/24".into(),
                    mac: "0a:58:0a:01:00:02".into(),
                    gateway: "10.1.0.1".into(),
                    host_ifname: "ovv-1".into(),
                    default_route: Some(true),
                    ..Default::default()
                },
                pb::LocalEndpoint {
                    id: 2,
                    netns: "w2".into(),
                    ifname: "eth0".into(),
                    address: "10.1.0.3/24".into(),
                    mac: "0a:58:0a:01:00:03".into(),
                    gateway: "10.1.0.1".into(),
                    // Passes the agent's own check, but nft would read the `*` as a wildcard.
                    host_ifname: "ovv-*".into(),
                    default_route: Some(true),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        d.networks.push(pb::NetworkState {
            name: "lan".into(),
            id: 2,
            mode: pb::NetworkMode::Macvlan as i32,
            cidr: "192.168.5.0/24".into(),
            subnet: "192.168.5.0/26".into(),
            gateway: "192.168.5.1".into(),
            mtu: 1500,
            macvlan: Some(pb::MacvlanOptions {
                parent: "eth1".into(),
                mode: "bridge".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        HostSpec::from_proto(&d, "192.0.2.11".parse().unwrap())
    }

    #[tokio::test]
    async fn controllers_given_by_name_are_guarded_too() {
        // `localhost` resolves through the system's resolver (/etc/hosts) like any name.
        let lists = [
            "https://localhost:7400/,192.0.2.101:7400,[2001:db8::1]:7400".to_string(),
            "ctl.invalid,HTTPS://192.0.2.102:7400/x,[::ffff:192.0.2.103]:7400".into(),
        ];
        // As the agent dials them: the addresses `--controller` gave, normalised.
        let second = std::time::Duration::from_secs(1);
        let dialed = overlay_proto::connect::Controllers::new(&lists, second, second).unwrap();
        let (control, unresolved) = resolve_controllers(dialed.addrs(), 3 * second).await;
        assert!(control.contains(&Ipv4Addr::LOCALHOST), "{control:?}");
        for ip in [101, 102, 103] {
            assert!(control.contains(&Ipv4Addr::new(192, 0, 2, ip)), "{control:?}");
        }
        assert_eq!(unresolved.len(), 1, "{unresolved:?}");
        assert!(
            unresolved[0].starts_with("controller ctl.invalid: "),
            "{unresolved:?}"
        );
        // What resolved is kept from NAT egress like an address given as such.
        let (fw, _) = FirewallSpec::from_host(
            &host_spec(),
            "eth0",
            "192.0.2.11".parse().unwrap(),
            &control,
            &BTreeMap::new(),
        );
        assert!(
            fw.underlay_hosts.contains(&Ipv4Addr::LOCALHOST),
            "{:?}",
            fw.underlay_hosts
        );
    }

    #[test]
    fn spec_from_the_desired_state() {
        let (control, names) = addresses_in(&[
            "http://192.0.2.101:7400".into(),
            "https://192.0.2.102:7400".into(),
            "http://ctl.example:7400".into(),
        ]);
        assert_eq!(control.len(), 2);
        assert_eq!(names, ["ctl.example:7400"]);
        let (fw, problems) = FirewallSpec::from_host(
            &host_spec(),
            "eth0",
            "192.0.2.11".parse().unwrap(),
            &control,
            &BTreeMap::new(),
        );
        assert_eq!(
            fw.networks.len(),
            1,
            "the macvlan network has no bridge to filter"
        );
        assert_eq!(fw.networks[0].gateway.to_string(), "10.1.0.1");
        assert_eq!(
            fw.endpoints.iter().map(|e| e.port.as_str()).collect::<Vec<_>>(),
            ["ovv-1"],
            "a name nft would misread is left out: that port drops everything"
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("endpoint 2"), "{problems:?}");
        assert_eq!(fw.peers, ["192.0.2.12".parse().unwrap()].into());
        assert_eq!(fw.underlay_hosts.len(), 3, "{:?}", fw.underlay_hosts);
        assert!(!fw.underlay_hosts.contains(&"192.0.2.11".parse().unwrap()));
    }

    #[test]
    fn an_unwritable_underlay_name_disables_what_needs_it() {
        let (fw, problems) = FirewallSpec::from_host(
            &host_spec(),
            "eth\"0",
            "192.0.2.11".parse().unwrap(),
            &BTreeSet::new(),
            &BTreeMap::new(),
        );
        assert!(fw.underlay.is_none());
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn errors_are_one_line_naming_the_package() {
        let e = FirewallError::Missing.to_string();
        assert!(
            e.contains("nftables") && e.contains("nft") && !e.contains('\n'),
            "{e}"
        );
    }
}
