//! Rendering answers: aligned tables for people, JSON for scripts.
//!
//! The JSON shape is overlayctl's own (modes and states as words, addresses as strings), not
//! the protobuf encoding, so scripts do not depend on enum numbers.
//!
//! Everything goes through [`Out`], never `print!`: a write that fails comes back as an
//! `io::Error` for `main` to report in one line, instead of the panic `println!` makes of it.

use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use overlay_proto::v1 as pb;
use overlayctl::certs::Shown;
use overlayctl::cli::Format;
use serde_json::{Value, json};

/// Where answers go, and in which format.
pub struct Out {
    format: Format,
    w: Box<dyn Write>,
}

impl Out {
    /// Standard output, buffered; a reader that goes away early ends the output quietly
    /// (see [`ReaderGone`]).
    pub fn stdout(format: Format) -> Self {
        Self::new(format, io::BufWriter::new(ReaderGone::new(io::stdout())))
    }

    pub fn new(format: Format, w: impl Write + 'static) -> Self {
        Self {
            format,
            w: Box::new(w),
        }
    }

    fn json(&self) -> bool {
        self.format == Format::Json
    }

    fn print_json(&mut self, v: &Value) -> io::Result<()> {
        let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
        writeln!(self.w, "{text}")
    }

    /// Writes out what is still buffered: a full disk shows up here at the latest.
    pub fn finish(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// A writer for which a reader that closed its end (`overlayctl network ls | head -1`) is
/// not an error: like any Unix filter, overlayctl stops writing and says nothing, and the
/// command still exits with its own outcome (a failing `doctor | head -1` still exits 1).
/// Every other error (a full disk, an I/O error) is returned as it is.
pub struct ReaderGone<W> {
    inner: W,
    gone: bool,
}

impl<W> ReaderGone<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, gone: false }
    }
}

impl<W: Write> Write for ReaderGone<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.gone {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(buf.len())
            }
            other => other,
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.gone {
            return Ok(());
        }
        match self.inner.flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.gone = true;
                Ok(())
            }
            other => other,
        }
    }
}

/// Writes rows under a header with columns padded to the widest cell.
fn table(out: &mut Out, header: &[&str], rows: Vec<Vec<String>>) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut Out, cells: Vec<String>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}   "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, header.iter().map(|h| h.to_string()).collect())?;
    for row in rows {
        line(out, row)?;
    }
    Ok(())
}

fn mode(n: &pb::Network) -> &'static str {
    overlay_proto::modes::Mode::from_wire(n.mode).map_or("unspecified", |m| m.name())
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

