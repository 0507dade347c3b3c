//! overlayctl's command line, as data: parsed here, run by the binary, and checked against
//! the documentation by tests (every command the docs show must parse). Each noun's own
//! arguments live with the rest of that noun, in [`crate::cmd`].

use clap::{Parser, Subcommand, ValueEnum};
use overlay_proto::tls::TlsArgs;

use crate::cmd::{certs::CertsCmd, cluster::ClusterCmd, endpoint::EndpointCmd, host::HostCmd};
use crate::cmd::{network::NetworkCmd, probe::ProbeArgs};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Parser, Debug)]
#[command(
    name = "overlayctl",
    version,
    about = "Manage overlay networks, hosts and endpoints"
)]
pub struct Cli {
    /// Controller replicas (HOST:PORT, comma-separated); any of them will do.
    #[arg(
        long,
        global = true,
        env = "OVERLAY_CONTROLLER",
        hide_env_values = true,
        default_value = "127.0.0.1:7400"
    )]
    pub controller: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Controller cluster: members, leader, term, commit index, health.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Per host: agent connected, last heartbeat, revision lag, kernel drift. Exits 1 on any
    /// problem.
    Doctor,
    /// Every host of a network pings every other over the overlay, with small and MTU-sized
    /// packets (DF set); prints the loss/RTT matrices. Exits 1 if any pair loses packets.
    Probe(ProbeArgs),
    /// Hosts registered by their agents.
    #[command(subcommand)]
    Host(HostCmd),
    /// Networks: create, list, inspect, update, remove.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Workload endpoints: attach a namespace to a network, detach it, list.
    #[command(subcommand)]
    Endpoint(EndpointCmd),
    /// Make the cluster CA and the certificates of controllers, agents and users for mutual
    /// TLS (works offline; no controller needed).
    #[command(subcommand)]
    Certs(CertsCmd),
}
