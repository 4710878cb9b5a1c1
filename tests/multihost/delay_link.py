"""A lossy, slow link in user space, for kernels without sch_netem: the relay sits between a
host's veth port and the bridge, holds every Ethernet frame `--delay-ms` before passing it on
and drops `--loss-pct` percent of them, in both directions. The host itself is untouched
(same veth, address, MAC and open connections).

Run inside the switch namespace (`ip netns exec <switch> python3 delay_link.py ...`) while
`--port` (the switch-side end of the host's veth) is still on the bridge: it opens a raw
packet socket on the port and creates the TAP device `--tap`, prints `ready` on stdout, and
relays until stdin closes or it is terminated. The caller then attaches the TAP to the bridge
and takes the port off it. Both sides carry virtio-net headers, so checksum-offloaded frames
cross intact. The TAP belongs to this process and disappears with it. Counters (frames
forwarded and dropped, the smallest hold applied) are rewritten to `--stats` every 100 ms as
JSON, so the test can prove the fault was there.
"""

import argparse
import errno
import fcntl
import heapq
import json
import os
import random
import select
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    return fd


def open_port(name):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.bind((name, ETH_P_ALL))
    # Every frame the host sends, whatever its destination MAC.
    ifindex = socket.if_nametoindex(name)
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                 struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b""))
    s.setblocking(False)
    return s


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", required=True)
    p.add_argument("--tap", required=True)
    p.add_argument("--delay-ms", type=float, default=20.0)
    p.add_argument("--loss-pct", type=float, default=1.0)
    p.add_argument("--stats", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    port = open_port(a.port)
    tap = open_tap(a.tap)
    print("ready", flush=True)

    rng = random.Random(a.seed)
    delay = a.delay_ms / 1000.0
    pfd = port.fileno()

    def send(fd, frame):
        if fd == pfd:
            port.send(frame)
        else:
            os.write(tap, frame)

    def receive(fd):
        """The next frame arriving on `fd` (with its virtio-net header), or None."""
        while True:
            if fd == pfd:
                frame, addr = port.recvfrom(65536 + 64)
                if addr[2] == PACKET_OUTGOING:
                    continue  # our own sends, seen again
                return frame
            return os.read(tap, 65536 + 64)

    other = {pfd: tap, tap: pfd}
    pending = []  # (due, seq, fd, frame, born)
    seq = 0
    stats = {"forwarded": 0, "dropped": 0, "min_hold_ms": None, "delay_ms": a.delay_ms,
             "loss_pct": a.loss_pct}
    poll = select.poll()
    for fd in (pfd, tap, sys.stdin.fileno()):
        poll.register(fd, select.POLLIN)
    next_stats = 0.0

    def write_stats():
        tmp = a.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, a.stats)

    while True:
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            due, _, fd, frame, born = heapq.heappop(pending)
            try:
                send(fd, frame)
                stats["forwarded"] += 1
                held = (time.monotonic() - born) * 1000.0
                if stats["min_hold_ms"] is None or held < stats["min_hold_ms"]:
                    stats["min_hold_ms"] = held
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EIO, errno.ENOBUFS):
                    raise
                stats["dropped"] += 1  # the far side's queue is full or it is down
        if now >= next_stats:
            write_stats()
            next_stats = now + 0.1
        timeout_ms = 100
        if pending:
            timeout_ms = max(0, min(timeout_ms, int((pending[0][0] - now) * 1000) + 1))
        for fd, ev in poll.poll(timeout_ms):
            if fd == sys.stdin.fileno():
                if not os.read(fd, 4096):
                    write_stats()
                    return
                continue
            while True:
                try:
                    frame = receive(fd)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.EIO:  # the device has no carrier yet
                        break
                    raise
                if rng.random() * 100.0 < a.loss_pct:
                    stats["dropped"] += 1
                    continue
                born = time.monotonic()
                seq += 1
                heapq.heappush(pending, (born + delay, seq, other[fd], frame, born))


if __name__ == "__main__":
    main()
