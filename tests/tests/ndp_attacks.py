"""What a hostile workload sends over IPv6 neighbour discovery, for tests/tests/dual_stack.rs
(python3, standard library only). Every packet goes to ff02::1 (all nodes) with hop limit
255, as real ND does, from the workload's own interface.

  na IFACE TARGET MAC   an unsolicited, overriding neighbour advertisement: "TARGET is at MAC"
  ra IFACE PREFIX       a router advertisement offering PREFIX/64 for SLAAC and itself as
                        the default router
"""
import socket
import struct
import sys


def mac(text):
    return bytes(int(b, 16) for b in text.split(":"))


def send(iface, packet):
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    index = socket.if_nametoindex(iface)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    # The kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets (RFC 3542).
    for _ in range(3):
        s.sendto(packet, ("ff02::1", 0, 0, index))


def main(argv):
    cmd, iface = argv[1], argv[2]
    if cmd == "na":
        target, lladdr = argv[3], argv[4]
        # Type 136, code 0, checksum 0; flags: Override (not Router, not Solicited).
        body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + socket.inet_pton(socket.AF_INET6, target)
        body += struct.pack("!BB", 2, 1) + mac(lladdr)  # target link-layer address option
        send(iface, body)
        return 0
    if cmd == "ra":
        prefix = argv[3]
        # Type 134: hop limit 64, no flags, router lifetime 1800 s, reachable/retrans 0.
        body = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
        # Prefix information: /64, on-link + autonomous, valid 86400 s, preferred 14400 s.
        body += struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0)
        body += socket.inet_pton(socket.AF_INET6, prefix)
        send(iface, body)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
