//! Records of the state machine into their wire form.

use overlay_proto::v1 as pb;

use crate::ipam;
use crate::model::{Endpoint, EndpointStatus, Host, Network};
use crate::state::{ClusterState, HOST_DOWN_AFTER_MS};

pub fn network(state: &ClusterState, n: &Network) -> pb::Network {
    pb::Network {
        name: n.name.clone(),
        id: n.id,
        mode: n.mode.wire() as i32,
        subnet: n.cidr.to_string(),
        host_prefix: n.host_prefix as u32,
        vni: n.vni.unwrap_or(0),
        mtu: n.mtu.unwrap_or(0),
        nat_egress: n.nat_egress,
        direct_routing: n.direct_routing,
        macvlan: n.macvlan.as_ref().map(|m| pb::MacvlanOptions {
            parent: m.parent.clone(),
            gateway: m.gateway.to_string(),
            ip_range: m.ip_range.to_string(),
            mode: m.mode.label().to_string(),
        }),
        endpoint_count: state.network_endpoints(&n.name).count() as u32,
        lease_count: n.leases.len() as u32,
        capacity: ClusterState::capacity(n),
        created_unix_ms: n.created_ms,
        effective_mtu: crate::desired::effective_mtu(state, n).unwrap_or(0),
        subnet6: n.cidr6.map(|c| c.to_string()).unwrap_or_default(),
        host_prefix6: u32::from(n.host_prefix6),
    }
}

pub fn leases(n: &Network) -> Vec<pb::SubnetLease> {
    n.leases
        .iter()
        .map(|(host, lease)| pb::SubnetLease {
            host: host.clone(),
            subnet: lease.subnet.to_string(),
            gateway: ipam::subnet_gateway(lease.subnet).to_string(),
            subnet6: lease.subnet6.map(|s| s.to_string()).unwrap_or_default(),
            gateway6: lease6_gateway(lease),
        })
        .collect()
}

fn lease6_gateway(l: &crate::model::Lease) -> String {
    l.subnet6
        .map(|s| ipam::subnet_gateway(s).to_string())
        .unwrap_or_default()
}

pub fn host(state: &ClusterState, h: &Host, now_ms: i64) -> pb::Host {
    let leases = state
        .networks
        .values()
        .filter_map(|n| {
            n.leases.get(&h.name).map(|l| pb::SubnetLease {
                host: n.name.clone(),
                subnet: l.subnet.to_string(),
                gateway: ipam::subnet_gateway(l.subnet).to_string(),
                subnet6: l.subnet6.map(|s| s.to_string()).unwrap_or_default(),
                gateway6: lease6_gateway(l),
            })
        })
        .collect();
    pb::Host {
        name: h.name.clone(),
        underlay_ip: h.underlay_ip.to_string(),
        underlay_iface: h.underlay_iface.clone(),
        underlay_mtu: h.underlay_mtu,
        vtep_mac: h.vtep_mac.to_string(),
        registered_unix_ms: h.registered_ms,
        last_seen_unix_ms: h.last_seen_ms,
        state: if now_ms - h.last_seen_ms <= HOST_DOWN_AFTER_MS {
            "up"
        } else {
            "down"
        }
        .to_string(),
        endpoint_count: state.endpoints.values().filter(|e| e.host == h.name).count() as u32,
        leases,
    }
}

