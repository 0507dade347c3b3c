#!/bin/bash
# The P2 rules lab: the flannel vxlan recipe between two host namespaces (px-h1, px-h2) and
# two workloads, with overlay's device names, so that a ruleset dumped from an agent
# (full.nft: overlay a89369e, @I@ = this host 1|2, @J@ = the peer) loads as it is and only the
# rules differ from the hand-built path. Run as root:
#   ./lab.sh up; ./cmp.sh full.nft 6; ./lab.sh down
# Uses 192.0.2.0/24 and 10.71.0.0/16 inside its own namespaces only.
set -e
P=px
up() {
  ip netns add $P-ul; ip -n $P-ul link add br0 type bridge; ip -n $P-ul link set br0 up
  for i in 1 2; do
    ip netns add $P-h$i; ip netns add $P-w$i
    ip -n $P-h$i link add eth0 type veth peer name u$i netns $P-ul
    ip -n $P-ul link set u$i master br0 up
    ip -n $P-h$i addr add 192.0.2.1$i/24 dev eth0; ip -n $P-h$i link set eth0 up; ip -n $P-h$i link set lo up
    ip netns exec $P-h$i sysctl -qw net.ipv4.ip_forward=1
    ip -n $P-h$i link add ovb-1 type bridge; ip -n $P-h$i addr add 10.71.$i.1/24 dev ovb-1; ip -n $P-h$i link set ovb-1 up
    ip -n $P-h$i link add ovv-1 mtu 1450 type veth peer name eth0 mtu 1450 netns $P-w$i
    ip -n $P-h$i link set ovv-1 master ovb-1 up
    ip -n $P-w$i link set eth0 address 0a:58:0a:47:0$i:02  # the MACs full.nft names
    ip -n $P-w$i addr add 10.71.$i.2/24 dev eth0; ip -n $P-w$i link set lo up; ip -n $P-w$i link set eth0 up
    ip -n $P-w$i route add default via 10.71.$i.1
    ip -n $P-h$i link add ovx-1 type vxlan id 4096 local 192.0.2.1$i dev eth0 dstport 4789 nolearning
    ip -n $P-h$i link set ovx-1 address 02:f1:00:00:00:0$i mtu 1450 up
    ip -n $P-h$i addr add 10.71.$i.0/32 dev ovx-1
  done
  for i in 1 2; do j=$((3-i))
    ip -n $P-h$i neigh add 10.71.$j.0 lladdr 02:f1:00:00:00:0$j dev ovx-1 nud permanent
    bridge -n $P-h$i fdb append 02:f1:00:00:00:0$j dev ovx-1 dst 192.0.2.1$j self permanent
    ip -n $P-h$i route add 10.71.$j.0/24 via 10.71.$j.0 dev ovx-1 onlink
  done
  ip netns exec $P-w2 iperf3 -s -D
  sleep 0.5
}
down() { for n in ul h1 h2 w1 w2; do ip netns pids $P-$n 2>/dev/null | xargs -r kill; ip netns del $P-$n 2>/dev/null || true; done; }
rules() { for i in 1 2; do ip netns exec $P-h$i nft flush ruleset; [ -n "$1" ] && sed "s/@I@/$i/g;s/@J@/$((3-i))/g" "$1" | ip netns exec $P-h$i nft -f -; done; true; }
run() { ip netns exec $P-w1 iperf3 -c 10.71.2.2 -t ${T:-5} -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'; }
"$@"
