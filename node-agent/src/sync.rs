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

/// The keys the controller must forget: gone ones, and those whose address changed (detached
/// and attached again within one batch, as a CNI DEL and ADD of one container): the new
/// endpoint is reported after the removal, see [`phases`].
fn removed_keys(
    prev: &BTreeMap<String, pb::HostEndpoint>,
    now: &BTreeMap<String, pb::HostEndpoint>,
) -> Vec<String> {
    prev.iter()
        .filter(|(k, e)| now.get(*k).is_none_or(|n| n.ip != e.ip))
        .map(|(k, _)| k.clone())
        .collect()
}

/// A report as the controller can apply it. It records a request's endpoints before its
/// removals, so an address (or a key) released and taken again within one batch would be
/// refused as still held: removals go first, in a request of their own.
fn phases(req: pb::SyncEndpointsRequest) -> Vec<pb::SyncEndpointsRequest> {
    if req.full || req.removed.is_empty() || req.endpoints.is_empty() {
        return vec![req];
    }
    let removals = pb::SyncEndpointsRequest {
        endpoints: Vec::new(),
        ..req.clone()
    };
    let additions = pb::SyncEndpointsRequest {
        removed: Vec::new(),
        ..req
    };
    vec![removals, additions]
}

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
                let removed = removed_keys(prev, &now);
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
        let mut sent = Ok(());
        for req in phases(req) {
            match controllers
                .call(|ch| {
                    let req = req.clone();
                    async move { AgentClient::new(ch).sync_endpoints(req).await }
                })
                .await
            {
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
                }
                Err(status) => {
                    sent = Err(status);
                    break;
                }
            }
        }
        match sent {
            Ok(()) => {
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
    fn removals_go_before_the_endpoints_that_take_their_place() {
        // A detach and an attach of the same address in one batch.
        let mut req = changes(vec![endpoint("cni-2", "cni")], &["cni-1"], &[]);
        req.endpoints[0].ip = "10.1.0.7".into();
        let sent = phases(req);
        assert_eq!(sent.len(), 2);
        assert_eq!(
            (sent[0].removed.as_slice(), sent[0].endpoints.len()),
            (&["cni-1".to_string()][..], 0)
        );
        assert_eq!(
            (sent[1].removed.len(), sent[1].endpoints[0].key.as_str()),
            (0, "cni-2")
        );
        // The same key with a new address is forgotten first, then recorded again.
        let at = |key: &str, ip: &str| {
            let mut e = endpoint(key, "cni");
            e.ip = ip.into();
            (key.to_string(), e)
        };
        let prev: BTreeMap<_, _> = [at("cni-1", "10.1.0.7"), at("cni-3", "10.1.0.9")].into();
        let now: BTreeMap<_, _> = [at("cni-1", "10.1.0.8"), at("cni-3", "10.1.0.9")].into();
        assert_eq!(removed_keys(&prev, &now), ["cni-1"]);
        assert_eq!(removed_keys(&prev, &BTreeMap::new()), ["cni-1", "cni-3"]);
        // Only additions, only removals, or a full report: one request as before.
        assert_eq!(phases(changes(vec![endpoint("cni-2", "cni")], &[], &[])).len(), 1);
        assert_eq!(phases(changes(vec![], &["cni-1"], &[])).len(), 1);
        let full = pb::SyncEndpointsRequest {
            full: true,
            ..changes(vec![endpoint("cni-2", "cni")], &["cni-1"], &[])
        };
        assert_eq!(phases(full).len(), 1);
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
