//! The rules: what overlay enforces in the kernel's nftables, as a model ([`Table`]s of sets
//! and chains) built from a [`FirewallSpec`], rendered into one `nft -f` transaction and
//! compared with what `nft -j list ruleset` shows (see [`super::listing`]).
//!
//! Two tables, both named `overlay`:
//!
//! `bridge overlay`, per workload port (veth host ends `ovv-*`):
//! - in: a frame must carry the endpoint's MAC as its source; IPv4 must carry the endpoint's
//!   address, ARP the endpoint's MAC and address as sender. IPv6 (dual-stack networks only)
//!   must come from the endpoint's IPv6 address or its EUI-64 link-local one; neighbour
//!   discovery may carry no link-layer address but the port's MAC (`nd_options6`), neighbour
//!   advertisements may only claim those two, duplicate address detection only probe them,
//!   and router advertisements, redirects, MLD queries, DHCPv6 server messages and ICMPv6
//!   fragments are dropped from every source (`from_workload6`). Everything else is dropped: IPv6 from endpoints of IPv4-only
//!   networks (it would give a workload link-local paths that no IPv4 check sees),
//!   802.1Q/802.1ad tags (they hide the inner ethertype from these checks), and every other
//!   ethertype. A port without an entry (wired before the rules caught up, or added by hand)
//!   drops everything: fail closed.
//! - out: unicast is delivered only to the port whose endpoint owns the destination MAC, so
//!   a workload never sees another's flooded unicast.
//!
//! `inet overlay`, by interface (bridges `ovb-*`, vxlan devices `ovx-*`), never by source
//! address, so a forged source gains nothing:
//! - forward: IPv6 onto a bridge only to an address a local endpoint holds (a /64 swept by
//!   a workload would fill the neighbour table). In on network N's bridge or vxlan may
//!   leave only by N's bridge or N's vxlan,
//!   or by the underlay when N has NAT egress (masqueraded, and then never to another overlay
//!   host or controller, nor as VXLAN: masquerade would lend the packet this host's address).
//!   Nothing from outside opens a connection into a workload: replies only, plus DNAT'd
//!   traffic (`ct status dnat`, the hook for published ports). Nothing but a network's own
//!   bridge enters its vxlan, so no machine that routes through this host reaches the other
//!   hosts' workloads through the tunnel. Networks routed on the underlay (route mode,
//!   `--direct-routing`) exchange only the other hosts' subnets with it, and take a source
//!   from it only for the subnets of the hosts it routes directly.
//! - input: workloads reach only what the product serves them on their gateway (DNS, echo,
//!   and for IPv6 neighbour discovery and MLD); other hosts' workloads arriving through the
//!   vxlan only echo (the probe). Never the host's other services, on any of its addresses.
//!   IPv6 never leaves by NAT egress (there is no IPv6 NAT: it would leave with the
//!   workload's own address).
//! - VXLAN (UDP 4789) only from current peers' underlay addresses, on the underlay device.
//! - no connection tracking where no rule needs it (raw priority, `notrack`): the VXLAN
//!   packets themselves, sent and received, and what arrives through a vxlan device for a
//!   local workload (`same_network` decides by interface alone). Tracking them cost ~4% of
//!   P2's throughput (0.87x -> 0.91x the hand-built vxlan). What stays tracked: a workload's
//!   own packets (NAT egress, published ports' replies), traffic to the host.
//!
//! Macvlan endpoints bypass all of this: their device lives in the workload's namespace and
//! sends straight out of the parent NIC (or to sibling macvlans), crossing no hook of the host
//! namespace. They are LAN machines; what isolates them is the LAN (VLAN parents, `private` or
//! `vepa` mode with the switch's ACLs).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use overlay_proto::mac::MacAddr;
use overlay_proto::names;
use overlay_proto::ports::Protocol;

use super::FirewallSpec;
use super::elements::SetChange;
use crate::spec::VXLAN_PORT;

/// Name of every table overlay owns, in each of [`Family::ALL`].
pub const TABLE: &str = "overlay";

/// An interface name that can be written into a ruleset as it is: 1 to 15 of `A-Z a-z 0-9 _ . -`.
/// Anything else (a quote, a `*` that nft would read as a wildcard) is refused, so no name
/// from the desired state can change the meaning of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn new(name: &str) -> Result<Self, String> {
        let ok = (1..=15).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok {
            Ok(Self(name.to_string()))
        } else {
            Err(format!(
                "interface name {name:?} cannot be used in nftables rules (1 to 15 of A-Z a-z 0-9 _ . -)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// nftables address families overlay keeps a table in. `Ip` is where earlier versions kept
/// everything: it is only ever removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Bridge,
    Inet,
    Ip,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Bridge, Family::Inet, Family::Ip];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Bridge => "bridge",
            Family::Inet => "inet",
            Family::Ip => "ip",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == text)
    }
}

/// One value of a set element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Atom {
    Name(Name),
    Mac(MacAddr),
    Ip(Ipv4Addr),
    Ip6(Ipv6Addr),
    /// An IPv6 address matched as raw packet bytes (a field nft has no name for, such as a
    /// neighbour advertisement's target): nft types it a 128-bit integer.
    Raw6(Ipv6Addr),
    /// A MAC address matched as raw packet bytes (the link-layer address option of neighbour
    /// discovery): a 48-bit integer to nft.
    RawMac(MacAddr),
    Proto(Protocol),
    Port(u16),
}

impl Atom {
    /// As written in a ruleset.
    fn text(&self) -> String {
        match self {
            Atom::Name(n) => format!("\"{}\"", n.as_str()),
            Atom::Mac(m) => m.to_string(),
            Atom::Ip(ip) => ip.to_string(),
            Atom::Ip6(ip) => ip.to_string(),
            Atom::Raw6(ip) => format!("{:#034x}", u128::from(*ip)),
            Atom::RawMac(m) => format!("{:#014x}", mac_bits(*m)),
            Atom::Proto(p) => p.as_str().to_string(),
            Atom::Port(port) => port.to_string(),
        }
    }

    /// As `nft -j` lists it.
    fn json(&self) -> serde_json::Value {
        match self {
            Atom::Name(n) => n.as_str().into(),
            Atom::Mac(m) => m.to_string().into(),
            Atom::Ip(ip) => ip.to_string().into(),
            Atom::Ip6(ip) => ip.to_string().into(),
            // nft lists an integer wider than 64 bits in hex without leading zeros, a
            // narrower one as a (signed) JSON number.
            Atom::Raw6(ip) => {
                let v = u128::from(*ip);
                match u64::try_from(v) {
                    Ok(small) => (small as i64).into(),
                    Err(_) => format!("{v:#x}").into(),
                }
            }
            // Below 2^64: a JSON number.
            Atom::RawMac(m) => mac_bits(*m).into(),
            Atom::Proto(p) => p.as_str().into(),
            Atom::Port(port) => (*port).into(),
        }
    }
}

