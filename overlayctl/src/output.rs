//! Rendering answers: aligned tables for people, JSON for scripts.
//!
//! The JSON shape is overlayctl's own (modes and states as words, addresses as strings), not
//! the protobuf encoding, so scripts do not depend on enum numbers.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use overlay_proto::v1 as pb;
use overlayctl::certs::Shown;
use overlayctl::cli::Format;
use serde_json::{Value, json};

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Prints rows under a header with columns padded to the widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}   "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

fn mode(n: &pb::Network) -> &'static str {
    pb::NetworkMode::try_from(n.mode)
        .unwrap_or(pb::NetworkMode::Unspecified)
        .label()
}

fn ep_state(e: &pb::Endpoint) -> &'static str {
    pb::EndpointState::try_from(e.state)
        .unwrap_or(pb::EndpointState::Unspecified)
        .label()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_string() }
}

fn ago(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "never".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let s = ((now - unix_ms) / 1000).max(0);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

// ---------------------------------------------------------------- cluster

pub fn cluster_status(f: Format, s: &pb::ClusterStatusResponse) {
    if f == Format::Json {
        let members: Vec<Value> = s
            .members
            .iter()
            .map(|m| json!({"id": m.id, "addr": m.addr, "role": m.role, "healthy": m.healthy, "matched_index": m.matched_index}))
            .collect();
        return print_json(&json!({
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
    println!(
        "health: {}   leader: {}   term: {}   commit index: {}   applied: {}   revision: {}",
        s.health, leader, s.term, s.commit_index, s.applied_index, s.revision
    );
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
    table(&["ID", "ADDRESS", "ROLE", "HEALTHY", "MATCHED"], rows);
}

// ---------------------------------------------------------------- hosts

fn host_json(h: &pb::Host) -> Value {
    let leases: Vec<Value> = h
        .leases
        .iter()
        .map(|l| json!({"network": l.host, "subnet": l.subnet, "gateway": l.gateway}))
        .collect();
    json!({
        "name": h.name, "underlay_ip": h.underlay_ip, "underlay_iface": h.underlay_iface,
        "underlay_mtu": h.underlay_mtu, "vtep_mac": h.vtep_mac, "state": h.state,
        "registered_unix_ms": h.registered_unix_ms, "last_seen_unix_ms": h.last_seen_unix_ms,
        "endpoints": h.endpoint_count, "leases": leases,
    })
}

pub fn hosts(f: Format, hosts: &[pb::Host]) {
    if f == Format::Json {
        return print_json(&Value::Array(hosts.iter().map(host_json).collect()));
    }
    let rows = hosts
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.state.clone(),
                h.underlay_ip.clone(),
                h.vtep_mac.clone(),
                h.endpoint_count.to_string(),
                ago(h.last_seen_unix_ms),
            ]
        })
        .collect();
    table(
        &["NAME", "STATE", "UNDERLAY", "VTEP MAC", "ENDPOINTS", "LAST SEEN"],
        rows,
    );
}

pub fn host(f: Format, h: &pb::Host) {
    if f == Format::Json {
        return print_json(&host_json(h));
    }
    println!("name:        {}", h.name);
    println!(
        "state:       {} (last seen {})",
        h.state,
        ago(h.last_seen_unix_ms)
    );
    println!(
        "underlay:    {} on {} (MTU {})",
        h.underlay_ip, h.underlay_iface, h.underlay_mtu
    );
    println!("vtep mac:    {}", h.vtep_mac);
    println!("endpoints:   {}", h.endpoint_count);
    if !h.leases.is_empty() {
        println!();
        let rows = h
            .leases
            .iter()
            .map(|l| vec![l.host.clone(), l.subnet.clone(), l.gateway.clone()])
            .collect();
        table(&["NETWORK", "SUBNET", "GATEWAY"], rows);
    }
}

pub fn host_removed(f: Format, name: &str, r: &pb::RemoveHostResponse) {
    if f == Format::Json {
        return print_json(
            &json!({"removed": name, "released_leases": r.released_leases, "removed_endpoints": r.removed_endpoints, "revision": r.revision, "agent_connected": r.agent_connected}),
        );
    }
    println!(
        "removed host {name} ({} lease(s) released, {} endpoint(s) removed)",
        r.released_leases, r.removed_endpoints
    );
    if r.agent_connected {
        println!(
            "warning: the agent of {name} is still running and will register {name} again unless it is stopped"
        );
    }
}

// ---------------------------------------------------------------- networks

fn network_json(n: &pb::Network) -> Value {
    let mut v = json!({
        "name": n.name, "id": n.id, "mode": mode(n), "subnet": n.subnet,
        "host_prefix": n.host_prefix, "vni": (n.vni != 0).then_some(n.vni),
        "mtu": (n.mtu != 0).then_some(n.mtu), "nat_egress": n.nat_egress,
        "endpoints": n.endpoint_count, "leases": n.lease_count, "capacity": n.capacity,
        "created_unix_ms": n.created_unix_ms,
    });
    if let Some(m) = &n.macvlan {
        v["macvlan"] =
            json!({"parent": m.parent, "gateway": m.gateway, "ip_range": m.ip_range, "mode": m.mode});
    }
    v
}

fn vni_cell(n: &pb::Network) -> String {
    if n.vni == 0 { "-".into() } else { n.vni.to_string() }
}

pub fn networks(f: Format, networks: &[pb::Network]) {
    if f == Format::Json {
        return print_json(&Value::Array(networks.iter().map(network_json).collect()));
    }
    let rows = networks
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                mode(n).into(),
                n.subnet.clone(),
                vni_cell(n),
                if n.mtu == 0 {
                    "auto".into()
                } else {
                    n.mtu.to_string()
                },
                if n.nat_egress { "yes" } else { "no" }.into(),
                n.endpoint_count.to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", "MODE", "SUBNET", "VNI", "MTU", "NAT", "ENDPOINTS"],
        rows,
    );
}

pub fn network_created(f: Format, n: &pb::Network) {
    if f == Format::Json {
        return print_json(&network_json(n));
    }
    match mode(n) {
        "vxlan" => println!("created network {} (vxlan, {}, VNI {})", n.name, n.subnet, n.vni),
        m => println!("created network {} ({m}, {})", n.name, n.subnet),
    }
}

pub fn network_updated(f: Format, n: &pb::Network) {
    if f == Format::Json {
        return print_json(&network_json(n));
    }
    let mtu = if n.mtu == 0 {
        "auto".to_string()
    } else {
        n.mtu.to_string()
    };
    println!(
        "updated network {} (nat egress {}, mtu {mtu})",
        n.name,
        if n.nat_egress { "on" } else { "off" }
    );
}

pub fn network_detail(f: Format, d: &pb::NetworkDetail) {
    let Some(n) = &d.network else { return };
    if f == Format::Json {
        let mut v = network_json(n);
        v["host_leases"] = Value::Array(
            d.leases
                .iter()
                .map(|l| json!({"host": l.host, "subnet": l.subnet, "gateway": l.gateway}))
                .collect(),
        );
        v["endpoint_list"] = Value::Array(d.endpoints.iter().map(endpoint_json).collect());
        v["revision"] = json!(d.revision);
        return print_json(&v);
    }
    println!("name:        {} (id {})", n.name, n.id);
    println!("mode:        {}", mode(n));
    println!("subnet:      {}", n.subnet);
    match mode(n) {
        "macvlan" => {
            if let Some(m) = &n.macvlan {
                println!("parent:      {} ({} mode)", m.parent, or_dash(&m.mode));
                println!("gateway:     {}", m.gateway);
                println!("ip range:    {}", m.ip_range);
            }
        }
        _ => println!("host prefix: /{}", n.host_prefix),
    }
    if n.vni != 0 {
        println!("vni:         {}", n.vni);
    }
    println!(
        "mtu:         {}",
        if n.mtu == 0 {
            "auto".into()
        } else {
            n.mtu.to_string()
        }
    );
    println!("nat egress:  {}", if n.nat_egress { "yes" } else { "no" });
    println!("endpoints:   {} (capacity {})", n.endpoint_count, n.capacity);
    if !d.leases.is_empty() {
        println!();
        let rows = d
            .leases
            .iter()
            .map(|l| vec![l.host.clone(), l.subnet.clone(), l.gateway.clone()])
            .collect();
        table(&["HOST", "SUBNET", "GATEWAY"], rows);
    }
    if !d.endpoints.is_empty() {
        println!();
        endpoint_table(&d.endpoints);
    }
}

pub fn network_removed(f: Format, name: &str, r: &pb::DeleteNetworkResponse) {
    if f == Format::Json {
        return print_json(
            &json!({"removed": name, "removed_endpoints": r.removed_endpoints, "revision": r.revision}),
        );
    }
    if r.removed_endpoints > 0 {
        println!(
            "removed network {name} and its {} endpoint(s)",
            r.removed_endpoints
        );
    } else {
        println!("removed network {name}");
    }
}

// ---------------------------------------------------------------- endpoints

fn endpoint_json(e: &pb::Endpoint) -> Value {
    json!({
        "id": e.id, "network": e.network, "host": e.host, "netns": e.netns, "ifname": e.ifname,
        "address": e.address, "ip": e.address.split('/').next().unwrap_or_default(),
        "mac": e.mac, "gateway": e.gateway, "state": ep_state(e),
        "message": (!e.message.is_empty()).then_some(&e.message),
    })
}

fn endpoint_table(eps: &[pb::Endpoint]) {
    let rows = eps
        .iter()
        .map(|e| {
            let state = if e.message.is_empty() {
                ep_state(e).to_string()
            } else {
                format!("{}: {}", ep_state(e), e.message)
            };
            vec![
                e.network.clone(),
                e.host.clone(),
                e.netns.clone(),
                e.ifname.clone(),
                e.address.clone(),
                e.mac.clone(),
                state,
            ]
        })
        .collect();
    table(
        &["NETWORK", "HOST", "NETNS", "IFNAME", "ADDRESS", "MAC", "STATE"],
        rows,
    );
}

pub fn endpoints(f: Format, eps: &[pb::Endpoint]) {
    if f == Format::Json {
        return print_json(&Value::Array(eps.iter().map(endpoint_json).collect()));
    }
    endpoint_table(eps);
}

pub fn endpoint_attached(f: Format, e: &pb::Endpoint) {
    if f == Format::Json {
        return print_json(&endpoint_json(e));
    }
    println!("{}", e.address.split('/').next().unwrap_or_default());
}

pub fn endpoint_detached(f: Format, r: &pb::DetachEndpointResponse) {
    let Some(e) = &r.endpoint else { return };
    if f == Format::Json {
        return print_json(&endpoint_json(e));
    }
    println!(
        "detached {} from {} on {} (released {})",
        e.netns, e.network, e.host, e.address
    );
}

/// An agent silent for longer than this (three heartbeats) is reported.
const HEARTBEAT_STALE_MS: i64 = 15_000;

/// Prints the doctor's findings; returns one line per problem (empty: all healthy).
pub fn doctor(f: Format, d: &pb::DoctorResponse) -> Vec<String> {
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
    if f == Format::Json {
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
        print_json(&json!({"healthy": problems.is_empty(), "hosts": hosts, "problems": problems}));
        return problems;
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
    );
    for h in d.hosts.iter().filter(|h| !h.drift.is_empty()) {
        let found = age(h.audited_ms)
            .map(|a| format!(" (found {}s ago)", a / 1000))
            .unwrap_or_default();
        println!("\n{}{found}:", h.host);
        for item in &h.drift {
            println!("  {item}");
        }
    }
    for h in d.hosts.iter().filter(|h| !h.refused_claims.is_empty()) {
        println!(
            "\n{}: held by agent {}; other agents asked for this host name and were refused:",
            h.host, h.instance
        );
        for c in &h.refused_claims {
            println!("  {}", refused_claim(c, d.now_ms));
        }
    }
    problems
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

/// Prints the probe matrices (one per packet size: rows send, columns answer); returns one
/// line per failing path.
pub fn probe(f: Format, m: &pb::ProbeMatrix) -> Vec<String> {
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
            format!("{} -> {} ({} bytes): {why}", r.from, r.to, r.size)
        })
        .collect();
    failing.extend(m.silent.iter().map(|h| format!("{h}: agent did not report")));
    if f == Format::Json {
        let results: Vec<Value> = m
            .results
            .iter()
            .map(|r| {
                json!({"from": r.from, "to": r.to, "size": r.size, "sent": r.sent,
                       "received": r.received, "rtt_us": r.rtt_us, "error": r.error})
            })
            .collect();
        print_json(
            &json!({"network": m.network, "hosts": m.hosts, "results": results,
                           "silent": m.silent, "ok": failing.is_empty(), "failing": failing}),
        );
        return failing;
    }
    let mut sizes: Vec<u32> = m.results.iter().map(|r| r.size).collect();
    sizes.sort();
    sizes.dedup();
    for size in sizes {
        println!("{} bytes (rows ping columns):", size);
        let mut header = vec!["FROM \\ TO"];
        header.extend(m.hosts.iter().map(String::as_str));
        let rows = m
            .hosts
            .iter()
            .map(|from| {
                let mut row = vec![from.clone()];
                for to in &m.hosts {
                    let cell = if from == to {
                        "-".to_string()
                    } else {
                        match m
                            .results
                            .iter()
                            .find(|r| &r.from == from && &r.to == to && r.size == size)
                        {
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
        table(&header, rows);
        println!();
    }
    for h in &m.silent {
        println!("{h}: agent did not report");
    }
    failing
}

pub fn cert_written(f: Format, role: &str, name: &str, cert: &Path, key: &Path) {
    if f == Format::Json {
        return print_json(&json!({
            "role": role,
            "name": name,
            "cert": cert.display().to_string(),
            "key": key.display().to_string(),
        }));
    }
    println!("wrote {} and {} ({role} {name:?})", cert.display(), key.display());
}

pub fn cert_shown(f: Format, s: &Shown) {
    let (role, name) = match &s.identity {
        Some(id) => (id.role.label().to_string(), id.name.clone()),
        None => ("-".to_string(), "-".to_string()),
    };
    if f == Format::Json {
        return print_json(&json!({
            "role": s.identity.as_ref().map(|i| i.role.label()),
            "name": s.identity.as_ref().map(|i| i.name.clone()),
            "subject": s.subject,
            "issuer": s.issuer,
            "sans": s.sans,
            "not_after": s.not_after,
        }));
    }
    let rows = vec![
        vec!["role".to_string(), role],
        vec!["name".to_string(), name],
        vec!["subject".to_string(), s.subject.clone()],
        vec!["issuer".to_string(), s.issuer.clone()],
        vec!["addresses".to_string(), or_dash(&s.sans.join(", "))],
        vec!["expires".to_string(), s.not_after.clone()],
    ];
    table(&["FIELD", "VALUE"], rows);
}
