//! One module per noun, each holding its arguments, the request it makes and how its answer
//! prints, so a new verb is one file (plus its line here, in [`crate::cli::Command`] and in
//! the binary's dispatch).

pub mod certs;
pub mod cluster;
pub mod doctor;
pub mod endpoint;
pub mod host;
pub mod network;
pub mod probe;