/// `mac` as the 48-bit integer nft reads from a packet.
fn mac_bits(mac: MacAddr) -> u64 {
    mac.0.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b))
}

/// A set element (one value, or a concatenation), or a map element: a key and its value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Element {
    pub key: Vec<Atom>,
    /// Empty in a set.
    pub value: Vec<Atom>,
}

impl Element {
    pub fn new(key: Vec<Atom>) -> Self {
        Self {
            key,
            value: Vec::new(),
        }
    }

    pub fn map(key: Vec<Atom>, value: Vec<Atom>) -> Self {
        Self { key, value }
    }

    fn join(atoms: &[Atom]) -> String {
        atoms.iter().map(Atom::text).collect::<Vec<_>>().join(" . ")
    }

    fn concat_json(atoms: &[Atom]) -> serde_json::Value {
        match atoms {
            [one] => one.json(),
            many => serde_json::json!({ "concat": many.iter().map(Atom::json).collect::<Vec<_>>() }),
        }
    }

    /// As written in a ruleset (`key : value` in a map).
    pub fn text(&self) -> String {
        if self.value.is_empty() {
            Self::join(&self.key)
        } else {
            format!("{} : {}", Self::join(&self.key), Self::join(&self.value))
        }
    }

    /// What `delete element` names: the key alone.
    pub fn key_text(&self) -> String {
        Self::join(&self.key)
    }

    /// As `nft -j` lists it (`[key, value]` in a map).
    pub fn json(&self) -> serde_json::Value {
        if self.value.is_empty() {
            Self::concat_json(&self.key)
        } else {
            serde_json::json!([Self::concat_json(&self.key), Self::concat_json(&self.value)])
        }
    }
}

/// A named set, or a map when it has `data` types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    pub name: &'static str,
    /// nft data types of the key (as `nft -j` lists them); more than one makes a
    /// concatenation.
    pub types: &'static [&'static str],
    /// The key declared by the expressions it is matched with (`typeof`) rather than by
    /// `types`: for raw payload fields, whose type nft only knows as `integer`.
    pub type_of: Option<&'static str>,
    /// A map's value types (empty for a set).
    pub data: &'static [&'static str],
    pub elements: BTreeSet<Element>,
}

impl Set {
    pub fn is_map(&self) -> bool {
        !self.data.is_empty()
    }

    /// `set` or `map`, as rulesets and `nft -j` name the object.
    pub fn keyword(&self) -> &'static str {
        if self.is_map() { "map" } else { "set" }
    }

    /// The `type` (and a map's `map`) as `nft -j` lists them.
    pub fn type_json(&self) -> serde_json::Value {
        let types = match self.types {
            [one] => serde_json::Value::String(one.to_string()),
            many => serde_json::json!(many),
        };
        if self.is_map() {
            serde_json::json!({ "type": types, "map": self.data.join(" . ") })
        } else {
            types
        }
    }
}

/// A base chain's hook (the policy is always accept: overlay only ever constrains its own
/// interfaces and leaves the rest of the host's traffic alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    pub kind: &'static str,
    pub hook: &'static str,
    pub priority: i32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The rule as written, without its comment.
    pub text: String,
    /// Unique within its table: how a rule is found again in the kernel's listing.
    pub comment: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    pub base: Option<Base>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

impl Table {
    /// Equal but for the sets' elements.
    fn same_shape(&self, other: &Table) -> bool {
        self.family == other.family
            && self.chains == other.chains
            && self.sets.len() == other.sets.len()
            && self.sets.iter().zip(&other.sets).all(|(a, b)| {
                a.name == b.name && a.types == b.types && a.type_of == b.type_of && a.data == b.data
            })
    }
}

fn rule(text: impl Into<String>, comment: &'static str) -> Rule {
    Rule {
        text: text.into(),
        comment,
    }
}

fn base(kind: &'static str, hook: &'static str, priority: i32) -> Option<Base> {
    Some(Base { kind, hook, priority })
}

fn set(
    name: &'static str,
    types: &'static [&'static str],
    elements: impl IntoIterator<Item = Element>,
) -> Set {
    Set {
        name,
        types,
        type_of: None,
        data: &[],
        elements: elements.into_iter().collect(),
    }
}

fn map(
    name: &'static str,
    types: &'static [&'static str],
    data: &'static [&'static str],
    elements: impl IntoIterator<Item = Element>,
) -> Set {
    Set {
        name,
        types,
        type_of: None,
        data,
        elements: elements.into_iter().collect(),
    }
}

fn pair(a: &Name, b: &Name) -> Element {
    Element::new(vec![Atom::Name(a.clone()), Atom::Name(b.clone())])
}

/// Priorities as nft names them: `filter` in the bridge family, `filter`, `dstnat` and `srcnat`
/// in inet.
const BRIDGE_FILTER: i32 = -200;
const RAW: i32 = -300;
const FILTER: i32 = 0;
const SRCNAT: i32 = 100;
const DSTNAT: i32 = -100;

/// The tables `spec` calls for; none when no network has a bridge on this host.
pub fn tables(spec: &FirewallSpec) -> Vec<Table> {
    if spec.is_empty() {
        return Vec::new();
    }
    vec![bridge_table(spec), inet_table(spec)]
}

/// The link-local address a workload's kernel gives an interface with `mac` (modified
/// EUI-64, RFC 4291 appendix A): the only link-local source its port accepts.
pub fn link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// ICMPv6 types by nft's names, as the rules use them.
const ROUTER_ONLY6: &str = "{ nd-router-advert, nd-redirect, mld-listener-query }";
const TO_GATEWAY6: &str = "{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, \
     mld-listener-report, mld-listener-done, mld2-listener-report }";

