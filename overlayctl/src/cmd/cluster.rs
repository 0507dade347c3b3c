//! `overlayctl cluster`: the controller replicas, so membership changes and their outcome read
//! in one place.

use std::io::{self, Write};

use clap::Subcommand;
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use serde_json::{Value, json};

use crate::client::call;
use crate::failure::Failure;
use crate::output::{Out, table};

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Members, leader, term, commit index and health.
    Status,
    /// Add a controller replica: start it first (same --peers, its own --node-id), then add it.
    /// It catches up as a learner and then votes.
    AddMember {
        /// Its --node-id.
        id: u64,
        /// host:port where the other replicas reach it.
        addr: String,
    },
    /// Remove a controller replica from the cluster (a dead one, or one to retire).
    RemoveMember {
        /// Its --node-id.
        id: u64,
    },
}

pub async fn run(controllers: &Controllers, out: &mut Out, cmd: ClusterCmd) -> Result<(), Failure> {
    let resp = match cmd {
        ClusterCmd::Status => {
            call(controllers, |mut c| async move {
                c.cluster_status(pb::ClusterStatusRequest {}).await
            })
            .await?
        }
        ClusterCmd::AddMember { id, addr } => {
            call(controllers, |mut c| {
                let req = pb::AddMemberRequest {
                    id,
                    addr: addr.clone(),
                };
                async move { c.add_member(req).await }
            })
            .await?
        }
        ClusterCmd::RemoveMember { id } => {
            call(controllers, |mut c| async move {
                c.remove_member(pb::RemoveMemberRequest { id }).await
            })
            .await?
        }
    };
    print_status(out, &resp)?;
    Ok(())
}

fn print_status(out: &mut Out, s: &pb::ClusterStatusResponse) -> io::Result<()> {
    if out.json() {
        let members: Vec<Value> = s
            .members
            .iter()
            .map(|m| json!({"id": m.id, "addr": m.addr, "role": m.role, "healthy": m.healthy, "matched_index": m.matched_index}))
            .collect();
        return out.print_json(&json!({
            "health": s.health, "leader": (s.leader_id != 0).then_some(s.leader_id), "term": s.term,
            "commit_index": s.commit_index, "applied_index": s.applied_index, "revision": s.revision,
            "served_by": s.served_by, "members": members,
        }));
    }
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else {
        s.leader_id.to_string()
    };
    writeln!(
        out,
        "health: {}   leader: {}   term: {}   commit index: {}   applied: {}   revision: {}",
        s.health, leader, s.term, s.commit_index, s.applied_index, s.revision
    )?;
    let rows = s
        .members
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                m.addr.clone(),
                m.role.clone(),
                if m.healthy { "yes" } else { "no" }.into(),
                m.matched_index.to_string(),
            ]
        })
        .collect();
    table(out, &["ID", "ADDRESS", "ROLE", "HEALTHY", "MATCHED"], rows)?;
    Ok(())
}
