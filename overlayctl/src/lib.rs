//! overlayctl as a library: its command line definition, shared by the binary and the tests
//! that keep the documentation honest.

pub mod certs;
pub mod cli;
