//! Control-plane authorization under mutual TLS (issue 14 item 7), tried the way an attacker
//! holding a certificate of the cluster CA would: a copy of a host's agent certificate on a
//! second machine, an agent registering another machine's underlay address, oversized and
//! unsolicited probe reports, status reports for hosts that do not exist, and Raft traffic
//! from controller certificates that are not (or not that) member. Every attempt must be
//! refused and change nothing; each test prints what it tried and what it measured.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use overlay_lab::bins;
use overlay_lab::controllers::client;
use overlay_lab::lab::{Lab, LabConfig, PingFlow};
use overlay_lab::netns::block_on_in;
use overlay_lab::pki::CertFiles;
use overlay_proto::connect::Controllers;
use overlay_proto::raft::RaftPayload;
use overlay_proto::raft::raft_client::RaftClient;
use overlay_proto::v1 as pb;
use overlay_proto::v1::agent_client::AgentClient;
use serde_json::Value;
use tonic::Code;

/// The line the controller refuses a second claimant with.
const REFUSAL: &str = "is held by another agent";

/// A client of `addrs` presenting `certs`, for use inside a lab namespace.
fn tls_client(addrs: &[String], certs: &CertFiles) -> Controllers {
    client(addrs)
        .expect("client")
        .with_tls(Some(certs.load().expect("certificates").client_config()))
}

