//! Success results: the ADD result (interfaces, ips, routes, dns) and the VERSION answer.

use overlay_proto::local::Attachment;
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{CniError, code};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Version<'a> {
    cni_version: &'a str,
    supported_versions: &'a [&'a str],
}

/// The VERSION answer.
pub fn version() -> String {
    serde_json::to_string(&Version {
        cni_version: "1.1.0",
        supported_versions: crate::SUPPORTED_VERSIONS,
    })
    .unwrap_or_default()
}

/// The ADD result in `version`: the container's interface (with its MAC and sandbox, which
/// podman insists on), its address with the gateway, its routes and the network's DNS.
pub fn add(version: &str, att: &Attachment) -> Value {
    let legacy = version.starts_with("0.");
    let mut interface = json!({ "name": att.ifname, "mac": att.mac, "sandbox": att.netns });
    if version == "1.1.0" && att.mtu > 0 {
        interface["mtu"] = json!(att.mtu);
    }
    let mut ip = json!({ "address": att.address, "interface": 0 });
    if !att.gateway.is_empty() {
        ip["gateway"] = json!(att.gateway);
    }
    if legacy {
        ip["version"] = json!("4");
    }
    let mut ips = vec![ip];
    // Dual stack: the IPv6 address is the result's second entry, on the same interface.
    if !att.address6.is_empty() {
        let mut ip6 = json!({ "address": att.address6, "interface": 0 });
        if !att.gateway6.is_empty() {
            ip6["gateway"] = json!(att.gateway6);
        }
        if legacy {
            ip6["version"] = json!("6");
        }
        ips.push(ip6);
    }
    let routes: Vec<Value> = att
        .routes
        .iter()
        .map(|r| {
            let mut route = json!({ "dst": r.dst });
            if !r.gateway.is_empty() {
                route["gw"] = json!(r.gateway);
            }
            route
        })
        .collect();
    let mut dns = serde_json::Map::new();
    if let Some(d) = &att.dns {
        if !d.nameservers.is_empty() {
            dns.insert("nameservers".into(), json!(d.nameservers));
        }
        if !d.domain.is_empty() {
            dns.insert("domain".into(), json!(d.domain));
        }
        if !d.search.is_empty() {
            dns.insert("search".into(), json!(d.search));
        }
    }
    json!({
        "cniVersion": version,
        "interfaces": [interface],
        "ips": ips,
        "routes": routes,
        "dns": Value::Object(dns),
    })
}

/// CHECK: the endpoint the agent has must be the one the ADD reported (same address and MAC
/// on the same interface).
pub fn check_against(prev: &Value, att: &Attachment) -> Result<(), CniError> {
    let mismatch = |what: String| CniError::new(code::WIRING_FAILED, what);
    let ips = prev["ips"].as_array().cloned().unwrap_or_default();
    if !ips
        .iter()
        .any(|ip| ip["address"].as_str() == Some(att.address.as_str()))
    {
        return Err(mismatch(format!(
            "the container's address is {}, not the one the ADD reported",
            att.address
        )));
    }
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    if let Some(i) = interfaces
        .iter()
        .find(|i| i["name"].as_str() == Some(att.ifname.as_str()))
        && let Some(mac) = i["mac"].as_str()
        && !mac.eq_ignore_ascii_case(&att.mac)
    {
        return Err(mismatch(format!(
            "interface {} has MAC {}, not {mac} as the ADD reported",
            att.ifname, att.mac
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay_proto::local::{Dns, Route};

    fn attachment() -> Attachment {
        Attachment {
            key: "c1/eth0".into(),
            network: "blue".into(),
            netns: "/run/netns/c1".into(),
            ifname: "eth0".into(),
            address: "10.1.0.5/24".into(),
            gateway: "10.1.0.1".into(),
            mac: "0a:58:0a:01:00:05".into(),
            mtu: 1450,
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gateway: "10.1.0.1".into(),
            }],
            dns: Some(Dns {
                nameservers: vec!["10.1.0.1".into()],
                domain: String::new(),
                search: vec!["blue.overlay".into()],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn add_result_follows_the_requested_version() {
        let v1 = add("1.0.0", &attachment());
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert_eq!(v1["interfaces"][0]["mac"], "0a:58:0a:01:00:05");
        assert_eq!(v1["interfaces"][0]["sandbox"], "/run/netns/c1");
        assert!(v1["interfaces"][0].get("mtu").is_none(), "mtu is 1.1.0 only");
        assert_eq!(v1["ips"][0]["address"], "10.1.0.5/24");
        assert_eq!(v1["ips"][0]["gateway"], "10.1.0.1");
        assert_eq!(v1["ips"][0]["interface"], 0);
        assert!(
            v1["ips"][0].get("version").is_none(),
            "no version field after 0.4.0"
        );
        assert_eq!(v1["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(v1["dns"]["nameservers"][0], "10.1.0.1");
        assert!(v1["dns"].get("domain").is_none(), "empty fields are left out");
        assert_eq!(add("0.4.0", &attachment())["ips"][0]["version"], "4");
        assert_eq!(add("1.1.0", &attachment())["interfaces"][0]["mtu"], 1450);
    }

    #[test]
    fn a_dual_stack_result_lists_both_addresses_and_routes() {
        let mut att = attachment();
        att.address6 = "fd00:1:0:1::5/64".into();
        att.gateway6 = "fd00:1:0:1::1".into();
        att.routes.push(Route {
            dst: "::/0".into(),
            gateway: "fd00:1:0:1::1".into(),
        });
        let v = add("1.0.0", &att);
        assert_eq!(v["ips"][1]["address"], "fd00:1:0:1::5/64");
        assert_eq!(v["ips"][1]["gateway"], "fd00:1:0:1::1");
        assert_eq!(v["ips"][1]["interface"], 0);
        assert_eq!(v["routes"][1]["dst"], "::/0");
        assert_eq!(add("0.4.0", &att)["ips"][1]["version"], "6");
        // IPv4 only: one entry, as before.
        assert_eq!(
            add("1.0.0", &attachment())["ips"].as_array().map(Vec::len),
            Some(1)
        );
    }

    #[test]
    fn check_compares_address_and_mac_with_the_add() {
        let att = attachment();
        let prev = add("1.0.0", &att);
        assert!(check_against(&prev, &att).is_ok());
        let mut moved = att.clone();
        moved.address = "10.1.0.9/24".into();
        assert!(check_against(&prev, &moved).is_err());
        let mut remac = att;
        remac.mac = "0a:58:0a:01:00:99".into();
        assert!(check_against(&prev, &remac).is_err());
    }
}
