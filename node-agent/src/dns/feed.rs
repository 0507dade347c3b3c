//! What the DNS server answers, from the host's desired state: each network's names as the
//! Watch stream's directory lists them (every host's named endpoints), with this host's own
//! endpoints taken from its book instead (they resolve as soon as they are wired, before the
//! controller has heard of them, and while no controller is reachable). A dual-stack network's
//! names carry their IPv6 addresses too (`AAAA`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{Ipv4Network, Ipv6Network};
use overlay_proto::v1 as pb;

use overlay_proto::modes::Mode;

use super::zone::{Zone, network_domain};

/// One zone per network this host serves a gateway for (vxlan and nat: the gateway is this
/// host's bridge; a macvlan network's gateway is the LAN's router, not ours). `desired` is the
/// state as the agent programs it: its `endpoints` are this host's own, from the book.
/// Networks whose IPv4 addresses do not parse are left out, and IPv6 names of a network whose
/// IPv6 CIDR does not parse (the spec reports both).
pub fn zones_of(desired: &pb::HostDesiredState) -> Vec<Zone> {
    desired
        .networks
        .iter()
        .filter(|n| Mode::from_wire(n.mode).is_ok_and(Mode::serves_dns))
        .filter_map(|n| zone_of(&desired.host_name, n))
        .collect()
}

fn zone_of(host: &str, n: &pb::NetworkState) -> Option<Zone> {
    let gateway: Ipv4Addr = n.gateway.parse().ok()?;
    let cidr: Ipv4Network = n.cidr.parse().ok()?;
    // "" for an IPv4-only network.
    let cidr6: Option<Ipv6Network> = n.cidr6.parse().ok();
    let names = names_of::<Ipv4Addr>(host, n, |r| &r.address, |e| &e.address);
    let names6 = match cidr6 {
        Some(_) => names_of::<Ipv6Addr>(host, n, |r| &r.address6, |e| &e.address6),
        None => BTreeMap::new(),
    };
    Some(Zone {
        network: n.name.clone(),
        domain: network_domain(&n.name),
        gateway,
        cidr,
        cidr6,
        names,
        names6,
    })
}