/// Resident memory of process `pid`, MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn underlay_of(lab: &Lab, host: &str) -> String {
    lab.ctl_json(&["host", "inspect", host])
        .map(|v| v["underlay_ip"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn host_names(lab: &Lab) -> Vec<String> {
    lab.ctl_json(&["host", "ls"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|h| h["name"].as_str().map(str::to_string))
        .collect()
}

/// Prints and counts refusals; panics on anything accepted.
#[derive(Default)]
struct Refusals(usize);

impl Refusals {
    fn check<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        result: Result<T, tonic::Status>,
        code: Code,
        says: &str,
    ) {
        match result {
            Ok(v) => panic!("{what}: accepted ({v:?})"),
            Err(s) => {
                assert_eq!(s.code(), code, "{what}: {}", s.message());
                assert!(s.message().contains(says), "{what}: {}", s.message());
                let shown: String = s.message().chars().take(240).collect();
                println!("refused  {what}: {:?} {shown}", s.code());
                self.0 += 1;
            }
        }
    }
}

/// TLS lab, one replica, agents on h1 and h2, a third machine for the attacker.
#[test]
fn a_copied_agent_certificate_and_forged_agent_input_change_nothing() {
    let mut lab = Lab::start_secure(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "cb",
        resync_secs: 10,
    })
    .expect("lab");
    lab.start_agents().expect("agents");
    lab.wait_hosts_up(Duration::from_secs(30)).expect("agents up");
    lab.ctl_ok(&[
        "network",
        "create",
        "blue",
        "--mode",
        "vxlan",
        "--subnet",
        "10.81.0.0/16",
    ])
    .expect("network");
    let w1 = lab.add_workload("w1").expect("w1");
    let w2 = lab.add_workload("w2").expect("w2");
    let ip1 = lab.attach("blue", 0, &w1).expect("attach w1");
    lab.attach("blue", 1, &w2).expect("attach w2");
    assert!(
        Lab::wait_until(Duration::from_secs(10), || lab.ping(&w2, ip1)).is_some(),
        "w2 -> w1 over TLS\n{}",
        lab.logs()
    );
    let pki = lab.pki.clone().expect("pki");
    let addrs = lab.controllers.addrs();
    let h1_ip = lab.hosts[0].ip.to_string();
    let mut refused = Refusals::default();

    // 1. h1's certificate copied to a third machine, run there as h1.
    let m3 = lab.add_host().expect("third machine");
    let m3_ip = lab.hosts[m3].ip.to_string();
    let h1_certs = pki
        .issue("agent", "h1", &[])
        .expect("h1's certificate (the existing files)");
    let flow = PingFlow::start(&w2, ip1, 100, Duration::from_secs(10)).expect("ping flow");
    let impostor = lab.spawn_agent_as(m3, "h1", Some(&h1_certs)).expect("impostor");
    let refused_in = Lab::wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(impostor.log_path()).is_ok_and(|l| l.contains(REFUSAL))
    });
    assert!(
        refused_in.is_some(),
        "copied certificate accepted:\n{}",
        impostor.log_tail(30)
    );
    let stats = flow.wait().expect("flow");
    assert_eq!(underlay_of(&lab, "h1"), h1_ip, "h1's underlay flipped");
    assert!(
        stats.sent > 0 && stats.lost() <= 1,
        "h1's traffic was disturbed: {stats:?}"
    );
    let doctor = lab.ctl(&["--output", "json", "doctor"]).expect("doctor");
    let v: Value = serde_json::from_slice(&doctor.stdout).unwrap_or(Value::Null);
    let h1 = v["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["host"] == "h1"))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(
        h1["refused_claims"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["source"] == m3_ip.as_str())),
        "doctor does not show the second h1: {v}"
    );
    println!(
        "refused  h1's certificate on {m3_ip}: refused after {:?}; w2 -> w1 {}/{}; doctor: {}",
        refused_in.unwrap_or_default(),
        stats.received,
        stats.sent,
        v["problems"]
    );
    refused.0 += 1;
    impostor.kill();

    // 2. Probe reports: 12 reports of 8 MiB each, for a probe nobody ordered (once as a
    //    stranger, then with h1's own instance id), must not grow the replica.
    let real_id = lab.hosts[0].instance_id().expect("h1's instance id");
    let pid = lab.controllers.pid(1).expect("replica pid");
    let before = rss_mib(pid);
    let big = pb::ProbeReport {
        id: "p-forged".into(),
        host: "h1".into(),
        results: (0..8)
            .map(|_| pb::ProbeResult {
                from: "h1".into(),
                to: "h2".into(),
                error: "x".repeat(1 << 20),
                ..Default::default()
            })
            .collect(),
        instance_id: real_id.clone(),
    };
    let mb = big.results.iter().map(|r| r.error.len()).sum::<usize>() as f64 / (1 << 20) as f64;
    let (ul, a, certs, report) = (lab.ul.clone(), addrs.clone(), h1_certs.clone(), big.clone());
    let outcomes = block_on_in(&ul, move || async move {
        let c = tls_client(&a, &certs);
        let mut out = Vec::new();
        for i in 0..12 {
            let mut report = report.clone();
            if i == 0 {
                report.instance_id = String::new();
            }
            out.push(
                c.call(|ch| {
                    let r = report.clone();
                    async move {
                        AgentClient::new(ch)
                            .max_encoding_message_size(64 << 20)
                            .report_probe(r)
                            .await
                    }
                })
                .await
                .map(|r| r.into_inner()),
            );
        }
        out
    })
    .expect("in the underlay namespace");
    let after = rss_mib(pid);
    let mut outcomes = outcomes.into_iter();
    if let Some(first) = outcomes.next() {
        refused.check(
            "ReportProbe by a second h1 (no instance id)",
            first,
            Code::FailedPrecondition,
            REFUSAL,
        );
    }
    for (i, o) in outcomes.enumerate() {
        refused.check(
            &format!("ReportProbe #{} of {mb:.1} MiB for a probe never ordered", i + 2),
            o,
            Code::FailedPrecondition,
            "no probe",
        );
    }
    println!("replica RSS around 12 forged {mb:.1} MiB probe reports: {before:.1} MiB -> {after:.1} MiB");
    assert!(
        after - before < 48.0,
        "the replica kept what was refused: {before:.1} -> {after:.1} MiB"
    );
    // Probes that were ordered still report.
    let out = lab.ctl(&["probe", "blue"]).expect("probe");
    assert!(
        out.status.success(),
        "a real probe fails: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 3. ReportStatus for a host that does not exist (its own certificate, CN "ghost")
    //    creates nothing, as a member replica's view of the agents shows.
    let ghost = pki.issue("agent", "ghost", &[]).expect("ghost certificate");
    let c1 = pki
        .issue("controller", "c1", &[])
        .expect("c1's certificate (the existing files)");
    let (ul, a) = (lab.ul.clone(), addrs.clone());
    let (status, seen) = block_on_in(&ul, move || async move {
        let c = tls_client(&a, &ghost);
        let status = c
            .call(|ch| async move {
                AgentClient::new(ch)
                    .report_status(pb::ReportStatusRequest {
                        host_name: "ghost".into(),
                        applied_revision: 7,
                        drift: vec!["y".repeat(1000); 1000],
                        audited_ms: 1,
                        ..Default::default()
                    })
                    .await
            })
            .await
            .map(|r| r.into_inner());
        let member = tls_client(&a, &c1);
        let seen = member
            .call(|ch| async move {
                RaftClient::new(ch)
                    .agents_seen(RaftPayload {
                        data: b"null".to_vec(),
                    })
                    .await
            })
            .await
            .map(|r| serde_json::from_slice::<HashMap<String, Value>>(&r.get_ref().data));
        (status, seen)
    })
    .expect("in the underlay namespace");
    refused.check(
        "ReportStatus for unknown host ghost",
        status,
        Code::NotFound,
        "ghost",
    );
    let seen = seen.expect("AgentsSeen as member 1").expect("decodable");
    assert!(
        !seen.contains_key("ghost"),
        "a record for ghost was created: {:?}",
        seen.keys()
    );
    println!(
        "agents a member replica has records of: {:?}",
        seen.keys().collect::<Vec<_>>()
    );

    // 4. Underlay addresses: an agent may register only one of its certificate's IP names
    //    or the address it connects from; not another machine's (which would lock that
    //    machine out, or point the peers' FDB at the attacker).
    let h3 = pki.issue("agent", "h3", &[]).expect("h3 certificate");
    let h4 = pki.issue("agent", "h4", &["192.0.2.14"]).expect("h4 certificate");
    let h2_ip = lab.hosts[1].ip.to_string();
    let (ul, a, c3, m3ip, h2ip) = (
        lab.ul.clone(),
        addrs.clone(),
        h3.clone(),
        m3_ip.clone(),
        h2_ip.clone(),
    );
    let (taken, lockout, by_san) = block_on_in(&ul, move || async move {
        let c = tls_client(&a, &c3);
        let taken = overlay_lab::api::try_register(&c, "h3", &h2ip).await;
        let lockout = overlay_lab::api::try_register(&c, "h3", &m3ip).await;
        let by_san = overlay_lab::api::try_register(&tls_client(&a, &h4), "h4", "192.0.2.14").await;
        (taken, lockout, by_san)
    })
    .expect("in the underlay namespace");
    refused.check(
        "Register h3 with h2's underlay address",
        taken,
        Code::PermissionDenied,
        "may not register underlay address",
    );
    refused.check(
        "Register h3 with machine 3's address from elsewhere",
        lockout,
        Code::PermissionDenied,
        "nor the address it connects from",
    );
    assert!(!host_names(&lab).contains(&"h3".to_string()), "h3 was registered");
    by_san.expect("an underlay address named in the certificate is accepted");
    let (ns, a) = (lab.hosts[m3].ns.clone(), addrs.clone());
    let m3ip = m3_ip.clone();
    block_on_in(&ns, move || async move {
        overlay_lab::api::try_register(&tls_client(&a, &h3), "h3", &m3ip).await
    })
    .expect("in machine 3's namespace")
    .expect("machine 3 registers its own address");
    assert_eq!(underlay_of(&lab, "h3"), m3_ip);
    assert_eq!(underlay_of(&lab, "h2"), h2_ip);
    println!("accepted h3 from its own address {m3_ip}, h4 by its certificate's IP name 192.0.2.14");
    println!(
        "security: {} attempts refused, state unchanged by each",
        refused.0
    );
}

