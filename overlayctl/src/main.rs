//! `overlayctl`: the command-line client of overlay, in the spirit of `docker network`.
//!
//! Tables for people, `--output json` for scripts. Every error exits 1 with one line on stderr
//! that names the cause.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use overlayctl::cli::{Cli, Command};
use overlayctl::client::connect;
use overlayctl::cmd::{certs, cluster, doctor, endpoint, host, network, probe};
use overlayctl::failure::Failure;
use overlayctl::output;

/// One line on stderr. Not `eprintln!`, which panics when stderr itself cannot be written.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "overlayctl: {line}");
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("cannot start: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let mut out = output::Out::stdout(cli.output);
    let outcome = runtime.block_on(run(cli, &mut out));
    // What was written goes out before any error line, and a full disk is noticed even when
    // everything else succeeded.
    let flushed = out.finish();
    let failure = match (outcome, flushed) {
        (Err(Failure::Message(msg)), _) => Failure::Message(msg),
        (Err(Failure::Output(e)), _) | (Ok(()), Err(e)) => Failure::Output(e),
        (Ok(()), Ok(())) => return ExitCode::SUCCESS,
    };
    match failure {
        Failure::Message(msg) => say(&msg),
        Failure::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return ExitCode::SUCCESS,
        Failure::Output(e) => say(&format!("cannot write output: {e}")),
    }
    ExitCode::FAILURE
}

/// Help and version print as usual; a usage error becomes one line and exit 1.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let rendered = e.render().to_string();
    let text: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    let line = text.join(" ");
    say(&format!("{} (see --help)", line.trim_start_matches("error: ")));
    ExitCode::FAILURE
}

/// Hands the command to its noun's module.
async fn run(cli: Cli, out: &mut output::Out) -> Result<(), Failure> {
    let Cli {
        controller,
        tls,
        command,
        ..
    } = cli;
    let remote = || connect(&controller, &tls);
    match command {
        // Local: making certificates must not need the TLS files they make.
        Command::Certs(cmd) => certs::run(out, cmd),
        Command::Cluster(cmd) => cluster::run(&remote()?, out, cmd).await,
        Command::Doctor => doctor::run(&remote()?, out).await,
        Command::Probe(args) => probe::run(&remote()?, out, args).await,
        Command::Host(cmd) => host::run(&remote()?, out, cmd).await,
        Command::Network(cmd) => network::run(&remote()?, out, cmd).await,
        Command::Endpoint(cmd) => endpoint::run(&remote()?, out, cmd).await,
    }
}
