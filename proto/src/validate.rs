//! Checks on names that reach the kernel, shared by the controller (which refuses them) and
//! the agent (which never trusts its input either). Each returns the reason on failure.

/// A Linux interface name: 1 to 15 bytes; no '/', ':', whitespace or control characters; not
/// "." or "..".
pub fn ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 characters");
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("must not contain '/', ':' or whitespace");
    }
    Ok(())
}

/// A network namespace reference: a name under /run/netns (no '/'), an absolute path without
/// `..`, or a pid (digits).
pub fn netns(netns: &str) -> Result<(), &'static str> {
    if netns.is_empty() || netns.len() > 255 {
        return Err("must be 1 to 255 characters");
    }
    if netns.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters");
    }
    if netns.starts_with('/') {
        if netns.split('/').any(|part| part == "..") {
            return Err("a path must not contain '..'");
        }
    } else if netns.contains('/') || netns == "." || netns == ".." {
        return Err("a name must not contain '/'; give an absolute path instead");
    }
    Ok(())
}

/// At most this many names per endpoint (controller, agent and the Docker plugin agree).
pub const MAX_ENDPOINT_NAMES: usize = 16;
/// The longest endpoint name: one DNS label.
pub const MAX_NAME_LABEL: usize = 63;

/// An endpoint name is one DNS label of its network's zone: 1 to 63 letters, digits, `-` or
/// `_`, not starting or ending with `-`.
pub fn endpoint_name(name: &str) -> Result<(), &'static str> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LABEL
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("must be a DNS label: 1 to 63 letters, digits, '-' or '_', not starting or ending with '-'")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifnames_and_netns_refs() {
        for ok in ["eth0", "ovb-12", "a"] {
            assert!(super::ifname(ok).is_ok(), "{ok}");
        }
        for bad in ["", "sixteen-chars-xx", "a/b", "a b", "a:1", ".", ".."] {
            assert!(super::ifname(bad).is_err(), "{bad:?}");
        }
        for ok in ["w1", "/run/netns/w1", "/proc/123/ns/net", "123"] {
            assert!(super::netns(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "..", "/run/netns/../x", "a\nb"] {
            assert!(super::netns(bad).is_err(), "{bad:?}");
        }
    }
}
