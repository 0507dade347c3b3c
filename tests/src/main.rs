//! `overlay-lab`: the demo (3 simulated hosts, a vxlan network, 2 workloads per host, an
//! all-pairs ping matrix, then cleanup), all on mutual TLS with certificates made by
//! `overlayctl certs`, and small helpers the lab runs inside namespaces.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use overlay_lab::lab::{Lab, LabConfig};

#[derive(Parser)]
#[command(
    name = "overlay-lab",
    about = "overlay's multi-host network-namespace lab (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a lab on mutual TLS, create a vxlan network, attach workloads, print the ping
    /// matrix, show a plaintext client refused, clean up.
    Demo {
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        #[arg(long, default_value_t = 2)]
        workloads_per_host: usize,
        /// Controller replicas (1 or 3).
        #[arg(long, default_value_t = 3)]
        controllers: usize,
    },
    /// TCP echo server (used inside workload namespaces).
    TcpServe { addr: SocketAddr },
    /// TCP echo check against a tcp-serve (used inside workload namespaces).
    TcpCheck {
        addr: SocketAddr,
        #[arg(long, default_value_t = 100_000)]
        bytes: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Demo {
            hosts,
            workloads_per_host,
            controllers,
        } => {
            let prefixes: Arc<Mutex<Vec<String>>> = Arc::default();
            let registered = prefixes.clone();
            overlay_lab::interrupt::clean_up_on_signal(move || {
                registered.lock().map(|p| p.clone()).unwrap_or_default()
            });
            match demo(hosts, workloads_per_host, controllers, &prefixes) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("overlay-lab: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::TcpServe { addr } => match overlay_lab::tcp::serve(addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tcp-serve: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::TcpCheck { addr, bytes } => match overlay_lab::tcp::check(addr, bytes) {
            Ok(()) => {
                println!("ok: {bytes} bytes echoed by {addr}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tcp-check: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn demo(
    hosts: usize,
    per_host: usize,
    controllers: usize,
    prefixes: &Mutex<Vec<String>>,
) -> anyhow::Result<bool> {
    overlay_lab::prereq::check().map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    println!(
        "building the lab: {hosts} hosts, {controllers} controller replica(s) on an underlay bridge, mutual TLS ..."
    );
    let mut lab = Lab::start_secure(LabConfig {
        hosts,
        controllers,
        tag: "demo",
        ..Default::default()
    })?;
    if let Ok(mut p) = prefixes.lock() {
        p.push(lab.prefix.clone());
    }
    lab.start_agents()?;
    lab.wait_hosts_up(Duration::from_secs(30))?;
    if let Some(pki) = &lab.pki {
        let issued = pki.issued()?;
        println!(
            "mutual TLS: a CA and {} certificates made with `overlayctl certs` ({})\n",
            issued.len(),
            issued.join(", ")
        );
    }
    print!("{}", lab.ctl_ok(&["cluster", "status"])?);
    println!();
    print!(
        "{}",
        lab.ctl_ok(&[
            "network",
            "create",
            "demo",
            "--mode",
            "vxlan",
            "--subnet",
            "10.10.0.0/16"
        ])?
    );

    let mut workloads: Vec<(String, Ipv4Addr)> = Vec::new();
    for h in 0..hosts {
        for w in 1..=per_host {
            let ns = lab.add_workload(&format!("h{}w{w}", h + 1))?;
            let ip = lab.attach("demo", h, &ns)?;
            workloads.push((ns, ip));
        }
    }
    println!();
    print!("{}", lab.ctl_ok(&["endpoint", "ls"])?);
    println!();

    let short = |ns: &str| ns.rsplit('-').next().unwrap_or(ns).to_string();
    let mut ok = 0;
    let mut total = 0;
    print!("{:<8}", "ping");
    for (ns, _) in &workloads {
        print!("{:>7}", short(ns));
    }
    println!();
    for (from, _) in &workloads {
        print!("{:<8}", short(from));
        for (to, ip) in &workloads {
            if from == to {
                print!("{:>7}", "-");
                continue;
            }
            total += 1;
            let good = lab.ping(from, *ip);
            ok += good as usize;
            print!("{:>7}", if good { "ok" } else { "FAIL" });
        }
        println!();
    }
    println!("\n{ok}/{total} ordered pairs reachable");
    // The other side of the default: a client without a certificate gets nothing.
    let plain = lab.ctl_insecure(&["network", "ls"])?;
    let stderr = String::from_utf8_lossy(&plain.stderr);
    let refusal = stderr.trim().trim_start_matches("overlayctl: ");
    let refused = !plain.status.success();
    if refused {
        println!("plaintext overlayctl (--insecure, no certificate) refused: {refusal}");
    } else {
        println!("plaintext overlayctl (--insecure, no certificate) was SERVED: it must not be");
    }
    println!(
        "lab built, checked and about to be removed in {:.1?}",
        started.elapsed()
    );
    drop(lab);
    println!("cleaned up: namespaces and processes removed");
    Ok(ok == total && refused)
}
