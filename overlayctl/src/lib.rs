//! overlayctl as a library: its command line, one module per noun under [`cmd`], and the
//! pieces they share; the binary only dispatches, and tests check the definition against the
//! documentation.

pub mod certs;
pub mod cli;
pub mod client;
pub mod cmd;
pub mod failure;
pub mod output;
