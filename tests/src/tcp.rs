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