/// Each (lowercased) name of `n`'s endpoints to their addresses of one family, deduplicated
/// and sorted: other hosts' from the directory (`record`: the address there, no prefix), this
/// host's own from its endpoints (`own`: the address with its prefix). Endpoints without an
/// address of that family ("") are left out.
fn names_of<T: FromStr + Ord + Copy>(
    host: &str,
    n: &pb::NetworkState,
    record: fn(&pb::NameRecord) -> &String,
    own: fn(&pb::LocalEndpoint) -> &String,
) -> BTreeMap<String, Vec<T>> {
    let others = n
        .directory
        .iter()
        .filter(|r| r.host != host)
        .filter_map(|r| Some((record(r).parse::<T>().ok()?, &r.names)));
    let mine = n.endpoints.iter().filter_map(|e| {
        let ip = own(e).split('/').next()?.parse::<T>().ok()?;
        Some((ip, &e.names))
    });
    let mut names: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for (ip, list) in others.chain(mine) {
        for name in list {
            let ips = names.entry(name.to_ascii_lowercase()).or_default();
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    for ips in names.values_mut() {
        ips.sort();
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(mode: pb::NetworkMode) -> pb::NetworkState {
        pb::NetworkState {
            name: "Blue".into(),
            mode: mode as i32,
            cidr: "10.1.0.0/16".into(),
            subnet: "10.1.0.0/24".into(),
            gateway: "10.1.0.1".into(),
            endpoints: vec![pb::LocalEndpoint {
                address: "10.1.0.2/24".into(),
                names: vec!["web".into()],
                ..Default::default()
            }],
            directory: vec![
                // This host's own record as the controller knows it: the book wins.
                pb::NameRecord {
                    endpoint_id: 1,
                    host: "h1".into(),
                    address: "10.1.0.9".into(),
                    names: vec!["stale".into()],
                    ..Default::default()
                },
                pb::NameRecord {
                    endpoint_id: 2,
                    host: "h2".into(),
                    address: "10.1.1.2".into(),
                    names: vec!["DB".into(), "web".into()],
                    ..Default::default()
                },
                pb::NameRecord {
                    endpoint_id: 3,
                    host: "h3".into(),
                    address: "not an address".into(),
                    names: vec!["bad".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn own_names_from_the_book_others_from_the_directory() {
        let desired = pb::HostDesiredState {
            host_name: "h1".into(),
            networks: vec![network(pb::NetworkMode::Vxlan), {
                let mut m = network(pb::NetworkMode::Macvlan);
                m.name = "lan".into();
                m
            }],
            ..Default::default()
        };
        let zones = zones_of(&desired);
        assert_eq!(zones.len(), 1, "no zone for a macvlan network");
        let z = &zones[0];
        assert_eq!(z.domain, "blue.overlay.");
        assert_eq!(z.gateway, Ipv4Addr::new(10, 1, 0, 1));
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(z.names["web"], vec![ip("10.1.0.2"), ip("10.1.1.2")]);
        assert_eq!(z.names["db"], vec![ip("10.1.1.2")]);
        assert!(!z.names.contains_key("stale") && !z.names.contains_key("bad"));
    }

    #[test]
    fn a_dual_stack_network_names_its_ipv6_addresses_too() {
        let mut n = network(pb::NetworkMode::Vxlan);
        n.cidr6 = "fd00:1::/48".into();
        n.subnet6 = "fd00:1::/64".into();
        n.gateway6 = "fd00:1::1".into();
        n.endpoints[0].address6 = "fd00:1::2/64".into();
        n.endpoints.push(pb::LocalEndpoint {
            address: "10.1.0.3/24".into(),
            names: vec!["Web".into(), "solo".into()],
            ..Default::default()
        });
        // h2's endpoint has an IPv6 address; h1's stale record never counts.
        n.directory[0].address6 = "fd00:1::9".into();
        n.directory[1].address6 = "fd00:1:0:1::2".into();
        n.directory.push(pb::NameRecord {
            endpoint_id: 4,
            host: "h4".into(),
            address: "10.1.4.2".into(),
            address6: "not an address".into(),
            names: vec!["web".into()],
        });
        let desired = pb::HostDesiredState {
            host_name: "h1".into(),
            networks: vec![n.clone()],
            ..Default::default()
        };
        let zones = zones_of(&desired);
        let z = &zones[0];
        assert_eq!(z.cidr6, Some("fd00:1::/48".parse().unwrap()));
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let ip6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(
            z.names["web"],
            vec![ip("10.1.0.2"), ip("10.1.0.3"), ip("10.1.1.2"), ip("10.1.4.2")]
        );
        // Lowercased, sorted, only the endpoints that have one.
        assert_eq!(z.names6["web"], vec![ip6("fd00:1::2"), ip6("fd00:1:0:1::2")]);
        assert_eq!(z.names6["db"], vec![ip6("fd00:1:0:1::2")]);
        assert!(!z.names6.contains_key("solo") && !z.names6.contains_key("stale"));
        assert_eq!(z.names["solo"], vec![ip("10.1.0.3")]);

        // An IPv4-only network (or an IPv6 CIDR that does not parse): no IPv6 names at all.
        for cidr6 in ["", "fd00:1::/200"] {
            let mut v4 = n.clone();
            v4.cidr6 = cidr6.into();
            let desired = pb::HostDesiredState {
                host_name: "h1".into(),
                networks: vec![v4],
                ..Default::default()
            };
            let z = &zones_of(&desired)[0];
            assert_eq!(z.cidr6, None, "{cidr6:?}");
            assert!(z.names6.is_empty(), "{cidr6:?}");
            assert_eq!(z.names["db"], vec![ip("10.1.1.2")]);
        }
    }
}
