//! `overlay-cni`: the CNI plugin binary. Reads `CNI_*` and the configuration on stdin, answers
//! on stdout in the spec's JSON, exits 1 with a spec error object on failure.

use std::io::{Read, Write};
use std::process::ExitCode;

use overlay_cni::env::Invocation;
use overlay_cni::error::{CniError, code};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(overlay_cni::conf::MAX_CONF as u64 + 1)
        .read_to_end(&mut stdin);
    // Errors are written in the version the configuration asked for, when it can be read.
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .filter(|v| overlay_cni::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".to_string());
    let outcome = match read {
        Err(e) => Err(CniError::new(code::IO_FAILURE, format!("cannot read stdin: {e}"))),
        Ok(_) => run(&stdin),
    };
    let (text, status) = match outcome {
        Ok(Some(json)) => (json, ExitCode::SUCCESS),
        Ok(None) => (String::new(), ExitCode::SUCCESS),
        Err(e) => (e.to_json(&version), ExitCode::FAILURE),
    };
    let mut out = std::io::stdout().lock();
    if !text.is_empty() && (writeln!(out, "{text}").is_err() || out.flush().is_err()) {
        return ExitCode::FAILURE;
    }
    status
}

fn run(stdin: &[u8]) -> Result<Option<String>, CniError> {
    let inv = Invocation::from_env(|name| std::env::var(name).ok())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, format!("cannot start: {e}")))?;
    runtime.block_on(overlay_cni::plugin::run(&inv, stdin))
}
