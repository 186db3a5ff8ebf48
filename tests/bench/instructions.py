#!/usr/bin/env python3
"""Instructions per block of the server, counted by callgrind: `make bench-instructions`.

The recipe of tests/bench/README.md ("Instructions per block"), automated: the
release server, with its default options (live catalog rescanned every second),
runs under `valgrind --tool=callgrind` over one 256 KiB image while this script
downloads it by id (`GET /updates/{id}`, Confirmable, Block2 on every request,
as the load generator does) from 16 devices at once, each block checked byte for
byte. It does that twice, with D and 2 x D downloads per device; the difference
of the two totals is the cost of the extra blocks alone: start-up, the lookup
and the shutdown cancel out.

Raw UDP from the standard library only, so that it needs no client build (the
load generator of iot-ota-client is moving behind a cargo feature) and runs
wherever python3 and valgrind do.

Exit status: 0 when the figure is at most --max (or --max is 0), 1 above it,
2 when a run failed (a mismatched block, a server that did not start or
answer).
"""

import argparse
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

IMAGE_NAME = "BENCH-DEV_1_0_1_APP.fmu"
IMAGE_LEN = 262144
BLOCK = 1024
SZX = 6


def option(prev, number, value):
    """One CoAP option after option `prev` (deltas and lengths below 269)."""
    out = bytearray()

    def nibble(n):
        if n < 13:
            return n, b""
        return 13, bytes([n - 13])

    d, dext = nibble(number - prev)
    l, lext = nibble(len(value))
    out.append((d << 4) | l)
    out += dext + lext + value
    return bytes(out)


def uint(value):
    """RFC 7252 uint in the fewest bytes."""
    out = b""
    while value:
        out = bytes([value & 0xFF]) + out
        value >>= 8
    return out


def request(mid, token, path, query=(), block_num=None, payload=b""):
    """A Confirmable GET."""
    msg = bytearray([0x40 | len(token), 0x01]) + struct.pack(">H", mid) + token
    prev = 0
    for seg in path:
        msg += option(prev, 11, seg)
        prev = 11
    for q in query:
        msg += option(prev, 15, q)
        prev = 15
    if block_num is not None:
        msg += option(prev, 23, uint((block_num << 4) | SZX))
    if payload:
        msg += b"\xff" + payload
    return bytes(msg)


def parse(reply):
    """(type, code, mid, token, {option: [values]}, payload) of a reply."""
    if len(reply) < 4:
        raise ValueError("short reply")
    tkl = reply[0] & 0x0F
    mtype = (reply[0] >> 4) & 3
    code = reply[1]
    mid = struct.unpack(">H", reply[2:4])[0]
    token = reply[4 : 4 + tkl]
    i = 4 + tkl
    number = 0
    options = {}
    payload = b""
    while i < len(reply):
        first = reply[i]
        i += 1
        if first == 0xFF:
            payload = reply[i:]
            break
        fields = []
        for n in (first >> 4, first & 0x0F):
            if n == 13:
                n = reply[i] + 13
                i += 1
            elif n == 14:
                n = struct.unpack(">H", reply[i : i + 2])[0] + 269
                i += 2
            fields.append(n)
        number += fields[0]
        options.setdefault(number, []).append(reply[i : i + fields[1]])
        i += fields[1]
    return mtype, code, mid, token, options, payload


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def exchange(sock, addr, msg, timeout_s):
    """Sends `msg` until a reply with its Message ID comes back."""
    mid = msg[2:4]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.sendto(msg, addr)
        ready, _, _ = select.select([sock], [], [], 0.5)
        while ready:
            reply = sock.recv(2048)
            if reply[2:4] == mid:
                return reply
            ready, _, _ = select.select([sock], [], [], 0)
    raise RuntimeError("no answer from the server within %.0f s" % timeout_s)


# The legacy protocol's device payload on every block, as deployed devices
# send it: PIDLEN PID TYPE(3, APP) VERSION(1.0.0) OFFSET(0), little-endian.
LEGACY_PAYLOAD = bytes([9]) + b"BENCH-DEV" + bytes([3]) + struct.pack("<II", 0x01000000, 0)


