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
    /// Two simulated hosts, each with its own dockerd (Debian docker.io) and agent serving the
    /// Docker plugin: `docker network create` and `docker run` on each, the ping matrix
    /// between the containers, clean up.
    DockerDemo,
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
        Cmd::DockerDemo => {
            let prefixes: Arc<Mutex<Vec<String>>> = Arc::default();
            let registered = prefixes.clone();
            overlay_lab::interrupt::clean_up_on_signal(move || {
                registered.lock().map(|p| p.clone()).unwrap_or_default()
            });
            match docker_demo(&prefixes) {
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

/// The Docker plugin across two engines, as an operator would type it on each host.
fn docker_demo(prefixes: &Mutex<Vec<String>>) -> anyhow::Result<bool> {
    use overlay_lab::docker::{Dockerd, IMAGE};
    overlay_lab::prereq::check().map_err(anyhow::Error::msg)?;
    for (program, package) in [("dockerd", "docker.io"), ("busybox", "busybox-static")] {
        anyhow::ensure!(
            overlay_lab::prereq::on_path(program),
            "{program} not found; install it first: apt-get install {package}"
        );
    }
    let started = Instant::now();
    println!("building the lab: 2 hosts, each with its own mount namespace, agent and dockerd ...");
    let mut lab = Lab::start(LabConfig {
        hosts: 2,
        controllers: 1,
        tag: "dkdemo",
        resync_secs: 10,
    })?;
    if let Ok(mut p) = prefixes.lock() {
        p.push(lab.prefix.clone());
    }
    overlay_lab::docker::start_plugin_hosts(&mut lab)?;
    let create = "network create blue --mode vxlan --subnet 10.40.0.0/16";
    println!("$ overlayctl {create}");
    print!("{}", lab.ctl_ok(&create.split(' ').collect::<Vec<_>>())?);
    let mut engines = Vec::new();
    for h in 0..2 {
        let ns = lab.hosts[h]
            .mount_ns
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no mount namespace"))?;
        engines.push(Dockerd::start(ns, lab.dir(), &format!("dockerd-h{}", h + 1))?);
    }
    let docker = |h: usize, args: &[&str]| -> anyhow::Result<String> {
        let ns = lab.hosts[h]
            .mount_ns
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no mount namespace"))?;
        let out = engines[h].docker(ns, args)?;
        anyhow::ensure!(
            out.status.success(),
            "docker {} on h{}: {}",
            args.join(" "),
            h + 1,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let net: Vec<&str> = "network create --driver overlay-net --ipam-driver overlay-net blue"
        .split(' ')
        .collect();
    let mut containers = Vec::new();
    for h in 0..2 {
        println!("\nh{}$ docker {}", h + 1, net.join(" "));
        // The overlay network reaches the host's agent a moment after it is created.
        let mut made = docker(h, &net);
        for _ in 0..50 {
            if made.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            made = docker(h, &net);
        }
        println!("{}", made?);
        let name = format!("c{}", h + 1);
        let run = [
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "blue",
            IMAGE,
            "sleep",
            "3600",
        ];
        println!("h{}$ docker {}", h + 1, run.join(" "));
        docker(h, &run)?;
        let ip = docker(
            h,
            &[
                "inspect",
                "-f",
                "{{.NetworkSettings.Networks.blue.IPAddress}}",
                &name,
            ],
        )?;
        println!("{name}: {ip}");
        containers.push((h, name, ip));
    }
    println!();
    print!("{}", lab.ctl_ok(&["endpoint", "ls"])?);
    let mut reachable = 0;
    for (h, from, _) in &containers {
        for (_, to, ip) in containers.iter().filter(|(_, to, _)| to != from) {
            let good = docker(*h, &["exec", from, "ping", "-c", "1", "-W", "2", ip]).is_ok();
            reachable += usize::from(good);
            println!("{from} -> {to} ({ip}): {}", if good { "ok" } else { "FAIL" });
        }
    }
    for (h, engine) in engines.iter_mut().enumerate() {
        if let Some(ns) = lab.hosts[h].mount_ns.as_ref() {
            engine.shut_down(ns);
        }
    }
    println!(
        "lab built, checked and about to be removed in {:.1?}",
        started.elapsed()
    );
    drop(lab);
    println!("cleaned up: containers, engines, namespaces and processes removed");
    Ok(reachable == 2)
}
