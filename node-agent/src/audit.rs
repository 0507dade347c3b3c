//! Drift: where the kernel differs from the desired state, one line per object, for
//! `overlayctl doctor`. It is the reconcile plan read as a finding instead of carried out, so
//! an audit and a pass can never disagree about what "converged" means.

use std::collections::BTreeMap;

use crate::kernel::{Kernel, MacvlanRecord};
use crate::plan::{self, EndpointOp, EntryOp, LinkOp};
use crate::spec::HostSpec;

/// Every difference between `spec` and `kernel` that a pass would repair (endpoints are
/// checked from the host side only; their namespaces are looked into by the deep passes).
pub fn drift(
    spec: &HostSpec,
    kernel: &Kernel,
    underlay_index: u32,
    macvlans: &BTreeMap<u64, MacvlanRecord>,
) -> Vec<String> {
    let name = |index: u32| {
        kernel
            .links
            .values()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
            .unwrap_or_else(|| format!("ifindex {index}"))
    };
    let mut out: Vec<String> = plan::links(spec, kernel, underlay_index)
        .iter()
        .map(|op| match op {
            LinkOp::CreateBridge { name, .. } => format!("missing bridge {name}"),
            LinkOp::CreateVxlan { spec, .. } => format!("missing vxlan {}", spec.name),
            LinkOp::CreateVlan { name, .. } => format!("missing vlan {name}"),
            LinkOp::Delete { name, why, .. } => format!("extra device {name} ({why})"),
            LinkOp::SetMtu { name, mtu, .. } => format!("different mtu on {name} (want {mtu})"),
            LinkOp::SetMac { name, mac, .. } => format!("different mac on {name} (want {mac})"),
            LinkOp::SetUp { name, .. } => format!("device {name} is down"),
        })
        .collect();
    out.extend(
        plan::entries(spec, kernel, underlay_index)
            .iter()
            .map(|op| match op {
                EntryOp::AddAddress { index, addr } => format!("missing address {addr} on {}", name(*index)),
                EntryOp::DelAddress { index, addr } => format!("extra address {addr} on {}", name(*index)),
                EntryOp::SetNeighbour { index, ip, mac } => {
                    format!("missing or different neigh {ip} lladdr {mac} on {}", name(*index))
                }
                EntryOp::DelNeighbour { index, ip } => format!("extra neigh {ip} on {}", name(*index)),
                EntryOp::SetFdb { index, mac, dst } => {
                    format!("missing or different fdb {mac} dst {dst} on {}", name(*index))
                }
                EntryOp::DelFdb { index, mac, .. } => format!("extra fdb {mac} on {}", name(*index)),
                EntryOp::SetRoute { dst, via, index } => {
                    format!("missing or different route {dst} via {via} dev {}", name(*index))
                }
                EntryOp::DelRoute { route } => format!("extra route {}", route.dst),
                EntryOp::AddAddress6 { index, addr } => format!("missing address {addr} on {}", name(*index)),
                EntryOp::DelAddress6 { index, addr } => format!("extra address {addr} on {}", name(*index)),
                EntryOp::SetNeighbour6 { index, ip, mac } => {
                    format!("missing neigh {ip} lladdr {mac} on {}", name(*index))
                }
                EntryOp::DelNeighbour6 { index, ip } => format!("extra neigh {ip} on {}", name(*index)),
                EntryOp::SetRoute6 { dst, via, index } => {
                    format!("missing route {dst} via {via} dev {}", name(*index))
                }
                EntryOp::DelRoute6 { route } => format!("extra route {}", route.dst),
            }),
    );
    out.extend(plan::unreachable_peers(spec, kernel, underlay_index));
    out.extend(
        plan::endpoints(
            spec,
            kernel,
            false,
            plan::Known {
                macvlans,
                routes: &BTreeMap::new(),
            },
        )
        .iter()
        .filter_map(|op| match op {
            EndpointOp::Wire { spec, .. } => Some(format!(
                "missing endpoint {} ({} in {})",
                spec.address, spec.ifname, spec.netns
            )),
            EndpointOp::FixHostSide { spec, .. } => Some(format!(
                "endpoint {} host side detached, down or wrong mtu",
                spec.address
            )),
            EndpointOp::RemoveMacvlan { record } => Some(format!(
                "extra macvlan endpoint {} in {}",
                record.id, record.netns
            )),
            EndpointOp::Blocked { device, reason, .. } => {
                Some(format!("endpoint blocked: {device}: {reason}"))
            }
            EndpointOp::Gone { id, reason } => Some(format!("endpoint {id} gone: {reason}")),
            // Checked inside the namespace only by deep passes.
            EndpointOp::Verify { .. } | EndpointOp::VerifyMacvlan { .. } => None,
        }),
    );
    out
}