def drive(addr, image, devices, downloads, timeout_s, legacy=False):
    """Every device downloads the image `downloads` times, stop-and-wait, by
    id or (`legacy`) by the legacy protocol; returns (blocks,
    retransmissions)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reply = exchange(
        probe,
        addr,
        request(1, b"look", [b"updates"], [b"pid=BENCH-DEV", b"type=APP", b"version=1.0.0"]),
        timeout_s,
    )
    probe.close()
    _, code, _, _, _, image_id = parse(reply)
    if code != 0x45 or len(image_id) != 8:
        raise RuntimeError("lookup failed: code %d.%02d" % (code >> 5, code & 31))
    blocks_per_download = (len(image) + BLOCK - 1) // BLOCK
    socks = []
    state = {}
    for d in range(devices):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        socks.append(s)
        # (next block, downloads left, message id, token, request, sent at)
        state[s] = [0, downloads, random.randrange(65536), struct.pack(">I", d), None, 0.0]
    rto = 2.0

    def send(s):
        st = state[s]
        st[2] = (st[2] + 1) & 0xFFFF
        if legacy:
            st[4] = request(st[2], st[3], [b"updates"], block_num=st[0], payload=LEGACY_PAYLOAD)
        else:
            st[4] = request(st[2], st[3], [b"updates", image_id], block_num=st[0])
        st[5] = time.monotonic()
        s.sendto(st[4], addr)

    for s in socks:
        send(s)
    active = set(socks)
    blocks = retx = 0
    last_progress = time.monotonic()
    while active:
        ready, _, _ = select.select(list(active), [], [], 0.25)
        now = time.monotonic()
        for s in ready:
            try:
                reply = s.recv(2048)
            except BlockingIOError:
                continue
            st = state[s]
            mtype, code, mid, token, options, payload = parse(reply)
            if mid != st[2] or token != st[3]:
                continue  # a late answer to a retransmission
            num = st[0]
            want = image[num * BLOCK : (num + 1) * BLOCK]
            if code != 0x45 or mtype != 2 or payload != want:
                raise RuntimeError("block %d: code %d.%02d, %d bytes, mismatch"
                                   % (num, code >> 5, code & 31, len(payload)))
            blocks += 1
            last_progress = now
            num += 1
            if num == blocks_per_download:
                num = 0
                st[1] -= 1
                if st[1] == 0:
                    active.discard(s)
                    continue
            st[0] = num
            send(s)
        for s in active:
            st = state[s]
            if now - st[5] > rto:
                st[5] = now
                s.sendto(st[4], addr)
                retx += 1
        if now - last_progress > timeout_s:
            raise RuntimeError("no progress for %.0f s" % timeout_s)
    for s in socks:
        s.close()
    return blocks, retx


def count(server, server_args, directory, image, devices, downloads, out_file, timeout_s, legacy, bind):
    """Total instructions (Ir) of one server run under callgrind."""
    port = free_port()
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=" + out_file,
        server,
        "-d",
        directory,
        "-l",
        "%s:%d" % (bind, port),
    ] + server_args
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # The server is up when it answers a CoAP ping (an empty CON) with an RST.
        ping = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        exchange(ping, ("127.0.0.1", port), b"\x40\x00\x00\x07", 60)
        ping.close()
        blocks, retx = drive(("127.0.0.1", port), image, devices, downloads, timeout_s, legacy)
    finally:
        # The server ends on SIGTERM (within its 1 s wake-up), and callgrind
        # writes the profile then.
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace"))
        raise RuntimeError("the server under valgrind exited with %d" % proc.returncode)
    with open(out_file) as f:
        text = f.read()
    m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    if not m:
        raise RuntimeError("no summary line in " + out_file)
    return int(m.group(1)), blocks, retx


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="target/release/iot-ota-server")
    p.add_argument("--devices", type=int, default=16)
    p.add_argument("--downloads", type=int, default=2,
                   help="downloads per device in the first run; the second run makes twice as many")
    p.add_argument("--max", type=int, default=0, help="fail above this many instructions per block (0: never)")
    p.add_argument("--keep", help="directory to keep the callgrind profiles in")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--wildcard", action="store_true",
                   help="listen on 0.0.0.0 (replies then name their source: recvmsg and sendmsg with "
                        "packet info) rather than on 127.0.0.1 (recvfrom and sendto)")
    p.add_argument("--legacy", action="store_true",
                   help="download by the legacy protocol (GET /updates with the device payload on every block)")
    p.add_argument("server_args", nargs="*", default=["-q"],
                   help="options after -d and -l (default: -q, the shipped defaults otherwise)")
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        print("make bench-instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="iot-ota-cg-")
    try:
        directory = os.path.join(work, "updates")
        os.mkdir(directory)
        image = bytes(random.Random(7).getrandbits(8) for _ in range(IMAGE_LEN))
        with open(os.path.join(directory, IMAGE_NAME), "wb") as f:
            f.write(image)
        keep = args.keep or work
        os.makedirs(keep, exist_ok=True)
        results = []
        for downloads in (args.downloads, 2 * args.downloads):
            out = os.path.join(keep, "callgrind.%d.out" % downloads)
            started = time.monotonic()
            total, blocks, retx = count(
                args.server, args.server_args, directory, image, args.devices, downloads, out, args.timeout,
                args.legacy, "0.0.0.0" if args.wildcard else "127.0.0.1",
            )
            results.append((total, blocks, retx))
            print("run: %6d blocks, %11d instructions in all, %d retransmissions, %.1f s (%s)"
                  % (blocks, total, retx, time.monotonic() - started, out))
    except RuntimeError as e:
        print("bench-instructions: " + str(e), file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    (t1, b1, r1), (t2, b2, r2) = results
    per_block = (t2 - t1) / (b2 - b1)
    print("instructions per block %s, %s (callgrind, start-up removed): %.0f"
          % ("by the legacy protocol" if args.legacy else "by id",
             "wildcard socket" if args.wildcard else "socket bound to 127.0.0.1", per_block))
    if r1 or r2:
        print("note: retransmissions add requests, and duplicates, to the count")
    if args.max and per_block > args.max:
        print("FAIL: above the threshold of %d" % args.max)
        return 1
    if args.max:
        print("PASS: at most %d" % args.max)
    return 0


if __name__ == "__main__":
    sys.exit(main())
