//! Host claims at the API (issue 13 item 5), against a real replica: every agent call carries
//! an instance id; a malformed one is refused without being echoed, a second instance is
//! refused on every call with a line that shows only the holder's short id, the refusals
//! are remembered for doctor (bounded), and nothing is recorded for hosts that do not exist.

use std::collections::HashMap;

use overlay_lab::controllers::ControllerCluster;
use overlay_proto::connect::Controllers;
use overlay_proto::raft::RaftPayload;
use overlay_proto::raft::raft_client::RaftClient;
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use overlay_proto::v1::overlay_client::OverlayClient;
use serde_json::Value;
use tonic::Code;

mod common;
use common::*;

const HOLDER: &str = "0123456789abcdef0123456789abcdef";
const OTHER: &str = "fedcba9876543210fedcba9876543210";

/// Heartbeat, Watch (first message), ReportStatus and ReportProbe for h1 as `instance`.
async fn calls_as(c: &Controllers, instance: &str) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let id = instance.to_string();
    let heartbeat = c
        .call(|ch| {
            let instance_id = id.clone();
            async move {
                AgentClient::new(ch)
                    .heartbeat(pb::HeartbeatRequest {
                        host_name: "h1".into(),
                        applied_revision: 1,
                        instance_id,
                    })
                    .await
                    .map(|_| ())
            }
        })
        .await;
    let watch = c
        .call(|ch| {
            let instance_id = id.clone();
            async move {
                let mut stream = AgentClient::new(ch)
                    .watch(pb::WatchRequest {
                        host_name: "h1".into(),
                        instance_id,
                    })
                    .await?
                    .into_inner();
                stream.message().await.map(|_| ())
            }
        })
        .await;
    let status = c
        .call(|ch| {
            let instance_id = id.clone();
            async move {
                AgentClient::new(ch)
                    .report_status(pb::ReportStatusRequest {
                        host_name: "h1".into(),
                        drift: vec!["forged drift".into()],
                        audited_ms: 1,
                        instance_id,
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
            }
        })
        .await;
    let probe = c
        .call(|ch| {
            let instance_id = id.clone();
            async move {
                AgentClient::new(ch)
                    .report_probe(pb::ProbeReport {
                        id: "p1".into(),
                        host: "h1".into(),
                        results: Vec::new(),
                        instance_id,
                    })
                    .await
                    .map(|_| ())
            }
        })
        .await;
    vec![
        ("Heartbeat", heartbeat),
        ("Watch", watch),
        ("ReportStatus", status),
        ("ReportProbe", probe),
    ]
}

async fn agents_seen(c: &Controllers) -> HashMap<String, Value> {
    let reply = c
        .call(|ch| async move {
            RaftClient::new(ch)
                .agents_seen(RaftPayload {
                    data: b"null".to_vec(),
                })
                .await
        })
        .await
        .expect("agents seen");
    serde_json::from_slice(&reply.get_ref().data).expect("decodable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_is_held_by_one_instance_at_the_api() {
    let cluster = ControllerCluster::start_loopback(1).expect("replica");
    cluster.wait_leader(1, ELECTION).await.expect("leader");
    let c = cluster.client().expect("client");
    try_register_as(&c, "h1", "192.0.2.21", HOLDER)
        .await
        .expect("the first instance claims h1");
    try_register_as(&c, "h1", "192.0.2.31", HOLDER)
        .await
        .expect("and may register again, elsewhere");

    // Malformed instance ids: refused, not echoed, nothing recorded.
    let huge = "Z".repeat(1 << 20);
    for bad in ["not-hex-at-all!!", "abc", huge.as_str(), "ÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉÉ"] {
        let err = try_register_as(&c, "h1", "192.0.2.41", bad).await.err();
        let err = err.expect("a malformed instance id is refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().len() < 200, "the id is echoed back");
        for (call, result) in calls_as(&c, bad).await {
            let code = result.err().map(|s| s.code());
            assert_eq!(
                code,
                Some(Code::InvalidArgument),
                "{call} with instance id {bad:.20}"
            );
        }
    }
    println!("refused  malformed instance ids on all five agent calls: InvalidArgument");

    // A second instance: every call refused with the same line, which shows the holder's
    // short id only.
    let err = try_register_as(&c, "h1", "192.0.2.41", OTHER)
        .await
        .expect_err("a second instance is refused");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let line = err.message().to_string();
    assert!(
        line.contains("instance 01234567,") && !line.contains(HOLDER) && line.contains("192.0.2.31"),
        "{line}"
    );
    println!("refused  Register h1 as a second instance: {line}");
    for instance in [OTHER, ""] {
        for (call, result) in calls_as(&c, instance).await {
            let err = result
                .err()
                .unwrap_or_else(|| panic!("{call} as {instance:?}: accepted"));
            assert_eq!(err.code(), Code::FailedPrecondition, "{call}: {}", err.message());
            assert!(
                err.message().contains("is held by another agent"),
                "{call}: {}",
                err.message()
            );
        }
    }
    println!("refused  Heartbeat, Watch, ReportStatus, ReportProbe of h1 by a non-holder");
    let inspect = c
        .call(|ch| async move {
            OverlayClient::new(ch)
                .inspect_host(pb::HostRef { name: "h1".into() })
                .await
        })
        .await
        .expect("inspect")
        .into_inner();
    assert_eq!(inspect.underlay_ip, "192.0.2.31", "h1 moved");

    // Remembered for doctor: who asked, how often; the forged drift was not recorded.
    let seen = agents_seen(&c).await;
    let h1 = &seen["h1"];
    let claims = h1["refused_claims"].as_array().cloned().unwrap_or_default();
    assert!(
        claims
            .iter()
            .any(|c| c["instance"] == "fedcba98" && c["refusals"].as_u64() >= Some(5)),
        "{h1}"
    );
    assert!(
        claims.iter().all(|c| c["instance"] != OTHER),
        "a whole id is kept: {h1}"
    );
    assert!(h1["drift"].as_array().is_none_or(|d| d.is_empty()), "{h1}");
    println!("h1's refused claims as a replica keeps them: {claims:?}");

    // Status for a host that does not exist creates nothing.
    let ghost = c
        .call(|ch| async move {
            AgentClient::new(ch)
                .report_status(pb::ReportStatusRequest {
                    host_name: "ghost".into(),
                    drift: vec!["x".repeat(1024); 1000],
                    audited_ms: 1,
                    ..Default::default()
                })
                .await
        })
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(ghost, Some(Code::NotFound));
    assert!(!agents_seen(&c).await.contains_key("ghost"), "a record for ghost");

    // Removed (forced: h1 was heard a moment ago), the name is anyone's.
    let remove = |force| {
        let c = &c;
        async move {
            c.call(|ch| async move {
                OverlayClient::new(ch)
                    .remove_host(pb::RemoveHostRequest {
                        name: "h1".into(),
                        force,
                    })
                    .await
            })
            .await
        }
    };
    let refused = remove(false).await.expect_err("h1 is connected");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("is connected"),
        "{}",
        refused.message()
    );
    let removed = remove(true).await.expect("forced").into_inner();
    assert!(removed.agent_connected);
    try_register_as(&c, "h1", "192.0.2.41", OTHER)
        .await
        .expect("after host rm, a new instance claims h1");
    println!("host rm h1 refused while connected; forced, then claimed by the second instance");
}
