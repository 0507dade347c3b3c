#!/usr/bin/env bash
# The docker-compose multi-VM demo, end to end: build the binaries and the image, bring up
# 3 controllers and 3 "VMs" on mutual TLS (certificates made with `overlayctl certs`; the
# binaries refuse plaintext unless given --insecure), create a vxlan network, attach each VM's
# workload, print the cross-VM ping matrix, check that an agent's certificate and plaintext
# clients are refused, tear everything down. Exits non-zero when any step fails.
#
# Needs a running Docker engine (Debian: docker.io + docker-compose; start dockerd) and, for
# the image, busybox-static and nftables on this machine. PROFILE=debug skips the release build.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
profile="${PROFILE:-release}"
project="${COMPOSE_PROJECT:-overlaydemo}"
build="$here/.build"

if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
compose+=(-p "$project" -f "$here/docker-compose.yml")

die() { echo "run-demo: $*" >&2; exit 1; }
docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd first)"
for tool in busybox nft ldd; do command -v "$tool" >/dev/null || die "$tool is missing (apt-get install busybox-static nftables)"; done

echo "== building overlay ($profile)"
cargo_flags=(--bins -p overlay-controller -p overlay-agent -p overlayctl)
[ "$profile" = release ] && cargo_flags+=(--release)
(cd "$root" && cargo build -q "${cargo_flags[@]}")
target="${CARGO_TARGET_DIR:-$root/target}/$profile"

echo "== assembling the image"
rm -rf "$build"
mkdir -p "$build/rootfs/bin" "$build/rootfs/usr/local/bin" "$build/rootfs/usr/sbin" "$build/rootfs/run" \
         "$build/rootfs/tmp" "$build/rootfs/var/lib/overlay" "$build/rootfs/etc"
cp "$(command -v busybox)" "$build/rootfs/bin/busybox"
for bin in overlay-controller overlay-agent overlayctl; do cp "$target/$bin" "$build/rootfs/usr/local/bin/"; done
cp "$(command -v nft)" "$build/rootfs/usr/sbin/nft"
cp "$here/vm-entrypoint.sh" "$build/rootfs/vm-entrypoint.sh"
echo "root:x:0:0:root:/:/bin/sh" > "$build/rootfs/etc/passwd"
# The dynamic libraries every binary loads, at the paths the loader expects.
for bin in "$build"/rootfs/usr/local/bin/* "$build/rootfs/usr/sbin/nft"; do
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    mkdir -p "$build/rootfs$(dirname "$lib")"
    cp -L "$lib" "$build/rootfs$lib"
  done
done
cp "$here/Dockerfile" "$build/Dockerfile"
docker build -q -t overlay-demo:latest "$build" >/dev/null

echo "== making the cluster CA and certificates (overlayctl certs)"
pki="$build/pki"
certs() { "$target/overlayctl" certs "$@" --dir "$pki" >/dev/null; }
certs ca
for i in 1 2 3; do certs issue --role controller --name "ctl$i" --san "198.51.100.1$((i - 1))"; done
for vm in vm1 vm2 vm3; do certs issue --role agent --name "$vm"; done
certs issue --role admin --name demo-admin

cleanup() { echo "== tearing down"; "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== starting 3 controllers and 3 VMs"
"${compose[@]}" up -d >/dev/null
# overlayctl runs inside vm1 with the admin certificate (vm1's own agent certificate may
# only act for vm1).
ctl() {
  "${compose[@]}" exec -T vm1 overlayctl --controller 198.51.100.10:7400,198.51.100.11:7400,198.51.100.12:7400 \
    --tls-cert /etc/overlay/pki/admin-demo-admin.pem --tls-key /etc/overlay/pki/admin-demo-admin-key.pem "$@"
}

deadline=$((SECONDS + 90))
until ctl host ls -o json 2>/dev/null | grep -c '"state": "up"' | grep -q '^3$'; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    "${compose[@]}" logs --tail 20
    die "the cluster did not come up within 90 s"
  fi
  sleep 1
done
ctl cluster status
ctl host ls

echo "== creating network demo and attaching one workload per VM"
ctl network create demo --mode vxlan --subnet 10.10.0.0/16
declare -A ip pid
vms=(vm1 vm2 vm3)
for vm in "${vms[@]}"; do
  pid[$vm]="$("${compose[@]}" exec -T "$vm" cat /run/workload.pid | tr -d '\r\n')"
  ip[$vm]="$(ctl endpoint attach demo --host "$vm" --netns "${pid[$vm]}" | tr -d '\r\n')"
done
ctl endpoint ls

echo "== cross-VM ping matrix"
failed=0
printf '%-6s' ""; for to in "${vms[@]}"; do printf '%8s' "$to"; done; echo
for from in "${vms[@]}"; do
  printf '%-6s' "$from"
  for to in "${vms[@]}"; do
    if [ "$from" = "$to" ]; then printf '%8s' "-"; continue; fi
    if "${compose[@]}" exec -T "$from" nsenter -t "${pid[$from]}" -n ping -c 1 -W 2 "${ip[$to]}" >/dev/null 2>&1; then
      printf '%8s' ok
    else
      printf '%8s' FAIL; failed=$((failed + 1))
    fi
  done
  echo
done
if [ "$failed" -ne 0 ]; then
  echo "== $failed pair(s) failed; agent logs:"
  for vm in "${vms[@]}"; do "${compose[@]}" logs --tail 20 "$vm"; done
  exit 1
fi
echo "== all 6 cross-VM pairs reachable"

echo "== mutual TLS: what must be refused"
ctls=198.51.100.10:7400,198.51.100.11:7400,198.51.100.12:7400
# vm1's own (agent) certificate: agents do not manage networks.
if "${compose[@]}" exec -T vm1 overlayctl --controller "$ctls" network create rogue --mode vxlan --subnet 10.99.0.0/16; then
  die "vm1's agent certificate created a network"
fi
# No certificate at all: overlayctl itself refuses to connect without TLS or --insecure ...
plain=("${compose[@]}" exec -T vm1 env -u OVERLAY_TLS_CA -u OVERLAY_TLS_CERT -u OVERLAY_TLS_KEY overlayctl --controller "$ctls")
if "${plain[@]}" network ls; then
  die "overlayctl without certificates or --insecure connected"
fi
# ... and with --insecure (plaintext asked for) the replicas refuse it.
if "${plain[@]}" --insecure network ls; then
  die "a plaintext client was served"
fi
ctl network ls | grep -q rogue && die "a refused create left a network behind"
echo "== agent certificate and plaintext refused"
