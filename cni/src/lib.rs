//! overlay-cni: a CNI plugin (spec 1.0.0: ADD, DEL, CHECK, VERSION; 1.1.0: STATUS, GC) that
//! joins containers to overlay networks.
//!
//! The plugin is a thin client: it checks what the runtime handed it ([`env`], [`conf`]), asks
//! the host's overlay-agent over its local socket to do the work, and answers in the spec's JSON
//! ([`result`], [`error`]). The agent allocates the address from its host's lease, wires the
//! namespace and reports to the controller; nothing here touches the kernel.

pub mod conf;
pub mod env;
pub mod error;
pub mod plugin;
pub mod result;

/// Spec versions this plugin speaks; results are written in the version the configuration asks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Endpoints this plugin creates are owned by "cni" on the agent: GC removes only those.
pub const OWNER: &str = "cni";
