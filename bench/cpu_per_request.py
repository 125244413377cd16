"""A quick interleaved echo comparison that also reports the server's CPU
time per request (utime+stime of the server process over the run / requests),
which disturbs less than req/s when other processes share the machine.

    python bench/cpu_per_request.py --mode proto --size 1024 --conns 10 --rounds 3
    python bench/cpu_per_request.py --mode streams --strace   # syscall counts per loop in /tmp

Server pinned to CPU 0 (bench/servers.py), bench/build/echo_client (which
verifies every echoed byte) on CPU 1; each server is warmed with one
connection that opens and closes; loop order rotates per round. The full,
self-describing matrix is bench/run_benchmarks.py; this is the quick check.
"""
import argparse, json, os, socket, subprocess, sys, time, statistics
HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
CLK = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / CLK

def one(loop, mode, size, conns, duration, strace=False):
    cmd = ["taskset", "-c", "0", PY, f"{HERE}/servers.py", "--loop", loop, "--mode", mode, "--port", "0"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    port = None
    for line in p.stdout:
        if line.startswith("READY"):
            port = int(line.split()[1]); break
    # warm: one connection that opens and closes
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"x" * 16); s.recv(16); s.close()
    time.sleep(0.2)
    tr = None
    if strace:
        tr = subprocess.Popen(["strace", "-c", "-f", "-e", "trace=io_uring_enter,sendto,recvfrom,epoll_wait", "-p", str(p.pid), "-o", f"/tmp/strace-{loop}.txt"])
        time.sleep(0.5)
    c0 = cpu(p.pid)
    out = subprocess.run(["taskset", "-c", "1", f"{HERE}/build/echo_client", "--port", str(port), "--conns", str(conns),
                          "--size", str(size), "--duration", str(duration), "--warmup", "0"], capture_output=True, text=True).stdout
    c1 = cpu(p.pid)
    if tr:
        tr.send_signal(2); tr.wait()
    p.kill(); p.wait()
    r = json.loads(out)
    assert r["error_kinds"]["mismatch"] == 0, r
    if r["errors"]: print("  (", loop, "client errors:", r["error_kinds"], ")")
    return r["rps"], (c1 - c0) * 1e6 / max(1, r["requests"]), r["requests"]

ap = argparse.ArgumentParser()
ap.add_argument("--mode", default="proto"); ap.add_argument("--size", type=int, default=1024)
ap.add_argument("--conns", type=int, default=10); ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--duration", type=float, default=2); ap.add_argument("--loops", default="asyncio,uvloop,aiouring")
ap.add_argument("--strace", action="store_true")
a = ap.parse_args()
loops = a.loops.split(",")
res = {l: [] for l in loops}
for rnd in range(a.rounds):
    order = loops[rnd % len(loops):] + loops[:rnd % len(loops)]
    for l in order:
        res[l].append(one(l, a.mode, a.size, a.conns, a.duration, a.strace))
print(f"{a.mode} size={a.size} conns={a.conns} rounds={a.rounds}")
for l in loops:
    rps = statistics.median(x[0] for x in res[l]); us = statistics.median(x[1] for x in res[l])
    print(f"  {l:9s} rps={rps:9.0f}  server-cpu-us/req={us:6.2f}  reqs={[x[2] for x in res[l]]}")
