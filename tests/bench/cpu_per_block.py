#!/usr/bin/env python3
"""Server CPU per block against the raw UDP baseline, side by side.

    python3 tests/bench/cpu_per_block.py CLIENT SERVER [SERVER[@wild]]...

CLIENT is an iot-ota-client with the load generator (`bench`, `baseline`;
built with the cargo feature that carries them, if they are behind one).
Each responder (the baseline, then every SERVER, each with its default
options and -q, over one 256 KiB image; `@wild` listens on 0.0.0.0 rather
than 127.0.0.1) is pinned to CPU 1, the generator (16 devices, by id or
with BENCHPATH=legacy by the legacy protocol, polling) to CPU 0. For each
run the responder's CPU time from /proc/PID/schedstat is divided by the
blocks delivered; the runs of all responders are interleaved in a random
order (ROUNDS rounds, default 9; DOWNLOADS per device per run, default 20)
and the medians printed, with each one's ratio to the baseline's. Unlike
the throughput table of `make bench`, the figure does not depend on how
fast the generator is, only on what a block costs the responder, which
makes it steadier on a shared machine.
"""
import os, random, statistics, subprocess, sys, tempfile, time, socket

CLIENT = sys.argv[1]
SERVERS = sys.argv[2:]
ROUNDS = int(os.environ.get("ROUNDS", "9"))
DOWNLOADS = os.environ.get("DOWNLOADS", "20")
PATH = os.environ.get("BENCHPATH", "id")

def fnv(b):
    """FNV-1a 32: the image id is this hash of the file name."""
    h = 0x811c9dc5
    for x in b:
        h ^= x; h = (h * 0x01000193) & 0xffffffff
    return h

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]; s.close(); return p

def cpu_ns(pid):
    with open("/proc/%d/schedstat" % pid) as f:
        return int(f.read().split()[0])

d = tempfile.mkdtemp()
name = "BENCH-DEV_1_0_1_APP.fmu"
img = os.path.join(d, name)
with open(img, "wb") as f:
    f.write(bytes(random.Random(3).getrandbits(8) for _ in range(262144)))
image_id = "%08x" % fnv(name.encode())
procs = {}
for label, cmd in [("baseline", None)] + [("server%d" % i, s) for i, s in enumerate(SERVERS)]:
    port = free_port()
    if cmd is None:
        argv = ["taskset", "-c", "1", CLIENT, "baseline", "-l", "127.0.0.1:%d" % port]
    else:
        host = "127.0.0.1"
        if cmd.endswith("@wild"):
            cmd, host = cmd[:-5], "0.0.0.0"
        argv = ["taskset", "-c", "1", cmd, "-d", d, "-l", "%s:%d" % (host, port), "-q"]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs[label] = (p, port)
time.sleep(1.0)
results = {k: [] for k in procs}
for r in range(ROUNDS):
    order = list(procs)
    random.shuffle(order)
    for label in order:
        p, port = procs[label]
        argv = ["taskset", "-c", "0", CLIENT, "bench", "127.0.0.1:%d" % port, "--devices", "16",
                "--downloads", DOWNLOADS, "--spin", "--timeout-ms", "250"]
        if PATH == "legacy":
            argv += ["--path", "legacy", "--pid", "BENCH-DEV", "--version", "1.0.0"]
        else:
            argv += ["--id", image_id]
        argv += ["--baseline"] if label == "baseline" else ["--expect", img]
        before = cpu_ns(p.pid)
        out = subprocess.run(argv, capture_output=True, text=True).stdout
        after = cpu_ns(p.pid)
        line = [l for l in out.splitlines() if l.startswith("RESULT")][0]
        kv = dict(x.split("=", 1) for x in line.split()[1:])
        blocks = int(kv["blocks"])
        results[label].append(((after - before) / blocks, float(kv["blocks_per_s"]), int(kv["retransmissions"])))
for label, (p, _) in procs.items():
    p.kill()
base = statistics.median(x[0] for x in results["baseline"])
print("path %s, %d rounds, %s downloads x 16 devices each" % (PATH, ROUNDS, DOWNLOADS))
for label, rs in results.items():
    ns = statistics.median(x[0] for x in rs)
    bps = statistics.median(x[1] for x in rs)
    retx = sum(x[2] for x in rs)
    print("%-9s CPU per block %7.0f ns (runs: %s)  blocks/s %8.0f  retx %d  CPU/baseline %.3f" % (
        label, ns, " ".join("%.0f" % x[0] for x in sorted(rs)), bps, retx, ns / base))
