//! What both daemons (controller and agent) do around their work, in one place: logging to
//! stderr, the runtime's lifecycle, SIGTERM/SIGINT, and errors ending in one line.

use std::future::Future;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

/// Bound on the runtime's own shutdown once serving has ended: a blocking task (a snapshot
/// being written, a netlink call) must not hold the exit up past the graceful stop.
const RUNTIME_STOP: Duration = Duration::from_secs(1);

/// Logs to stderr, `text` or `json`; `RUST_LOG` when set, else `default_filter`.
pub fn init_logging(format: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs `work` on a multi-threaded runtime; an error ends as one line on stderr, prefixed
/// with `program`, and exit code 1. Not `main() -> anyhow::Result`: that prints the error's
/// `Debug` form, a full backtrace under `RUST_BACKTRACE=1`.
pub fn run<E>(program: &str, work: impl Future<Output = Result<(), E>>) -> ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    let line = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => {
            let outcome = runtime.block_on(work);
            runtime.shutdown_timeout(RUNTIME_STOP);
            match outcome {
                Ok(()) => return ExitCode::SUCCESS,
                Err(e) => crate::error_line::error_line(e.as_ref()),
            }
        }
        Err(e) => format!("cannot start the async runtime: {e}"),
    };
    let _ = writeln!(std::io::stderr(), "{program}: {line}");
    ExitCode::FAILURE
}

/// Resolves on SIGTERM (systemd's stop) or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