pub fn cluster_status(out: &mut Out, s: &pb::ClusterStatusResponse) -> io::Result<()> {
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

pub fn hosts(out: &mut Out, hosts: &[pb::Host]) -> io::Result<()> {
    if out.json() {
        return out.print_json(&Value::Array(hosts.iter().map(host_json).collect()));
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
        out,
        &["NAME", "STATE", "UNDERLAY", "VTEP MAC", "ENDPOINTS", "LAST SEEN"],
        rows,
    )?;
    Ok(())
}

pub fn host(out: &mut Out, h: &pb::Host) -> io::Result<()> {
    if out.json() {
        return out.print_json(&host_json(h));
    }
    writeln!(out, "name:        {}", h.name)?;
    writeln!(
        out,
        "state:       {} (last seen {})",
        h.state,
        ago(h.last_seen_unix_ms)
    )?;
    writeln!(
        out,
        "underlay:    {} on {} (MTU {})",
        h.underlay_ip, h.underlay_iface, h.underlay_mtu
    )?;
    writeln!(out, "vtep mac:    {}", h.vtep_mac)?;
    writeln!(out, "endpoints:   {}", h.endpoint_count)?;
    if !h.leases.is_empty() {
        writeln!(out)?;
        let rows = h
            .leases
            .iter()
            .map(|l| vec![l.host.clone(), l.subnet.clone(), l.gateway.clone()])
            .collect();
        table(out, &["NETWORK", "SUBNET", "GATEWAY"], rows)?;
    }
    Ok(())
}

pub fn host_removed(out: &mut Out, name: &str, r: &pb::RemoveHostResponse) -> io::Result<()> {
    if out.json() {
        return out.print_json(
            &json!({"removed": name, "released_leases": r.released_leases, "removed_endpoints": r.removed_endpoints, "revision": r.revision, "agent_connected": r.agent_connected}),
        );
    }
    writeln!(
        out,
        "removed host {name} ({} lease(s) released, {} endpoint(s) removed)",
        r.released_leases, r.removed_endpoints
    )?;
    if r.agent_connected {
        writeln!(
            out,
            "warning: the agent of {name} is still running and will register {name} again unless it is stopped"
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------- networks

fn network_json(n: &pb::Network) -> Value {
    let mut v = json!({
        "name": n.name, "id": n.id, "mode": mode(n), "subnet": n.subnet,
        "host_prefix": n.host_prefix, "vni": (n.vni != 0).then_some(n.vni),
        "mtu": (n.mtu != 0).then_some(n.mtu),
        "effective_mtu": (n.effective_mtu != 0).then_some(n.effective_mtu),
        "mtu_mode": if n.mtu == 0 { "auto" } else { "fixed" }, "nat_egress": n.nat_egress,
        "endpoints": n.endpoint_count, "leases": n.lease_count, "capacity": n.capacity,
        "created_unix_ms": n.created_unix_ms,
    });
    if let Some(m) = &n.macvlan {
        v["macvlan"] =
            json!({"parent": m.parent, "gateway": m.gateway, "ip_range": m.ip_range, "mode": m.mode});
    }
    v
}

/// The MTU the network's devices get, and where it comes from: `1450 (auto)`, `1400 (fixed)`.
fn mtu_cell(n: &pb::Network) -> String {
    match (n.mtu, n.effective_mtu) {
        (0, 0) if mode(n) == "macvlan" => "auto (the parent's)".into(),
        (0, 0) => "auto (no host yet)".into(),
        (0, m) => format!("{m} (auto)"),
        (m, _) => format!("{m} (fixed)"),
    }
}

fn vni_cell(n: &pb::Network) -> String {
    if n.vni == 0 { "-".into() } else { n.vni.to_string() }
}

pub fn networks(out: &mut Out, networks: &[pb::Network]) -> io::Result<()> {
    if out.json() {
        return out.print_json(&Value::Array(networks.iter().map(network_json).collect()));
    }
    let rows = networks
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                mode(n).into(),
                n.subnet.clone(),
                vni_cell(n),
                mtu_cell(n),
                if n.nat_egress { "yes" } else { "no" }.into(),
                n.endpoint_count.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &["NAME", "MODE", "SUBNET", "VNI", "MTU", "NAT", "ENDPOINTS"],
        rows,
    )?;
    Ok(())
}

pub fn network_created(out: &mut Out, n: &pb::Network) -> io::Result<()> {
    if out.json() {
        return out.print_json(&network_json(n));
    }
    match mode(n) {
        "vxlan" => writeln!(
            out,
            "created network {} (vxlan, {}, VNI {})",
            n.name, n.subnet, n.vni
        ),
        m => writeln!(out, "created network {} ({m}, {})", n.name, n.subnet),
    }?;
    Ok(())
}

pub fn network_updated(out: &mut Out, n: &pb::Network) -> io::Result<()> {
    if out.json() {
        return out.print_json(&network_json(n));
    }
    let mtu = mtu_cell(n);
    writeln!(
        out,
        "updated network {} (nat egress {}, mtu {mtu})",
        n.name,
        if n.nat_egress { "on" } else { "off" }
    )?;
    Ok(())
}

pub fn network_detail(out: &mut Out, d: &pb::NetworkDetail) -> io::Result<()> {
    let Some(n) = &d.network else { return Ok(()) };
    if out.json() {
        let mut v = network_json(n);
        v["host_leases"] = Value::Array(
            d.leases
                .iter()
                .map(|l| json!({"host": l.host, "subnet": l.subnet, "gateway": l.gateway}))
                .collect(),
        );
        v["endpoint_list"] = Value::Array(d.endpoints.iter().map(endpoint_json).collect());
        v["revision"] = json!(d.revision);
        return out.print_json(&v);
    }
    writeln!(out, "name:        {} (id {})", n.name, n.id)?;
    writeln!(out, "mode:        {}", mode(n))?;
    writeln!(out, "subnet:      {}", n.subnet)?;
    match mode(n) {
        "macvlan" => {
            if let Some(m) = &n.macvlan {
                writeln!(out, "parent:      {} ({} mode)", m.parent, or_dash(&m.mode))?;
                writeln!(out, "gateway:     {}", m.gateway)?;
                writeln!(out, "ip range:    {}", m.ip_range)?;
            }
        }
        _ => writeln!(out, "host prefix: /{}", n.host_prefix)?,
    }
    if n.vni != 0 {
        writeln!(out, "vni:         {}", n.vni)?;
    }
    writeln!(out, "mtu:         {}", mtu_cell(n))?;
    writeln!(out, "nat egress:  {}", if n.nat_egress { "yes" } else { "no" })?;
    writeln!(out, "endpoints:   {} (capacity {})", n.endpoint_count, n.capacity)?;
    if !d.leases.is_empty() {
        writeln!(out)?;
        let rows = d
            .leases
            .iter()
            .map(|l| vec![l.host.clone(), l.subnet.clone(), l.gateway.clone()])
            .collect();
        table(out, &["HOST", "SUBNET", "GATEWAY"], rows)?;
    }
    if !d.endpoints.is_empty() {
        writeln!(out)?;
        endpoint_table(out, &d.endpoints)?;
    }
    Ok(())
}

pub fn network_removed(out: &mut Out, name: &str, r: &pb::DeleteNetworkResponse) -> io::Result<()> {
    if out.json() {
        return out.print_json(
            &json!({"removed": name, "removed_endpoints": r.removed_endpoints, "revision": r.revision}),
        );
    }
    if r.removed_endpoints > 0 {
        writeln!(
            out,
            "removed network {name} and its {} endpoint(s)",
            r.removed_endpoints
        )?;
    } else {
        writeln!(out, "removed network {name}")?;
    }
    Ok(())
}

// ---------------------------------------------------------------- endpoints

fn endpoint_json(e: &pb::Endpoint) -> Value {
    json!({
        "id": e.id, "network": e.network, "host": e.host, "netns": e.netns, "ifname": e.ifname,
        "address": e.address, "ip": e.address.split('/').next().unwrap_or_default(),
        "mac": e.mac, "gateway": e.gateway, "state": ep_state(e),
        "message": (!e.message.is_empty()).then_some(&e.message),
        "default_route": e.default_route,
        "key": e.key, "owner": e.owner, "names": e.names,
        "ports": e.ports.iter().map(|p| json!({
            "host_port": p.host_port, "container_port": p.container_port,
            "protocol": p.protocol, "host_ip": (!p.host_ip.is_empty()).then_some(&p.host_ip),
        })).collect::<Vec<_>>(),
    })
}

/// `8080:80/tcp, 5353:53/udp` (empty: none).
fn ports_text(e: &pb::Endpoint) -> String {
    e.ports
        .iter()
        .map(|p| {
            let host = if p.host_ip.is_empty() {
                String::new()
            } else {
                format!("{}:", p.host_ip)
            };
            format!("{host}{}:{}/{}", p.host_port, p.container_port, p.protocol)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn endpoint_table(out: &mut Out, eps: &[pb::Endpoint]) -> io::Result<()> {
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
                if e.default_route { "default" } else { "network" }.to_string(),
                ports_text(e),
                state,
            ]
        })
        .collect();
    table(
        out,
        &[
            "NETWORK", "HOST", "NETNS", "IFNAME", "ADDRESS", "MAC", "ROUTE", "PORTS", "STATE",
        ],
        rows,
    )?;
    Ok(())
}

pub fn endpoints(out: &mut Out, eps: &[pb::Endpoint]) -> io::Result<()> {
    if out.json() {
        return out.print_json(&Value::Array(eps.iter().map(endpoint_json).collect()));
    }
    endpoint_table(out, eps)
}

pub fn endpoint_attached(out: &mut Out, e: &pb::Endpoint) -> io::Result<()> {
    if out.json() {
        return out.print_json(&endpoint_json(e));
    }
    if e.address.is_empty() {
        // --no-wait: recorded for the host's agent, which picks the address from its lease.
        writeln!(
            out,
            "requested: host {}'s agent attaches {} to {} and picks the address",
            e.host, e.netns, e.network
        )?;
    } else {
        writeln!(out, "{}", e.address.split('/').next().unwrap_or_default())?;
    }
    Ok(())
}

pub fn endpoint_detached(out: &mut Out, r: &pb::DetachEndpointResponse) -> io::Result<()> {
    let Some(e) = &r.endpoint else { return Ok(()) };
    if out.json() {
        return out.print_json(&endpoint_json(e));
    }
    if e.address.is_empty() {
        writeln!(
            out,
            "withdrew the request for {} on {} in {}",
            e.netns, e.host, e.network
        )?;
    } else {
        writeln!(
            out,
            "detached {} from {} on {} (released {})",
            e.netns, e.network, e.host, e.address
        )?;
    }
    Ok(())
}

/// An agent silent for longer than this (three heartbeats) is reported.
const HEARTBEAT_STALE_MS: i64 = 15_000;

/// Prints the doctor's findings; returns one line per problem (empty: all healthy).
pub fn doctor(out: &mut Out, d: &pb::DoctorResponse) -> io::Result<Vec<String>> {
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
        let gone: Vec<Value> = d.gone_endpoints.iter().map(endpoint_json).collect();
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

/// Prints the probe matrices (one per packet size: rows send, columns answer); returns one
/// line per failing path.
pub fn probe(out: &mut Out, m: &pb::ProbeMatrix) -> io::Result<Vec<String>> {
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
    if out.json() {
        let results: Vec<Value> = m
            .results
            .iter()
            .map(|r| {
                json!({"from": r.from, "to": r.to, "size": r.size, "sent": r.sent,
                       "received": r.received, "rtt_us": r.rtt_us, "error": r.error})
            })
            .collect();
        out.print_json(
            &json!({"network": m.network, "hosts": m.hosts, "results": results,
                           "silent": m.silent, "ok": failing.is_empty(), "failing": failing}),
        )?;
        return Ok(failing);
    }
    let mut sizes: Vec<u32> = m.results.iter().map(|r| r.size).collect();
    sizes.sort();
    sizes.dedup();
    for size in sizes {
        writeln!(out, "{} bytes (rows ping columns):", size)?;
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
        table(out, &header, rows)?;
        writeln!(out)?;
    }
    for h in &m.silent {
        writeln!(out, "{h}: agent did not report")?;
    }
    Ok(failing)
}

pub fn cert_written(out: &mut Out, role: &str, name: &str, cert: &Path, key: &Path) -> io::Result<()> {
    if out.json() {
        return out.print_json(&json!({
            "role": role,
            "name": name,
            "cert": cert.display().to_string(),
            "key": key.display().to_string(),
        }));
    }
    writeln!(
        out,
        "wrote {} and {} ({role} {name:?})",
        cert.display(),
        key.display()
    )?;
    Ok(())
}

pub fn cert_shown(out: &mut Out, s: &Shown) -> io::Result<()> {
    let (role, name) = match &s.identity {
        Some(id) => (id.role.label().to_string(), id.name.clone()),
        None => ("-".to_string(), "-".to_string()),
    };
    if out.json() {
        return out.print_json(&json!({
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
    table(out, &["FIELD", "VALUE"], rows)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every write with `kind`.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(self.0.into())
        }
    }

    #[test]
    fn a_closed_pipe_is_quiet_and_other_errors_come_back() {
        let mut gone = Out::new(Format::Table, ReaderGone::new(Failing(io::ErrorKind::BrokenPipe)));
        hosts(&mut gone, &[pb::Host::default()]).expect("a closed pipe is no error");
        gone.finish().expect("nor at the end");

        let mut full = Out::new(Format::Json, ReaderGone::new(Failing(io::ErrorKind::StorageFull)));
        let err = hosts(&mut full, &[]).expect_err("a full disk is an error");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }
}