fn bridge_table(spec: &FirewallSpec) -> Table {
    let ports = format!("\"{}*\"", names::ENDPOINT_PREFIX);
    // A dual-stack endpoint's own addresses: the network's and its link-local one.
    let own6 = |e: &super::PortIdentity| -> Vec<(Name, MacAddr, Ipv6Addr)> {
        e.ip6
            .map(|ip| {
                vec![
                    (e.port.clone(), e.mac, ip),
                    (e.port.clone(), e.mac, link_local(e.mac)),
                ]
            })
            .unwrap_or_default()
    };
    let own6: Vec<_> = spec.endpoints.iter().flat_map(own6).collect();
    let mut nd_targets = set(
        "nd_targets6",
        &["ifname", "ether_addr", "integer"],
        own6.iter()
            .map(|(p, m, ip)| Element::new(vec![Atom::Name(p.clone()), Atom::Mac(*m), Atom::Raw6(*ip)])),
    );
    // The target address of a neighbour solicitation or advertisement: 8 bytes into ICMPv6.
    nd_targets.type_of = Some("iifname . ether saddr . @th,64,128");
    let ports6 = spec
        .endpoints
        .iter()
        .filter(|e| e.ip6.is_some())
        .map(|e| Element::new(vec![Atom::Name(e.port.clone()), Atom::Mac(e.mac)]));
    let mut lla = set(
        "nd_lladdr6",
        &["ifname", "integer"],
        spec.endpoints
            .iter()
            .filter(|e| e.ip6.is_some())
            .map(|e| Element::new(vec![Atom::Name(e.port.clone()), Atom::RawMac(e.mac)])),
    );
    // The address of a neighbour solicitation's or advertisement's one option (24 bytes in);
    // a router solicitation's is matched at 8 bytes with the same set.
    lla.type_of = Some("iifname . @th,208,48");
    Table {
        family: Family::Bridge,
        sets: vec![
            set(
                "endpoints",
                &["ifname", "ether_addr", "ipv4_addr"],
                spec.endpoints.iter().map(|e| {
                    Element::new(vec![Atom::Name(e.port.clone()), Atom::Mac(e.mac), Atom::Ip(e.ip)])
                }),
            ),
            set(
                "endpoint_macs",
                &["ifname", "ether_addr"],
                spec.endpoints
                    .iter()
                    .map(|e| Element::new(vec![Atom::Name(e.port.clone()), Atom::Mac(e.mac)])),
            ),
            set(
                "endpoints6",
                &["ifname", "ether_addr", "ipv6_addr"],
                own6.iter().map(|(p, m, ip)| {
                    Element::new(vec![Atom::Name(p.clone()), Atom::Mac(*m), Atom::Ip6(*ip)])
                }),
            ),
            nd_targets,
            set("endpoint_macs6", &["ifname", "ether_addr"], ports6),
            lla,
        ],
        chains: vec![
            Chain {
                name: "prerouting",
                base: base("filter", "prerouting", BRIDGE_FILTER),
                rules: vec![rule(
                    format!("iifname {ports} jump from_workload"),
                    "frames from workload ports",
                )],
            },
            Chain {
                name: "from_workload",
                base: None,
                rules: vec![
                    // The common case first, in one lookup: it also proves the MAC.
                    rule(
                        "iifname . ether saddr . ip saddr @endpoints accept",
                        "IPv4 from the endpoint's address",
                    ),
                    rule(
                        "iifname . ether saddr != @endpoint_macs counter drop",
                        "source MAC is not the endpoint's",
                    ),
                    rule(
                        "arp htype 1 arp ptype ip arp hlen 6 arp plen 4 \
                         iifname . arp saddr ether . arp saddr ip @endpoints accept",
                        "ARP sent as the endpoint",
                    ),
                    rule("ether type ip6 jump from_workload6", "IPv6"),
                    rule("counter drop", "any other source, VLAN tags, other ethertypes"),
                ],
            },
            // What the IPv4 rules above do by address and ARP sender, for IPv6: the
            // endpoint's addresses as source, neighbour discovery only for them, and none of
            // the messages that only a router or a DHCP server sends (a workload that sent
            // them could steer its neighbours' routes and addresses). Endpoints of IPv4-only
            // networks have no entry here: they send no IPv6 at all.
            Chain {
                name: "from_workload6",
                base: None,
                rules: vec![
                    // A check on a field of a fragment that lacks it does not match: neighbour
                    // discovery is never fragmented (RFC 6980), so no ICMPv6 fragment passes.
                    // By number: a name would need /etc/protocols, which slim images lack.
                    rule(
                        "exthdr frag exists meta l4proto 58 counter drop",
                        "fragmented ICMPv6",
                    ),
                    rule(
                        format!("icmpv6 type {ROUTER_ONLY6} counter drop"),
                        "router advertisements and redirects: routing is the host's",
                    ),
                    rule(
                        "udp sport 547 counter drop",
                        "DHCPv6 server replies: addresses are the host's",
                    ),
                    rule(
                        "udp dport 546 counter drop",
                        "DHCPv6 to clients: addresses are the host's",
                    ),
                    rule(
                        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } \
                         jump nd_options6",
                        "neighbour discovery: no link-layer address but the port's",
                    ),
                    // Positive, so an advertisement whose target cannot be read is dropped.
                    rule(
                        "icmpv6 type nd-neighbor-advert iifname . ether saddr . ip6 saddr @endpoints6 \
                         iifname . ether saddr . @th,64,128 @nd_targets6 accept",
                        "neighbour advertisement for the endpoint's own address",
                    ),
                    rule(
                        "icmpv6 type nd-neighbor-advert counter drop",
                        "neighbour advertisement for an address not the endpoint's",
                    ),
                    rule(
                        "iifname . ether saddr . ip6 saddr @endpoints6 accept",
                        "IPv6 from the endpoint's addresses",
                    ),
                    rule(
                        "ip6 saddr :: icmpv6 type nd-neighbor-solicit \
                         iifname . ether saddr . @th,64,128 @nd_targets6 accept",
                        "duplicate address detection for the endpoint's addresses",
                    ),
                    rule(
                        "ip6 saddr :: icmpv6 type mld2-listener-report \
                         iifname . ether saddr @endpoint_macs6 accept",
                        "multicast listener reports before an address is up",
                    ),
                    rule("counter drop", "any other IPv6 source"),
                ],
            },
            // ARP's sender MAC check, for neighbour discovery: a message carries no option, or
            // exactly its link-layer address option with the port's MAC (or, for duplicate
            // address detection, a nonce), so a workload cannot point an address at another
            // port. Exact lengths: anything else (more options, extension headers) drops.
            Chain {
                name: "nd_options6",
                base: None,
                rules: vec![
                    rule(
                        "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 length 24 return",
                        "neighbour discovery without options",
                    ),
                    rule(
                        "icmpv6 type nd-neighbor-solicit ip6 length 32 @th,192,16 0x0101 \
                         iifname . @th,208,48 @nd_lladdr6 return",
                        "solicitation with the port's MAC as source link-layer address",
                    ),
                    rule(
                        "icmpv6 type nd-neighbor-advert ip6 length 32 @th,192,16 0x0201 \
                         iifname . @th,208,48 @nd_lladdr6 return",
                        "advertisement with the port's MAC as target link-layer address",
                    ),
                    rule(
                        "icmpv6 type nd-neighbor-solicit ip6 saddr :: ip6 length 32 @th,192,16 0x0e01 return",
                        "duplicate address detection with a nonce (RFC 7527)",
                    ),
                    rule(
                        "icmpv6 type nd-router-solicit ip6 length 8 return",
                        "router solicitation without options",
                    ),
                    rule(
                        "icmpv6 type nd-router-solicit ip6 length 16 @th,64,16 0x0101 \
                         iifname . @th,80,48 @nd_lladdr6 return",
                        "router solicitation with the port's MAC",
                    ),
                    rule(
                        "counter drop",
                        "a link-layer address not the port's, or other options",
                    ),
                ],
            },
            Chain {
                name: "forward",
                base: base("filter", "forward", BRIDGE_FILTER),
                rules: vec![rule(
                    format!("oifname {ports} jump to_workload"),
                    "frames bridged to workload ports",
                )],
            },
            Chain {
                name: "output",
                base: base("filter", "output", BRIDGE_FILTER),
                rules: vec![rule(
                    format!("oifname {ports} jump to_workload"),
                    "frames the host sends to workload ports",
                )],
            },
            Chain {
                name: "to_workload",
                base: None,
                rules: vec![
                    // The common case first.
                    rule(
                        "oifname . ether daddr @endpoint_macs accept",
                        "unicast for the port's endpoint",
                    ),
                    rule(
                        "ether daddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 accept",
                        "broadcast and multicast",
                    ),
                    rule("counter drop", "unicast for anyone else"),
                ],
            },
        ],
    }
}

