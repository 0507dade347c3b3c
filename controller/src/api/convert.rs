//! Records of the state machine into their wire form.

use overlay_proto::v1 as pb;

use crate::ipam;
use crate::model::{Endpoint, EndpointStatus, Host, Mode, Network};
use crate::state::{ClusterState, HOST_DOWN_AFTER_MS};

pub fn mode(mode: Mode) -> pb::NetworkMode {
    match mode {
        Mode::Vxlan => pb::NetworkMode::Vxlan,
        Mode::Macvlan => pb::NetworkMode::Macvlan,
        Mode::Nat => pb::NetworkMode::Nat,
    }
}

pub fn network(state: &ClusterState, n: &Network) -> pb::Network {
    pb::Network {
        name: n.name.clone(),
        id: n.id,
        mode: mode(n.mode) as i32,
        subnet: n.cidr.to_string(),
        host_prefix: n.host_prefix as u32,
        vni: n.vni.unwrap_or(0),
        mtu: n.mtu.unwrap_or(0),
        nat_egress: n.nat_egress,
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
    }
}

pub fn leases(n: &Network) -> Vec<pb::SubnetLease> {
    n.leases
        .iter()
        .map(|(host, lease)| pb::SubnetLease {
            host: host.clone(),
            subnet: lease.subnet.to_string(),
            gateway: ipam::subnet_gateway(lease.subnet).to_string(),
        })
        .collect()
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
        address: format!("{}/{}", e.ip, e.prefix_len),
        mac: e.mac.to_string(),
        gateway: e.gateway.to_string(),
        state: state as i32,
        message,
        default_route: e.default_route,
    }
}
