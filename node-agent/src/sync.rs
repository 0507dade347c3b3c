//! Tells the controller which endpoints this host holds ([`crate::attachments`]), so that
//! `endpoint ls`, `doctor`, DNS and the Watch stream see them all.
//!
//! The first report of every controller session is full (the controller drops whatever else
//! it recorded for the host); later ones carry what changed since the last one it
//! acknowledged. A report that fails is retried, full again, since it is unknown what the
//! controller applied. Requests the agent could not carry out are reported until the
//! controller withdraws them.
//!
//! Changes only this host asked for (CNI, Docker, the local API) are batched for
//! [`LOCAL_BATCH`]; the outcome of a request made through the controller goes at once, with
//! whatever was batched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use tokio::sync::watch;

use crate::attachments::Attachments;

/// Pause before a failed report is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How long a report of changes only this host asked for (CNI, Docker, the local API) waits
/// for more before it is sent. Nobody waits on it (the caller had its answer from the agent),
/// a burst of attaches then costs the controllers one commit instead of one each, and the
/// commit stays off the CPU while the caller reads its answer and starts its container.
/// Requests made through the controller are reported at once: their caller waits for it.
const LOCAL_BATCH: Duration = Duration::from_millis(50);

/// Whether a change report must go out now: it carries what a caller of the controller waits
/// for (the outcome of a request made through it, or a failure), not only this host's own
/// attaches and detaches.
fn urgent(
    req: &pb::SyncEndpointsRequest,
    prev: &BTreeMap<String, pb::HostEndpoint>,
    failed_before: &[pb::FailedRequest],
) -> bool {
    let requested = |e: &pb::HostEndpoint| e.owner == crate::attachments::REQUESTED_OWNER;
    req.failed != failed_before
        || req.endpoints.iter().any(requested)
        || req.removed.iter().any(|k| prev.get(k).is_some_and(requested))
}