fn inet_table(spec: &FirewallSpec) -> Table {
    let bridges = format!("\"{}*\"", names::BRIDGE_PREFIX);
    let vxlans = format!("\"{}*\"", names::VXLAN_PREFIX);
    let mut same_network = BTreeSet::new();
    let mut nat_egress = BTreeSet::new();
    let mut gateways = BTreeSet::new();
    let mut vxlan_gateways = BTreeSet::new();
    let mut gateways6 = BTreeSet::new();
    let mut vxlan_gateways6 = BTreeSet::new();
    let mut local_endpoints6 = BTreeSet::new();
    for n in &spec.networks {
        for ip in &n.endpoints6 {
            local_endpoints6.insert(Element::new(vec![Atom::Name(n.bridge.clone()), Atom::Ip6(*ip)]));
        }
        if let Some(gw6) = n.gateway6 {
            gateways6.insert(Element::new(vec![Atom::Name(n.bridge.clone()), Atom::Ip6(gw6)]));
            if let Some(vx) = &n.vxlan {
                vxlan_gateways6.insert(Element::new(vec![Atom::Name(vx.clone()), Atom::Ip6(gw6)]));
            }
        }
        same_network.insert(pair(&n.bridge, &n.bridge));
        gateways.insert(Element::new(vec![
            Atom::Name(n.bridge.clone()),
            Atom::Ip(n.gateway),
        ]));
        if let Some(vx) = &n.vxlan {
            same_network.insert(pair(&n.bridge, vx));
            same_network.insert(pair(vx, &n.bridge));
            vxlan_gateways.insert(Element::new(vec![Atom::Name(vx.clone()), Atom::Ip(n.gateway)]));
        }
        // Routed directly, the other hosts' probes arrive on the underlay.
        if n.routed.is_some()
            && let Some(underlay) = &spec.underlay
        {
            vxlan_gateways.insert(Element::new(vec![
                Atom::Name(underlay.clone()),
                Atom::Ip(n.gateway),
            ]));
        }
        if n.nat_egress
            && let Some(underlay) = &spec.underlay
        {
            nat_egress.insert(pair(&n.bridge, underlay));
        }
    }
    let ips = |addrs: &BTreeSet<Ipv4Addr>| {
        addrs
            .iter()
            .map(|ip| Element::new(vec![Atom::Ip(*ip)]))
            .collect::<Vec<_>>()
    };
    // Without a usable underlay name, VXLAN is refused from everyone (fail closed).
    let mut vxlan_in = Vec::new();
    if let Some(u) = &spec.underlay {
        vxlan_in.push(rule(
            format!("iifname \"{}\" ip saddr @peers accept", u.as_str()),
            "from current peers, on the underlay",
        ));
        vxlan_in.push(rule(
            format!("iifname \"{}\" ip6 saddr @peers6 accept", u.as_str()),
            "from current peers, on an IPv6 underlay",
        ));
    }
    vxlan_in.push(rule("counter drop", "VXLAN from anyone else"));
    let nat = !nat_egress.is_empty();
    // Route networks: their traffic with the other hosts crosses the underlay device itself,
    // limited to the network's own addresses (and never masqueraded).
    let mut routed = Vec::new();
    let mut unmasqueraded = Vec::new();
    let mut routed_untracked = Vec::new();
    let mut routed_to_host = Vec::new();
    if let Some(u) = &spec.underlay {
        for n in &spec.networks {
            let Some(r) = &n.routed else { continue };
            let cidr = r.cidr;
            let (b, u) = (n.bridge.as_str(), u.as_str());
            if !r.peers.is_empty() {
                let peers = r.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>();
                let peers = format!("{{ {} }}", peers.join(", "));
                routed.push(rule(
                    format!("iifname \"{b}\" oifname \"{u}\" ip daddr {peers} accept"),
                    "route network: to its other hosts",
                ));
                // Anyone on the segment can send with any source: a packet claiming to come
                // from one of this host's own workloads, from a peer reached through the
                // tunnel or unreachable, or from no host at all is not taken from the
                // underlay. The set is exactly the subnets this host routes via the
                // underlay, so no reverse-path lookup is needed on top of it.
                routed.push(rule(
                    format!("iifname \"{u}\" oifname \"{b}\" ip saddr {peers} accept"),
                    "route network: from the other hosts it routes directly",
                ));
            }
            unmasqueraded.push(rule(
                format!("iifname \"{b}\" ip daddr {cidr} return"),
                "route network: its other hosts see the workload's address",
            ));
            // What arrives through the overlay is not tracked (nothing on that path needs
            // conntrack); traffic routed directly (route networks, vxlan --direct-routing)
            // arrives on the underlay instead and is left untracked the same way.
            // What the other hosts send to this host's addresses in the network (its
            // gateway, whatever the source: a workload, or one masqueraded by its host) gets
            // what the overlay's does: echo for probes, replies, nothing else.
            routed_to_host.push(rule(
                format!("iifname \"{u}\" ip daddr {cidr} jump overlay_to_host"),
                "routed directly: from other hosts, to this host's address in the network",
            ));
            routed_untracked.push(rule(
                format!("iifname \"{u}\" ip saddr {cidr} ip daddr {cidr} fib daddr type unicast notrack"),
                "routed directly: from its other hosts, to local workloads",
            ));
        }
    }
    let mut chains = vec![
        Chain {
            name: "untracked",
            base: base("filter", "prerouting", RAW),
            rules: [
                rule(format!("udp dport {VXLAN_PORT} notrack"), "VXLAN received"),
                rule(
                    format!("iifname {vxlans} fib daddr type != local notrack"),
                    "through the overlay, to local workloads",
                ),
            ]
            .into_iter()
            .chain(routed_untracked)
            .collect(),
        },
        Chain {
            name: "untracked_local",
            base: base("filter", "output", RAW),
            rules: vec![rule(format!("udp dport {VXLAN_PORT} notrack"), "VXLAN sent")],
        },
        Chain {
            name: "input",
            base: base("filter", "input", FILTER),
            rules: vec![
                // First: the busiest traffic to this host, in one test.
                rule(format!("udp dport {VXLAN_PORT} jump vxlan_in"), "VXLAN"),
                rule(
                    format!("iifname {bridges} jump workload_to_host"),
                    "from local workloads",
                ),
                rule(
                    format!("iifname {vxlans} jump overlay_to_host"),
                    "from other hosts' workloads, through the overlay",
                ),
            ]
            .into_iter()
            .chain(routed_to_host)
            .collect(),
        },
        Chain {
            name: "workload_to_host",
            base: None,
            rules: vec![
                rule(
                    "ct state established,related accept",
                    "replies to the host's own connections",
                ),
                rule(
                    "icmp type echo-request iifname . ip daddr @gateways accept",
                    "echo to the gateway",
                ),
                rule(
                    "meta l4proto { tcp, udp } th dport 53 iifname . ip daddr @gateways accept",
                    "DNS on the gateway",
                ),
                rule(
                    "icmpv6 type echo-request iifname . ip6 daddr @gateways6 accept",
                    "IPv6 echo to the gateway",
                ),
                // The bridge table has already held these to the endpoint's own addresses.
                rule(
                    format!("icmpv6 type {TO_GATEWAY6} accept"),
                    "neighbour discovery and multicast listeners with the gateway",
                ),
                rule("counter drop", "no other service of this host"),
            ],
        },
        Chain {
            name: "overlay_to_host",
            base: None,
            rules: vec![
                rule("ct state established,related accept", "replies (probes)"),
                rule(
                    "icmp type echo-request iifname . ip daddr @vxlan_gateways accept",
                    "echo to the gateway (probes)",
                ),
                rule(
                    "icmpv6 type echo-request iifname . ip6 daddr @vxlan_gateways6 accept",
                    "IPv6 echo to the gateway (probes)",
                ),
                rule("counter drop", "no other service of this host, remotely"),
            ],
        },
        Chain {
            name: "vxlan_in",
            base: None,
            rules: vxlan_in,
        },
        Chain {
            name: "forward",
            base: base("filter", "forward", FILTER),
            rules: [
                // A /64 has room for more neighbours than the host's table: only addresses a
                // workload holds may make it look for one (no neighbour-table exhaustion).
                // Link-local and multicast are never routed; they pass here only when
                // br_netfilter hands bridged frames to this hook (Docker loads it).
                rule(
                    format!(
                        "meta nfproto ipv6 oifname {bridges} ip6 daddr != {{ fe80::/10, ff00::/8 }} \
                         oifname . ip6 daddr != @local_endpoints6 counter drop"
                    ),
                    "IPv6 to an address no local endpoint holds",
                ),
                rule(
                    "iifname . oifname @same_network accept",
                    "within a network: its bridge and its vxlan",
                ),
            ]
            .into_iter()
            .chain(routed)
            .chain([
                // Before NAT egress, whose guard would drop replies to other overlay hosts.
                rule(
                    format!("iifname {bridges} ct status dnat accept"),
                    "replies from published ports",
                ),
                rule(
                    "iifname . oifname @nat_egress jump nat_egress",
                    "out to the underlay (NAT egress)",
                ),
                rule(
                    format!("iifname {bridges} counter drop"),
                    "nothing else leaves an overlay bridge",
                ),
                rule(
                    format!("iifname {vxlans} counter drop"),
                    "nothing else leaves an overlay vxlan",
                ),
                // What a network's vxlan delivers, the peer takes as its own network's
                // (untracked, `same_network`): only that network's bridge may feed it, never
                // a machine that routes through this host.
                rule(
                    format!("oifname {vxlans} counter drop"),
                    "nothing else enters an overlay vxlan",
                ),
                rule(
                    format!("oifname {bridges} jump into_workloads"),
                    "from outside into an overlay network",
                ),
            ])
            .collect(),
        },
        Chain {
            name: "nat_egress",
            base: None,
            rules: vec![
                // IPv6 would leave with the workload's own address: there is no IPv6 NAT.
                rule("meta nfproto ipv6 counter drop", "no IPv6 NAT egress"),
                rule(
                    "ip daddr @underlay_hosts counter drop",
                    "not to overlay hosts or controllers",
                ),
                rule(
                    format!("udp dport {VXLAN_PORT} counter drop"),
                    "no VXLAN from workloads",
                ),
                rule("accept", "the rest of the world"),
            ],
        },
        Chain {
            name: "into_workloads",
            base: None,
            rules: vec![
                rule(
                    "ct state established,related accept",
                    "replies to workloads' own connections",
                ),
                rule("ct status dnat accept", "published ports (DNAT)"),
                rule("counter drop", "no new connections from outside"),
            ],
        },
    ];
    if nat {
        // Only with NAT egress: a nat chain registers the NAT hooks for the whole namespace.
        chains.push(Chain {
            name: "postrouting",
            base: base("nat", "postrouting", SRCNAT),
            rules: unmasqueraded
                .into_iter()
                .chain([rule("iifname . oifname @nat_egress masquerade", "NAT egress")])
                .collect(),
        });
    }
    let mut sets = vec![
        set("peers", &["ipv4_addr"], ips(&spec.peers)),
        set(
            "peers6",
            &["ipv6_addr"],
            spec.peers6.iter().map(|ip| Element::new(vec![Atom::Ip6(*ip)])),
        ),
        set("underlay_hosts", &["ipv4_addr"], ips(&spec.underlay_hosts)),
        set("gateways", &["ifname", "ipv4_addr"], gateways),
        set("vxlan_gateways", &["ifname", "ipv4_addr"], vxlan_gateways),
        set("gateways6", &["ifname", "ipv6_addr"], gateways6),
        set("vxlan_gateways6", &["ifname", "ipv6_addr"], vxlan_gateways6),
        set("local_endpoints6", &["ifname", "ipv6_addr"], local_endpoints6),
        set("same_network", &["ifname", "ifname"], same_network),
        set("nat_egress", &["ifname", "ifname"], nat_egress),
    ];
    if !spec.published.is_empty() {
        // Published ports, likewise only while there are some. Arriving from anywhere
        // (prerouting) and sent by the host itself (output); the forward chain lets DNAT'd
        // connections in and their replies out.
        let dnat = "dnat ip to ip daddr . meta l4proto . th dport map @published";
        chains.push(Chain {
            name: "published",
            base: base("nat", "prerouting", DSTNAT),
            rules: vec![rule(dnat, "published ports")],
        });
        chains.push(Chain {
            name: "published_local",
            base: base("nat", "output", DSTNAT),
            rules: vec![rule(dnat, "published ports, from the host itself")],
        });
        sets.push(map(
            "published",
            &["ipv4_addr", "inet_proto", "inet_service"],
            &["ipv4_addr", "inet_service"],
            spec.published.iter().map(|p| {
                Element::map(
                    vec![
                        Atom::Ip(p.host_ip),
                        Atom::Proto(p.protocol),
                        Atom::Port(p.host_port),
                    ],
                    vec![Atom::Ip(p.to_ip), Atom::Port(p.to_port)],
                )
            }),
        ));
    }
    Table {
        family: Family::Inet,
        sets,
        chains,
    }
}

