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
