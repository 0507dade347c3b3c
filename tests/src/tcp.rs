//! A tiny TCP echo server and client, so the lab can prove TCP across hosts without extra
//! packages: `overlay-lab tcp-serve ADDR` runs inside one workload namespace,
//! `overlay-lab tcp-check ADDR` inside another.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Accepts connections forever and echoes what each sends.
pub fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || stream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

/// Connects, sends `bytes` bytes (bigger than one MTU, so segmentation is exercised) and
/// checks the echo. Returns an error describing what failed.
pub fn check(addr: SocketAddr, bytes: usize) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let payload: Vec<u8> = (0..bytes).map(|i| (i * 31 % 251) as u8).collect();
    s.write_all(&payload).map_err(|e| format!("send: {e}"))?;
    let mut back = vec![0u8; bytes];
    s.read_exact(&mut back).map_err(|e| format!("receive: {e}"))?;
    if back != payload {
        return Err("echo differs from what was sent".into());
    }
    Ok(())
}

/// One TCP connection kept busy from inside a namespace: a 1 KiB echo round trip every 10 ms
/// on the same connection until stopped, so a test can prove that a change to the datapath
/// (a route moving from the tunnel to the underlay) does not break established flows. Short
/// gaps are TCP's to bridge with retransmissions; a reset, a 10 s stall or a wrong echo ends
/// the flow with an error.
pub struct Flow {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    trips: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<u64, String>>>,
}

impl Flow {
    /// Connects from namespace `ns` (a name under /run/netns) to a [`serve`]r at `addr`.
    pub fn start(ns: &str, addr: SocketAddr) -> Result<Self, String> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let path = format!("/run/netns/{ns}");
        let file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let trips = std::sync::Arc::new(AtomicU64::new(0));
        let (stop2, trips2) = (stop.clone(), trips.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || -> Result<u64, String> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns {path}: {e}"))?;
            let connected = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| format!("connect {addr}: {e}"));
            let _ = ready_tx.send(connected.as_ref().map(|_| ()).map_err(Clone::clone));
            let mut s = connected?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let mut back = [0u8; 1024];
            let mut n: u64 = 0;
            while !stop2.load(Ordering::Relaxed) {
                let payload = [(n % 251) as u8; 1024];
                s.write_all(&payload)
                    .map_err(|e| format!("send after {n} round trips: {e}"))?;
                s.read_exact(&mut back)
                    .map_err(|e| format!("receive after {n} round trips: {e}"))?;
                if back != payload {
                    return Err(format!("echo {n} differs from what was sent"));
                }
                n += 1;
                trips2.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(n)
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Flow {
                stop,
                trips,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("flow thread ended before connecting".into()),
        }
    }

    /// Round trips completed so far.
    pub fn trips(&self) -> u64 {
        self.trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the flow; the number of round trips, or why the connection broke.
    pub fn stop(mut self) -> Result<u64, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "flow thread panicked".to_string())?,
            None => Err("flow already stopped".into()),
        }
    }
}

impl Drop for Flow {
    /// A flow dropped without [`Flow::stop`] (a failed assertion) ends its thread too.
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
