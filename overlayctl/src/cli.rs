//! overlayctl's command line, as data: parsed here, run by the binary, and checked against
//! the documentation by tests (every command the docs show must parse).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use overlay_proto::tls::{Role, TlsArgs};

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
    Probe {
        network: String,
        /// Echoes per pair and size.
        #[arg(long, default_value_t = 3)]
        count: u32,
    },
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

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Create the cluster CA: DIR/ca.pem and DIR/ca-key.pem (keep the key offline).
    Ca {
        /// Directory to write to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate signed by DIR's CA: DIR/ROLE-NAME.pem and DIR/ROLE-NAME-key.pem.
    Issue {
        /// controller (Raft peer and server), agent (its own host only), admin (every call),
        /// reader (read-only calls).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The holder: an agent's host name, a replica's or a person's name.
        #[arg(long)]
        name: String,
        /// Addresses and DNS names the holder is dialled by (controllers): repeat or
        /// comma-separate.
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
        /// Directory holding ca.pem and ca-key.pem, and where the files go.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Show whom a certificate names: role, name, addresses, expiry.
    Show { file: PathBuf },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Controller,
    Agent,
    Admin,
    Reader,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Controller => Role::Controller,
            RoleArg::Agent => Role::Agent,
            RoleArg::Admin => Role::Admin,
            RoleArg::Reader => Role::Reader,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Members, leader, term, commit index and health.
    Status,
    /// Add a controller replica: start it first (same --peers, its own --node-id), then add it.
    /// It catches up as a learner and then votes.
    AddMember {
        /// Its --node-id.
        id: u64,
        /// host:port where the other replicas reach it.
        addr: String,
    },
    /// Remove a controller replica from the cluster (a dead one, or one to retire).
    RemoveMember {
        /// Its --node-id.
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// List hosts.
    Ls,
    /// Show one host with its subnet leases.
    Inspect { name: String },
    /// Remove a host: its leases and endpoints are released and every other host drops its
    /// tunnel entries. Refused while its agent is connected (it would register the host
    /// again): stop the agent first, or give --force.
    Rm {
        name: String,
        /// Remove it although its agent is connected (the agent registers it again unless it
        /// is stopped).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long, value_enum)]
    pub mode: overlay_proto::modes::Mode,
    /// The network's address space, e.g. 10.1.0.0/16 (for macvlan: the LAN subnet).
    #[arg(long)]
    pub subnet: String,
    /// Prefix length of each host's slice (vxlan, nat). Default 24.
    #[arg(long)]
    pub host_prefix: Option<u32>,
    /// VXLAN network identifier (1-16777215). Default: first free from 4096.
    #[arg(long)]
    pub vni: Option<u32>,
    /// Workload MTU. Default: underlay MTU minus the VXLAN overhead (vxlan), underlay MTU (nat),
    /// the parent's (macvlan).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Masquerade traffic leaving the network to the host's underlay address (vxlan).
    #[arg(long)]
    pub nat_egress: bool,
    /// macvlan: parent NIC on every host (a VLAN sub-interface like eth0.50 is created if missing).
    #[arg(long)]
    pub parent: Option<String>,
    /// macvlan: the LAN's router.
    #[arg(long)]
    pub gateway: Option<String>,
    /// macvlan: addresses overlay may hand out (default: the whole subnet).
    #[arg(long)]
    pub ip_range: Option<String>,
    /// macvlan mode.
    #[arg(long, value_parser = ["bridge", "private", "vepa", "passthru"])]
    pub macvlan_mode: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    Ls,
    /// Show a network with its leases and endpoints.
    Inspect { name: String },
    /// Change a live network: NAT egress on or off, MTU.
    Update {
        name: String,
        /// Masquerade traffic leaving the network (vxlan networks).
        #[arg(long, value_name = "true|false")]
        nat_egress: Option<bool>,
        /// Workload MTU, or 0 to derive it from the underlay again.
        #[arg(long)]
        mtu: Option<u32>,
    },
    /// Remove a network. Refused while it has endpoints, unless --force.
    Rm {
        name: String,
        /// Also detach its endpoints.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// Attach a network namespace to a network; prints the address it got.
    Attach {
        network: String,
        /// Host the namespace lives on.
        #[arg(long)]
        host: String,
        /// Namespace: a name under /run/netns, an absolute path to a namespace file (not a
        /// symbolic link), or a workload's pid.
        #[arg(long)]
        netns: String,
        /// Interface name inside the namespace.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Ask for this address instead of the next free one.
        #[arg(long)]
        ip: Option<String>,
        /// Seconds to wait for the host's agent to wire the endpoint.
        #[arg(long, default_value_t = 15)]
        wait: u32,
        /// Only record the request; do not wait for the host's agent to carry it out.
        #[arg(long)]
        no_wait: bool,
        /// Make this network the namespace's default route (taken from the endpoint that has
        /// it). Without it, a namespace's first network is its default route and every other
        /// one is routed by its CIDR.
        #[arg(long)]
        default_route: bool,
        /// A name the endpoint answers to in the network's DNS (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Publish a port: HOSTPORT on the host's underlay address forwards to PORT of the
        /// endpoint, for other hosts and the host itself (repeatable; tcp unless /udp).
        #[arg(long = "publish", short = 'p', value_name = "HOSTPORT:PORT[/tcp|udp]")]
        publish: Vec<overlay_proto::ports::PublishedPort>,
    },
    /// Detach a namespace from a network; its address is released.
    Detach {
        network: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        netns: String,
    },
    /// List endpoints.
    Ls {
        #[arg(long)]
        network: Option<String>,
        #[arg(long)]
        host: Option<String>,
    },
}
