//! Handshake and idle timeouts (issue 13, item 10): a connection that does not send the
//! HTTP/2 preface within 10 s is closed, plaintext or TLS; one that sent it but stopped
//! answering (no PING acknowledgement) is dropped by HTTP/2 keepalive; garbage is refused at
//! once. Meanwhile a normal client keeps working. Each prints how long the closing took.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use overlay_lab::controllers::{ControllerCluster, free_port};
use overlay_lab::pki::Pki;
use overlay_proto::connect::Controllers;
use overlay_proto::v1 as pb;
use overlay_proto::v1::overlay_client::OverlayClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Upper bound for an election (generous: a loaded 2-core machine).
const ELECTION: Duration = Duration::from_secs(20);

const SILENT: usize = 250;
const DEAD_AFTER_PREFACE: usize = 20;
const GARBAGE: usize = 10;

/// An empty SETTINGS frame: what a client sends right after the preface.
const SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connects, sends `hello`, then only reads (and never answers) until the server closes the
/// connection; returns how long the connection lived, or `None` if still open after `limit`.
fn hold(addr: String, hello: &'static [u8], limit: Duration) -> JoinHandle<Option<Duration>> {
    tokio::spawn(async move {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        let opened = Instant::now();
        s.write_all(hello).await.expect("send");
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout_at((opened + limit).into(), s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(opened.elapsed()),
                Ok(Ok(_)) => {}
            }
        }
    })
}

/// Waits for every holder: (closed, lifetimes sorted).
async fn lifetimes(holders: Vec<JoinHandle<Option<Duration>>>) -> (usize, Vec<Duration>) {
    let total = holders.len();
    let mut closed: Vec<Duration> = Vec::new();
    for h in holders {
        if let Some(d) = h.await.expect("holder task") {
            closed.push(d);
        }
    }
    closed.sort();
    assert!(closed.len() <= total);
    (closed.len(), closed)
}

fn spread(d: &[Duration]) -> String {
    match (d.first(), d.get(d.len() / 2), d.last()) {
        (Some(a), Some(m), Some(z)) => format!("min {a:.2?}, median {m:.2?}, max {z:.2?}"),
        _ => "none".into(),
    }
}

