//! The controller API calls tests and benchmarks make, over a fail-over [`Controllers`]
//! connector: the same requests overlayctl and agents send.

use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use overlay_proto::v1::overlay_client::OverlayClient;
use serde_json::Value;

pub async fn register(c: &Controllers, name: &str, ip: &str) -> pb::Host {
    try_register(c, name, ip)
        .await
        .expect("register")
        .host
        .expect("host")
}

/// Registers host `name` as its agent would, returning the controller's answer.
pub async fn try_register(
    c: &Controllers,
    name: &str,
    ip: &str,
) -> Result<pb::RegisterResponse, tonic::Status> {
    try_register_as(c, name, ip, "").await
}

/// [`try_register`] as the agent instance `instance` ("" = a client without an instance id).
pub async fn try_register_as(
    c: &Controllers,
    name: &str,
    ip: &str,
    instance: &str,
) -> Result<pb::RegisterResponse, tonic::Status> {
    let req = pb::RegisterRequest {
        host_name: name.into(),
        underlay_ip: ip.into(),
        underlay_iface: "eth0".into(),
        underlay_mtu: 1500,
        instance_id: instance.into(),
    };
    c.call(|ch| {
        let req = req.clone();
        async move { AgentClient::new(ch).register(req).await }
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn create_network(c: &Controllers, name: &str, subnet: &str, host_prefix: u32) -> pb::Network {
    let req = pb::CreateNetworkRequest {
        name: name.into(),
        mode: pb::NetworkMode::Vxlan as i32,
        subnet: subnet.into(),
        host_prefix: Some(host_prefix),
        ..Default::default()
    };
    c.call(|ch| {
        let req = req.clone();
        async move { OverlayClient::new(ch).create_network(req).await }
    })
    .await
    .expect("create network")
    .into_inner()
}

/// A macvlan network on `cidr` whose shared range is `range`: the one kind of network whose
/// endpoint addresses the controller allocates (see [`allocate`]).
pub async fn create_macvlan(c: &Controllers, name: &str, cidr: &str, range: &str) -> pb::Network {
    let gateway = cidr
        .split('/')
        .next()
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
        .map(|ip| std::net::Ipv4Addr::from(u32::from(ip) + 1).to_string())
        .unwrap_or_default();
    let req = pb::CreateNetworkRequest {
        name: name.into(),
        mode: pb::NetworkMode::Macvlan as i32,
        subnet: cidr.into(),
        macvlan: Some(pb::MacvlanOptions {
            parent: "eth0".into(),
            gateway,
            ip_range: range.into(),
            mode: "bridge".into(),
        }),
        ..Default::default()
    };
    c.call(|ch| {
        let req = req.clone();
        async move { OverlayClient::new(ch).create_network(req).await }
    })
    .await
    .expect("create macvlan network")
    .into_inner()
}

/// A macvlan address for `host`'s endpoint `key`, as its agent asks for one: allocated in the
/// replicated state machine, the same again for the same key.
pub async fn allocate(
    c: &Controllers,
    network: &str,
    host: &str,
    key: &str,
) -> Result<pb::Endpoint, tonic::Status> {
    let req = pb::AllocateAddressRequest {
        host_name: host.into(),
        network: network.into(),
        key: key.into(),
        netns: key.into(),
        ifname: "eth0".into(),
        owner: "cni".into(),
        ..Default::default()
    };
    c.call(|ch| {
        let req = req.clone();
        async move { AgentClient::new(ch).allocate_address(req).await }
    })
    .await
    .map(|r| r.into_inner().endpoint.unwrap_or_default())
}

/// `host`'s agent reports that it holds endpoint `key` at `ip` in `network` (inside its lease).
pub async fn report(
    c: &Controllers,
    host: &str,
    key: &str,
    network: &str,
    ip: &str,
) -> pb::SyncEndpointsResponse {
    let req = pb::SyncEndpointsRequest {
        host_name: host.into(),
        endpoints: vec![pb::HostEndpoint {
            key: key.into(),
            host_id: 1,
            network: network.into(),
            netns: format!("/run/netns/{}", key.replace('/', "-")),
            ifname: "eth0".into(),
            ip: ip.into(),
            default_route: true,
            owner: "cni".into(),
            report: pb::EndpointReport::Ready as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    c.call(|ch| {
        let req = req.clone();
        async move { AgentClient::new(ch).sync_endpoints(req).await }
    })
    .await
    .expect("report endpoints")
    .into_inner()
}

/// `overlayctl endpoint attach --no-wait`: the request is recorded (the host's agent carries it
/// out, with an address from its lease), without waiting for the agent.
pub async fn attach(
    c: &Controllers,
    network: &str,
    host: &str,
    netns: &str,
) -> Result<pb::Endpoint, tonic::Status> {
    let req = pb::AttachEndpointRequest {
        network: network.into(),
        host: host.into(),
        netns: netns.into(),
        no_wait: true,
        ..Default::default()
    };
    c.call(|ch| {
        let req = req.clone();
        async move { OverlayClient::new(ch).attach_endpoint(req).await }
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn endpoints(c: &Controllers) -> Result<Vec<pb::Endpoint>, tonic::Status> {
    c.call(|ch| async move {
        OverlayClient::new(ch)
            .list_endpoints(pb::ListEndpointsRequest::default())
            .await
    })
    .await
    .map(|r| r.into_inner().endpoints)
}

pub async fn status(c: &Controllers) -> Result<pb::ClusterStatusResponse, tonic::Status> {
    c.call(|ch| async move {
        OverlayClient::new(ch)
            .cluster_status(pb::ClusterStatusRequest {})
            .await
    })
    .await
    .map(|r| r.into_inner())
}

/// The voting members' ids in an `overlayctl -o json cluster status` answer, sorted.
pub fn voters(status: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = status["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] != "learner")
                .filter_map(|m| m["id"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// What [`allocate_under_faults`] got: acknowledged allocations (namespace → address) and how
/// many attempts failed and were retried.
#[derive(Debug, Default)]
pub struct Allocations {
    pub acked: std::collections::BTreeMap<String, String>,
    pub retried: usize,
}

/// The load of the failover tests: `total` macvlan addresses (key `{prefix}{i}` on host
/// `h{i % hosts}` of macvlan `network`) allocated from `workers` concurrent clients.
#[derive(Clone, Debug)]
pub struct AllocationLoad {
    pub network: &'static str,
    pub hosts: usize,
    pub prefix: &'static str,
    pub total: usize,
    pub workers: usize,
    /// Failed attempts tolerated per endpoint before the test gives up.
    pub max_attempts: usize,
}

/// Runs `load`, each request sent to a pseudo-random replica of `per_replica` and retried while
/// faults are injected (an allocation is idempotent per key: a retry after a lost answer gets
/// the same address). `done` counts finished endpoints, for a fault injector to pace itself on.
pub async fn allocate_under_faults(
    per_replica: std::sync::Arc<Vec<Controllers>>,
    load: AllocationLoad,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Allocations {
    use std::sync::atomic::Ordering;
    let AllocationLoad {
        network,
        hosts,
        prefix,
        total,
        workers,
        max_attempts,
    } = load;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (per_replica, done) = (per_replica.clone(), done.clone());
            tokio::spawn(async move {
                let mut out = Allocations::default();
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (w as u64 + 1);
                for i in (w..total).step_by(workers) {
                    let netns = format!("{prefix}{i}");
                    let host = format!("h{}", i % hosts);
                    let mut attempts = 0;
                    loop {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let c = &per_replica[(seed % per_replica.len() as u64) as usize];
                        match allocate(c, network, &host, &netns).await {
                            Ok(ep) => {
                                out.acked.insert(netns.clone(), ep.address);
                                break;
                            }
                            Err(s) => {
                                attempts += 1;
                                out.retried += 1;
                                assert!(
                                    attempts < max_attempts,
                                    "attach {netns} kept failing: {}",
                                    s.message()
                                );
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                out
            })
        })
        .collect();
    let mut all = Allocations::default();
    for t in tasks {
        let part = t.await.expect("allocation worker");
        all.acked.extend(part.acked);
        all.retried += part.retried;
    }
    all
}