pub fn endpoint(e: &Endpoint) -> pb::Endpoint {
    let (state, message) = match &e.status {
        EndpointStatus::Requested => (pb::EndpointState::Requested, String::new()),
        EndpointStatus::Pending => (pb::EndpointState::Pending, String::new()),
        EndpointStatus::Ready => (pb::EndpointState::Ready, String::new()),
        EndpointStatus::Failed(m) => (pb::EndpointState::Failed, m.clone()),
        EndpointStatus::Gone(m) => (pb::EndpointState::Gone, m.clone()),
    };
    pb::Endpoint {
        id: e.id,
        network: e.network.clone(),
        host: e.host.clone(),
        netns: e.netns.clone(),
        ifname: e.ifname.clone(),
        // A request has no address yet.
        address: match e.is_request() {
            true => String::new(),
            false => format!("{}/{}", e.ip, e.prefix_len),
        },
        mac: match e.is_request() {
            true => String::new(),
            false => e.mac.to_string(),
        },
        gateway: match e.is_request() {
            true => String::new(),
            false => e.gateway.to_string(),
        },
        state: state as i32,
        message,
        default_route: e.default_route,
        key: e.key.clone(),
        owner: e.owner.clone(),
        names: e.names.clone(),
        ports: overlay_proto::ports::to_wire(&e.ports),
        address6: e
            .v6
            .map(|a| format!("{}/{}", a.ip, a.prefix_len))
            .unwrap_or_default(),
        gateway6: e.v6.map(|a| a.gateway.to_string()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mode, NetworkSpec};
    use crate::state::{Command, MtuSetting, Reply, Response};

    fn register(s: &mut ClusterState, name: &str, ip: &str, underlay_mtu: u32) {
        s.apply(Command::RegisterHost {
            instance: String::new(),
            claim_timeout_ms: 0,
            name: name.into(),
            underlay_ip: ip.parse().unwrap(),
            underlay_iface: "eth0".into(),
            underlay_mtu,
            now_ms: 0,
        })
        .result
        .unwrap();
    }

    fn create(s: &mut ClusterState, name: &str, mode: Mode, cidr: &str, mtu: Option<u32>) -> Reply {
        s.apply(Command::CreateNetwork {
            spec: NetworkSpec {
                cidr6: None,
                host_prefix6: None,
                name: name.into(),
                mode,
                cidr: cidr.parse().unwrap(),
                host_prefix: None,
                vni: None,
                mtu,
                nat_egress: false,
                direct_routing: false,
                macvlan: None,
            },
            now_ms: 0,
        })
    }

    /// What `network ls` shows is what every member's desired state carries, and a fixed MTU
    /// equal to the derived one is accepted (issue 13: `--mtu 9166` on a 9216 underlay).
    #[test]
    fn effective_mtu_is_the_one_the_agents_get() {
        let mut s = ClusterState::default();
        create(&mut s, "early", Mode::Vxlan, "10.9.0.0/16", None)
            .result
            .unwrap();
        let early = &s.networks["early"];
        assert_eq!(network(&s, early).effective_mtu, 0, "no member yet: not known");

        register(&mut s, "h1", "192.0.2.21", 9216);
        register(&mut s, "h2", "192.0.2.22", 9216);
        create(&mut s, "jumbo", Mode::Vxlan, "10.1.0.0/16", None)
            .result
            .unwrap();
        create(&mut s, "local", Mode::Nat, "10.2.0.0/16", None)
            .result
            .unwrap();
        let shown = |s: &ClusterState, name: &str| network(s, &s.networks[name]).effective_mtu;
        let agents_get = |s: &ClusterState, name: &str| -> Vec<u32> {
            ["h1", "h2"]
                .iter()
                .map(|h| {
                    let d = crate::desired::for_host(s, h).unwrap();
                    let net = d.networks.iter().find(|n| n.name == name).unwrap();
                    net.mtu
                })
                .collect()
        };
        assert_eq!(shown(&s, "jumbo"), 9166);
        assert_eq!(agents_get(&s, "jumbo"), [9166, 9166]);
        assert_eq!(
            (shown(&s, "local"), agents_get(&s, "local")),
            (9216, vec![9216, 9216])
        );
        assert_eq!(shown(&s, "early"), 9166, "a lease came with the hosts");

        // A smaller member lowers the vxlan MTU everywhere.
        register(&mut s, "h3", "192.0.2.23", 1500);
        assert_eq!(shown(&s, "jumbo"), 1450);

        // The derived value is accepted as a fixed one, both at create and at update.
        let fixed = create(&mut s, "fixed", Mode::Vxlan, "10.3.0.0/16", Some(9166));
        assert!(
            matches!(fixed.result, Ok(Response::Network(_))),
            "{:?}",
            fixed.result
        );
        assert_eq!(shown(&s, "fixed"), 9166);
        let updated = s.apply(Command::UpdateNetwork {
            name: "jumbo".into(),
            nat_egress: None,
            mtu: Some(MtuSetting::Fixed(9166)),
            direct_routing: None,
        });
        assert!(updated.result.is_ok(), "{:?}", updated.result);
        let too_big = create(&mut s, "huge", Mode::Vxlan, "10.4.0.0/16", Some(65536));
        let err = too_big.result.unwrap_err().to_string();
        assert!(err.contains("between 576 and 65535"), "{err}");
    }

    /// VXLAN over an IPv6 underlay costs 70 bytes, over IPv4 50: each member pays its own
    /// family's overhead and a vxlan network gets the smallest result, both in `network ls`
    /// and in every member's desired state. Route mode pays nothing; `--mtu` still wins.
    #[test]
    fn each_member_pays_its_own_underlays_vxlan_overhead() {
        /// Hosts as (name, underlay address, underlay MTU).
        type Hosts<'a> = &'a [(&'a str, &'a str, u32)];
        // Hosts → (vxlan, route, vxlan with --mtu 1400) MTUs.
        let cases: [(Hosts, (u32, u32, u32)); 5] = [
            (
                &[("h1", "192.0.2.21", 1500), ("h2", "192.0.2.22", 1500)],
                (1450, 1500, 1400),
            ),
            (
                &[("h1", "2001:db8::21", 1500), ("h2", "2001:db8::22", 1500)],
                (1430, 1500, 1400),
            ),
            (
                &[("h1", "192.0.2.21", 1500), ("h2", "2001:db8::22", 1500)],
                (1430, 1500, 1400),
            ),
            // Not the smallest underlay minus one overhead (1490 - 50 = 1440 is 10 bytes too
            // many for the IPv6 member).
            (
                &[("h1", "192.0.2.21", 1490), ("h2", "2001:db8::22", 1500)],
                (1430, 1490, 1400),
            ),
            // The IPv4 member is the tighter one here.
            (
                &[("h1", "192.0.2.21", 1460), ("h2", "2001:db8::22", 9000)],
                (1410, 1460, 1400),
            ),
        ];
        for (hosts, (vxlan, route, fixed)) in cases {
            let mut s = ClusterState::default();
            for (name, ip, mtu) in hosts {
                register(&mut s, name, ip, *mtu);
            }
            for (name, mode, cidr, mtu) in [
                ("blue", Mode::Vxlan, "10.1.0.0/16", None),
                ("red", Mode::Route, "10.2.0.0/16", None),
                ("fixed", Mode::Vxlan, "10.3.0.0/16", Some(1400)),
            ] {
                create(&mut s, name, mode, cidr, mtu).result.unwrap();
            }
            for (name, want) in [("blue", vxlan), ("fixed", fixed)] {
                let shown = network(&s, &s.networks[name]).effective_mtu;
                assert_eq!(shown, want, "{name} on {hosts:?}");
                for (host, ..) in hosts {
                    let d = crate::desired::for_host(&s, host).unwrap();
                    let net = d.networks.iter().find(|n| n.name == name).unwrap();
                    assert_eq!(net.mtu, want, "{name} on {host} of {hosts:?}");
                }
            }
            // A route network pays no overhead over either family: the smallest underlay.
            assert_eq!(network(&s, &s.networks["red"]).effective_mtu, route, "{hosts:?}");
        }
    }
}
