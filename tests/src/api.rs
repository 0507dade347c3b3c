//! The controller API calls tests and benchmarks make, over a fail-over [`Controllers`]
//! connector: the same requests overlayctl and agents send.

use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use overlay_proto::v1::overlay_client::OverlayClient;
use serde_json::Value;

pub async fn register(c: &Controllers, name: &str, ip: &str) -> pb::Host {
    let req = pb::RegisterRequest {
        host_name: name.into(),
        underlay_ip: ip.into(),
        underlay_iface: "eth0".into(),
        underlay_mtu: 1500,
    };
    let resp = c
        .call(|ch| {
            let req = req.clone();
            async move { AgentClient::new(ch).register(req).await }
        })
        .await
        .expect("register");
    resp.into_inner().host.expect("host")
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