/// Calls `cluster status` every 200 ms until `stop`; returns (ok, failed).
fn keep_calling(client: Controllers, stop: tokio::sync::watch::Receiver<bool>) -> JoinHandle<(u32, u32)> {
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while !*stop.borrow() {
            let r = client
                .call(|ch| async move {
                    OverlayClient::new(ch)
                        .cluster_status(pb::ClusterStatusRequest {})
                        .await
                })
                .await;
            if r.is_ok() {
                ok += 1
            } else {
                failed += 1
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (ok, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_dead_and_garbage_connections_are_closed_while_clients_work() {
    let cluster = ControllerCluster::start_loopback(1).expect("cluster");
    cluster.wait_leader(1, ELECTION).await.expect("leader");
    let addr = cluster.addr(1);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let calls = keep_calling(cluster.client().expect("client"), stop);

    let limit = Duration::from_secs(60);
    let started = Instant::now();
    let silent: Vec<_> = (0..SILENT).map(|_| hold(addr.clone(), b"", limit)).collect();
    let partial: Vec<_> = (0..GARBAGE)
        .map(|_| hold(addr.clone(), &PREFACE[..10], limit))
        .collect();
    let garbage: Vec<_> = (0..GARBAGE)
        .map(|_| hold(addr.clone(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", limit))
        .collect();
    // A full preface and SETTINGS, then silence: a peer that died after connecting. Only
    // keepalive (an unanswered PING) can tell.
    let preface_then_dead: Vec<_> = (0..DEAD_AFTER_PREFACE)
        .map(|_| {
            let hello: &'static [u8] = Box::leak([PREFACE, SETTINGS].concat().into_boxed_slice());
            hold(addr.clone(), hello, limit)
        })
        .collect();

    let (garbage_closed, garbage_t) = lifetimes(garbage).await;
    let (silent_closed, silent_t) = lifetimes(silent).await;
    let (partial_closed, partial_t) = lifetimes(partial).await;
    let (dead_closed, dead_t) = lifetimes(preface_then_dead).await;
    let _ = stop_tx.send(true);
    let (ok, failed) = calls.await.expect("caller");
    println!(
        "{SILENT} silent connections: {silent_closed} closed ({}); {GARBAGE} with half a \
         preface: {partial_closed} closed ({}); {GARBAGE} speaking HTTP/1.1: {garbage_closed} \
         closed ({}); {DEAD_AFTER_PREFACE} dead after the preface: {dead_closed} closed ({}); \
         a normal client meanwhile: {ok} calls ok, {failed} failed; {:.1?} in all",
        spread(&silent_t),
        spread(&partial_t),
        spread(&garbage_t),
        spread(&dead_t),
        started.elapsed()
    );
    assert_eq!(
        silent_closed, SILENT,
        "silent connections still open after {limit:?}"
    );
    assert_eq!(
        partial_closed, GARBAGE,
        "half-preface connections still open after {limit:?}"
    );
    assert_eq!(
        garbage_closed, GARBAGE,
        "HTTP/1.1 connections still open after {limit:?}"
    );
    assert_eq!(
        dead_closed, DEAD_AFTER_PREFACE,
        "dead peers still held after {limit:?}"
    );
    assert!(
        ok > 0 && failed == 0,
        "the normal client failed {failed} of {} calls",
        ok + failed
    );
    // A new client after all that still gets in.
    let fresh = cluster.client().expect("client");
    fresh
        .call(|ch| async move {
            OverlayClient::new(ch)
                .cluster_status(pb::ClusterStatusRequest {})
                .await
        })
        .await
        .expect("a fresh client is served");
}

/// TLS: a client that completes the handshake (with a valid certificate) and then sends
/// nothing is closed too; tonic's TLS handshake timeout alone did not cover it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_never_sends_the_preface_is_closed() {
    const CLIENTS: usize = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::create(&dir.path().join("pki")).expect("CA");
    let addr = format!("127.0.0.1:{}", free_port().expect("port"));
    let mut cluster = ControllerCluster::new(vec![(addr.clone(), None)], dir.path()).expect("cluster");
    let files = pki.issue("controller", "c1", &["127.0.0.1"]).expect("cert");
    cluster.set_replica_tls(1, &files).expect("tls");
    let admin = pki.issue("admin", "alice", &[]).expect("admin cert");
    cluster.set_client_tls(Some(admin.load().expect("admin").client_config()));
    cluster.start_all().expect("start");
    cluster.wait_leader(1, ELECTION).await.expect("leader");

    // openssl completes TLS with the admin certificate, then waits on a stdin that never
    // speaks; it exits when the server closes the connection.
    let started = Instant::now();
    let mut clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            Command::new("openssl")
                .args(["s_client", "-quiet", "-connect", &addr])
                .arg("-CAfile")
                .arg(&admin.ca)
                .arg("-cert")
                .arg(&admin.cert)
                .arg("-key")
                .arg(&admin.key)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("openssl s_client")
        })
        .collect();
    let client = cluster.client().expect("client");
    let mut closed = Vec::new();
    let (mut served, mut failed) = (0, 0);
    // On past the deadline: the client's own connection, in use, must not be closed with them.
    while (closed.len() < CLIENTS || started.elapsed() < Duration::from_secs(15))
        && started.elapsed() < Duration::from_secs(60)
    {
        let mut open = Vec::new();
        for mut c in clients.drain(..) {
            if let Ok(Some(_)) = c.try_wait() {
                closed.push(started.elapsed());
                // The server's HTTP/2 SETTINGS came through: TLS was complete, not stuck.
                let mut got = Vec::new();
                let _ = std::io::Read::read_to_end(&mut c.stdout.take().expect("stdout"), &mut got);
                assert!(!got.is_empty(), "a client's TLS handshake did not complete");
            } else {
                open.push(c);
            }
        }
        clients = open;
        if client
            .call(|ch| async move {
                OverlayClient::new(ch)
                    .cluster_status(pb::ClusterStatusRequest {})
                    .await
            })
            .await
            .is_ok()
        {
            served += 1;
        } else {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in clients.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    closed.sort();
    println!(
        "{CLIENTS} TLS clients silent after the handshake: {} closed ({}); a TLS client \
         meanwhile: {served} calls ok, {failed} failed",
        closed.len(),
        spread(&closed)
    );
    assert_eq!(
        closed.len(),
        CLIENTS,
        "TLS clients without a preface still open after 60 s"
    );
    assert!(served > 0 && failed == 0, "{failed} calls failed");
}
