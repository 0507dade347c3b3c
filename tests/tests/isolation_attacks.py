"""What a hostile workload sends, for tests/tests/isolation.rs (python3, standard library only).

  vxlan DST VNI INNER_DST_MAC INNER_SRC_IP INNER_DST_IP icmp|arp [COUNT]
      UDP to DST:4789 carrying a VXLAN header with VNI and an inner Ethernet frame: an ICMP
      echo request, or an ARP request, from INNER_SRC_IP to INNER_DST_IP.
  tcp HOST PORT       exit 0 if a TCP connection opens within 2 s
  udp HOST PORT       exit 0 if a datagram sent there is answered within 2 s
  udp-echo HOST PORT  serve: answer every datagram with itself
"""
import socket
import struct
import sys
import time


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac(text):
    return bytes(int(b, 16) for b in text.split(":"))


def ipv4(src, dst, proto, payload):
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x4F56, 0, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def icmp_echo():
    body = struct.pack("!BBHHH", 8, 0, 0, 0x4F56, 1) + b"overlay-isolation-test"
    return body[:2] + struct.pack("!H", checksum(body)) + body[4:]


# The inner frame's source MAC: locally administered, recognisable in a capture.
INNER_SRC_MAC = "02:0e:71:00:00:01"


def inner_frame(dst_mac, src_ip, dst_ip, kind):
    if kind == "icmp":
        return mac(dst_mac) + mac(INNER_SRC_MAC) + b"\x08\x00" + ipv4(src_ip, dst_ip, 1, icmp_echo())
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac(INNER_SRC_MAC) + socket.inet_aton(src_ip)
    arp += b"\0" * 6 + socket.inet_aton(dst_ip)
    return b"\xff" * 6 + mac(INNER_SRC_MAC) + b"\x08\x06" + arp


def main(argv):
    cmd = argv[1]
    if cmd == "vxlan":
        dst, vni, dmac, sip, dip, kind = argv[2:8]
        count = int(argv[8]) if len(argv) > 8 else 5
        packet = struct.pack("!II", 0x08000000, int(vni) << 8) + inner_frame(dmac, sip, dip, kind)
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(count):
            try:
                s.sendto(packet, (dst, 4789))
            except OSError as e:
                print("send:", e)
            time.sleep(0.05)
        return 0
    if cmd == "tcp":
        try:
            socket.create_connection((argv[2], int(argv[3])), timeout=2).close()
            print("connected")
            return 0
        except OSError as e:
            print(e)
            return 1
    if cmd == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        try:
            s.sendto(b"overlay?", (argv[2], int(argv[3])))
            s.recv(64)
            print("answered")
            return 0
        except OSError as e:
            print(e)
            return 1
    if cmd == "dns":
        # A real query in blue's zone (the agent's DNS server drops what is not DNS; a name
        # outside its zones goes upstream): any answer with our id.
        qname = b"".join(bytes([len(l)]) + l for l in b"probe.blue.overlay".split(b".")) + b"\0"
        query = struct.pack("!HHHHHH", 0x4F56, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        try:
            s.sendto(query, (argv[2], int(argv[3])))
            reply = s.recv(512)
            if reply[:2] == query[:2]:
                print("answered")
                return 0
            print("wrong id")
            return 1
        except OSError as e:
            print(e)
            return 1
    if cmd == "udp-echo":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((argv[2], int(argv[3])))
        while True:
            data, peer = s.recvfrom(2048)
            s.sendto(data, peer)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
