//! The lab's one rule for plaintext. overlay's binaries refuse to run without TLS unless told
//! `--insecure`; the lab runs most tests on plaintext, so every process it spawns that carries
//! no TLS setting of its own gets `OVERLAY_INSECURE=true` in its environment, here and nowhere
//! else. A process given TLS files (`--tls-*` or `OVERLAY_TLS_*`) is left alone, so a TLS
//! lab stays on TLS (the binaries refuse `--insecure` together with TLS options anyway).
//!
//! To see a refusal, opt out for one command with [`without_transport_choice`] (or
//! `cmd.env_remove("OVERLAY_INSECURE")`, or set `OVERLAY_INSECURE` yourself): an explicit
//! choice is never overridden.

use std::ffi::OsStr;
use std::process::Command;

/// The variable overlay's binaries read for `--insecure`.
pub const INSECURE_ENV: &str = "OVERLAY_INSECURE";

/// Environment variables that carry a TLS choice, one way or the other.
const CHOICE_ENV: [&str; 4] = [
    INSECURE_ENV,
    "OVERLAY_TLS_CA",
    "OVERLAY_TLS_CERT",
    "OVERLAY_TLS_KEY",
];

/// Marks `cmd` insecure unless it already says how to talk: TLS options or `--insecure` on
/// its command line, or any of the TLS variables set or removed in its environment. Harmless
/// for programs that are not overlay's (`ip`, `ping` ... ignore the variable).
pub fn insecure_unless_tls(cmd: &mut Command) {
    if !chooses_transport(cmd) {
        cmd.env(INSECURE_ENV, "true");
    }
}

/// Takes every TLS and plaintext setting out of `cmd`'s environment (also what the test
/// process itself inherited): the binary then sees only its command line, and without TLS
/// options or `--insecure` it must refuse. For tests of that refusal.
pub fn without_transport_choice(cmd: &mut Command) {
    for var in CHOICE_ENV {
        cmd.env_remove(var);
    }
}

/// Does `cmd` already carry a TLS or plaintext choice?
pub fn chooses_transport(cmd: &Command) -> bool {
    // `contains`, not `==`: a `sh -c '... overlayctl --tls-ca ...'` script chose too.
    let in_args = cmd.get_args().any(|a| {
        let a = a.to_string_lossy();
        a.contains("--tls-") || a.contains("--insecure")
    });
    let in_env = cmd
        .get_envs()
        .any(|(k, _)| CHOICE_ENV.iter().any(|c| k == OsStr::new(c)));
    in_args || in_env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insecure_value(cmd: &Command) -> Option<Option<String>> {
        cmd.get_envs()
            .find(|(k, _)| *k == OsStr::new(INSECURE_ENV))
            .map(|(_, v)| v.map(|v| v.to_string_lossy().to_string()))
    }

    #[test]
    fn only_commands_without_a_choice_become_insecure() {
        let mut plain = Command::new("overlay-controller");
        plain.args(["--node-id", "1"]);
        insecure_unless_tls(&mut plain);
        assert_eq!(insecure_value(&plain), Some(Some("true".into())));

        let mut by_args = Command::new("ip");
        by_args.args(["netns", "exec", "x", "overlayctl", "--tls-ca", "ca.pem"]);
        insecure_unless_tls(&mut by_args);
        assert_eq!(insecure_value(&by_args), None);

        let mut by_env = Command::new("overlay-agent");
        by_env.env("OVERLAY_TLS_CERT", "a.pem");
        insecure_unless_tls(&mut by_env);
        assert_eq!(insecure_value(&by_env), None);

        // A test that wants to see the refusal removes the variable: that choice stands.
        let mut refused = Command::new("overlay-agent");
        refused.env_remove(INSECURE_ENV);
        insecure_unless_tls(&mut refused);
        assert_eq!(insecure_value(&refused), Some(None));

        let mut flag = Command::new("overlayctl");
        flag.arg("--insecure");
        insecure_unless_tls(&mut flag);
        assert_eq!(insecure_value(&flag), None);

        let mut script = Command::new("sh");
        script.args([
            "-c",
            "overlayctl --tls-ca ca.pem --tls-cert c.pem --tls-key k.pem host ls",
        ]);
        insecure_unless_tls(&mut script);
        assert_eq!(insecure_value(&script), None);
    }
}
