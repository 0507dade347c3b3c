//! Agent instance ids: which agent holds a host name.
//!
//! A host name is what an operator types; two machines can be started with the same one by
//! mistake (or, with mutual TLS, with a copy of the same certificate). Each agent therefore
//! makes a random instance id once, keeps it in its state dir, and sends it with every call;
//! the controller lets one instance at a time act for a host name. The id is a bearer token
//! for that claim: only its [`short`] form is ever shown (logs, errors, `doctor`), so one
//! agent's refusal never tells another what to send.

/// Length of a new instance id: 128 random bits in hex.
pub const LEN: usize = 32;

/// How many characters of an id are shown.
pub const SHORT_LEN: usize = 8;

/// An instance id as agents send it: 16 to 64 lower-case hex digits. (The empty id, sent by
/// clients that have none, is the caller's to allow or refuse.)
pub fn validate(id: &str) -> Result<(), &'static str> {
    if !(16..=64).contains(&id.len()) {
        return Err("must be 16 to 64 hex digits");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("must be lower-case hex digits");
    }
    Ok(())
}

/// What may be shown of an id: its first [`SHORT_LEN`] characters ("-" for none), whatever
/// the id holds.
pub fn short(id: &str) -> &str {
    if id.is_empty() {
        return "-";
    }
    let end = id.char_indices().nth(SHORT_LEN).map_or(id.len(), |(at, _)| at);
    &id[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_shown_short() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(validate(id).is_ok());
        assert_eq!(short(id), "01234567");
        assert_eq!(short(""), "-");
        assert_eq!(short("ééééééééééé"), "éééééééé");
        assert_eq!(short("abc"), "abc");
        for bad in [
            "",
            "0123",
            "0123456789ABCDEF",
            "0123456789abcdeg",
            &"a".repeat(65),
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