/// One `nft -f` transaction that replaces every table overlay owns with `tables`: each is
/// created (so that deleting it cannot fail), deleted and, if wanted, built again. The kernel
/// applies it all or nothing, so there is never a moment without rules.
pub fn transaction(tables: &[Table]) -> String {
    let mut out = String::new();
    for family in Family::ALL {
        let _ = writeln!(out, "table {} {TABLE} {{}}", family.as_str());
        let _ = writeln!(out, "delete table {} {TABLE}", family.as_str());
    }
    for table in tables {
        render_table(&mut out, table);
    }
    out
}

/// The set elements that turn the kernel's `old` tables into `new`, when nothing else differs
/// (the common change: an endpoint or peer comes or goes). Much cheaper than a rebuild: no
/// chain is unhooked, and an addition costs no RCU grace period. `None` when more than
/// elements differ; empty when nothing does.
pub fn changes(old: &[Table], new: &[Table]) -> Option<Vec<SetChange>> {
    let same_shape = old.len() == new.len() && old.iter().zip(new).all(|(o, n)| o.same_shape(n));
    if !same_shape {
        return None;
    }
    let mut out = Vec::new();
    for (o, n) in old.iter().zip(new) {
        for (os, ns) in o.sets.iter().zip(&n.sets) {
            let gone: Vec<Element> = os.elements.difference(&ns.elements).cloned().collect();
            let came: Vec<Element> = ns.elements.difference(&os.elements).cloned().collect();
            if !gone.is_empty() || !came.is_empty() {
                out.push(SetChange {
                    family: n.family,
                    set: ns.name,
                    gone,
                    came,
                });
            }
        }
    }
    Some(out)
}

