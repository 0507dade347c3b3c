//! The overlay lab: everything needed to run real overlay processes against each other on one
//! machine. Controllers on loopback ([`controllers`]) need no privileges; simulated hosts as
//! network namespaces on an underlay bridge ([`netns`], [`lab`]) need root.
//!
//! Everything a lab creates is owned by a guard that removes it on drop, also when a test
//! panics; processes are killed, namespaces deleted.
//!
//! Every process started through this crate without TLS settings runs with `--insecure`
//! (see [`plaintext`]); [`lab::Lab::start_secure`] runs everything on mutual TLS instead.

pub mod api;
pub mod bins;
pub mod cni;
pub mod controllers;
pub mod dns;
pub mod docker;
pub mod fuzz;
pub mod interrupt;
pub mod lab;
pub mod mountns;
pub mod netns;
pub mod pki;
pub mod plaintext;
pub mod podman;
pub mod prereq;
pub mod process;
pub mod tcp;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{cmd}: exited with {status}: {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("rpc failed: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}
