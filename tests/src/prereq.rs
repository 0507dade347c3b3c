//! What a lab needs from the machine, checked before anything is built, so a fresh machine gets
//! one line naming what to install instead of a half-built lab failing later.

/// Commands the lab and the agents run, with the Debian package that provides each.
/// `nft` is the agent's (it refuses to start without it); `ip` builds the namespaces.
pub const REQUIRED: &[(&str, &str)] = &[("ip", "iproute2"), ("nft", "nftables")];

/// Whether `program` is an executable file in one of `$PATH`'s directories.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// `Err` with one line naming every missing package (and root, if not root).
pub fn check() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("the lab creates network namespaces: run it as root".into());
    }
    let missing: Vec<(&str, &str)> = REQUIRED
        .iter()
        .copied()
        .filter(|(program, _)| !on_path(program))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    Err(format!(
        "{} not found; install it first: apt-get install {}",
        programs.join(" and "),
        packages.join(" ")
    ))
}
