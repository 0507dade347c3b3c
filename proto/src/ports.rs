//! Published ports: a workload's port made reachable at a port of its host (DNAT from the
//! host's underlay address, for other hosts and for the host itself).
//!
//! One type for every front end (`overlayctl endpoint attach --publish`, CNI `portMappings`,
//! Docker `-p`) and every holder (the agent's store, the controller's records, the wire), so
//! that parsing, validation and conflict rules exist once.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most ports one endpoint may publish.
pub const MAX_PORTS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The IP protocol number (what the kernel stores for nftables' `inet_proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!("protocol {other:?} cannot be published (tcp or udp)")),
        }
    }
}

/// `host_port` on the host forwards to `container_port` of the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublishedPort {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// The host address it is published on; `None` = the host's underlay address.
    #[serde(default)]
    pub host_ip: Option<Ipv4Addr>,
}

impl PublishedPort {
    /// From the wire's loose fields (ports as u32, protocol and address as text).
    pub fn from_parts(
        host_port: u32,
        container_port: u32,
        protocol: &str,
        host_ip: &str,
    ) -> Result<Self, String> {
        let port = |what: &str, n: u32| match u16::try_from(n) {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{what} {n} is out of range 1-65535")),
        };
        let host_ip = match host_ip.trim() {
            "" | "0.0.0.0" => None,
            text => Some(
                text.parse::<Ipv4Addr>()
                    .map_err(|_| format!("host address {text:?} is not an IPv4 address"))?,
            ),
        };
        Ok(Self {
            host_port: port("host port", host_port)?,
            container_port: port("container port", container_port)?,
            protocol: protocol.parse()?,
            host_ip,
        })
    }

    /// Whether `self` and `other` would claim the same port of the same host address.
    pub fn clashes_with(&self, other: &PublishedPort) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}

/// `HOSTPORT:PORT[/tcp|udp]` or `HOSTIP:HOSTPORT:PORT[/tcp|udp]`, as `--publish` takes it.
impl FromStr for PublishedPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not HOSTPORT:PORT[/tcp|udp]");
        let (ports, protocol) = match text.rsplit_once('/') {
            Some((ports, proto)) => (ports, proto),
            None => (text, "tcp"),
        };
        let parts: Vec<&str> = ports.split(':').collect();
        let (host_ip, host_port, container_port) = match parts.as_slice() {
            [h, c] => ("", *h, *c),
            [ip, h, c] => (*ip, *h, *c),
            _ => return Err(bad()),
        };
        let num = |s: &str| s.parse::<u32>().map_err(|_| bad());
        Self::from_parts(num(host_port)?, num(container_port)?, protocol, host_ip)
    }
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

impl From<&PublishedPort> for crate::v1::PublishedPort {
    fn from(p: &PublishedPort) -> Self {
        Self {
            host_port: p.host_port.into(),
            container_port: p.container_port.into(),
            protocol: p.protocol.as_str().into(),
            host_ip: p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        }
    }
}

impl TryFrom<&crate::v1::PublishedPort> for PublishedPort {
    type Error = String;

    fn try_from(p: &crate::v1::PublishedPort) -> Result<Self, String> {
        Self::from_parts(p.host_port, p.container_port, &p.protocol, &p.host_ip)
    }
}

/// A wire list, checked (see [`check_list`]).
pub fn from_wire(list: &[crate::v1::PublishedPort]) -> Result<Vec<PublishedPort>, String> {
    if list.len() > MAX_PORTS {
        return Err(format!("{} published ports (at most {MAX_PORTS})", list.len()));
    }
    let ports = list
        .iter()
        .map(PublishedPort::try_from)
        .collect::<Result<Vec<_>, _>>()?;
    check_list(&ports)?;
    Ok(ports)
}

pub fn to_wire(list: &[PublishedPort]) -> Vec<crate::v1::PublishedPort> {
    list.iter().map(Into::into).collect()
}

/// Checks one endpoint's list: bounded, and no two entries claiming the same host port.
pub fn check_list(ports: &[PublishedPort]) -> Result<(), String> {
    if ports.len() > MAX_PORTS {
        return Err(format!("{} published ports (at most {MAX_PORTS})", ports.len()));
    }
    for (i, a) in ports.iter().enumerate() {
        if let Some(b) = ports[..i].iter().find(|b| a.clashes_with(b)) {
            return Err(format!("{a} and {b} publish the same host port"));
        }
    }
    Ok(())
}

/// The first of `wanted` that clashes with one of `taken`, with the one it clashes with.
pub fn first_clash<'a>(
    wanted: &'a [PublishedPort],
    taken: impl IntoIterator<Item = &'a PublishedPort>,
) -> Option<(&'a PublishedPort, &'a PublishedPort)> {
    let taken: Vec<&PublishedPort> = taken.into_iter().collect();
    wanted
        .iter()
        .find_map(|w| taken.iter().find(|t| w.clashes_with(t)).map(|t| (w, *t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_publish_flags_say() {
        let p: PublishedPort = "8080:80".parse().unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol, p.host_ip),
            (8080, 80, Protocol::Tcp, None)
        );
        let p: PublishedPort = "5353:53/udp".parse().unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.to_string(), "5353:53/udp");
        let p: PublishedPort = "192.0.2.11:8443:443/tcp".parse().unwrap();
        assert_eq!(p.host_ip, Some("192.0.2.11".parse().unwrap()));
        assert_eq!(p.to_string(), "192.0.2.11:8443:443/tcp");
        for bad in [
            "80",
            "0:80",
            "80:70000",
            "x:80",
            "80:80/sctp",
            "1:2:3:4",
            "::80",
            "nope:1:2",
        ] {
            assert!(bad.parse::<PublishedPort>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn clashes_on_same_port_protocol_and_overlapping_address() {
        let p = |s: &str| s.parse::<PublishedPort>().unwrap();
        assert!(p("8080:80").clashes_with(&p("8080:81")));
        assert!(!p("8080:80").clashes_with(&p("8080:80/udp")));
        assert!(p("8080:80").clashes_with(&p("192.0.2.11:8080:80")));
        assert!(!p("192.0.2.12:8080:80").clashes_with(&p("192.0.2.11:8080:80")));
        assert!(check_list(&[p("8080:80"), p("8080:81")]).is_err());
        assert!(check_list(&[p("8080:80"), p("8081:80"), p("8080:80/udp")]).is_ok());
        let taken = [p("9000:1")];
        assert_eq!(
            first_clash(&[p("8000:1"), p("9000:2")], &taken).map(|(w, _)| w.host_port),
            Some(9000)
        );
    }
}