/// A JSON Raft message as openraft encodes it, sent by `leader` at `term`.
fn append_entries(term: u64, leader: u64) -> Vec<u8> {
    format!(
        r#"{{"vote":{{"leader_id":{{"term":{term},"node_id":{leader}}},"committed":true}},"prev_log_id":null,"entries":[],"leader_commit":null}}"#
    )
    .into_bytes()
}

fn vote(term: u64, candidate: u64) -> Vec<u8> {
    format!(
        r#"{{"vote":{{"leader_id":{{"term":{term},"node_id":{candidate}}},"committed":false}},"last_log_id":null}}"#
    )
    .into_bytes()
}

/// What a forged Raft message could change: the members and their roles, the state; and
/// the term (a vote that got through would have raised it by 10).
#[derive(Debug)]
struct Cluster {
    leader: u64,
    term: u64,
    members: Vec<(u64, String)>,
    networks: Vec<String>,
}

fn cluster(lab: &Lab) -> Cluster {
    let s = lab.ctl_json(&["cluster", "status"]).expect("status");
    let n = lab.ctl_json(&["network", "ls"]).expect("networks");
    Cluster {
        leader: s["leader"].as_u64().unwrap_or(0),
        term: s["term"].as_u64().unwrap_or(0),
        members: s["members"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                (
                    m["id"].as_u64().unwrap_or(0),
                    m["role"].as_str().unwrap_or("").replace("leader", "follower"),
                )
            })
            .collect(),
        networks: n
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n["name"].as_str().map(str::to_string))
            .collect(),
    }
}

