"""Where a push's milliseconds go inside the slave : the latency setup of
bench/bench.py (a cached 3,000-file clone, `echo ok`), then N pushes one at a time under
`perf record -e sched:sched_process_{fork,exec,exit}`; prints each exec'd child's p50
duration and the slave's gaps between them. The slave's threads are read from
/proc/<pid>/task (they were created before the trace started, so no fork event names them).
Needs root and perf. Usage: [BIN=<dir with hook and slave>] python3 scripts/trace-latency.py [N=20]
(STRACE=1: three pushes under `strace -f -ttt` instead, into $BENCH_OUT/strace.txt)."""
import os, sys, time, subprocess, json, re, signal, shutil
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
os.environ.setdefault("BENCH_OUT", "/tmp/ci-trace-latency")
import bench as B
B.BIN = os.environ.get("BIN", B.BIN)
shutil.rmtree(B.LOGS, ignore_errors=True); os.makedirs(B.LOGS, exist_ok=True)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
fixture = B.load_fixture()
redis = B.Redis()
base = os.path.join(B.WORK, "latency"); work = os.path.join(base, "work"); bare = os.path.join(base, "medium.git")
B.make_medium_repo(work); B.git("clone", "-q", "--bare", work, bare); B.git("remote", "add", "origin", bare, cwd=work)
url = f"file://{bare}"; repo, branch = "bench/medium", "main"
hook, hport = B.start_hook(redis, "t-hook"); slave = B.start_slave(redis, "t-slave", os.path.join(base, "cache")); cli = B.Client(hport)
B.wait_for(lambda: cli.metrics().get('ci_slaves{cluster="slave"}') == 1, 60, "live slave")
n = [0]
def new_commit():
    n[0] += 1; j = (n[0] * 7) % 3000
    with open(os.path.join(work, f"src/mod{j // 100:02d}/file{j:04d}.txt"), "a") as fh: fh.write(f"change {n[0]}\n")
    B.git("commit", "-q", "-am", f"change {n[0]}", cwd=work); B.git("push", "-q", "origin", "HEAD:main", cwd=work)
    return B.git("rev-parse", "HEAD", cwd=work).strip()
def push(sha):
    t0 = time.perf_counter(); code, _ = cli.push(B.push_body(fixture, repo, sha, branch, url, "m")); t202 = time.perf_counter()
    assert code == 202, code
    while True:
        st = cli.status(repo, branch)
        if st and st.get("sha") == sha and st.get("state") in ("passed", "failed"): break
        time.sleep(0.001)
    return t0, t202, time.perf_counter(), st
push(B.git("rev-parse", "HEAD", cwd=work).strip())
for _ in range(3): push(new_commit())
data = os.path.join(B.WORK, "perf.data")
if os.environ.get("STRACE"):
    st = B.start("strace", ["strace", "-f", "-ttt", "-o", os.path.join(os.environ["BENCH_OUT"], "strace.txt"), "-p", str(slave.pid)]); time.sleep(1.5)
    for _ in range(3): print(push(new_commit())[:3])
    time.sleep(0.3); st.send_signal(signal.SIGINT); st.wait(10); B.stop(slave); B.stop(hook); sys.exit(0)
perf = B.start("perf", ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-a", "-o", data, "-e",
                        "sched:sched_process_fork,sched:sched_process_exec,sched:sched_process_exit"])
time.sleep(1.0)
samples = []
for _ in range(N):
    sha = new_commit(); samples.append(push(sha))
tids = {int(t) for t in os.listdir(f"/proc/{slave.pid}/task")}
time.sleep(0.2); os.killpg(perf.pid, signal.SIGINT); perf.wait(30); B.PROCS.remove(perf)
text = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True).stdout; open(os.path.join(B.OUT, "perf.txt"), "w").write(text)
# every task: fork ts, parent, exec name, exit
forks, execs, exits, comm = {}, {}, {}, {}
for line in text.splitlines():
    m = re.match(r"\s*(.+?)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+sched:(\w+):\s+(.*)$", line)
    if not m: continue
    c, pid, ts, kind, rest = m.groups(); kv = dict(re.findall(r"(\w+)=(\S+)", rest)); ts = float(ts)
    if kind == "sched_process_fork": forks[int(kv["child_pid"])] = (ts, int(kv["pid"]))
    elif kind == "sched_process_exec": execs.setdefault(int(kv["pid"]), (ts, os.path.basename(kv["filename"])))
    elif kind == "sched_process_exit": exits[int(kv["pid"])] = ts
tasks = {slave.pid} | tids
for c, (ts, p) in sorted(forks.items(), key=lambda x: x[1][0]):
    if p in tasks and c not in execs and c not in exits: tasks.add(c)  # threads (never exit during trace mostly)
tasks |= {c for c, (ts, p) in forks.items() if p == slave.pid}
direct = sorted((ts, c) for c, (ts, p) in forks.items() if p in tasks or p == slave.pid)
rows = []
for (t0, t202, t1, st) in samples:
    ev = []
    for ts, c in direct:
        if t202 - 0.002 <= ts <= t1:
            name = execs.get(c, (None, "fork-noexec"))[1]
            # children of this child (e.g. upload-pack)
            sub = [execs.get(cc, (None, "?"))[1] for cc, (tt, pp) in forks.items() if pp == c]
            ev.append((round((ts - t0) * 1000, 2), name, round(((exits.get(c) or t1) - ts) * 1000, 2), sub[:4]))
    rows.append({"total": round((t1 - t0) * 1000, 1), "202": round((t202 - t0) * 1000, 2), "ev": ev,
                 "build_ms": round((float(st["finished_at"]) - float(st["started_at"])) * 1000, 1)})
for r in rows: print(json.dumps(r))
# summary: median per name
import statistics
names = {}
for r in rows:
    seen = {}
    for at, name, dur, sub in r["ev"]:
        k = name + ("#%d" % seen.get(name, 0) if seen.get(name, 0) else ""); seen[name] = seen.get(name, 0) + 1
        names.setdefault(k, []).append(dur)
print("median total", statistics.median(r["total"] for r in rows))
for k, v in names.items(): print(f"{k:20s} n={len(v):3d} p50={statistics.median(v):.2f} ms")
B.stop(slave); B.stop(hook)
# exec'd children only: durations and gaps
gaps, durs, lead = {}, {}, []
for r in rows:
    ex = [e for e in r["ev"] if e[1] != "fork-noexec"]
    if not ex: continue
    lead.append(ex[0][0] - r["202"])
    for i, (at, name, dur, sub) in enumerate(ex):
        durs.setdefault(f"{i}:{name}", []).append(dur)
        if i: gaps.setdefault(f"gap before {i}:{name}", []).append(at - (ex[i-1][0] + ex[i-1][2]))
    gaps.setdefault("last exit -> seen", []).append(r["total"] - (ex[-1][0] + ex[-1][2]))
print("202 -> first spawn p50", statistics.median(lead))
for d in (durs, gaps):
    for k, v in d.items(): print(f"{k:28s} n={len(v):3d} p50={statistics.median(v):.2f} ms")
print("202 p50", statistics.median(r["202"] for r in rows))
