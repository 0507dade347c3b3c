//! `overlayctl doctor`: every host's health in one call, and the exit status scripts check.

use std::io::{self, Write};

use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use serde_json::{Value, json};

use crate::client::call;
use crate::cmd::endpoint;
use crate::failure::Failure;
use crate::output::{Out, table};

/// Prints the findings; any problem fails the command.
pub async fn run(controllers: &Controllers, out: &mut Out) -> Result<(), Failure> {
    let resp = call(controllers, |mut c| async move {
        c.doctor(pb::DoctorRequest {}).await
    })
    .await?;
    let problems = print(out, &resp)?;
    if !problems.is_empty() {
        return Err(Failure::Message(format!(
            "doctor found {} problem(s): {}",
            problems.len(),
            problems.join("; ")
        )));
    }
    Ok(())
}

/// An agent silent for longer than this (three heartbeats) is reported.
const HEARTBEAT_STALE_MS: i64 = 15_000;

/// Prints the doctor's findings; returns one line per problem (empty: all healthy).
fn print(out: &mut Out, d: &pb::DoctorResponse) -> io::Result<Vec<String>> {
    let mut problems = Vec::new();
    let age = |ms: i64| (ms > 0).then(|| (d.now_ms - ms).max(0));
    for h in &d.hosts {
        if !h.connected {
            problems.push(format!("{}: agent not connected", h.host));
        }
        match age(h.last_heartbeat_ms) {
            None => problems.push(format!("{}: never heard from", h.host)),
            Some(a) if a > HEARTBEAT_STALE_MS => {
                problems.push(format!("{}: no heartbeat for {}s", h.host, a / 1000))
            }
            _ => {}
        }
        if h.connected && h.sent_revision > h.applied_revision {
            problems.push(format!(
                "{}: lagging (applied revision {} of {})",
                h.host, h.applied_revision, h.sent_revision
            ));
        }
        if !h.drift.is_empty() {
            problems.push(format!(
                "{}: {} drift item(s), e.g. {}",
                h.host,
                h.drift.len(),
                h.drift[0]
            ));
        }
        if let Some(c) = h.refused_claims.first() {
            problems.push(format!(
                "{}: held by agent {} but claimed by {} other agent(s), e.g. {}",
                h.host,
                h.instance,
                h.refused_claims.len(),
                refused_claim(c, d.now_ms)
            ));
        }
    }
    for r in &d.unreachable_replicas {
        problems.push(format!(
            "controller replica {r} did not answer; its agents may be missing"
        ));
    }
    for e in &d.gone_endpoints {
        problems.push(format!(
            "{}: endpoint {} of {} ({}) is gone: {}; its agent releases it after its grace period",
            e.host, e.address, e.network, e.netns, e.message
        ));
    }
    if out.json() {
        let hosts: Vec<Value> = d
            .hosts
            .iter()
            .map(|h| {
                let claims: Vec<Value> = h
                    .refused_claims
                    .iter()
                    .map(|c| {
                        json!({
                            "instance": c.instance, "underlay_ip": c.underlay_ip, "source": c.source,
                            "refusals": c.refusals, "last_refused_age_ms": age(c.last_refused_ms),
                            "call": c.call,
                        })
                    })
                    .collect();
                json!({
                    "host": h.host, "connected": h.connected, "instance": h.instance,
                    "last_heartbeat_age_ms": age(h.last_heartbeat_ms),
                    "applied_revision": h.applied_revision, "sent_revision": h.sent_revision,
                    "lag": h.sent_revision.saturating_sub(h.applied_revision),
                    "drift": h.drift, "audited_age_ms": age(h.audited_ms),
                    "refused_claims": claims,
                })
            })
            .collect();
        let gone: Vec<Value> = d.gone_endpoints.iter().map(endpoint::json).collect();
        out.print_json(&json!({
            "healthy": problems.is_empty(), "hosts": hosts, "gone_endpoints": gone,
            "problems": problems,
        }))?;
        return Ok(problems);
    }
    let rows = d
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                if h.instance.is_empty() { "-" } else { &h.instance }.to_string(),
                if h.connected { "yes" } else { "no" }.to_string(),
                age(h.last_heartbeat_ms)
                    .map(|a| format!("{}s ago", a / 1000))
                    .unwrap_or_else(|| "never".into()),
                h.applied_revision.to_string(),
                if h.connected {
                    h.sent_revision.saturating_sub(h.applied_revision).to_string()
                } else {
                    "-".into()
                },
                h.drift.len().to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "HOST",
            "AGENT",
            "CONNECTED",
            "HEARTBEAT",
            "APPLIED",
            "LAG",
            "DRIFT",
        ],
        rows,
    )?;
    if !d.gone_endpoints.is_empty() {
        writeln!(
            out,
            "\ngone endpoints (released by their agent after its grace period):"
        )?;
        for e in &d.gone_endpoints {
            writeln!(
                out,
                "  {} {} {} ({}): {}",
                e.host, e.network, e.address, e.netns, e.message
            )?;
        }
    }
    for h in d.hosts.iter().filter(|h| !h.drift.is_empty()) {
        let found = age(h.audited_ms)
            .map(|a| format!(" (found {}s ago)", a / 1000))
            .unwrap_or_default();
        writeln!(out, "\n{}{found}:", h.host)?;
        for item in &h.drift {
            writeln!(out, "  {item}")?;
        }
    }
    for h in d.hosts.iter().filter(|h| !h.refused_claims.is_empty()) {
        writeln!(
            out,
            "\n{}: held by agent {}; other agents asked for this host name and were refused:",
            h.host, h.instance
        )?;
        for c in &h.refused_claims {
            writeln!(out, "  {}", refused_claim(c, d.now_ms))?;
        }
    }
    Ok(problems)
}

/// One refused claim, for a person.
fn refused_claim(c: &pb::RefusedClaim, now_ms: i64) -> String {
    let from = if c.source.is_empty() { "?" } else { &c.source };
    let asked = if c.underlay_ip.is_empty() {
        String::new()
    } else {
        format!(" for underlay {}", c.underlay_ip)
    };
    format!(
        "agent {} from {from}{asked}: {} refusal(s), last {}s ago ({})",
        c.instance,
        c.refusals,
        (now_ms - c.last_refused_ms).max(0) / 1000,
        c.call
    )
}