/// TLS lab with three replicas in their own namespaces (one address each, so each member's
/// certificate is its own).
#[test]
fn raft_is_heard_only_from_members_speaking_for_themselves() {
    let mut lab = Lab::start_secure(LabConfig {
        hosts: 0,
        controllers: 3,
        tag: "cr",
        resync_secs: 10,
    })
    .expect("lab");
    lab.ctl_ok(&[
        "network",
        "create",
        "keep",
        "--mode",
        "vxlan",
        "--subnet",
        "10.82.0.0/16",
    ])
    .expect("network");
    let pki = lab.pki.clone().expect("pki");
    let before = cluster(&lab);
    println!("cluster before: {before:?}");
    // A controller certificate of the same CA, for the address it calls from.
    let rogue = pki
        .issue("controller", "c9", &["192.0.2.254"])
        .expect("rogue certificate");
    // A member's own certificate (member 2), used by someone else's hands to speak for 1.
    let c2 = pki
        .issue("controller", "c2", &[])
        .expect("c2's certificate (existing files)");
    let leader_addr = lab.controllers.addr(before.leader);
    let mut refused = Refusals::default();

    let ul = lab.ul.clone();
    let (a, r, m) = (leader_addr.clone(), rogue.clone(), c2.clone());
    let term = before.term;
    let results = block_on_in(&ul, move || async move {
        let rogue = tls_client(std::slice::from_ref(&a), &r);
        let member2 = tls_client(std::slice::from_ref(&a), &m);
        let mut out: Vec<(String, Result<RaftPayload, tonic::Status>)> = Vec::new();
        let forward = br#"{"DeleteNetwork":{"name":"keep","force":true}}"#.to_vec();
        let membership = br#"{"Add":{"id":9,"addr":"192.0.2.254:7400"}}"#.to_vec();
        for (what, data) in [
            ("AppendEntries", append_entries(term + 10, 9)),
            ("Vote", vote(term + 10, 9)),
            ("InstallSnapshot", b"{}".to_vec()),
            ("Forward", forward),
            ("ChangeMembership", membership),
            ("ReadIndex", b"null".to_vec()),
            ("AgentsSeen", b"null".to_vec()),
            ("Metrics", b"null".to_vec()),
        ] {
            let result = rogue
                .call(|ch| {
                    let data = data.clone();
                    async move {
                        let mut c = RaftClient::new(ch);
                        let p = RaftPayload { data };
                        match what {
                            "AppendEntries" => c.append_entries(p).await,
                            "Vote" => c.vote(p).await,
                            "InstallSnapshot" => c.install_snapshot(p).await,
                            "Forward" => c.forward(p).await,
                            "ChangeMembership" => c.change_membership(p).await,
                            "ReadIndex" => c.read_index(p).await,
                            "AgentsSeen" => c.agents_seen(p).await,
                            _ => c.metrics(p).await,
                        }
                    }
                })
                .await
                .map(|r| r.into_inner());
            out.push((format!("non-member c9 {what}"), result));
        }
        for (what, data) in [
            ("AppendEntries as member 1", append_entries(term + 10, 1)),
            ("Vote as candidate 1", vote(term + 10, 1)),
        ] {
            let result = member2
                .call(|ch| {
                    let data = data.clone();
                    async move {
                        let mut c = RaftClient::new(ch);
                        let p = RaftPayload { data };
                        if what.starts_with("Vote") {
                            c.vote(p).await
                        } else {
                            c.append_entries(p).await
                        }
                    }
                })
                .await
                .map(|r| r.into_inner());
            out.push((format!("member 2's certificate, {what}"), result));
        }
        // Member 2 speaking for itself is heard; its stale heartbeat is then Raft's to refuse.
        let own = member2
            .call(|ch| async move {
                RaftClient::new(ch)
                    .append_entries(RaftPayload {
                        data: append_entries(0, 2),
                    })
                    .await
            })
            .await
            .map(|r| r.into_inner());
        let info = rogue
            .call(|ch| async move {
                RaftClient::new(ch)
                    .info(overlay_proto::raft::NodeInfoRequest {})
                    .await
            })
            .await
            .map(|r| r.into_inner());
        (out, own, info)
    })
    .expect("in the underlay namespace");
    let (attempts, own, info) = results;
    for (what, result) in attempts {
        let says = if what.starts_with("member 2") {
            "may not speak for member 1"
        } else {
            "is not a member of this cluster"
        };
        refused.check(&what, result, Code::PermissionDenied, says);
    }
    let own = own.expect("member 2's own AppendEntries reaches Raft");
    println!(
        "accepted member 2 speaking for itself (Raft answered {})",
        String::from_utf8_lossy(&own.data)
            .chars()
            .take(120)
            .collect::<String>()
    );
    let info = info.expect("Info answers any controller certificate");
    println!("Info for c9: node {} (id, term and leader only)", info.id);

    // add-member: the replica at the address must answer as that id, over TLS with a
    // certificate naming that address.
    let out = lab
        .ctl(&["cluster", "add-member", "9", &lab.controllers.addr(2)])
        .expect("ctl");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success() && err.contains("is node 2, not 9"), "{err}");
    println!("refused  add-member 9 at member 2's address: {err}");
    refused.0 += 1;
    // A rogue replica at 192.0.2.104 with a certificate of the CA that names another address.
    let ns = lab
        .add_lan_host("c4", "192.0.2.104/24", None)
        .expect("machine c4");
    let c4 = pki
        .issue("controller", "c4", &["192.0.2.199"])
        .expect("c4 certificate");
    let bin = bins::bin("overlay-controller").expect("controller binary");
    let data = lab.dir().join("rogue-c4");
    let mut args: Vec<String> = [
        "--node-id",
        "4",
        "--listen",
        "192.0.2.104:7400",
        "--peers",
        "4=192.0.2.104:7400",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(data.display().to_string());
    args.extend(c4.args());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let rogue_replica = lab
        .spawn_in(&ns, bin.to_str().unwrap_or_default(), &arg_refs, "rogue-c4")
        .expect("rogue replica");
    let t = Instant::now();
    let out = lab
        .ctl(&["cluster", "add-member", "4", "192.0.2.104:7400"])
        .expect("ctl");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        !out.status.success() && err.contains("does not answer"),
        "{err}\n{}",
        rogue_replica.log_tail(20)
    );
    println!(
        "refused  add-member 4 of a replica whose certificate names 192.0.2.199 (after {:?}): {err}",
        t.elapsed()
    );
    refused.0 += 1;
    rogue_replica.kill();

    let after = cluster(&lab);
    assert_eq!(
        (&after.members, &after.networks),
        (&before.members, &before.networks),
        "the cluster changed"
    );
    assert!(
        after.term < before.term + 10,
        "a forged vote raised the term: {after:?}"
    );
    println!("cluster after: {after:?}");
    println!(
        "security: {} Raft attempts refused; members and state unchanged, term {} -> {}",
        refused.0, before.term, after.term
    );
}
