//! Tells the controller which endpoints this host holds ([`crate::attachments`]), so that
//! `endpoint ls`, `doctor`, DNS and the Watch stream see them all.
//!
//! The first report of every controller session is full (the controller drops whatever else
//! it recorded for the host); later ones carry what changed since the last one it
//! acknowledged. A report that fails is retried, full again, since it is unknown what the
//! controller applied. Requests the agent could not carry out are reported until the
//! controller withdraws them.

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
    loop {
        let wake = async {
            tokio::select! {
                c = changes.changed() => c.is_ok(),
                s = sessions.changed() => s.is_ok(),
                r = reports.changed() => r.is_ok(),
            }
        };
        if retry {
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
                    continue;
                }
                pb::SyncEndpointsRequest {
                    host_name: host.clone(),
                    instance_id: instance.to_string(),
                    full: false,
                    endpoints,
                    removed,
                    failed: failed.clone(),
                }
            }
        };
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
