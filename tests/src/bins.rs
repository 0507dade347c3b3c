//! Where the overlay binaries are: `$OVERLAY_BIN_DIR`, else the cargo target directory this
//! test or lab binary runs from (`target/<profile>` or its `deps/`).

use std::path::PathBuf;

use crate::{LabError, Result};

pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("OVERLAY_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(crate::io("current_exe"))?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of one of the workspace's binaries, checked to exist.
pub fn bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LabError::Setup(format!(
            "{} not found: build the workspace first (cargo build --workspace) or set OVERLAY_BIN_DIR",
            path.display()
        )))
    }
}
