//! `overlay-bench`: overlay measured against real peers on the same machine in the same run.
//! `overlay-bench all` runs every measure and writes docs/benchmarks.md (+ .svg); a single
//! measure (`p1` ... `p8`) updates its result and the page. Run as root, with release builds.

mod common;
mod p1_attach;
mod p2_throughput;
mod p3_convergence;
mod p4_writes;
mod p5_fanout;
mod p6_programming;
mod p7_tls;
mod p8_dns;
mod peers;
mod report;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "overlay-bench",
    about = "overlay benchmarks against real peers (run as root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every measure, then the report.
    All {
        /// Fewer repetitions and smaller scales, for a quick look.
        #[arg(long)]
        quick: bool,
    },
    /// P1: attach latency vs the CNI bridge plugin and netavark.
    P1 {
        #[arg(long, default_value_t = 100)]
        attaches: usize,
    },
    /// P2: iperf3 over our vxlan vs a hand-built flannel-style vxlan vs plain routing.
    P2 {
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Also measure the overlay path with its firewall taken apart chain by chain
        /// (the agents are stopped for it): where the filtering cost is.
        #[arg(long)]
        ablate: bool,
    },
    /// P2 over an IPv6-only underlay: our vxlan vs the hand-built one with IPv6 VTEPs.
    P2v6 {
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// P3: convergence with N hosts running agents (a new host joins; a change is pushed).
    P3 {
        /// Host counts, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "10,25,50")]
        hosts: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        joins: usize,
        #[arg(long, default_value_t = 5)]
        changes: usize,
    },
    /// P4: controller write throughput vs a 3-member etcd cluster.
    P4 {
        #[arg(long, default_value_t = 5000)]
        ops: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// P5: a change fanned out to N Watch streams over a state with M endpoints.
    P5 {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 10000)]
        endpoints: usize,
        #[arg(long, default_value_t = 5)]
        changes: usize,
    },
    /// P6: agent programming N remote hosts vs iproute2 batch.
    P6 {
        #[arg(long, default_value_t = 1000)]
        hosts: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// P7: the cost of mutual TLS (new connections, write throughput) vs plaintext.
    P7 {
        #[arg(long, default_value_t = 200)]
        connects: usize,
        #[arg(long, default_value_t = 5000)]
        ops: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// P8: DNS queries/s and latency, the agent's DNS server vs dnsmasq (dnsperf).
    P8 {
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 1000)]
        names: usize,
    },
    /// Re-render docs/benchmarks.md from the saved results.
    Report,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        nix_is_root(),
        "run as root: the benchmarks build network namespaces"
    );
    match cli.command {
        Cmd::All { quick } => {
            peers::ensure()?;
            let rounds = if quick { 3 } else { 5 };
            report::save(&p1_attach::run(if quick { 30 } else { 100 })?)?;
            report::save(&p2_throughput::run(if quick { 2 } else { 5 }, 3, false)?)?;
            report::save(&p2_throughput::run_ipv6(if quick { 2 } else { 5 }, 3)?)?;
            report::save(&p3_convergence::run(&[10, 25, 50], 3, rounds)?)?;
            report::save(&p4_writes::run(if quick { 1000 } else { 5000 }, 64, 3)?)?;
            report::save(&p5_fanout::run(1000, if quick { 2000 } else { 10_000 }, rounds)?)?;
            report::save(&p6_programming::run(1000, rounds)?)?;
            report::save(&p7_tls::run(200, if quick { 1000 } else { 5000 }, 64, 3)?)?;
            report::save(&p8_dns::run(if quick { 3 } else { 10 }, 3, 1000)?)?;
        }
        Cmd::P1 { attaches } => {
            peers::ensure()?;
            report::save(&p1_attach::run(attaches)?)?
        }
        Cmd::P2 {
            seconds,
            rounds,
            ablate,
        } => {
            peers::ensure()?;
            report::save(&p2_throughput::run(seconds, rounds, ablate)?)?
        }
        Cmd::P2v6 { seconds, rounds } => {
            peers::ensure()?;
            report::save(&p2_throughput::run_ipv6(seconds, rounds)?)?
        }
        Cmd::P3 {
            hosts,
            joins,
            changes,
        } => report::save(&p3_convergence::run(&hosts, joins, changes)?)?,
        Cmd::P4 { ops, clients, runs } => {
            peers::ensure()?;
            report::save(&p4_writes::run(ops, clients, runs)?)?
        }
        Cmd::P5 {
            agents,
            endpoints,
            changes,
        } => report::save(&p5_fanout::run(agents, endpoints, changes)?)?,
        Cmd::P6 { hosts, rounds } => report::save(&p6_programming::run(hosts, rounds)?)?,
        Cmd::P7 {
            connects,
            ops,
            clients,
            runs,
        } => report::save(&p7_tls::run(connects, ops, clients, runs)?)?,
        Cmd::P8 {
            seconds,
            rounds,
            names,
        } => report::save(&p8_dns::run(seconds, rounds, names)?)?,
        Cmd::Report => {}
    }
    report::write_docs(&repo_root(), &common::machine())?;
    println!("wrote docs/benchmarks.md and docs/benchmarks.svg");
    Ok(())
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
