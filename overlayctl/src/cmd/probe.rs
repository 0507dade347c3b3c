//! `overlayctl probe`: every host of a network pings every other, and a lost packet fails the
//! command.

use std::io::{self, Write};

use clap::Args;
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use serde_json::{Value, json};

use crate::client::call;
use crate::failure::Failure;
use crate::output::{Out, table};

// No doc comment here: clap would take it for the command's help, which is on
// `Command::Probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    network: String,
    /// Echoes per pair and size.
    #[arg(long, default_value_t = 3)]
    count: u32,
}

/// Prints the matrices; any failing path fails the command.
pub async fn run(controllers: &Controllers, out: &mut Out, args: ProbeArgs) -> Result<(), Failure> {
    let ProbeArgs { network, count } = args;
    let resp = call(controllers, |mut c| {
        let req = pb::ProbeRequest {
            network: network.clone(),
            count,
        };
        async move { c.probe(req).await }
    })
    .await?;
    let failing = print(out, &resp)?;
    if !failing.is_empty() {
        return Err(Failure::Message(format!(
            "probe found {} failing path(s): {}",
            failing.len(),
            failing.join("; ")
        )));
    }
    Ok(())
}

/// "IPv6, " for a result over IPv6, "" for IPv4 (the common case reads as before).
fn family(r: &pb::ProbeResult) -> &'static str {
    if r.ipv6 { "IPv6, " } else { "" }
}

/// Prints the probe matrices (one per packet size: rows send, columns answer); returns one
/// line per failing path.
fn print(out: &mut Out, m: &pb::ProbeMatrix) -> io::Result<Vec<String>> {
    let mut failing: Vec<String> = m
        .results
        .iter()
        .filter(|r| r.received < r.sent || r.sent == 0 || !r.error.is_empty())
        .map(|r| {
            let why = if r.error.is_empty() {
                format!("{}/{} lost", r.sent - r.received, r.sent)
            } else {
                r.error.clone()
            };
            format!("{} -> {} ({}{} bytes): {why}", r.from, r.to, family(r), r.size)
        })
        .collect();
    failing.extend(m.silent.iter().map(|h| format!("{h}: agent did not report")));
    if out.json() {
        let results: Vec<Value> = m
            .results
            .iter()
            .map(|r| {
                json!({"from": r.from, "to": r.to, "family": if r.ipv6 { 6 } else { 4 },
                       "size": r.size, "sent": r.sent, "received": r.received,
                       "rtt_us": r.rtt_us, "error": r.error})
            })
            .collect();
        out.print_json(
            &json!({"network": m.network, "hosts": m.hosts, "results": results,
                           "silent": m.silent, "ok": failing.is_empty(), "failing": failing}),
        )?;
        return Ok(failing);
    }
    // IPv4 first, then a dual-stack network's IPv6; by size within each.
    let mut sizes: Vec<(bool, u32)> = m.results.iter().map(|r| (r.ipv6, r.size)).collect();
    sizes.sort();
    sizes.dedup();
    for (ipv6, size) in sizes {
        let label = if ipv6 { "IPv6, " } else { "" };
        writeln!(out, "{label}{size} bytes (rows ping columns):")?;
        let mut header = vec!["FROM \\ TO"];
        header.extend(m.hosts.iter().map(String::as_str));
        let rows =
            m.hosts
                .iter()
                .map(|from| {
                    let mut row = vec![from.clone()];
                    for to in &m.hosts {
                        let cell =
                            if from == to {
                                "-".to_string()
                            } else {
                                match m.results.iter().find(|r| {
                                    &r.from == from && &r.to == to && r.size == size && r.ipv6 == ipv6
                                }) {
                                    None => "?".to_string(),
                                    Some(r) if !r.error.is_empty() => "ERROR".to_string(),
                                    Some(r) if r.received == r.sent && r.sent > 0 => {
                                        format!("ok {:.2}ms", r.rtt_us as f64 / 1000.0)
                                    }
                                    Some(r) => format!("FAIL {}/{}", r.received, r.sent),
                                }
                            };
                        row.push(cell);
                    }
                    row
                })
                .collect();
        table(out, &header, rows)?;
        writeln!(out)?;
    }
    for h in &m.silent {
        writeln!(out, "{h}: agent did not report")?;
    }
    Ok(failing)
}