fn render_table(out: &mut String, table: &Table) {
    let _ = writeln!(out, "table {} {TABLE} {{", table.family.as_str());
    for s in &table.sets {
        let _ = writeln!(out, "\t{} {} {{", s.keyword(), s.name);
        if let Some(type_of) = s.type_of {
            let _ = writeln!(out, "\t\ttypeof {type_of}");
        } else if s.is_map() {
            let _ = writeln!(out, "\t\ttype {} : {}", s.types.join(" . "), s.data.join(" . "));
        } else {
            let _ = writeln!(out, "\t\ttype {}", s.types.join(" . "));
        }
        if !s.elements.is_empty() {
            let elements: Vec<String> = s.elements.iter().map(Element::text).collect();
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(",\n\t\t\t"));
        }
        let _ = writeln!(out, "\t}}");
    }
    for c in &table.chains {
        let _ = writeln!(out, "\tchain {} {{", c.name);
        if let Some(b) = &c.base {
            let _ = writeln!(
                out,
                "\t\ttype {} hook {} priority {}; policy accept;",
                b.kind, b.hook, b.priority
            );
        }
        for r in &c.rules {
            let _ = writeln!(out, "\t\t{} comment \"{}\"", r.text, r.comment);
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::firewall::{NetworkPorts, PortIdentity};

    /// [`changes`] as the `nft -f` transaction it stands for (deletions first); empty when nothing differs.
    fn delta(old: &[Table], new: &[Table]) -> Option<String> {
        let changes = changes(old, new)?;
        let mut deletes = String::new();
        let mut adds = String::new();
        for c in &changes {
            let head = format!("{} {TABLE} {}", c.family.as_str(), c.set);
            let gone: Vec<String> = c.gone.iter().map(Element::key_text).collect();
            let came: Vec<String> = c.came.iter().map(Element::text).collect();
            if !gone.is_empty() {
                let _ = writeln!(deletes, "delete element {head} {{ {} }}", gone.join(", "));
            }
            if !came.is_empty() {
                let _ = writeln!(adds, "add element {head} {{ {} }}", came.join(", "));
            }
        }
        Some(deletes + &adds)
    }

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    pub(crate) fn sample() -> FirewallSpec {
        FirewallSpec {
            underlay: Some(name("eth0")),
            networks: vec![
                NetworkPorts {
                    bridge: name("ovb-1"),
                    vxlan: Some(name("ovx-1")),
                    gateway: "10.1.0.1".parse().unwrap(),
                    gateway6: Some("fd00:1::1".parse().unwrap()),
                    endpoints6: ["fd00:1::2".parse().unwrap()].into(),
                    nat_egress: false,
                    routed: None,
                },
                NetworkPorts {
                    bridge: name("ovb-2"),
                    vxlan: Some(name("ovx-2")),
                    gateway: "10.2.0.1".parse().unwrap(),
                    gateway6: None,
                    endpoints6: BTreeSet::new(),
                    nat_egress: true,
                    routed: None,
                },
            ],
            endpoints: [PortIdentity {
                port: name("ovv-1a"),
                mac: "0a:58:0a:01:00:02".parse().unwrap(),
                ip: "10.1.0.2".parse().unwrap(),
                ip6: Some("fd00:1::2".parse().unwrap()),
            }]
            .into(),
            peers: ["192.0.2.12".parse().unwrap()].into(),
            peers6: BTreeSet::new(),
            underlay_hosts: ["192.0.2.12".parse().unwrap(), "192.0.2.101".parse().unwrap()].into(),
            published: BTreeSet::new(),
        }
    }

    #[test]
    fn names_that_could_change_a_rule_are_refused() {
        for ok in ["eth0", "ovv-1a", "br.10", "en_p1-s0"] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ovv-*",
            "a\"b",
            "a b",
            "x;flush",
            "sixteen-chars-xx",
            "a{",
            "é",
        ] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transaction_replaces_every_owned_table_then_builds_both() {
        let text = transaction(&tables(&sample()));
        for family in ["bridge", "inet", "ip"] {
            let create = format!("table {family} overlay {{}}\ndelete table {family} overlay\n");
            assert!(text.contains(&create), "{text}");
        }
        assert!(
            !text.contains("table ip overlay {\n"),
            "the legacy table is only removed"
        );
        assert!(
            text.contains("\"ovv-1a\" . 0a:58:0a:01:00:02 . 10.1.0.2"),
            "{text}"
        );
        assert!(text.contains("\"ovb-2\" . \"eth0\""), "NAT egress pair: {text}");
        assert!(text.contains("iifname \"eth0\" ip saddr @peers accept"), "{text}");
        assert!(text.contains("hook postrouting priority 100"), "{text}");
    }

    #[test]
    fn no_nat_chain_without_nat_egress_and_nothing_without_networks() {
        let mut spec = sample();
        spec.networks[1].nat_egress = false;
        let text = transaction(&tables(&spec));
        assert!(!text.contains("postrouting"), "{text}");
        assert!(!text.contains("@nat_egress masquerade"), "{text}");

        let empty = transaction(&tables(&FirewallSpec::default()));
        assert_eq!(
            empty.lines().count(),
            6,
            "create and delete of three tables:\n{empty}"
        );
    }

    #[test]
    fn link_local_is_the_kernels_eui64_address() {
        // What `ip -6 addr` shows on a veth with this MAC (addr_gen_mode eui64).
        let mac = "0a:58:0a:01:00:02".parse().unwrap();
        assert_eq!(
            link_local(mac),
            "fe80::858:aff:fe01:2".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn raw_ipv6_is_written_and_listed_as_nft_does() {
        let ip: Ipv6Addr = "fd00:1::2".parse().unwrap();
        let atom = Atom::Raw6(ip);
        assert_eq!(atom.text(), "0xfd000001000000000000000000000002");
        assert_eq!(
            atom.json(),
            serde_json::json!("0xfd000001000000000000000000000002")
        );
        // Leading zeros: dropped in the listing, a JSON number below 2^64 (as nft 1.0.6 lists).
        let low = Atom::Raw6("::1:0:0:0:5".parse().unwrap());
        assert_eq!(low.json(), serde_json::json!("0x10000000000000005"));
        assert_eq!(Atom::Raw6("::5".parse().unwrap()).json(), serde_json::json!(5));
    }

    #[test]
    fn dual_stack_endpoints_may_send_ipv6_from_their_addresses_only() {
        let spec = sample();
        let bridge = &tables(&spec)[0];
        let elements = |name: &str| -> Vec<String> {
            let set = bridge.sets.iter().find(|s| s.name == name).unwrap();
            set.elements.iter().map(Element::text).collect()
        };
        // The network's address and the EUI-64 link-local one, by port and MAC.
        assert_eq!(
            elements("endpoints6"),
            [
                "\"ovv-1a\" . 0a:58:0a:01:00:02 . fd00:1::2",
                "\"ovv-1a\" . 0a:58:0a:01:00:02 . fe80::858:aff:fe01:2",
            ]
        );
        assert_eq!(elements("nd_targets6").len(), 2);
        assert_eq!(elements("nd_lladdr6"), ["\"ovv-1a\" . 0x0a580a010002"]);
        assert_eq!(
            Atom::RawMac("0a:58:0a:01:00:02".parse().unwrap()).json(),
            serde_json::json!(0x0a580a010002u64)
        );
        let text = transaction(&tables(&spec));
        assert!(
            text.contains("typeof iifname . ether saddr . @th,64,128"),
            "{text}"
        );
        let chain = bridge.chains.iter().find(|c| c.name == "from_workload6").unwrap();
        let rules: Vec<&str> = chain.rules.iter().map(|r| r.text.as_str()).collect();
        // Router-only messages go first, before any accept could let them through.
        assert!(rules[0].contains("exthdr frag") && rules[0].ends_with("drop"));
        assert!(rules[1].contains("nd-router-advert") && rules[1].contains("nd-redirect"));
        assert!(rules[1..4].iter().all(|r| r.ends_with("drop")));
        assert!(
            rules[4].ends_with("jump nd_options6"),
            "options checked before any accept"
        );
        assert!(rules[5].contains("@nd_targets6") && rules[5].ends_with("accept"));
        assert_eq!(rules[6], "icmpv6 type nd-neighbor-advert counter drop");
        let options = bridge.chains.iter().find(|c| c.name == "nd_options6").unwrap();
        assert!(
            options
                .rules
                .iter()
                .rev()
                .skip(1)
                .all(|r| r.text.ends_with("return"))
        );
        assert_eq!(options.rules.last().unwrap().text, "counter drop");
        assert_eq!(*rules.last().unwrap(), "counter drop");

        // An IPv4-only endpoint gets no IPv6 entry: its port sends no IPv6 at all.
        let mut v4 = sample();
        v4.endpoints = v4
            .endpoints
            .into_iter()
            .map(|e| PortIdentity { ip6: None, ..e })
            .collect();
        let bridge = &tables(&v4)[0];
        assert!(
            bridge
                .sets
                .iter()
                .filter(|s| s.name.ends_with('6'))
                .all(|s| s.elements.is_empty())
        );
        // The IPv6 gateways: echo from the bridge (and through the vxlan) only where dual-stack.
        let inet = &tables(&spec)[1];
        let gw6 = inet.sets.iter().find(|s| s.name == "gateways6").unwrap();
        let gw6: Vec<String> = gw6.elements.iter().map(Element::text).collect();
        assert_eq!(gw6, ["\"ovb-1\" . fd00:1::1"]);
        let local6 = inet.sets.iter().find(|s| s.name == "local_endpoints6").unwrap();
        let local6: Vec<String> = local6.elements.iter().map(Element::text).collect();
        assert_eq!(local6, ["\"ovb-1\" . fd00:1::2"]);
        let nat = inet.chains.iter().find(|c| c.name == "nat_egress").unwrap();
        assert_eq!(nat.rules[0].text, "meta nfproto ipv6 counter drop");
    }

    #[test]
    fn comments_are_unique_per_table_and_sets_are_referenced() {
        for table in tables(&sample()) {
            let mut seen = BTreeSet::new();
            let text: String = table
                .chains
                .iter()
                .flat_map(|c| c.rules.iter())
                .map(|r| {
                    assert!(seen.insert(r.comment), "duplicate comment {:?}", r.comment);
                    assert!(!r.comment.contains('"') && !r.text.contains("comment"));
                    r.text.clone()
                })
                .collect();
            for s in &table.sets {
                assert!(text.contains(&format!("@{}", s.name)), "set {} unused", s.name);
            }
            for c in table.chains.iter().filter(|c| c.base.is_none()) {
                assert!(
                    text.contains(&format!("jump {}", c.name)),
                    "chain {} unreachable",
                    c.name
                );
            }
        }
    }

    #[test]
    fn a_network_without_a_usable_underlay_gets_no_egress() {
        let mut spec = sample();
        spec.underlay = None;
        let inet = &tables(&spec)[1];
        let nat = inet.sets.iter().find(|s| s.name == "nat_egress").unwrap();
        assert!(nat.elements.is_empty());
        let text = transaction(&tables(&spec));
        assert!(!text.contains("@peers accept"), "{text}");
    }

    #[test]
    fn routed_networks_take_only_the_subnets_of_directly_routed_peers() {
        let mut spec = sample();
        spec.networks[0].routed = Some(crate::firewall::Routed {
            cidr: "10.1.0.0/16".parse().unwrap(),
            peers: ["10.1.2.0/24".parse().unwrap(), "10.1.3.0/24".parse().unwrap()].into(),
        });
        let text = transaction(&tables(&spec));
        let from = "iifname \"eth0\" oifname \"ovb-1\" ip saddr { 10.1.2.0/24, 10.1.3.0/24 } accept";
        let to = "iifname \"ovb-1\" oifname \"eth0\" ip daddr { 10.1.2.0/24, 10.1.3.0/24 } accept";
        assert!(text.contains(from) && text.contains(to), "{text}");
        assert!(!text.contains("ip saddr 10.1.0.0/16 accept"), "{text}");
        // The relay guard sits in the forward chain after everything that may feed a vxlan.
        let inet = text.split("table inet overlay {").last().unwrap();
        let forward = inet.split("chain forward {").nth(1).unwrap();
        let same = forward.find("@same_network accept").unwrap();
        let guard = forward.find("oifname \"ovx-*\" counter drop").unwrap();
        assert!(same < guard, "{forward}");
        // Alone on the network: nothing crosses the underlay.
        spec.networks[0].routed.as_mut().unwrap().peers.clear();
        let text = transaction(&tables(&spec));
        assert!(!text.contains("oifname \"ovb-1\" ip saddr"), "{text}");
        assert!(!text.contains("oifname \"eth0\" ip daddr"), "{text}");
    }

    #[test]
    fn element_changes_alone_make_a_delta() {
        let old = tables(&sample());
        let mut spec = sample();
        spec.endpoints.insert(PortIdentity {
            port: name("ovv-2b"),
            mac: "0a:58:0a:01:00:09".parse().unwrap(),
            ip: "10.1.0.9".parse().unwrap(),
            ip6: None,
        });
        spec.peers.clear();
        let text = delta(&old, &tables(&spec)).unwrap();
        assert_eq!(
            text,
            "delete element inet overlay peers { 192.0.2.12 }\n\
             add element bridge overlay endpoints { \"ovv-2b\" . 0a:58:0a:01:00:09 . 10.1.0.9 }\n\
             add element bridge overlay endpoint_macs { \"ovv-2b\" . 0a:58:0a:01:00:09 }\n"
        );
        assert_eq!(delta(&old, &old).as_deref(), Some(""));
        // NAT egress turned off removes a chain: a rebuild.
        spec.networks[1].nat_egress = false;
        assert!(delta(&old, &tables(&spec)).is_none());
        assert!(delta(&old, &[]).is_none());
    }

    fn published(host_port: u16, to: &str, to_port: u16) -> crate::firewall::Published {
        crate::firewall::Published {
            host_ip: "192.0.2.11".parse().unwrap(),
            protocol: Protocol::Tcp,
            host_port,
            to_ip: to.parse().unwrap(),
            to_port,
        }
    }

    #[test]
    fn published_ports_are_a_dnat_map_present_only_while_there_are_some() {
        let none = tables(&sample());
        let inet = |t: &[Table]| t.iter().find(|t| t.family == Family::Inet).cloned().unwrap();
        assert!(!inet(&none).sets.iter().any(|s| s.name == "published"));
        assert!(!inet(&none).chains.iter().any(|c| c.name.starts_with("published")));
        let mut spec = sample();
        spec.published.insert(published(8080, "10.1.0.2", 80));
        let with = tables(&spec);
        let text = transaction(&with);
        assert!(text.contains("\tmap published {\n\t\ttype ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service\n"), "{text}");
        assert!(text.contains("192.0.2.11 . tcp . 8080 : 10.1.0.2 . 80"), "{text}");
        assert!(text.contains("type nat hook prerouting priority -100;"), "{text}");
        assert!(text.contains("type nat hook output priority -100;"), "{text}");
        assert!(
            text.contains("dnat ip to ip daddr . meta l4proto . th dport map @published"),
            "{text}"
        );
        // The first published port changes the shape (a rebuild); the next ones are elements.
        assert!(delta(&none, &with).is_none());
        let mut more = spec.clone();
        more.published.insert(published(8081, "10.1.0.3", 80));
        more.published.remove(&published(8080, "10.1.0.2", 80));
        more.published.insert(published(8080, "10.1.0.4", 8000));
        assert_eq!(
            delta(&with, &tables(&more)).unwrap(),
            "delete element inet overlay published { 192.0.2.11 . tcp . 8080 }\n\
             add element inet overlay published { 192.0.2.11 . tcp . 8080 : 10.1.0.4 . 8000, 192.0.2.11 . tcp . 8081 : 10.1.0.3 . 80 }\n"
        );
        let map = inet(&with)
            .sets
            .into_iter()
            .find(|s| s.name == "published")
            .unwrap();
        assert_eq!(
            map.elements.iter().next().unwrap().json(),
            serde_json::json!([{"concat": ["192.0.2.11", "tcp", 8080]}, {"concat": ["10.1.0.2", 80]}])
        );
        assert_eq!(
            map.type_json(),
            serde_json::json!({"type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "ipv4_addr . inet_service"})
        );
    }

    #[test]
    fn elements_as_nft_lists_them() {
        let e = Element::new(vec![
            Atom::Name(name("ovv-1a")),
            Atom::Mac("0a:58:0a:01:00:02".parse().unwrap()),
            Atom::Ip("10.1.0.2".parse().unwrap()),
        ]);
        assert_eq!(
            e.json(),
            serde_json::json!({"concat": ["ovv-1a", "0a:58:0a:01:00:02", "10.1.0.2"]})
        );
        assert_eq!(
            Element::new(vec![Atom::Ip("192.0.2.1".parse().unwrap())]).json(),
            "192.0.2.1"
        );
    }
}