/// Runs until the process ends. `sessions` is bumped whenever the agent (re)registers: the next
/// report is then full.
pub async fn sync_loop(
    attachments: Arc<Attachments>,
    controllers: Arc<Controllers>,
    host: String,
    instance: Arc<str>,
    mut sessions: watch::Receiver<u64>,
    mut reports: watch::Receiver<Option<Arc<crate::reconcile::PassReport>>>,
) {
    let mut changes = attachments.subscribe();
    // What the controller holds as far as this agent knows (`None`: report in full).
    let mut acked: Option<BTreeMap<String, pb::HostEndpoint>> = None;
    let mut acked_failed: Vec<pb::FailedRequest> = Vec::new();
    let mut retry = false;
    let mut last_session = 0;
    // While local changes wait out [`LOCAL_BATCH`]: when they go (an urgent one sends them
    // at once, with it).
    let mut hold_until: Option<tokio::time::Instant> = None;
    loop {
        let wake = async {
            tokio::select! {
                c = changes.changed() => c.is_ok(),
                s = sessions.changed() => s.is_ok(),
                r = reports.changed() => r.is_ok(),
            }
        };
        if let Some(until) = hold_until {
            if let Ok(false) = tokio::time::timeout_at(until, wake).await {
                return;
            }
        } else if retry {
            let _ = tokio::time::timeout(RETRY, wake).await;
        } else if !wake.await {
            return;
        }
        let session = *sessions.borrow_and_update();
        if session == 0 {
            // Not registered yet: the controller would not know the host.
            retry = false;
            continue;
        }
        if session != last_session {
            // A new session: report in full.
            acked = None;
            last_session = session;
        }
        changes.borrow_and_update();
        reports.borrow_and_update();
        let (now, failed) = attachments.report();
        let now: BTreeMap<String, pb::HostEndpoint> = now.into_iter().map(|e| (e.key.clone(), e)).collect();
        let req = match &acked {
            None => pb::SyncEndpointsRequest {
                host_name: host.clone(),
                instance_id: instance.to_string(),
                full: true,
                endpoints: now.values().cloned().collect(),
                removed: Vec::new(),
                failed: failed.clone(),
            },
            Some(prev) => {
                let endpoints: Vec<pb::HostEndpoint> = now
                    .iter()
                    .filter(|(k, e)| prev.get(*k) != Some(*e))
                    .map(|(_, e)| e.clone())
                    .collect();
                let removed: Vec<String> = prev.keys().filter(|k| !now.contains_key(*k)).cloned().collect();
                if endpoints.is_empty() && removed.is_empty() && failed == acked_failed {
                    retry = false;
                    hold_until = None;
                    continue;
                }
                let req = pb::SyncEndpointsRequest {
                    host_name: host.clone(),
                    instance_id: instance.to_string(),
                    full: false,
                    endpoints,
                    removed,
                    failed: failed.clone(),
                };
                if !retry && !urgent(&req, prev, &acked_failed) {
                    let until = *hold_until.get_or_insert_with(|| tokio::time::Instant::now() + LOCAL_BATCH);
                    if tokio::time::Instant::now() < until {
                        continue;
                    }
                }
                req
            }
        };
        hold_until = None;
        let sent = controllers
            .call(|ch| {
                let req = req.clone();
                async move { AgentClient::new(ch).sync_endpoints(req).await }
            })
            .await;
        match sent {
            Ok(answer) => {
                for refused in &answer.get_ref().refused {
                    tracing::error!(key = %refused.key, why = %refused.message, "the controller would not record this endpoint");
                }
                tracing::debug!(
                    full = req.full,
                    endpoints = req.endpoints.len(),
                    removed = req.removed.len(),
                    "endpoints reported"
                );
                acked = Some(now);
                acked_failed = failed;
                retry = false;
            }
            Err(status) => {
                tracing::warn!(error = %status.message(), "endpoint report failed; will retry");
                acked = None;
                retry = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(key: &str, owner: &str) -> pb::HostEndpoint {
        pb::HostEndpoint {
            key: key.into(),
            owner: owner.into(),
            ..Default::default()
        }
    }

    fn changes(
        endpoints: Vec<pb::HostEndpoint>,
        removed: &[&str],
        failed: &[&str],
    ) -> pb::SyncEndpointsRequest {
        pb::SyncEndpointsRequest {
            endpoints,
            removed: removed.iter().map(|k| k.to_string()).collect(),
            failed: failed
                .iter()
                .map(|k| pb::FailedRequest {
                    key: k.to_string(),
                    message: "refused".into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_what_a_controller_caller_waits_for_is_urgent() {
        let requested = crate::attachments::REQUESTED_OWNER;
        let prev: BTreeMap<String, pb::HostEndpoint> =
            [endpoint("cni-1", "cni"), endpoint("ctl-1", requested)]
                .into_iter()
                .map(|e| (e.key.clone(), e))
                .collect();
        // This host's own attaches and detaches wait for the batch.
        assert!(!urgent(
            &changes(vec![endpoint("cni-2", "cni")], &[], &[]),
            &prev,
            &[]
        ));
        assert!(!urgent(&changes(vec![], &["cni-1"], &[]), &prev, &[]));
        // A request made through the controller, its removal, or a new failure goes now.
        assert!(urgent(
            &changes(vec![endpoint("ctl-2", requested)], &[], &[]),
            &prev,
            &[]
        ));
        assert!(urgent(&changes(vec![], &["ctl-1"], &[]), &prev, &[]));
        assert!(urgent(&changes(vec![], &[], &["ctl-3"]), &prev, &[]));
        // A failure already acknowledged is no reason to hurry.
        let failed = changes(vec![], &[], &["ctl-3"]).failed;
        assert!(!urgent(
            &changes(vec![endpoint("cni-2", "cni")], &[], &["ctl-3"]),
            &prev,
            &failed
        ));
        // A key removed that the controller never acknowledged is this host's business.
        assert!(!urgent(&changes(vec![], &["unknown"], &[]), &prev, &[]));
    }
}
