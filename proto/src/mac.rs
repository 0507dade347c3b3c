//! Ethernet addresses as overlay writes them: `aa:bb:cc:dd:ee:ff`, in text and in serde.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An Ethernet address. Serialized as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts
                .next()
                .ok_or_else(|| format!("malformed MAC address {s:?}"))?;
            if part.len() != 2 {
                return Err(format!("malformed MAC address {s:?}"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("malformed MAC address {s:?}"))?;
        }
        if parts.next().is_some() {
            return Err(format!("malformed MAC address {s:?}"));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let mac: MacAddr = "0a:58:0a:01:00:05".parse().unwrap();
        assert_eq!(mac.to_string(), "0a:58:0a:01:00:05");
        for bad in [
            "",
            "0a:58:0a:01:00",
            "0a:58:0a:01:00:05:07",
            "zz:58:0a:01:00:05",
            "0a5:8:0a:01:00:05",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
    }
}
