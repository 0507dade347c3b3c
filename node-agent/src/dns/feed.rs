//! What the DNS server answers, from the host's desired state: each network's names as the
//! Watch stream's directory lists them (every host's named endpoints), with this host's own
//! endpoints taken from its book instead (they resolve as soon as they are wired, before the
//! controller has heard of them, and while no controller is reachable).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use overlay_proto::v1 as pb;

use overlay_proto::modes::Mode;

use super::zone::{Zone, network_domain};

/// One zone per network this host serves a gateway for (vxlan and nat: the gateway is this
/// host's bridge; a macvlan network's gateway is the LAN's router, not ours). `desired` is the
/// state as the agent programs it: its `endpoints` are this host's own, from the book.
/// Networks whose addresses do not parse are left out (the spec reports them).
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
    let mut names: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    let others = n
        .directory
        .iter()
        .filter(|r| r.host != host)
        .filter_map(|r| Some((r.address.parse::<Ipv4Addr>().ok()?, &r.names)));
    let own = n.endpoints.iter().filter_map(|e| {
        let ip = e.address.split('/').next()?.parse::<Ipv4Addr>().ok()?;
        Some((ip, &e.names))
    });
    for (ip, list) in others.chain(own) {
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
    Some(Zone {
        network: n.name.clone(),
        domain: network_domain(&n.name),
        gateway,
        cidr,
        names,
    })
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
                },
                pb::NameRecord {
                    endpoint_id: 2,
                    host: "h2".into(),
                    address: "10.1.1.2".into(),
                    names: vec!["DB".into(), "web".into()],
                },
                pb::NameRecord {
                    endpoint_id: 3,
                    host: "h3".into(),
                    address: "not an address".into(),
                    names: vec!["bad".into()],
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
}
