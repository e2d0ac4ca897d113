#!/usr/bin/env python3
"""ci-backend benchmark suite (`make bench` → bench/run.sh → this file).

Run by bench/run.sh with bench/.venv's python: the standard library, plus Buildbot
(started as programs from the venv) and matplotlib (charts only). Everything it
starts (redis-server, hook, slaves, adnanh/webhook, Buildbot's master and worker,
wrk, redis-benchmark, examples/virtual_slaves, lighttpd with git http-backend, the
git server of the http rows) listens on 127.0.0.1 only, runs in
its own process group and is stopped by pid at the end. Every loop is bounded in
time or count. Results: bench/out/results.json and bench/out/results.md, logs in
bench/out/logs/, charts in docs/bench/.

Sections:
  ingest      wrk → hook, wrk → /usr/bin/webhook (HMAC rule + redis-cli LPUSH),
              redis-benchmark LPUSH 7000 B (the ceiling, with Redis's cost per command);
              fsync always, then everysec
  latency     push → status "passed" on a cached 3,000-file repository, and the
              floor (git fetch + git checkout + bash -c 'echo ok' by hand) interleaved;
              a row per URL kind (BENCH_URLS: file:// and http:// through the git
              server, the floor fetching from the same URL); what containment costs
  containers  the same with a container step (`image:`), the floor's step `docker run --rm`
  reuse       the same with a step whose inputs did not change: reused, no checkout
  buildbot    the same pushes to ours, Buildbot and the floor; signed-push ingest of both
  throughput  1,000 trivial builds over 50 repositories and 3 slaves, in variants
              (SLAVE_EXECUTORS, SLAVE_STEAL_AFTER, one slow repository, -http: over the git server)
  control     examples/virtual_slaves: 10, 100, 1,000 build-less slaves, 10,000 builds
  footprint   RSS idle/under load, binary sizes, image sizes
  balance     CRC32 mod N over 10,000 owner/name strings
  charts      docs/bench/{latency,push-to-result,throughput,control-plane}.png
"""

import atexit
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
# the binaries bench/run.sh just built (cargo's CARGO_TARGET_DIR when set); BENCH_BIN: compare another build
TARGET = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target", "release")
BIN = os.environ.get("BENCH_BIN", TARGET)
OUT = os.environ.get("BENCH_OUT", os.path.join(BENCH, "out"))
LOGS = os.path.join(OUT, "logs")
FIXTURE = os.path.join(BENCH, "fixtures", "github-push-with-new-branch.payload.json")

RUNS = int(os.environ.get("BENCH_RUNS", "3"))  # runs per measurement (median reported); 3 keeps the whole in BUDGET_S
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))  # wrk duration per run
CONNS = int(os.environ.get("BENCH_CONNS", "32"))
PUSHES = int(os.environ.get("BENCH_PUSHES", "100"))  # pushes per latency run
TP_REPOS = int(os.environ.get("BENCH_TP_REPOS", "50"))
TP_BRANCHES = int(os.environ.get("BENCH_TP_BRANCHES", "20"))  # 50 x 20 = 1,000 builds per run
TP_SLAVES = 3
# throughput variants: x<executors per slave>[-steal][-http (clone URLs through the git server)]; "slow-" makes one repository's
# builds take TP_SLOW_SECONDS (on its first TP_SLOW_BRANCHES branches, so a round stays bounded)
# (slow-x1 and slow-x1-steal: BENCH_TP_VARIANTS=...; out of the default for the budget, the x2 pair shows what stealing does)
TP_VARIANTS = os.environ.get("BENCH_TP_VARIANTS", "x1,x2,x2-http,slow-x2,slow-x2-steal").split(",")
# ingest's rounds and the container rows' runs: at most 3 whatever BENCH_RUNS (the full run of 2026-12-07 14:27
# took 1,581 s of its 1,500 with 5 runs of everything; the spread between runs was 1-8 %)
INGEST_RUNS = int(os.environ.get("BENCH_INGEST_RUNS", str(min(RUNS, 3))))
CONTAINER_RUNS = int(os.environ.get("BENCH_CONTAINER_RUNS", str(min(RUNS, 3))))
TP_RUNS = int(os.environ.get("BENCH_TP_RUNS", str(min(RUNS, 3))))  # warm rounds of the variants in TP_FULL
TP_FULL = os.environ.get("BENCH_TP_FULL", "x1,x2").split(",")  # the plain variants the goal is read from
TP_VARIANT_WARM = int(os.environ.get("BENCH_TP_VARIANT_WARM", "1"))  # warm rounds of every other variant
BUDGET_S = 25 * 60  # the whole of `make bench` at the defaults
TP_STEAL_AFTER = os.environ.get("BENCH_TP_STEAL_AFTER", "2")  # SLAVE_STEAL_AFTER when a variant steals
TP_SLOW_SECONDS = int(os.environ.get("BENCH_TP_SLOW_SECONDS", "10"))
TP_SLOW_BRANCHES = int(os.environ.get("BENCH_TP_SLOW_BRANCHES", "3"))
# variants also measured by bench/client_throughput.py from outside (two more warm rounds: alone, then with a
# client polling GET /repos every BENCH_TP_CLIENT_POLL seconds)
TP_CLIENT = [v for v in os.environ.get("BENCH_TP_CLIENT", "x2").split(",") if v]
TP_CLIENT_POLL = os.environ.get("BENCH_TP_CLIENT_POLL", "0.2")
TP_CLIENT_BURST = int(os.environ.get("BENCH_TP_CLIENT_BURST", "50"))  # a third round: pushes in waves of this many (0: none)
EVERYSEC = os.environ.get("BENCH_EVERYSEC", "1") == "1"
# the floors run git as lean as the slave does: no automatic gc or maintenance after a fetch
LEAN_GIT = ["-c", "gc.auto=0", "-c", "maintenance.auto=false"]
SECTIONS = os.environ.get("BENCH_SECTIONS", "ingest,latency,containers,reuse,buildbot,throughput,control,footprint,balance,charts").split(",")
POLL_S = float(os.environ.get("BENCH_POLL_MS", "1")) / 1000  # status poll interval (latency, BENCH_FOLLOW=0)
FOLLOW = os.environ.get("BENCH_FOLLOW", "1") == "1"  # latency: wait for the result by following the live log
TOKEN = "bench-token-0123456789abcdefABCDEF"
INGEST_VARIANTS = 1000  # distinct repositories cycled over by wrk

PROCS = []  # every Popen we started
WORK = tempfile.mkdtemp(prefix="ci-bench-")
os.chmod(WORK, 0o755)  # a root slave runs steps (and their checkouts) as nobody
RESULTS = {"runs": RUNS}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- processes


def start(name, argv, env=None, cwd=None):
    """Starts a process in its own group, output to bench/out/logs/<name>.log."""
    out = open(os.path.join(LOGS, f"{name}.log"), "ab")
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=cwd, start_new_session=True)
    p.bench_name = name
    PROCS.append(p)
    return p


def stop(p, grace=10.0):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)
    if p in PROCS:
        PROCS.remove(p)


def stop_soon(p):
    """SIGTERM without waiting: the hook takes about 10 s to exit after SIGTERM (its accept loop), which the
    bench need not wait for; cleanup() reaps it (or kills it) at the end."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def cleanup():
    for p in list(PROCS):
        stop(p, 5)
    if os.environ.get("BENCH_KEEP") != "1":
        shutil.rmtree(WORK, ignore_errors=True)


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
signal.signal(signal.SIGINT, lambda *_: sys.exit(130))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid):
    """VmRSS and VmHWM (KiB) and Threads of a process."""
    got = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    got[k] = int(v.split()[0])
    except FileNotFoundError:
        pass
    return got


def proc_cpu(pid, children=False):
    """CPU seconds (user + system) a process used, with its reaped children's if asked."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            v = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    ticks = int(v[11]) + int(v[12]) + ((int(v[13]) + int(v[14])) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_parts(redis, hook, slaves):
    """CPU seconds so far of each part of a throughput run: the hook, Redis, the slaves themselves, what the
    slaves started (git, its upload side, bash, guards: reaped children), and this bench (posting, polling)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    parts = {"hook": proc_cpu(hook.pid), "redis": proc_cpu(redis.proc.pid),
             "slaves": sum(proc_cpu(p.pid) for p in slaves),
             "slave_children": sum(proc_cpu(p.pid, children=True) - proc_cpu(p.pid) for p in slaves),
             "bench": me.ru_utime + me.ru_stime}
    if GIT_SERVER is not None:  # lighttpd and its CGIs (git http-backend, upload-pack): the serving side of http fetches
        parts["git_server"] = proc_cpu(GIT_SERVER.proc.pid, children=True)
    return parts


def cpu_ticks():
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def wait_for_quiet(limit=float(os.environ.get("BENCH_QUIET_WAIT", "180"))):
    """Other work on the machine skews every figure: wait (bounded) until the CPUs are mostly idle."""
    t0, quiet = time.monotonic(), 0
    busy = 1.0
    while time.monotonic() - t0 < limit and quiet < 3:
        b0, t_0 = cpu_ticks()
        time.sleep(1)
        b1, t_1 = cpu_ticks()
        busy = (b1 - b0) / max(1, t_1 - t_0)
        quiet = quiet + 1 if busy < 0.25 else 0
    return {"waited_s": round(time.monotonic() - t0, 1), "busy_last_s": round(busy, 2)}


def disk_busy_ms():
    """Milliseconds the block devices have spent doing I/O (io_ticks of /proc/diskstats, whole disks)."""
    total = 0
    for line in open("/proc/diskstats"):
        f = line.split()
        if len(f) > 12 and not re.search(r"(loop|ram|dm-|\d+p\d+|[a-z]d[a-z]+\d+)$", f[2]):
            total += int(f[12])
    return total


def settle(limit=float(os.environ.get("BENCH_SETTLE", "90"))):
    """Between sections: wait (bounded) until what the last one left behind is done — the CPUs mostly
    idle, the disk idle, little dirty memory — so that each section starts on a quiet machine (the
    ingest writes gigabytes of AOF)."""
    t0, quiet = time.monotonic(), 0
    last = {}
    while time.monotonic() - t0 < limit and quiet < 2:
        b0, t_0 = cpu_ticks()
        d0 = disk_busy_ms()
        time.sleep(1)
        b1, t_1 = cpu_ticks()
        d1 = disk_busy_ms()
        mem = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith(("Dirty:", "Writeback:"))}
        last = {"cpu_busy": round((b1 - b0) / max(1, t_1 - t_0), 2), "disk_busy": round((d1 - d0) / 1000, 2),
                "dirty_mib": round((mem.get("Dirty", 0) + mem.get("Writeback", 0)) / 1024)}
        ok = last["cpu_busy"] < 0.25 and last["disk_busy"] < 0.10 and last["dirty_mib"] < 64
        quiet = quiet + 1 if ok else 0
    return {"waited_s": round(time.monotonic() - t0, 1), **last}


def wait_for(pred, timeout, what, every=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def run(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


def git(*args, cwd=None, env=None):
    e = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=WORK, GIT_AUTHOR_NAME="Bench", GIT_AUTHOR_EMAIL="bench@localhost",
             GIT_COMMITTER_NAME="Bench", GIT_COMMITTER_EMAIL="bench@localhost")
    e.update(env or {})
    return run(["git", *args], cwd=cwd, env=e)


# ---------------------------------------------------------------- the git server (smart HTTP)

# Which URL kinds the latency, containers and reuse sections measure, each its own row: file:// (the
# repository on the same disk) and http (the same repository served by lighttpd + git http-backend).
URL_KINDS = os.environ.get("BENCH_URLS", "file,http").split(",")
HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"  # from Debian's git package
LIGHTTPD = shutil.which("lighttpd") or "/usr/sbin/lighttpd"  # /usr/sbin: not on every user's PATH


class GitServer:
    """lighttpd (Debian's package) serving `git http-backend` as a CGI, as GitHub, Gitea and GitLab
    serve clones over smart HTTP: GIT_PROJECT_ROOT is the bench's scratch directory, so
    <WORK>/x/medium.git is http://127.0.0.1:<port>/git/x/medium.git. The access log records each
    request with its Git-Protocol header and the server's time (%D, µs)."""

    def __init__(self):
        if not os.access(HTTP_BACKEND, os.X_OK):
            raise RuntimeError(f"no {HTTP_BACKEND} (Debian's git package provides it)")
        self.port = free_port()
        self.access = os.path.join(LOGS, "git-http-access.log")
        conf = os.path.join(WORK, "lighttpd.conf")
        with open(conf, "w") as fh:
            fh.write(f"""server.document-root = "{WORK}"
server.bind = "127.0.0.1"
server.port = {self.port}
server.modules = ("mod_alias", "mod_cgi", "mod_setenv", "mod_accesslog")
server.errorlog = "{os.path.join(LOGS, 'git-http-error.log')}"
accesslog.filename = "{self.access}"
accesslog.format = "%h %t \\"%r\\" %>s %b \\"%{{Git-Protocol}}i\\" %D"
alias.url = ("/git/" => "{HTTP_BACKEND}/")
$HTTP["url"] =~ "^/git/" {{
  cgi.assign = ("" => "")
  setenv.set-environment = ("GIT_PROJECT_ROOT" => "{WORK}", "GIT_HTTP_EXPORT_ALL" => "1")
}}
""")
        run([LIGHTTPD, "-tt", "-f", conf])
        self.proc = start("git-http", [LIGHTTPD, "-D", "-f", conf])
        wait_for(lambda: http_get(self.port, "/ready")[0] != 0, 15, "lighttpd")  # 404: no such file
        self.version = run([LIGHTTPD, "-v"]).strip().splitlines()[0]
        self.backend_git = run(["/usr/lib/git-core/git", "--version"]).strip()
        RESULTS["git_server"] = {"server": self.version, "backend": f"{HTTP_BACKEND} ({self.backend_git})",
                                 "url": f"http://127.0.0.1:{self.port}/git/<path under the scratch dir>"}
        log(f"git server: {self.version}, {HTTP_BACKEND} ({self.backend_git}) on 127.0.0.1:{self.port}")

    def url(self, path):
        rel = os.path.relpath(path, WORK)
        if rel.startswith(".."):
            raise RuntimeError(f"{path} is outside the git server's root {WORK}")
        return f"http://127.0.0.1:{self.port}/git/{rel}"

    def flush(self):
        """lighttpd writes its access log in batches (about once a second): a marker request, then
        wait until its line is in the file (every request before it is then there too)."""
        self.marks = getattr(self, "marks", 0) + 1
        mark = f"GET /flush-{self.marks} "
        http_get(self.port, mark.split()[1])
        wait_for(lambda: os.path.exists(self.access) and mark in open(self.access, errors="replace").read(), 15,
                 "lighttpd's access log")

    def requests(self, path):
        """What the server answered for the repository at `path`: smart-HTTP requests (POST
        git-upload-pack, GET info/refs?service=), anything else (a dumb client's GETs of objects),
        non-200 answers, the Git-Protocol headers seen and the server's time per POST (ms)."""
        self.flush()
        prefix = "/git/" + os.path.relpath(path, WORK) + "/"
        out = {"post_upload_pack": 0, "info_refs_smart": 0, "other": 0, "not_200": 0, "protocols": {}, "post_ms": []}
        if not os.path.exists(self.access):
            return out
        for line in open(self.access, errors="replace"):
            m = re.search(r'"(\w+) (\S+) HTTP/[\d.]+" (\d+) \S+ "([^"]*)" (\d+)', line)
            if not m or not m.group(2).startswith(prefix):
                continue
            method, target, status, proto, us = m.groups()
            rest = target[len(prefix):]
            if method == "POST" and rest == "git-upload-pack":
                out["post_upload_pack"] += 1
                out["post_ms"].append(int(us) / 1000)
            elif method == "GET" and rest == "info/refs?service=git-upload-pack":
                out["info_refs_smart"] += 1
            else:
                out["other"] += 1
            out["not_200"] += status != "200"
            out["protocols"][proto] = out["protocols"].get(proto, 0) + 1
        return out

    def check_smart(self, path, what):
        """Raises unless the repository at `path` was fetched over smart HTTP only; returns the counts."""
        r = self.requests(path)
        if r["post_upload_pack"] == 0 or r["other"] or r["not_200"]:
            raise RuntimeError(f"{what}: not smart HTTP only, or failed requests, at {self.url(path)}: "
                               f"{ {k: v for k, v in r.items() if k != 'post_ms'} } (see {self.access})")
        ms = r.pop("post_ms")
        r["post_server_ms_p50"] = median(ms)
        return r


GIT_SERVER = None


def git_url(path, kind):
    """The clone URL of the bare repository at `path`: file://, or http:// through the git server
    (started on first use, kept for the whole bench)."""
    global GIT_SERVER
    if kind == "file":
        return f"file://{path}"
    if kind != "http":
        raise RuntimeError(f"BENCH_URLS: {kind!r}: expected file or http")
    if GIT_SERVER is None:
        GIT_SERVER = GitServer()
    return GIT_SERVER.url(path)


# ---------------------------------------------------------------- redis


class Redis:
    def __init__(self):
        self.port = free_port()
        self.dir = os.path.join(WORK, "redis")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.fresh()

    def fresh(self):
        """A new redis-server on the same port with an empty directory: no section inherits the Redis of
        another (the ingest's hundreds of thousands of 7 KB writes); results record write_ms before
        and after the restart."""
        if self.proc is not None:
            stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)
        # as deployed (images/, make run): no RDB snapshots, AOF fsync'ed on every write
        self.proc = start("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                                    "--save", "", "--appendonly", "yes", "--appendfsync", "always"])
        wait_for(lambda: self.try_cli("PING") == "PONG", 10, "redis-server")

    def write_ms(self, n=100):
        """Median milliseconds of one durable write (SET, answered after its fsync), over n."""
        times = []
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            for i in range(n):
                t = time.perf_counter()
                sock.sendall(b"*3\r\n$3\r\nSET\r\n$11\r\nbench:probe\r\n$1\r\n" + str(i % 10).encode() + b"\r\n")
                if sock.recv(64) != b"+OK\r\n":
                    raise RuntimeError("redis probe: unexpected answer")
                times.append((time.perf_counter() - t) * 1000)
            sock.sendall(b"*2\r\n$3\r\nDEL\r\n$11\r\nbench:probe\r\n")
            sock.recv(64)
        return round(median(times), 3)

    def try_cli(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None

    def cli(self, *args):
        return run(["redis-cli", "-p", str(self.port), *args]).strip()

    def reset(self):
        """Empties Redis and shrinks the AOF, so every run starts alike."""
        self.cli("FLUSHALL")
        self.cli("BGREWRITEAOF")
        wait_for(lambda: "aof_rewrite_in_progress:0" in self.cli("INFO", "persistence")
                 and "aof_rewrite_scheduled:0" in self.cli("INFO", "persistence"), 60, "AOF rewrite")

    def fsync(self, mode):
        self.cli("CONFIG", "SET", "appendfsync", mode)

    def info(self, section):
        out = {}
        for line in self.cli("INFO", section).splitlines():
            k, sep, v = line.partition(":")
            if sep:
                out[k] = v.strip()
        return out

    def cpu_s(self):
        """Redis's own CPU seconds (INFO cpu: used_cpu_sys + used_cpu_user)."""
        i = self.info("cpu")
        return float(i["used_cpu_sys"]) + float(i["used_cpu_user"])

    def commandstats(self):
        """{command: {calls, usec, failed_calls}} from INFO commandstats (commands run inside a script count
        under their own name too; a script's usec includes them)."""
        out = {}
        for k, v in self.info("commandstats").items():
            if k.startswith("cmdstat_"):
                f = dict(x.split("=", 1) for x in v.split(","))
                out[k[8:]] = {"calls": int(f["calls"]), "usec": int(f["usec"]), "failed_calls": int(f.get("failed_calls", 0))}
        return out


def stats_delta(a, b):
    """commandstats b − a, only commands that ran."""
    out = {}
    for k, v in b.items():
        o = a.get(k, {"calls": 0, "usec": 0, "failed_calls": 0})
        if v["calls"] > o["calls"]:
            out[k] = {f: v[f] - o[f] for f in ("calls", "usec", "failed_calls")}
    return out


def register_fake_slave(redis):
    """Makes cluster `slave` look live with N=1 without a consumer: the hook's
    enqueue finds a slave, the jobs stay queued (ingest measures the hook only)."""
    far = int(time.time() * 1000) + 10 * 365 * 86400 * 1000
    redis.cli("SADD", "ci:clusters", "slave")
    redis.cli("ZADD", "ci:members:slave", str(far), "0")
    redis.cli("HSET", "ci:maxindex", "slave", "0")
    redis.cli("HSET", "ci:holders:slave", "0", f"bench {far}")


# ---------------------------------------------------------------- hook, slaves, http


def start_hook(redis, name="hook"):
    port = free_port()
    p = start(name, [os.path.join(BIN, "hook")],
              env={"HOOK_ADDR": f"127.0.0.1:{port}", "REDIS_URL": redis.url, "HOOK_TOKEN": TOKEN, "RUST_LOG": "info"})
    wait_for(lambda: http_get(port, "/ping")[0] == 200, 15, "hook /ping")
    return p, port


def start_slave(redis, name, cache, cluster="slave", env=None):
    logf = os.path.join(LOGS, f"{name}.log")
    p = start(name, [os.path.join(BIN, "slave")],
              env={"REDIS_URL": redis.url, "SLAVE_CACHE": cache, "SLAVE_CLUSTER": cluster, "RUST_LOG": "info", **(env or {})})
    wait_for(lambda: os.path.exists(logf) and "slave.ready" in open(logf).read(), 60, f"{name} slave.ready")
    return p


def http_get(port, path, headers=None):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body
    except OSError:
        return 0, b""


class Client:
    """One keep-alive connection to the hook."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError

    def close(self):
        """The hook's graceful stop waits for open keep-alive connections: close ours first."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def push(self, body):
        sig = hmac.new(TOKEN.encode(), body, hashlib.sha256).hexdigest()
        return self.request("POST", "/", body, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                                                "X-Hub-Signature-256": f"sha256={sig}"})

    def status(self, repo, branch):
        code, body = self.request("GET", f"/status/{repo}?branch={branch}", headers={"Accept": "application/json"})
        return json.loads(body) if code == 200 else None

    def metrics(self):
        _, body = self.request("GET", "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
        return out


# ---------------------------------------------------------------- payloads and names

FIRST = ("alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia peggy rupert sybil trent victor "
         "walter yusuf amir bea chen dmitri elena fatima giorgio hana igor jana kenji lena marco noor oskar priya "
         "quentin rosa sven tomas ursula vera wei ximena yara zoltan").split()
LAST = ("smith jones garcia miller davis lopez wilson anderson thomas moore martin lee walker hall allen young king "
        "wright scott green baker adams nelson hill campbell mitchell roberts carter phillips evans turner torres "
        "parker collins edwards stewart morris nguyen murphy rivera cook rogers morgan peterson cooper reed bailey "
        "bell kelly howard").split()
ADJ = ("fast tiny quick lazy brave calm clever eager fancy gentle happy jolly kind lively nice proud silly witty "
       "zesty bold cosmic crimson dark deep electric frozen golden hidden iron lunar mighty nimble quiet rapid "
       "rusty silent solar swift wild open little simple smart super").split()
NOUN = ("api app bot cache cli client config core crawler dashboard db docs engine forms gateway graph hub kit lib "
        "loader logger mailer mapper monitor notes parser pipeline platform plugin portal proxy queue router runner "
        "scheduler scraper sdk server service shell site spider store sync theme tools tracker ui utils validator "
        "viewer web widget worker blog chat wiki game editor compiler emulator").split()
ORG = ("acme initech globex umbrella hooli vandelay stark wayne cyberdyne tyrell soylent wonka aperture blackmesa "
       "oscorp massive dunder pied monarch nakatomi weyland gringotts octan prestige").split()
ORG_SUFFIX = ["", "-labs", "-io", "-inc", "-dev", "-oss", "hq", "-org", "-team", "-cloud"]
LANG = ["", "", "", "-js", "-py", "-rs", "-go", ".js", "-rb", "-java", "-php", "-ts", "4j", ".net"]


def owner_names(count, seed=20261126):
    """`count` distinct, realistic GitHub owner/name strings, the same every run."""
    rnd = random.Random(seed)
    seen, out = set(), []
    while len(out) < count:
        kind = rnd.random()
        if kind < 0.45:
            f, l = rnd.choice(FIRST), rnd.choice(LAST)
            owner = rnd.choice([f + l, f + "-" + l, f[0] + l, f + l[0], f + str(rnd.randint(1, 99)), l + f[:2],
                                f.capitalize() + l.capitalize()])
        elif kind < 0.8:
            owner = rnd.choice(ORG) + rnd.choice(ORG_SUFFIX)
        else:
            owner = rnd.choice(ADJ) + "-" + rnd.choice(NOUN) + rnd.choice(["", "s", "-dev", str(rnd.randint(1, 9))])
        shape = rnd.random()
        n1, n2 = rnd.choice(NOUN), rnd.choice(NOUN)
        if shape < 0.3:
            name = n1 + rnd.choice(LANG)
        elif shape < 0.55:
            name = rnd.choice(ADJ) + "-" + n1 + rnd.choice(LANG)
        elif shape < 0.7:
            name = n1 + "-" + n2
        elif shape < 0.8:
            name = rnd.choice(ADJ).capitalize() + n1.capitalize()
        elif shape < 0.87:
            name = owner.split("-")[0] + "-" + n1
        elif shape < 0.92:
            name = rnd.choice(["dotfiles", ".github", "homebrew-tap", "awesome-" + n1, owner + ".github.io"])
        else:
            name = n1 + "_" + n2 + rnd.choice(["", "_v2", "-legacy", "2"])
        full = f"{owner}/{name}"
        if full not in seen:
            seen.add(full)
            out.append(full)
    return out


def load_fixture():
    with open(FIXTURE, "rb") as f:
        return json.load(f)


def push_body(fixture, full_name, sha, branch=None, clone_url=None, message=None):
    """The GitHub fixture with another repository, commit and branch, minified."""
    text = json.dumps(fixture, separators=(",", ":"))
    old_sha = fixture["after"]
    owner, name = full_name.split("/", 1)
    text = text.replace("Codertocat/Hello-World", full_name).replace(old_sha, sha)
    d = json.loads(text)
    d["repository"]["name"] = name
    d["repository"]["owner"]["login"] = owner
    d["repository"]["owner"]["name"] = owner
    if clone_url:
        d["repository"]["clone_url"] = clone_url
    if branch:
        d["ref"] = f"refs/heads/{branch}"
        d["repository"]["default_branch"] = branch
        d["repository"]["master_branch"] = branch
    if message:
        d["head_commit"]["message"] = message
        d["commits"][-1]["message"] = message
    return json.dumps(d, separators=(",", ":")).encode()


# ---------------------------------------------------------------- stats helpers


def median(xs):
    return statistics.median(xs) if xs else None


def pct(xs, p):
    """Nearest-rank percentile."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def wrk_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v


def run_wrk(port, path, bodies, name, algo="sha256", timeout_s=None):
    """wrk's own per-request timeout is 2 s unless `timeout_s` (a slow peer's answers would count as socket errors)."""
    extra = [f"--timeout={timeout_s}s"] if timeout_s else []
    out = run(["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", "--latency", *extra, "-s", os.path.join(BENCH, "post.lua"),
               f"http://127.0.0.1:{port}", "--", bodies, path, algo], timeout=SECONDS + 60 + (timeout_s or 0))
    with open(os.path.join(LOGS, f"{name}.wrk.txt"), "a") as f:
        f.write(out + "\n")
    r = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
         "requests": int(re.search(r"(\d+) requests in", out).group(1))}
    for p in ("50", "99"):
        r[f"p{p}_ms"] = wrk_ms(re.search(rf"^\s+{p}(?:\.000)?%\s+(\S+)", out, re.M).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(map(int, m.groups())) if m else 0
    return r


# ---------------------------------------------------------------- 1. ingest


def ingest(redis, fixture):
    names = owner_names(INGEST_VARIANTS, seed=7)
    bodies = os.path.join(WORK, "bodies.txt")
    sizes = []
    rnd = random.Random(3)
    with open(bodies, "w") as f:
        for full in names:
            sha = "%040x" % rnd.getrandbits(160)
            b = push_body(fixture, full, sha, branch="main", clone_url=f"https://github.com/{full}.git")
            sizes.append(len(b))
            f.write(hmac.new(TOKEN.encode(), b, hashlib.sha256).hexdigest() + "\t" + b.decode() + "\n")
    RESULTS["ingest_body_bytes"] = {"min": min(sizes), "median": median(sizes), "max": max(sizes)}

    redis.reset()
    register_fake_slave(redis)
    hook, hport = start_hook(redis, "ingest-hook")
    time.sleep(0.5)
    hook_idle = proc_status(hook.pid)

    def hooks_json(sync):
        """adnanh/webhook as its README shows: HMAC-SHA256 rule on X-Hub-Signature-256, the payload passed
        to a command; here redis-cli itself (no shell in between: the peer at its fastest)."""
        path = os.path.join(WORK, f"hooks-{'sync' if sync else 'async'}.json")
        with open(path, "w") as f:
            json.dump([{
                "id": "ci-push",
                "execute-command": "/usr/bin/redis-cli",
                "command-working-directory": WORK,
                "http-methods": ["POST"],
                "include-command-output-in-response": sync,
                "success-http-response-code": 202,
                "trigger-rule-mismatch-http-response-code": 403,
                "response-message": "queued\n",
                "pass-arguments-to-command": [
                    {"source": "string", "name": "-h"}, {"source": "string", "name": "127.0.0.1"},
                    {"source": "string", "name": "-p"}, {"source": "string", "name": str(redis.port)},
                    {"source": "string", "name": "LPUSH"}, {"source": "string", "name": "webhook:pushes"},
                    {"source": "entire-payload"}],
                "trigger-rule": {"and": [
                    {"match": {"type": "payload-hmac-sha256", "secret": TOKEN,
                               "parameter": {"source": "header", "name": "X-Hub-Signature-256"}}},
                    {"match": {"type": "value", "value": "push",
                               "parameter": {"source": "header", "name": "X-GitHub-Event"}}}]},
            }], f, indent=2)
        shutil.copy(path, os.path.join(LOGS, os.path.basename(path).replace("hooks-", "webhook-hooks-")))
        return path

    def start_webhook(sync):
        port = free_port()
        p = start(f"webhook-{'sync' if sync else 'async'}", ["/usr/bin/webhook", "-hooks", hooks_json(sync), "-ip", "127.0.0.1",
                                                             "-port", str(port)])
        wait_for(lambda: http_get(port, "/")[0] != 0, 10, "webhook listening")
        return p, port

    wh = {"webhook": start_webhook(False), "webhook-sync": start_webhook(True)}
    webhook_idle = proc_status(wh["webhook"][0].pid)

    # sanity: all accept one signed push and refuse a bad signature
    first = open(bodies).readline().rstrip("\n").split("\t", 1)
    for port, path in ((hport, "/"), (wh["webhook"][1], "/hooks/ci-push"), (wh["webhook-sync"][1], "/hooks/ci-push")):
        for sig, good in ((first[0], True), ("0" * 64, False)):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("POST", path, first[1].encode(), {"Content-Type": "application/json", "X-GitHub-Event": "push",
                                                       "X-Hub-Signature-256": "sha256=" + sig})
            got = c.getresponse().status
            if (good and got != 202) or (not good and got < 400):  # webhook answers 500 to a bad HMAC
                raise RuntimeError(f"ingest sanity: {path} on {port} answered {got} (good signature: {good})")
    wait_for(lambda: redis.cli("LLEN", "webhook:pushes") == "2", 10, "webhook's LPUSH")

    modes = ["always"] + (["everysec"] if EVERYSEC else [])
    targets = {"always": ["hook", "webhook", "webhook-sync", "redis"], "everysec": ["hook", "redis"]}
    res = {m: {t: [] for t in targets[m]} for m in modes}
    hook_after = []
    webhook_peak = {}
    for mode in modes:
        redis.fsync(mode)
        log(f"ingest: appendfsync {mode}, {INGEST_RUNS} rounds of {' / '.join(targets[mode])}, {SECONDS}s each")
        for rnd_i in range(INGEST_RUNS):
            order = targets[mode][rnd_i % len(targets[mode]):] + targets[mode][:rnd_i % len(targets[mode])]
            for target in order:
                redis.reset()
                register_fake_slave(redis)
                who = {"hook": hook.pid, "redis": None}.get(target) or (wh[target][0].pid if target in wh else None)
                cpu0 = (proc_cpu(who, children=True) if who else 0.0, proc_cpu(redis.proc.pid))
                cs0, rcpu0, t_run = redis.commandstats(), redis.cpu_s(), time.monotonic()
                if target == "hook":
                    before = Client(hport).metrics()
                    hook_log = os.path.join(LOGS, "ingest-hook.log")
                    offset = os.path.getsize(hook_log)
                    r = run_wrk(hport, "/", bodies, f"ingest-hook-{mode}")
                    with open(hook_log, errors="replace") as fh:
                        fh.seek(offset)
                        inside = [float(x) for x in re.findall(r"path=/ code=202 ms=([\d.]+)", fh.read())]
                    # time inside the hook's handler (body read, HMAC, parse, Redis script, answer)
                    r["handler_p50_ms"], r["handler_p99_ms"] = median(inside), pct(inside, 99)
                    after = Client(hport).metrics()
                    key = 'ci_requests_total{route="push",code="202"}'
                    r["accepted_202"] = int(after.get(key, 0) - before.get(key, 0))
                    r["durable_rps"] = r["accepted_202"] / SECONDS
                    st = proc_status(hook.pid)
                    r["rss_kib"], r["threads"] = st.get("VmRSS"), st.get("Threads")
                    hook_after.append(st)
                elif target.startswith("webhook"):
                    proc, port = wh[target]
                    r = run_wrk(port, "/hooks/ci-push", bodies, f"ingest-{target}-{mode}")
                    # CPU while the load ran (the default webhook's backlog runs later: not counted)
                    r["cpu_us_per_req"] = (proc_cpu(who, children=True) - cpu0[0]) * 1e6 / max(1, r["requests"])
                    r["redis_cpu_us_per_req"] = (proc_cpu(redis.proc.pid) - cpu0[1]) * 1e6 / max(1, r["requests"])
                    r["in_redis_at_end"] = int(redis.cli("LLEN", "webhook:pushes"))
                    r["durable_rps"] = r["in_redis_at_end"] / SECONDS
                    r["rss_kib"] = proc_status(proc.pid).get("VmRSS")
                    webhook_peak[target] = max(webhook_peak.get(target, 0), r["rss_kib"] or 0)
                    if target == "webhook":
                        # it answers 202 before running its command: start it afresh so its leftover
                        # work cannot disturb the next measurement (the loss check below follows it)
                        stop(proc)
                        wh[target] = start_webhook(False)
                else:
                    out = run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(redis.port), "-t", "lpush", "-d", "7000",
                               "-P", "1", "-c", str(CONNS), "-n", "100000", "--csv"], timeout=300)
                    with open(os.path.join(LOGS, f"ingest-redis-benchmark-{mode}.csv"), "a") as f:
                        f.write(out)
                    row = [x.strip('"') for x in out.strip().splitlines()[-1].split(",")]
                    r = {"rps": float(row[1]), "p50_ms": float(row[4]), "p99_ms": float(row[6])}
                    r["durable_rps"] = r["rps"]
                    r["requests"] = 100000
                if who and "cpu_us_per_req" not in r:
                    r["cpu_us_per_req"] = (proc_cpu(who, children=True) - cpu0[0]) * 1e6 / max(1, r["requests"])
                r.setdefault("redis_cpu_us_per_req", (proc_cpu(redis.proc.pid) - cpu0[1]) * 1e6 / max(1, r["requests"]))
                # part 5: what each request costs Redis, by command (the enqueue script vs a plain LPUSH)
                r["cmdstats"] = stats_delta(cs0, redis.commandstats())
                r["redis_busy"] = (redis.cpu_s() - rcpu0) / max(1e-9, time.monotonic() - t_run)
                res[mode][target].append(r)
                log(f"  {mode} round {rnd_i + 1} {target}: " + ", ".join(f"{k}={v}" for k, v in r.items()))
    redis.fsync("always")
    RESULTS["ingest"] = res
    RESULTS["ingest_webhook_loss_check"] = webhook_loss_check(redis, wh, start_webhook, bodies)
    RESULTS["ingest_rss"] = {"hook_idle": hook_idle, "hook_after_load": hook_after[-1] if hook_after else None,
                             "hook_after_max_rss": max((h.get("VmRSS", 0) for h in hook_after), default=None),
                             "webhook_idle": webhook_idle, "webhook_peak_after_run": webhook_peak}
    for proc, _ in wh.values():
        if proc:
            stop(proc)
    stop_soon(hook)


def children_of(pid):
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        n += 1
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return n


def webhook_loss_check(redis, wh, start_webhook, bodies):
    """One more run of the default webhook (not in the medians), with -verbose so its log says why,
    followed to the end: how many of the deliveries it answered 202 ever reach Redis."""
    stop(wh["webhook"][0])
    redis.fsync("always")
    redis.reset()
    register_fake_slave(redis)
    port = free_port()
    name = "webhook-async-verbose"
    p = start(name, ["/usr/bin/webhook", "-verbose", "-hooks", os.path.join(WORK, "hooks-async.json"), "-ip", "127.0.0.1",
                     "-port", str(port)])
    wait_for(lambda: http_get(port, "/")[0] != 0, 10, "webhook listening")
    r = run_wrk(port, "/hooks/ci-push", bodies, name)
    t_end = time.monotonic()
    r["in_redis_at_end"] = int(redis.cli("LLEN", "webhook:pushes"))
    r["rss_kib_at_end"] = proc_status(p.pid).get("VmRSS")
    r["children_at_end"] = children_of(p.pid)
    while time.monotonic() - t_end < 60:  # bounded: until it has no command left running
        if children_of(p.pid) == 0:
            n0 = redis.cli("LLEN", "webhook:pushes")
            time.sleep(1.0)
            if children_of(p.pid) == 0 and redis.cli("LLEN", "webhook:pushes") == n0:
                break
        time.sleep(0.5)
    r["backlog_s"] = round(time.monotonic() - t_end, 1)
    r["children_left"] = children_of(p.pid)
    r["eventually_in_redis"] = int(redis.cli("LLEN", "webhook:pushes"))
    r["lost"] = max(0, r["requests"] - r["eventually_in_redis"])
    text = open(os.path.join(LOGS, f"{name}.log"), errors="replace").read()
    errs = re.findall(r"error occurred: (.*)", text)
    kinds = {}
    for e in errs:
        k = re.sub(r"\d+", "N", e)[:80]
        kinds[k] = kinds.get(k, 0) + 1
    r["errors"] = dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:5])
    stop(p)
    log("  webhook loss check: " + ", ".join(f"{k}={v}" for k, v in r.items()))
    wh["webhook"] = (None, None)
    return r


# ---------------------------------------------------------------- 2. latency

INTEGRATION = "step: ok\nshell: echo ok\n"


def make_medium_repo(path, files=3000, integration=None):
    """A 3,000-file repository (~3 MB of text), like the one SPEC.md measured."""
    git("init", "-q", "-b", "main", path)
    rnd = random.Random(11)
    words = NOUN + ADJ + LAST
    lines = ["commit refs/heads/main", "committer Bench <bench@localhost> 1767225600 +0000", "data 14", "initial import"]
    blob = []
    for i in range(files):
        text = "\n".join(" ".join(rnd.choice(words) for _ in range(12)) for _ in range(12)) + "\n"
        blob.append((f"src/mod{i // 100:02d}/file{i:04d}.txt", text))
    blob.append(("integration.yml", integration or INTEGRATION))
    blob.append(("README.md", "# medium\nA benchmark repository.\n"))
    for p, text in blob:
        data = text.encode()
        lines.append(f"M 644 inline {p}")
        lines.append(f"data {len(data)}")
        lines.append(text)
    stream = ("\n".join(lines) + "\n").encode()
    subprocess.run(["git", "fast-import", "--quiet"], input=stream, cwd=path, check=True)
    git("checkout", "-q", "-f", "main", cwd=path)


def latency_rig(redis, fixture, tag="latency", integration=None, step_argv=None, slave_env=None, kind="file"):
    """A cached 3,000-file clone behind our hook and one slave, the floor's copy of that clone,
    and the three closures a latency measurement needs: new_commit(), through_hook(sha, msg)
    and floor(sha). The first build (the clone) is made and not measured. `kind`: the push's clone
    URL and the floor's `origin`, file:// or http:// (the same repository through the git server)."""
    base = os.path.join(WORK, tag)
    work = os.path.join(base, "work")
    bare = os.path.join(base, "medium.git")
    make_medium_repo(work, integration=integration)
    git("clone", "-q", "--bare", work, bare)
    git("remote", "add", "origin", bare, cwd=work)
    git("fetch", "-q", "origin", cwd=work)
    url = git_url(bare, kind)
    repo, branch = "bench/medium", "main"

    redis.reset()
    hook, hport = start_hook(redis, f"{tag}-hook")
    cache = os.path.join(base, "cache")
    slave = start_slave(redis, f"{tag}-slave", cache, env=slave_env)
    cli = Client(hport)
    follower = Client(hport)

    # first build: the clone (cold), not measured
    sha = git("rev-parse", "HEAD", cwd=work).strip()
    code, _ = cli.push(push_body(fixture, repo, sha, branch, url, "initial import"))
    assert code == 202, code
    wait_for(lambda: (cli.status(repo, branch) or {}).get("state") in ("passed", "failed"), 120, "first build")
    first = cli.status(repo, branch)
    if first["state"] != "passed":
        raise RuntimeError(f"latency: first build failed: {first.get('log')}")
    checkout = os.path.join(cache, "bench%2Fmedium", "main", "checkout")
    if not os.path.isdir(os.path.join(checkout, ".git")):
        raise RuntimeError(f"latency: no cached clone at {checkout}")
    floor_dir = os.path.join(base, "floor-clone")
    shutil.copytree(checkout, floor_dir, symlinks=True)
    git("update-index", "-q", "--refresh", cwd=floor_dir)  # the copy has new inodes: refresh the stat cache once
    # The slave's checkout borrows the mirror's objects (objects/info/alternates); the floor's copy must
    # not, or its fetch would find every commit the slave fetched first already there and transfer
    # nothing: its own copy of the objects, the borrowing removed (what `git clone --dissociate` does).
    git("repack", "-a", "-d", "-q", cwd=floor_dir)
    alternates = os.path.join(floor_dir, ".git", "objects", "info", "alternates")
    if os.path.exists(alternates):
        os.remove(alternates)
    git("cat-file", "-e", "HEAD^{tree}", cwd=floor_dir)
    # The slave's checkout fetches from its mirror; the floor fetches from the repository itself (over
    # http from the same server as the slave's mirror when kind is http).
    git("remote", "set-url", "origin", bare if kind == "file" else url, cwd=floor_dir)

    gitc = ["git", "-C", floor_dir, "-c", "advice.detachedHead=false", *LEAN_GIT]
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")

    def timed(argv, cwd=None):
        t = time.perf_counter()
        subprocess.run(argv, check=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return (time.perf_counter() - t) * 1000

    def floor(sha):
        r = {"fetch": timed(gitc + ["fetch", "--quiet", "--no-tags", "origin", "+refs/heads/main:refs/remotes/origin/main"]),
             "checkout": timed(gitc + ["checkout", "--quiet", "--force", "--detach", sha]),
             "bash": timed(step_argv(floor_dir) if step_argv else ["bash", "-c", "echo ok"], cwd=floor_dir)}
        r["total"] = r["fetch"] + r["checkout"] + r["bash"]
        # what the slave ran besides until it read the loose commit object itself
        r["show"] = timed(gitc + ["show", "-s", "--format=%cI%n%B", sha])
        return r

    def through_hook(sha, message, keep_log=False):
        body = push_body(fixture, repo, sha, branch, url, message)
        t0w, t0 = time.time(), time.perf_counter()
        code, answer = cli.push(body)
        t202 = time.perf_counter()
        if code != 202:
            raise RuntimeError(f"latency push answered {code}: {answer[:200]}")
        polls = 0
        if FOLLOW:
            # The result as a follower of the live log sees it: the stream ends with the
            # result line once the record is stored (no polling that would take CPU from the build).
            bid = json.loads(answer)["id"]
            code, text = follower.request("GET", f"/status/{repo}?id={bid}&follow=1")
            t1w, t1 = time.time(), time.perf_counter()
            result = text.decode().rstrip("\n").rsplit("\n", 1)[-1]
            if code != 200 or result not in ("passed", "failed"):
                raise RuntimeError(f"latency: follow of {bid} answered {code}: {text[-200:]}")
            st = cli.status(repo, branch)
            if st.get("sha") != sha or st.get("state") != result:
                raise RuntimeError(f"latency: follow said {result} for {sha}, the record says {st}")
        else:
            deadline = t0 + 30
            while True:
                st = cli.status(repo, branch)
                polls += 1
                if st and st.get("sha") == sha and st.get("state") in ("passed", "failed"):
                    break
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"latency: {sha} not finished after 30 s: {st}")
                time.sleep(POLL_S)
            t1w, t1 = time.time(), time.perf_counter()
        f = lambda k: float(st[k]) if st.get(k) is not None else None
        return {"total": (t1 - t0) * 1000, "post_202": (t202 - t0) * 1000, "state": st["state"], "polls": polls,
                "mono": (t0, t202, t1), "finished_mono": f("finished_at") - (t1w - t1), "started_mono": f("started_at") - (t1w - t1),
                "to_queued": (f("queued_at") - t0w) * 1000, "queue_wait": (f("started_at") - f("queued_at")) * 1000,
                "build": (f("finished_at") - f("started_at")) * 1000, "seen_after": (t1w - f("finished_at")) * 1000,
                **({"log": st.get("log") or []} if keep_log else {})}

    counter = [0]

    def new_commit():
        counter[0] += 1
        n = counter[0]
        j = (n * 7) % 3000
        with open(os.path.join(work, f"src/mod{j // 100:02d}/file{j:04d}.txt"), "a") as fh:
            fh.write(f"change {n}\n")
        msg = f"change {n}"
        git("commit", "-q", "-am", msg, cwd=work)
        git("push", "-q", "origin", "HEAD:main", cwd=work)
        return git("rev-parse", "HEAD", cwd=work).strip(), msg

    return types.SimpleNamespace(hook=hook, slave=slave, cli=cli, bare=bare, url=url, repo=repo, branch=branch, work=work,
                                 base=base, new_commit=new_commit, through_hook=through_hook, floor=floor, kind=kind,
                                 floor_dir=floor_dir, tag=tag, first=first)


def thread_cpu_ms(pid, name):
    """CPU ms (user + system) of the threads of `pid` named `name`."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                v = f.read().rsplit(")", 1)[1].split()
            total += int(v[11]) + int(v[12])
        except FileNotFoundError:
            continue
    return total * 1000 / os.sysconf("SC_CLK_TCK")


def containment_costs(log_path, skip, reaper_ms, builds):
    """What keeping bare builds apart cost per build, from the slave's own `build.finished` lines
    (groups_us, disarm_us; the first `skip` builds left out) and its reaper thread's CPU."""
    groups, disarm = [], []
    with open(log_path, errors="replace") as fh:
        for line in fh:
            if "build.finished" in line and "groups_us=" in line:
                kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
                groups.append(int(kv["groups_us"]) / 1000)
                disarm.append(int(kv["disarm_us"]) / 1000)
    groups, disarm = groups[skip:], disarm[skip:]
    return {"builds": len(groups), "groups_ms": {"p50": median(groups), "p99": pct(groups, 99)},
            "disarm_ms": {"p50": median(disarm), "p99": pct(disarm, 99)},
            "reaper_cpu_ms_per_build": reaper_ms / max(builds, 1)}


def row_key(section, kind):
    """RESULTS key of a section's row: the file:// row keeps the section's name, others add the kind."""
    return section if kind == "file" else f"{section}_{kind}"


def row_tag(section, kind):
    """Its logs' and scratch directory's name."""
    return section if kind == "file" else f"{section}-{kind}"


def interleaved(rig, n, what, check=None, before=None, runs_n=None):
    """RUNS (or `runs_n`) runs of `n` new commits, each pushed through the rig and built by hand (the floor) beside
    it, who goes first alternating; `check(push)` sees each push with its log; `before(sha, msg)`, not
    timed, runs after each commit is made and before either is measured. Returns the runs."""
    runs = []
    log(f"{what}: {runs_n or RUNS} runs x {n} pushes ({rig.kind}: {rig.url}), the floor by hand interleaved")
    for r_i in range(runs_n or RUNS):
        pushes, floors = [], []
        for i in range(n):
            sha, msg = rig.new_commit()
            if before:
                before(sha, msg)
            if i % 2 == 0:  # alternate who goes first, so neither always finds the objects in the page cache
                floors.append(rig.floor(sha))
                pushes.append(rig.through_hook(sha, msg, keep_log=check is not None))
            else:
                pushes.append(rig.through_hook(sha, msg, keep_log=check is not None))
                floors.append(rig.floor(sha))
            if check:
                check(pushes[-1])
                pushes[-1].pop("log")
        tot, fl = [p["total"] for p in pushes], [f["total"] for f in floors]
        summary = {"p50_ms": median(tot), "p99_ms": pct(tot, 99), "floor_p50_ms": median(fl), "floor_p99_ms": pct(fl, 99),
                   "failed": sum(1 for p in pushes if p["state"] != "passed")}
        summary["ratio_p50"] = summary["p50_ms"] / summary["floor_p50_ms"]
        # each push against the floor measured right beside it (same commit, adjacent in time):
        # robust to the machine's speed drifting within a run
        summary["paired_ratio_p50"] = median([p["total"] / f["total"] for p, f in zip(pushes, floors)])
        runs.append({"summary": summary, "pushes": pushes, "floors": floors})
        log(f"  run {r_i + 1}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return runs


def row_results(rig, runs, floor_keys=("fetch", "checkout", "bash", "total")):
    """What every latency-style row reports: its runs, where the time went, the floor's parts, and for
    an http row what the git server answered (smart HTTP checked)."""
    allp = [p for r in runs for p in r["pushes"]]
    allf = [f for r in runs for f in r["floors"]]
    out = {"kind": rig.kind, "url": rig.url, "pushes_per_run": len(runs[0]["pushes"]) if runs else 0,
           "runs": [r["summary"] for r in runs],
           "breakdown_all_pushes": {k: {"p50": median([p[k] for p in allp]), "p99": pct([p[k] for p in allp], 99)}
                                    for k in ("total", "post_202", "to_queued", "queue_wait", "build", "seen_after")},
           "floor_parts": {k: {"p50": median([f[k] for f in allf]), "p99": pct([f[k] for f in allf], 99)} for k in floor_keys}}
    if rig.kind == "http":
        out["git_server_requests"] = GIT_SERVER.check_smart(rig.bare, rig.tag)
    with open(os.path.join(LOGS, f"{rig.tag}-samples.json"), "w") as fh:
        json.dump(runs, fh)
    return out


def stop_rig(rig):
    stop(rig.slave)
    rig.cli.close()
    stop_soon(rig.hook)


def latency(redis, fixture):
    for kind in URL_KINDS:
        latency_row(redis, fixture, kind)


def latency_row(redis, fixture, kind):
    rig = latency_rig(redis, fixture, tag=row_tag("latency", kind), kind=kind)
    slave = rig.slave
    reaper_before = thread_cpu_ms(slave.pid, "reaper")
    slave_log = os.path.join(LOGS, f"{rig.tag}-slave.log")
    with open(slave_log, errors="replace") as fh:
        finished_before = sum(1 for line in fh if "build.finished" in line)
    runs = interleaved(rig, PUSHES, f"latency ({kind})")
    res = row_results(rig, runs, ("fetch", "checkout", "bash", "total", "show"))
    builds = sum(len(r["pushes"]) for r in runs)
    res.update({"slave_rss": proc_status(slave.pid), "hook_rss": proc_status(rig.hook.pid),
                "containment": containment_costs(slave_log, finished_before, thread_cpu_ms(slave.pid, "reaper") - reaper_before, builds)})
    if kind == URL_KINDS[0]:
        res["git_hardening"] = git_hardening(rig.floor_dir)
        if shutil.which("perf") and os.geteuid() == 0 and os.environ.get("BENCH_PERF", "1") == "1":
            res["traced"] = traced_pushes(slave, rig.new_commit, rig.through_hook)
        else:
            res["untraced"] = ("BENCH_PERF=0" if os.environ.get("BENCH_PERF", "1") != "1"
                               else "not root" if os.geteuid() != 0 else "no perf (Debian's linux-perf)")
    RESULTS[row_key("latency", kind)] = res
    stop_rig(rig)


# The options the slave gives the build user's git (src/slave/build/workspace.rs, build_git) that keep a
# build's checkout from running code of the build's: no hooks, no fsmonitor, no attributes; and its
# global configuration (only safe.directory).
GIT_HARDENING = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.attributesFile=/dev/null",
                 "-c", "credential.helper="]
GIT_HARDENING_N = int(os.environ.get("BENCH_GIT_HARDENING_N", "40"))


def git_hardening(clone, n=GIT_HARDENING_N):
    """The slave's git hardening on a checkout of the 3,000-file clone: `git checkout --force` between two
    commits with and without the options and the global config, interleaved (n of each, the order
    alternating); wall and CPU (the children's user + system, getrusage) per checkout."""
    if n <= 0:
        return None
    cfg = os.path.join(WORK, "hardening-gitconfig")
    with open(cfg, "w") as fh:
        fh.write("[safe]\n\tdirectory = *\n")
    a = git("rev-parse", "HEAD", cwd=clone).strip()
    b = git("rev-parse", "HEAD~1", cwd=clone).strip()
    base = ["git", "-C", clone, "-c", "advice.detachedHead=false", *LEAN_GIT]
    modes = {"plain": (base, dict(os.environ, GIT_CONFIG_GLOBAL="/dev/null")),
             "hardened": (base + GIT_HARDENING, dict(os.environ, GIT_CONFIG_GLOBAL=cfg))}
    got = {m: {"wall_ms": [], "cpu_ms": []} for m in modes}

    def children_cpu():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    for i in range(n):
        for m in (("plain", "hardened") if i % 2 == 0 else ("hardened", "plain")):
            argv, env = modes[m]
            for sha in (b, a):
                c0, t0 = children_cpu(), time.perf_counter()
                subprocess.run(argv + ["checkout", "--quiet", "--force", "--detach", sha], check=True, env=env)
                got[m]["wall_ms"].append((time.perf_counter() - t0) * 1000)
                got[m]["cpu_ms"].append((children_cpu() - c0) * 1000)
    out = {"checkouts_each": 2 * n, "options": " ".join(GIT_HARDENING) + " + GIT_CONFIG_GLOBAL (safe.directory = *)"}
    for m, v in got.items():
        out[m] = {k: {"p25": pct(x, 25), "p50": median(x), "p75": pct(x, 75)} for k, x in v.items()}
    out["hardened_minus_plain_ms"] = {k: out["hardened"][k]["p50"] - out["plain"][k]["p50"] for k in ("wall_ms", "cpu_ms")}
    log(f"git hardening: checkout p50 wall {out['plain']['wall_ms']['p50']:.2f} → {out['hardened']['wall_ms']['p50']:.2f} ms, "
        f"CPU {out['plain']['cpu_ms']['p50']:.2f} → {out['hardened']['cpu_ms']['p50']:.2f} ms")
    return out


TEST_IMAGE = "ci-test/busybox:1"


def test_image():
    """The container steps' image: Debian's static busybox in an image FROM scratch (no registry
    here), built once; None and the reason when no engine answers."""
    if subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        return None, "no Docker engine answers (docker info failed)"
    if subprocess.run(["docker", "image", "inspect", TEST_IMAGE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
        return TEST_IMAGE, None
    if not os.path.exists("/bin/busybox"):
        return None, "no /bin/busybox (Debian's busybox-static)"
    ctx = os.path.join(WORK, "image")
    os.makedirs(ctx, exist_ok=True)
    shutil.copy2("/bin/busybox", ctx)
    with open(os.path.join(ctx, "Dockerfile"), "w") as fh:
        fh.write('FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\nENV PATH=/bin\n')
    run(["docker", "build", "-q", "-t", TEST_IMAGE, ctx])
    return TEST_IMAGE, None


def containers(redis, fixture):
    """Push → result of a container step (`image:`, `echo ok`) on the cached 3,000-file clone, against
    the same by hand: git fetch + git checkout --force + docker run --rm -v <checkout>:/ci/checkout -w
    /ci/checkout <image> sh -c 'echo ok' on a cached clone, interleaved; a row per URL kind."""
    image, why = test_image()
    if image is None:
        RESULTS["containers"] = {"skipped": why}
        log(f"containers: skipped: {why}")
        return
    yml = f"step: contained\nimage: {image}\nshell: echo ok\n"
    docker_run = lambda d: ["docker", "run", "--rm", "-v", f"{d}:/ci/checkout", "-w", "/ci/checkout", image, "sh", "-c", "echo ok"]
    n = max(10, PUSHES // 5)
    for kind in URL_KINDS:
        rig = latency_rig(redis, fixture, tag=row_tag("containers", kind), integration=yml, step_argv=docker_run, kind=kind)
        runs = interleaved(rig, n, f"containers ({kind})", runs_n=CONTAINER_RUNS)
        RESULTS[row_key("containers", kind)] = row_results(rig, runs)
        stop_rig(rig)


# ---------------------------------------------------------------- 2f. reuse: steps that already passed

REUSE_YML = "step: ok\ninputs: [README.md]\nshell: echo ok\n"
REUSE_PUSHES = int(os.environ.get("BENCH_REUSE_PUSHES", str(max(10, PUSHES // 2))))  # half the latency's: the budget


def reuse(redis, fixture):
    """Push → result when the only step (`inputs: [README.md]`, `echo ok`) already passed: new_commit()
    changes a file under src/ only, so after the first build every build reuses the pass and needs no
    checkout (the slave logs `build.no_checkout`). Against the same floor as the latency section (git
    fetch + git checkout --force + bash by hand), interleaved; every measured push's log must say
    `[reused]` and not `[passed]` (read from the status API). A row per URL kind."""
    for kind in URL_KINDS:
        rig = latency_rig(redis, fixture, tag=row_tag("reuse", kind), integration=REUSE_YML, kind=kind)
        if not any(l.startswith("[passed]") for l in rig.first.get("log") or []):
            raise RuntimeError(f"reuse: the first build did not run its step: {rig.first.get('log')}")
        slave_log = os.path.join(LOGS, f"{rig.tag}-slave.log")
        count = lambda: open(slave_log, errors="replace").read().count("build.no_checkout")
        no_checkout0 = count()
        seen = {"reused": 0}

        def check(push):
            lines = push["log"]
            if push["state"] != "passed" or not any(l.startswith("[reused] ok (passed in build ") for l in lines) \
                    or any(l.startswith("[passed]") for l in lines):
                raise RuntimeError(f"reuse ({kind}): a push's step was not reused: state {push['state']}, log {lines}")
            seen["reused"] += 1

        runs = interleaved(rig, REUSE_PUSHES, f"reuse ({kind})", check)
        res = row_results(rig, runs)
        trees = [float(m) for m in re.findall(r"build\.trees .*trees_ms=([\d.]+)", open(slave_log, errors="replace").read())][-seen["reused"]:]
        res.update({"reused_pushes": seen["reused"], "no_checkout_builds": count() - no_checkout0, "trees_ms_p50": median(trees),
                    "integration_yml": REUSE_YML, "first_build_log": rig.first.get("log")})
        if res["no_checkout_builds"] != seen["reused"]:
            raise RuntimeError(f"reuse ({kind}): {seen['reused']} builds reused their step, the slave logged "
                               f"{res['no_checkout_builds']} build.no_checkout")
        RESULTS[row_key("reuse", kind)] = res
        reuse_fast_forward(rig, fixture, kind, check, seen)
        stop_rig(rig)


def reuse_fast_forward(rig, fixture, kind, check, seen):
    """The reuse row's fast-forward case: each new commit is first pushed to a branch `feature` and built
    there (not timed; the floor's clone fetches it too, as someone who built the feature by hand has it),
    then main is pushed at that commit and measured: a commit the slave's mirror already holds is not
    fetched again, and its step's pass is reused, so the build reads only Redis and the mirror."""
    def built_on_feature(sha, msg):
        git("push", "-q", "origin", f"{sha}:refs/heads/feature", cwd=rig.work)
        code, answer = rig.cli.push(push_body(fixture, rig.repo, sha, "feature", rig.url, msg))
        if code != 202:
            raise RuntimeError(f"reuse ff: the feature push answered {code}: {answer[:200]}")
        wait_for(lambda: (lambda st: st and st.get("sha") == sha and st.get("state") in ("passed", "failed"))(rig.cli.status(rig.repo, "feature")),
                 60, "the feature build")
        subprocess.run(["git", "-C", rig.floor_dir, *LEAN_GIT, "fetch", "--quiet", "--no-tags", "origin",
                        "+refs/heads/feature:refs/remotes/origin/feature"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    seen["reused"] = 0
    runs = interleaved(rig, REUSE_PUSHES, f"reuse, fast-forward ({kind})", check, before=built_on_feature)
    res = row_results(rig, runs)
    res.update({"reused_pushes": seen["reused"], "integration_yml": REUSE_YML})
    RESULTS[row_key("reuse_ff", kind)] = res


def perf_children(text, threads):
    """(fork, exec, exit, program) of every process a thread of the slave started (its guards,
    which never exec, left out), from `perf script` output of sched_process_{fork,exec,exit}.
    `threads`: the slave's thread ids (read from /proc: they were made before the trace)."""
    forks, execs, exits = {}, {}, {}
    for line in text.splitlines():
        m = re.match(r"\s*(.+?)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+sched:(\w+):\s+(.*)$", line)
        if not m:
            continue
        _, _, ts, kind, rest = m.groups()
        kv = dict(re.findall(r"(\w+)=(\S+)", rest))
        ts = float(ts)
        if kind == "sched_process_fork":
            forks[int(kv["child_pid"])] = (ts, int(kv["pid"]))
        elif kind == "sched_process_exec":
            execs.setdefault(int(kv["pid"]), (ts, kv["filename"]))
        elif kind == "sched_process_exit":
            exits[int(kv["pid"])] = ts
    kids = sorted((ts, c) for c, (ts, parent) in forks.items() if parent in threads and c in execs)
    return [(f, execs[c][0], exits.get(c), os.path.basename(execs[c][1])) for f, c in kids]


def traced_pushes(slave, new_commit, through_hook, count=30):
    """Extra pushes (not in the latency figures) with `perf record` of process fork/exec/exit on
    CLOCK_MONOTONIC: splits the slave's build into its child processes and the time between them."""
    data = os.path.join(WORK, "perf.data")
    threads = {int(t) for t in os.listdir(f"/proc/{slave.pid}/task")}
    perf = start("perf-record", ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-a", "-o", data, "-e",
                                 "sched:sched_process_fork,sched:sched_process_exec,sched:sched_process_exit"])
    time.sleep(1.0)
    samples = []
    for _ in range(count):
        sha, msg = new_commit()
        samples.append(through_hook(sha, msg))
    threads |= {int(t) for t in os.listdir(f"/proc/{slave.pid}/task")}
    time.sleep(0.2)
    os.killpg(perf.pid, signal.SIGINT)
    perf.wait(30)
    PROCS.remove(perf)
    text = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True).stdout
    kids = perf_children(text, threads)
    parts = {}
    for s in samples:
        t0, t202, t1 = s["mono"]
        mine = [k for k in kids if t202 - 0.001 <= k[0] <= t1 and k[2] is not None]
        gits = [k for k in mine if k[3] == "git"]
        bash = [k for k in mine if k[3] == "bash"]
        if len(gits) not in (2, 3) or len(bash) != 1:
            continue
        names = ["fetch", "checkout"] if len(gits) == 2 else ["fetch", "checkout", "show (packed commit)"]
        row = {"POST → 202": (t202 - t0), "202 → first git spawned (queue, BLMOVE, start script)": gits[0][0] - t202}
        prev_exit = None
        gaps = 0.0
        for name, k in zip(names + ["bash -c 'echo ok'"], sorted(gits + bash)):
            row[f"{name}: spawn → exit"] = k[2] - k[0]
            if prev_exit is not None:
                gaps += max(0.0, k[0] - prev_exit)
            prev_exit = k[2]
        row["slave between its children (sum of gaps)"] = gaps
        row["bash exit → finished_at (log, finish script)"] = s["finished_mono"] - bash[0][2]
        row["finished_at → seen by the client"] = t1 - s["finished_mono"]
        row["total"] = t1 - t0
        for k, v in row.items():
            parts.setdefault(k, []).append(v * 1000)
    with open(os.path.join(LOGS, "latency-perf-children.txt"), "w") as fh:
        fh.write("\n".join(f"{f:.6f} {e:.6f} {x if x is None else round(x, 6)} {n}" for f, e, x, n in kids) + "\n")
    return {"pushes": count, "analysed": len(next(iter(parts.values()), [])),
            "parts": {k: {"p50": median(v), "p99": pct(v, 99)} for k, v in parts.items()}}


# ---------------------------------------------------------------- 3. throughput

BRANCHES = ["main", "develop", "staging", "release/1.0", "release/1.1", "feature/login", "feature/search",
            "feature/api-v2", "fix/typo", "fix/crash-on-start", "renovate/deps", "dependabot/npm/lodash-4.17.21",
            "docs", "perf", "refactor/core", "ci", "experiment", "hotfix/1.0.1", "wip", "gh-pages"]


def make_tp_repo(bare, nrounds, branches, slow_yml=None):
    """A tiny repository with `nrounds` commits on each branch, under refs/bench/ (unreachable from branches
    until a run points the branch at them). Returns {branch: [sha per round]}. With `slow_yml`, every
    commit after round 0 carries that integration.yml (the slow repository of a variant)."""
    git("init", "-q", "--bare", "-b", "main", bare)
    lines, mark = [], 1
    t = 1767225600

    def data(text):
        b = text.encode()
        return [f"data {len(b)}", text]

    lines += ["commit refs/heads/main", "mark :1", f"committer Bench <bench@localhost> {t} +0000", *data("base"),
              "M 644 inline integration.yml", *data(INTEGRATION), "M 644 inline README.md", *data("# tiny\n")]
    marks = {}
    for bi, b in enumerate(branches):
        prev = 1
        for k in range(nrounds):
            mark += 1
            t += 1
            lines += [f"commit refs/bench/{bi}", f"mark :{mark}", f"committer Bench <bench@localhost> {t} +0000",
                      *data(f"{b} round {k}"), f"from :{prev}", "M 644 inline round.txt", *data(f"{b} {k}\n")]
            if slow_yml and k > 0:
                lines += ["M 644 inline integration.yml", *data(slow_yml)]
            marks.setdefault(b, []).append(mark)
            prev = mark
    mfile = bare + ".marks"
    subprocess.run(["git", "fast-import", "--quiet", f"--export-marks={mfile}"], input=("\n".join(lines) + "\n").encode(),
                   cwd=bare, check=True)
    bymark = dict(l.split() for l in open(mfile).read().splitlines())
    return {b: [bymark[f":{m}"] for m in ms] for b, ms in marks.items()}


def point_branches(bare, shas, k):
    stdin = "".join(f"update refs/heads/{b} {s[k]}\n" for b, s in shas.items())
    subprocess.run(["git", "update-ref", "--stdin"], input=stdin.encode(), cwd=bare, check=True)


def throughput(redis, fixture):
    RESULTS["throughput_variants"] = {}
    RESULTS["throughput_floor_cpu_ms"] = throughput_floor()
    for name in TP_VARIANTS:
        m = re.fullmatch(r"(slow-)?x(\d+)(-steal)?(-http)?", name)
        if not m:
            raise RuntimeError(f"BENCH_TP_VARIANTS: {name!r}: expected x<executors>[-steal][-http], optionally slow- first")
        warm = TP_RUNS if name in TP_FULL else TP_VARIANT_WARM
        t = time.monotonic()
        res = throughput_variant(redis, fixture, name, int(m.group(2)), bool(m.group(3)), bool(m.group(1)), warm,
                                 kind="http" if m.group(4) else "file")
        if m.group(4):  # every repository was fetched over smart HTTP; the counts of the first one
            res["git_server_requests"] = GIT_SERVER.check_smart(os.path.join(WORK, f"throughput-{name}", "r00.git"), name)
        res["wall_s"] = round(time.monotonic() - t, 1)
        RESULTS["throughput_variants"][name] = res
        if name == "x1":
            RESULTS["throughput"] = res
        log(f"throughput: variant {name} done in {res['wall_s']}s")


def throughput_floor(n=100):
    """CPU-ms of one warm trivial build done by hand, on a repository like the throughput's: `git fetch` of a
    new commit into a bare mirror (with its upload side), `git checkout` in a clone sharing its objects,
    `bash -c 'echo ok'`, each as the slave runs them (no gc, no maintenance); children's CPU by getrusage."""
    base = os.path.join(WORK, "throughput-floor")
    os.makedirs(base)
    bare = os.path.join(base, "r.git")
    shas = make_tp_repo(bare, n + 1, ["main"])["main"]
    point_branches(bare, {"main": shas}, 0)
    mirror, co = os.path.join(base, "m.git"), os.path.join(base, "co")
    git("clone", "-q", "--bare", f"file://{bare}", mirror)
    git("clone", "-q", "--no-checkout", "--shared", mirror, co)
    lean = [*LEAN_GIT, "-c", "core.hooksPath=/dev/null"]
    parts = {"fetch": 0.0, "checkout": 0.0, "bash": 0.0}

    def children_cpu():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    for k in range(1, n + 1):
        point_branches(bare, {"main": shas}, k)
        for name, argv, cwd in [("fetch", ["git", *lean, "fetch", "--quiet", "--no-tags", "origin", "+refs/heads/main:refs/heads/main"], mirror),
                                ("checkout", ["git", *lean, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "--detach", shas[k]], co),
                                ("bash", ["bash", "-c", "echo ok"], co)]:
            c0 = children_cpu()
            subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
            parts[name] += children_cpu() - c0
    out = {k: round(v * 1000 / n, 2) for k, v in parts.items()}
    out["total"] = round(sum(out.values()), 2)
    out["builds"] = n
    log(f"throughput floor by hand: {out} CPU-ms per build")
    return out


def throughput_variant(redis, fixture, variant, executors, steal, slow, warm_rounds, kind="file"):
    base = os.path.join(WORK, f"throughput-{variant}")
    os.makedirs(base)
    repos = owner_names(TP_REPOS, seed=99)
    branches = BRANCHES[:TP_BRANCHES]
    nrounds = warm_rounds + 1  # round 0 = cold caches (clones), then warm rounds
    client_rounds = []  # then the outside client's rounds
    if variant in TP_CLIENT:
        client_rounds = ["alone", "repos_poller"] + ([f"bursts_of_{TP_CLIENT_BURST}"] if TP_CLIENT_BURST > 0 else [])
    slow_repo = repos[0] if slow else None
    slow_yml = f"step: slow\nshell: sleep {TP_SLOW_SECONDS}\n"
    t = time.monotonic()
    shas = {}
    for i, full in enumerate(repos):
        bare = os.path.join(base, f"r{i:02d}.git")
        shas[full] = (bare, make_tp_repo(bare, nrounds + len(client_rounds), branches, slow_yml if full == slow_repo else None))
    log(f"throughput {variant}: {len(repos)} repositories x {len(branches)} branches prepared in {time.monotonic() - t:.1f}s")

    redis.reset()
    hook, hport = start_hook(redis, f"tp-{variant}-hook")
    slave_env = {"SLAVE_EXECUTORS": str(executors), "SLAVE_STEAL_AFTER": TP_STEAL_AFTER if steal else "0"}
    slaves = []
    for s in range(TP_SLAVES):
        slaves.append(start_slave(redis, f"tp-{variant}-slave-{s}", os.path.join(base, f"cache-{s}"), env=slave_env))
    ready = [re.sub(r"cache=\S+", "", l) for l in open(os.path.join(LOGS, f"tp-{variant}-slave-0.log"), errors="replace")
             if "slave.ready" in l or "slave.start" in l]
    # until the executors/stealing change is merged the slave ignores both variables: say whether it read them
    knows = bool(re.search(r"\b(executors|steal\w*)=", " ".join(ready), re.I))
    cli = Client(hport)
    wait_for(lambda: cli.metrics().get('ci_slaves{cluster="slave"}') == TP_SLAVES, 60, "3 live slaves")
    time.sleep(0.5)
    slave_idle = [proc_status(p.pid) for p in slaves]
    hook_idle = proc_status(hook.pid)

    def builds_done(m):
        return m.get('ci_builds_total{result="passed"}', 0) + m.get('ci_builds_total{result="failed"}', 0)

    rounds = []
    peak_slave_rss = 0
    peak_hook_rss = 0
    mismatched_slave = 0
    for k in range(nrounds):
        for bare, s in shas.values():
            point_branches(bare, s, k)
        before = cli.metrics()
        done0 = builds_done(before)
        failed0 = before.get('ci_builds_total{result="failed"}', 0)
        bodies = []
        for bi, b in enumerate(branches):  # branch-major: all three slaves get work from the start
            for full in repos:
                if full == slow_repo and bi >= TP_SLOW_BRANCHES:
                    continue
                bare, s = shas[full]
                bodies.append((full, push_body(fixture, full, s[b][k], b, git_url(bare, kind), f"{b} round {k}")))
        sampler_stop = threading.Event()
        peaks = {"slave": 0, "hook": 0}

        def sample():
            while not sampler_stop.is_set():
                peaks["slave"] = max([peaks["slave"]] + [proc_status(p.pid).get("VmRSS", 0) for p in slaves])
                peaks["hook"] = max(peaks["hook"], proc_status(hook.pid).get("VmRSS", 0))
                sampler_stop.wait(0.1)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        cpu0 = cpu_ticks()
        parts0 = cpu_parts(redis, hook, slaves)
        t0 = time.perf_counter()
        coalesced = 0
        ids = []
        for full, body in bodies:
            code, ans = cli.push(body)
            if code != 202:
                raise RuntimeError(f"throughput push answered {code}: {ans[:200]}")
            a = json.loads(ans)
            coalesced += bool(a.get("coalesced"))
            ids.append(str(a.get("id")))
            if a["slave"] != f"slave-{zlib.crc32(full.encode()) % TP_SLAVES}":
                mismatched_slave += 1
        t_posted = time.perf_counter()
        expect = len(bodies) - coalesced
        m = wait_for(lambda: (lambda m: m if builds_done(m) - done0 >= expect else None)(cli.metrics()), 600,
                     f"{expect} builds", every=0.02)
        t1 = time.perf_counter()
        cpu1 = cpu_ticks()
        parts = {k: round((v - parts0[k]) * 1000 / max(1, expect), 2) for k, v in cpu_parts(redis, hook, slaves).items()}
        sampler_stop.set()
        th.join()
        peak_slave_rss = max(peak_slave_rss, peaks["slave"])
        peak_hook_rss = max(peak_hook_rss, peaks["hook"])
        r = {"round": k, "cold": k == 0, "builds": expect, "coalesced": coalesced,
             "failed": int(m.get('ci_builds_total{result="failed"}', 0) - failed0),
             "seconds": t1 - t0, "post_seconds": t_posted - t0, "builds_per_s": expect / (t1 - t0),
             "peak_slave_rss_kib": peaks["slave"], "peak_hook_rss_kib": peaks["hook"],
             "cpu_busy": (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1]),
             "cpu_ms_per_build": (cpu1[0] - cpu0[0]) * 1000 / os.sysconf("SC_CLK_TCK") / max(1, expect),
             "cpu_ms_per_build_by_part": parts}
        waits = build_waits(redis, sorted(set(ids)))
        w_all = [w for _, w in waits]
        w_fast = [w for repo, w in waits if repo != slow_repo]
        r.update({"queue_wait_p50_ms": median(w_all), "queue_wait_p95_ms": pct(w_all, 95), "queue_wait_max_ms": max(w_all, default=None),
                  "queue_wait_p95_ms_other_repos": pct(w_fast, 95)})
        rounds.append(r)
        log(f"  round {k} ({'cold: clones' if k == 0 else 'warm: fetch'}): {expect} builds in {r['seconds']:.2f}s = "
            f"{r['builds_per_s']:.1f}/s (posting took {r['post_seconds']:.2f}s), failed {r['failed']}, coalesced {coalesced}, "
            f"CPU busy {100 * r['cpu_busy']:.0f}%, {r['cpu_ms_per_build']:.0f} CPU-ms per build ({parts}), queue wait p95 "
            f"{r['queue_wait_p95_ms']:.0f} ms (other repositories {r['queue_wait_p95_ms_other_repos']:.0f} ms)")
    client = {}
    for j, what in enumerate(client_rounds):
        client[what] = client_round(redis, hook, hport, slaves, shas, repos, branches, slow_repo, fixture, nrounds + j,
                                    base, variant, what, kind)
    per_slave = {}
    for i, p in enumerate(slaves):
        per_slave[f"slave-{i}"] = open(os.path.join(LOGS, f"tp-{variant}-slave-{i}.log")).read().count("build.finished")
    res = {"variant": variant, "kind": kind, "executors": executors, "steal": steal, "steal_after": TP_STEAL_AFTER if steal else None,
           "slow_repo": slow_repo, "slow_seconds": TP_SLOW_SECONDS if slow else None,
           "slow_branches": TP_SLOW_BRANCHES if slow else None,
           "slave_env": slave_env, "slave_mentions_executors_or_steal": knows,
           "rounds": rounds, "slave_idle": slave_idle, "hook_idle": hook_idle,
           "slave_peak_rss_kib": peak_slave_rss, "hook_peak_rss_kib": peak_hook_rss,
           "slave_after": [proc_status(p.pid) for p in slaves], "builds_per_slave_log": per_slave,
           "slave_field_not_crc32_mod_3": mismatched_slave, "client": client}
    cli.close()
    for p in slaves:
        os.killpg(p.pid, signal.SIGTERM)  # all at once: each stops within its grace
    for p in slaves:
        stop(p)
    stop_soon(hook)
    return res


def client_round(redis, hook, hport, slaves, shas, repos, branches, slow_repo, fixture, k, base, variant, what, kind="file"):
    """One more warm round, posted and counted by bench/client_throughput.py (8 keep-alive connections, /metrics
    polled), as a client outside the bench sees it. `what`: "alone"; "repos_poller", a second client reads
    GET /repos every TP_CLIENT_POLL seconds meanwhile, and the hook's CPU per poll is measured once the backlog
    is done; "bursts_of_<n>", n pushes at a time, each burst counted before the next is posted."""
    poller = what == "repos_poller"
    for bare, s in shas.values():
        point_branches(bare, s, k)
    bodies = os.path.join(base, f"client-{k}.jsonl")
    with open(bodies, "wb") as f:
        for bi, b in enumerate(branches):
            for full in repos:
                if full == slow_repo and bi >= TP_SLOW_BRANCHES:
                    continue
                bare, s = shas[full]
                f.write(push_body(fixture, full, s[b][k], b, git_url(bare, kind), f"{b} round {k}") + b"\n")
    token = os.path.join(base, "token")
    with open(token, "w") as f:
        f.write(TOKEN)
    argv = [sys.executable, os.path.join(BENCH, "client_throughput.py"), "--url", f"http://127.0.0.1:{hport}",
            "--token-file", token, "--bodies", bodies, "--connections", "8", "--hook-pid", str(hook.pid)]
    if poller:
        argv += ["--poll-repos", TP_CLIENT_POLL]
    if what.startswith("bursts_of_"):
        argv += ["--burst", what.rsplit("_", 1)[1]]
    parts0 = cpu_parts(redis, hook, slaves)
    cpu0 = cpu_ticks()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    cpu1 = cpu_ticks()
    parts1 = cpu_parts(redis, hook, slaves)
    with open(os.path.join(LOGS, f"tp-{variant}-client-{k}.log"), "w") as f:
        f.write(" ".join(argv) + "\n" + p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"client_throughput.py exited {p.returncode}: {(p.stdout + p.stderr)[-500:]}")
    r = json.loads(p.stdout)
    n = max(1, r["builds"])
    idle = r.get("repos_poll_idle", {})
    # the hook's part without the afterwards /repos measurement's polls; the client's own CPU is not counted
    parts1["hook"] -= idle.get("hook_cpu_ms_per_poll", 0) * idle.get("polls", 0) / 1000
    r["cpu_ms_per_build_by_part"] = {key: round((parts1[key] - parts0[key]) * 1000 / n, 2) for key in parts0 if key != "bench"}
    r["cpu_busy"] = (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1])
    log(f"  round {k} (warm, bench/client_throughput.py, {what.replace('_', ' ')}{', GET /repos every ' + TP_CLIENT_POLL + ' s' if poller else ''}): "
        f"{r['builds']} builds in {r['seconds']:.2f}s = {r['builds_per_s']:.1f}/s as the client saw it (posting took "
        f"{r['post_seconds']:.2f}s), CPU busy {100 * r['cpu_busy']:.0f}%, CPU-ms per build {r['cpu_ms_per_build_by_part']}"
        + (f"; /repos: {r['repos_poll']['polls']} polls, p50 {r['repos_poll']['ms_p50']} ms" if poller else "")
        + (f"; hook CPU per /repos {idle['hook_cpu_ms_per_poll']} ms for {idle['branches']} branches = "
           f"{idle['hook_cpu_ms_per_poll_per_100_branches']} ms per 100 branches" if idle else ""))
    return r


WAITS_LUA = """local out = {}
for _, id in ipairs(ARGV) do
  local v = redis.call('HMGET', 'ci:build:' .. id, 'repo', 'queued_at', 'started_at')
  if v[2] and v[3] then out[#out + 1] = v[1] .. '\t' .. v[2] .. '\t' .. v[3] end
end
return out"""


def build_waits(redis, ids):
    """(repo, started_at − queued_at in ms) of each build, from its record in Redis."""
    out = []
    for i in range(0, len(ids), 500):
        text = redis.cli("EVAL", WAITS_LUA, "0", *ids[i:i + 500])
        for line in text.splitlines():
            repo, q, st = line.split("\t")
            out.append((repo, (float(st) - float(q)) * 1000))
    return out


# ---------------------------------------------------------------- 6. Buildbot, the peer

BB_PUSHES = int(os.environ.get("BENCH_BB_PUSHES", "40"))  # pushes sent to ours, Buildbot and the floor
BB_RUNS = int(os.environ.get("BENCH_BB_RUNS", str(min(RUNS, 3))))  # ingest runs per target
VENV_BIN = os.path.dirname(sys.executable)  # bench/run.sh runs this file with the venv's python
BB_PASSWORD = "bench-worker-pass"


def python_versions():
    from importlib import metadata
    out = {}
    for p in ("buildbot", "buildbot-worker", "buildbot-www", "Twisted", "SQLAlchemy", "matplotlib"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


class Buildbot:
    """A Buildbot master (bench/buildbot/master.cfg, sqlite) and one local worker, on free ports."""

    def __init__(self, base, repo_url, project):
        self.dir = os.path.join(base, "buildbot")
        master, worker = os.path.join(self.dir, "master"), os.path.join(self.dir, "worker")
        os.makedirs(self.dir)
        self.www, self.pb = free_port(), free_port()
        env = {"BB_WWW_PORT": str(self.www), "BB_PB_PORT": str(self.pb), "BB_SECRET": TOKEN, "BB_PROJECT": project,
               "BB_REPO_URL": repo_url, "BB_WORKER_PASSWORD": BB_PASSWORD}
        bb, bbw = os.path.join(VENV_BIN, "buildbot"), os.path.join(VENV_BIN, "buildbot-worker")
        if not os.path.exists(bb):
            raise RuntimeError(f"{bb} missing: run the bench through bench/run.sh, which makes the venv")
        run([bb, "create-master", "-q", master], timeout=300)
        shutil.copy(os.path.join(BENCH, "buildbot", "master.cfg"), master)
        self.master = start("buildbot-master", [bb, "start", "--nodaemon", master], env=env)
        wait_for(lambda: http_get(self.www, "/api/v2/masters")[0] == 200, 120, "Buildbot's www (/api/v2/masters)")
        run([bbw, "create-worker", "-q", worker, f"127.0.0.1:{self.pb}", "local", BB_PASSWORD], timeout=120)
        self.worker = start("buildbot-worker", [bbw, "start", "--nodaemon", worker])
        wait_for(lambda: self.worker_connected(), 120, "Buildbot's worker connected")
        self.db_path = os.path.join(master, "state.sqlite")
        self.master_dir = master
        self.db = None

    def worker_connected(self):
        code, body = http_get(self.www, "/api/v2/workers")
        return code == 200 and any(w.get("connected_to") for w in json.loads(body).get("workers", []))

    def sql(self, query, args=()):
        """Read-only, from the bench's process: the master's reactor serves nothing for it (WAL)."""
        import sqlite3
        if self.db is None:
            self.db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        for attempt in range(50):
            try:
                return self.db.execute(query, args).fetchall()
            except sqlite3.OperationalError:
                time.sleep(0.01)
        return self.db.execute(query, args).fetchall()

    def last_build_id(self):
        return self.sql("SELECT COALESCE(MAX(id), 0) FROM builds")[0][0]

    def changes(self):
        return self.sql("SELECT COUNT(*) FROM changes")[0][0]

    def post(self, conn, body, sig=None):
        sig = sig or hmac.new(TOKEN.encode(), body, hashlib.sha1).hexdigest()
        conn.request("POST", "/change_hook/github", body, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                                                           "X-Hub-Signature": f"sha1={sig}"})
        r = conn.getresponse()
        return r.status, r.read()

    def push_and_wait(self, conn, body, sha, after_id, timeout=120):
        """POST → the build of `sha` complete in Buildbot's database (polled every BENCH_POLL_MS)."""
        t0 = time.perf_counter()
        code, answer = self.post(conn, body)
        t_ans = time.perf_counter()
        if code != 200:
            raise RuntimeError(f"buildbot change hook answered {code}: {answer[:200]}")
        want = json.dumps(sha)
        while True:
            rows = self.sql("SELECT b.id, b.results FROM builds b JOIN build_properties p ON p.buildid = b.id "
                            "AND p.name = 'got_revision' WHERE b.id > ? AND b.complete_at IS NOT NULL AND p.value = ?",
                            (after_id, want))
            if rows:
                break
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"buildbot: no finished build of {sha} after {timeout} s")
            time.sleep(POLL_S)
        t1 = time.perf_counter()
        return {"total": (t1 - t0) * 1000, "answer": (t_ans - t0) * 1000, "build_id": rows[0][0],
                "passed": rows[0][1] == 0}

    def stop(self):
        if self.db is not None:
            self.db.close()
        stop(self.worker, 20)
        stop(self.master, 30)
        for name, d in (("master", self.master_dir), ("worker", os.path.join(self.dir, "worker"))):
            src = os.path.join(d, "twistd.log")
            if os.path.exists(src):
                shutil.copy(src, os.path.join(LOGS, f"buildbot-{name}-twistd.log"))


def buildbot(redis, fixture):
    """Same repository, same pushes: each new commit goes to our hook+slave, to Buildbot and to the
    floor, in a rotating order; then signed-push ingest of both with wrk on the same deliveries."""
    versions = python_versions()
    log(f"buildbot: versions {versions}")
    redis.reset()
    rig = latency_rig(redis, fixture, tag="buildbot")
    bb = Buildbot(rig.base, rig.url, rig.repo)
    conn = http.client.HTTPConnection("127.0.0.1", bb.www, timeout=60)
    # sanity: a bad signature and an unsigned delivery are refused (strict), a good one accepted
    sha0 = git("rev-parse", "HEAD", cwd=rig.work).strip()
    body0 = push_body(fixture, rig.repo, sha0, rig.branch, rig.url, "initial import")
    refused = {"bad signature": bb.post(conn, body0, "0" * 40)[0]}
    c2 = http.client.HTTPConnection("127.0.0.1", bb.www, timeout=10)
    c2.request("POST", "/change_hook/github", body0, {"Content-Type": "application/json", "X-GitHub-Event": "push"})
    refused["unsigned"] = c2.getresponse().status
    if any(v < 400 for v in refused.values()):
        raise RuntimeError(f"buildbot accepted a delivery it should refuse: {refused}")
    cold = bb.push_and_wait(conn, body0, sha0, bb.last_build_id(), timeout=300)  # the clone, not measured
    log(f"buildbot: first build (clone) {cold['total']:.0f} ms; refused {refused}")
    order_names = ["ours", "buildbot", "floor"]
    samples = {k: [] for k in order_names}
    failed = {"ours": 0, "buildbot": 0}
    log(f"buildbot: {BB_PUSHES} pushes, each to ours, Buildbot and the floor (order rotating)")
    for i in range(BB_PUSHES):
        sha, msg = rig.new_commit()
        body = push_body(fixture, rig.repo, sha, rig.branch, rig.url, msg)
        for who in order_names[i % 3:] + order_names[:i % 3]:
            if who == "ours":
                p = rig.through_hook(sha, msg)
                samples["ours"].append(p["total"])
                failed["ours"] += p["state"] != "passed"
            elif who == "buildbot":
                p = bb.push_and_wait(conn, body, sha, bb.last_build_id())
                samples["buildbot"].append(p["total"])
                failed["buildbot"] += not p["passed"]
            else:
                samples["floor"].append(rig.floor(sha)["total"])
    lat = {k: {"p50": median(v), "p90": pct(v, 90), "p99": pct(v, 99), "n": len(v)} for k, v in samples.items()}
    log("buildbot: latency " + "; ".join(f"{k} p50 {v['p50']:.1f} ms p90 {v['p90']:.1f} ms" for k, v in lat.items()))
    stop(rig.slave)

    # ingest: the same 1,000 deliveries (1,000 repositories) to both, sha256 for ours, sha1 for Buildbot
    names = owner_names(INGEST_VARIANTS, seed=7)
    rnd = random.Random(5)
    f256, f1 = os.path.join(WORK, "bb-bodies-256.txt"), os.path.join(WORK, "bb-bodies-1.txt")
    with open(f256, "w") as a, open(f1, "w") as b:
        for full in names:
            body = push_body(fixture, full, "%040x" % rnd.getrandbits(160), branch="main",
                             clone_url=f"https://github.com/{full}.git")
            a.write(hmac.new(TOKEN.encode(), body, hashlib.sha256).hexdigest() + "\t" + body.decode() + "\n")
            b.write(hmac.new(TOKEN.encode(), body, hashlib.sha1).hexdigest() + "\t" + body.decode() + "\n")
    ingest_res = {"ours": [], "buildbot": []}
    log(f"buildbot: ingest, {BB_RUNS} runs each of {SECONDS}s, {CONNS} connections")
    for k in range(BB_RUNS):
        for who in (["ours", "buildbot"] if k % 2 == 0 else ["buildbot", "ours"]):
            if who == "ours":
                redis.reset()
                register_fake_slave(redis)
                cs0 = redis.commandstats()
                m0 = rig.cli.metrics()
                r = run_wrk(rig.cli.port, "/", f256, "bb-ingest-ours")
                cs = stats_delta(cs0, redis.commandstats())
                # recorded, from Redis: enqueue scripts that completed (each stores the push: a new build, or
                # its branch's pending build takes the newer commit)
                ev = cs.get("evalsha", {"calls": 0, "failed_calls": 0})
                r["recorded"] = ev["calls"] - ev["failed_calls"]
                r["recorded_note"] = "enqueue script calls completed in Redis (INFO commandstats evalsha)"
                key = 'ci_requests_total{route="push",code="202"}'
                r["hook_202"] = int(rig.cli.metrics().get(key, 0) - m0.get(key, 0))
                r["queued_builds"] = int(redis.cli("GET", "ci:seq") or 0)
            else:
                c0 = bb.changes()
                cpu0 = proc_cpu(bb.master.pid)
                r = run_wrk(bb.www, "/change_hook/github", f1, "bb-ingest-buildbot", algo="sha1", timeout_s=30)
                r["recorded_at_end"] = bb.changes() - c0
                r["cpu_us_per_req"] = (proc_cpu(bb.master.pid) - cpu0) * 1e6 / max(1, r["requests"])
                # it may still be writing: follow (bounded) until the count stops growing
                t_end, last = time.monotonic(), -1
                while time.monotonic() - t_end < 30:
                    n = bb.changes() - c0
                    if n == last:
                        break
                    last = n
                    time.sleep(1.0)
                r["recorded"] = bb.changes() - c0
                r["recorded_note"] = "rows added to Buildbot's changes table (one change per push)"
            r["answers_2xx"] = r["requests"] - r["non2xx"]
            ingest_res[who].append(r)
            log(f"  ingest {who} run {k + 1}: {r['rps']:.0f}/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                f"non-2xx {r['non2xx']}, socket errors {r['socket_errors']}, recorded {r['recorded']}")
    # the wrk run sent N requests; the hook's 2xx are durably queued: count ours from its /metrics too
    RESULTS["buildbot"] = {
        "versions": versions, "pushes": BB_PUSHES, "latency": lat, "failed": failed, "cold_first_build_ms": cold["total"],
        "refused": refused, "ingest": ingest_res, "samples": samples,
        "unfair": [
            "Buildbot runs from a venv on CPython (Twisted reactor, one process) with sqlite (WAL), the create-master "
            "default; its manual recommends PostgreSQL or MySQL for busy masters",
            "treeStableTimer=None (a build per change at once); the scheduler filters on project bench/medium, branch main",
            "Buildbot's github hook checks only X-Hub-Signature (HMAC-SHA1); ours checks X-Hub-Signature-256. Each gets its "
            "own signature over the same bodies",
            "Buildbot's result is read from its sqlite database by the bench (read-only, WAL: no load on the master's "
            "reactor), polled every BENCH_POLL_MS; ours " + ("by following its live log over HTTP (GET /status?id=…&follow=1 ends "
            "when the result is stored)" if FOLLOW else "from GET /status over HTTP, polled every BENCH_POLL_MS"),
            "Buildbot's worker runs as root in one process with the master on the same host (PB over loopback); our "
            "slave runs steps as nobody",
            "ingest: wrk waits up to 30 s for each of Buildbot's answers (its default, 2 s, made them socket errors); "
            "2 s for ours, as in section 1",
            "ingest: our pushes land on a fake slave (no consumer) and coalesce per repository after the first 1,000; "
            "Buildbot's changes match no scheduler (other projects), so neither builds during ingest",
        ],
    }
    with open(os.path.join(LOGS, "buildbot-latency-samples.json"), "w") as fh:
        json.dump(samples, fh)
    conn.close()
    bb.stop()
    rig.cli.close()
    stop_soon(rig.hook)


# ---------------------------------------------------------------- 7. control plane: virtual slaves

CP_SLAVES = [int(x) for x in os.environ.get("BENCH_CP_SLAVES", "10,100,1000").split(",") if x]
CP_REPOS = int(os.environ.get("BENCH_CP_REPOS", "10000"))
CP_PRODUCERS = int(os.environ.get("BENCH_CP_PRODUCERS", "4"))
CP_IDLE_S = int(os.environ.get("BENCH_CP_IDLE", "5"))
CP_LEASE_MS = int(os.environ.get("BENCH_CP_LEASE_MS", "10000"))  # SLAVE_LEASE's default, 10 s


def control(redis, fixture):
    """examples/virtual_slaves.rs against the bench's Redis (AOF, fsync always), once per fleet size."""
    exe = os.path.join(TARGET, "examples", "virtual_slaves")
    if not os.path.exists(exe):
        raise RuntimeError(f"{exe} missing: bench/run.sh builds it (cargo build --release --example virtual_slaves)")
    maxclients = int(redis.cli("CONFIG", "GET", "maxclients").splitlines()[-1])
    rows = []
    for v in CP_SLAVES:
        need = v + CP_PRODUCERS + 8
        if need > maxclients:
            log(f"control: skipping V={v}: needs {need} connections, Redis maxclients is {maxclients}")
            continue
        redis.reset()
        t = time.monotonic()
        out = subprocess.run([exe, "--redis", redis.url, "--slaves", str(v), "--repos", str(CP_REPOS), "--producers",
                              str(CP_PRODUCERS), "--lease-ms", str(CP_LEASE_MS), "--idle-secs", str(CP_IDLE_S)],
                             capture_output=True, text=True, timeout=900)
        with open(os.path.join(LOGS, f"control-{v}.txt"), "w") as fh:
            fh.write(out.stdout + out.stderr)
        if out.returncode != 0:
            raise RuntimeError(f"virtual_slaves --slaves {v} exited {out.returncode}: {out.stderr[-400:]}")
        d = json.loads(out.stdout.strip().splitlines()[-1])
        run_, idle = d["run"], d["idle"]
        n = max(1, d["finished"])
        cmds = run_["commands"]
        # round trips: what the clients sent (each verb is one command or one script)
        c = run_["client"]
        trips = c["enqueues"] + c["takes"] + c["starts"] + c["finishes"] + c["renews"]
        nested = sum(x["calls"] for k, x in cmds.items() if k not in ("evalsha", "eval", "blmove", "info", "script|load",
                                                                     "script", "memory|usage", "get", "config|get"))
        row = {
            "slaves": v, "builds": d["finished"], "seconds": run_["seconds"], "builds_per_s": d["finished"] / run_["seconds"],
            "enqueue_seconds": d["enqueue_seconds"],
            "redis_cpu_us_per_build": run_["redis_cpu_s"] * 1e6 / n,
            "redis_busy": run_["redis_cpu_s"] / run_["seconds"],
            "round_trips_per_build": trips / n,
            "build_round_trips_per_build": (c["enqueues"] + c["starts"] + c["finishes"] + c["takes"] - c["takes_empty"]) / n,
            "commands_in_scripts_per_build": nested / n,
            "evalsha_us_per_call": cmds.get("evalsha", {}).get("usec", 0) / max(1, cmds.get("evalsha", {}).get("calls", 0)),
            "bytes_per_build_used_memory": run_["used_memory_delta"] / n,
            "bytes_build_record": d["bytes"]["build_record_median"],
            "bytes_branch_keys": d["bytes"]["branch_keys"],
            "bytes_history_entry": d["bytes"].get("history_entry"),
            "idle_renews_per_s": idle["client"]["renews"] / idle["seconds"],
            # the slave's heartbeat renews every lease/4 (the virtual slave between takes, so a little less often)
            "heartbeat_renews_per_s": v * 4000 / CP_LEASE_MS,
            "renew_us": idle["commands"].get("evalsha", {}).get("usec", 0) / max(1, idle["commands"].get("evalsha", {}).get("calls", 0)),
            "idle_empty_takes_per_s": idle["client"]["takes_empty"] / idle["seconds"],
            "idle_redis_cpu_share": idle["redis_cpu_s"] / idle["seconds"],
            "renews_lost": run_["client"]["renews_lost"] + idle["client"]["renews_lost"],
            "claim_seconds": d["claim_seconds"], "connections": d["connections"], "wall_s": round(time.monotonic() - t, 1),
        }
        # the ceiling one Redis core gives: 1 s of CPU divided by what a build costs it
        row["ceiling_builds_per_s"] = 1e6 / row["redis_cpu_us_per_build"]
        rows.append(row)
        log(f"control: V={v}: {row['builds']} builds in {row['seconds']:.2f}s = {row['builds_per_s']:.0f}/s, Redis "
            f"{row['redis_cpu_us_per_build']:.0f} µs CPU per build ({100 * row['redis_busy']:.0f}% of a core), "
            f"{row['round_trips_per_build']:.2f} round trips per build, {row['bytes_per_build_used_memory']:.0f} B per build, "
            f"idle: {row['idle_renews_per_s']:.1f} renews/s, Redis {100 * row['idle_redis_cpu_share']:.1f}% busy")
    RESULTS["control"] = {"rows": rows, "repos": CP_REPOS, "producers": CP_PRODUCERS, "lease_ms": CP_LEASE_MS,
                          "maxclients": maxclients, "ulimit_n": __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0],
                          "enqueue_path": "queue::enqueue called directly (the hook's Lua script, no HTTP)",
                          "connections_note": "one Redis connection per virtual slave (a real slave holds about five)"}


# ---------------------------------------------------------------- 8. charts

CHARTS = os.environ.get("BENCH_CHARTS_DIR", os.path.join(ROOT, "docs", "bench"))
NOTE = os.environ.get("BENCH_NOTE", "")  # e.g. "small run on a busy machine": printed under every chart's title


def charts():
    """PNG charts from this run's results (or, for a section that did not run, the last results.json)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    prev = {}
    try:
        with open(os.path.join(OUT, "results.json")) as fh:
            prev = json.load(fh)
    except (OSError, ValueError):
        pass
    got = lambda k: RESULTS.get(k) or prev.get(k)
    m = RESULTS["machine"]
    foot = f"ci-backend {m['commit']}, {m['date']}, {m['nproc']} CPUs" + (f" — {NOTE}" if NOTE else "")
    os.makedirs(CHARTS, exist_ok=True)
    made = []

    def save(fig, name):
        fig.text(0.01, 0.01, foot + " — make bench", fontsize=7, color="#555")
        path = os.path.join(CHARTS, name)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(os.path.relpath(path, ROOT))

    bb = got("buildbot")
    if bb and bb.get("samples"):
        s = bb["samples"]
        rows = [("floor (git fetch + checkout + bash by hand)", s["floor"], "#999999"), ("ci-backend (hook + slave)", s["ours"], "#1f77b4"),
                (f"Buildbot {bb['versions'].get('buildbot')} (github hook + worker)", s["buildbot"], "#d62728")]
        fig, ax = plt.subplots(figsize=(10.5, 3.8))
        for i, (label, xs, color) in enumerate(rows):
            ax.boxplot([xs], positions=[i], vert=False, widths=0.5, whis=(5, 95), showfliers=False,
                       medianprops={"color": "black"}, boxprops={"color": color}, whiskerprops={"color": color})
            jit = random.Random(i)
            ax.scatter(xs, [i + (jit.random() - 0.5) * 0.3 for _ in xs], s=8, color=color, alpha=0.5)
            p50, p90 = median(xs), pct(xs, 90)
            ax.annotate(f"p50 {p50:,.0f} ms  p90 {p90:,.0f} ms", (max(xs), i), xytext=(8, 0), textcoords="offset points",
                        va="center", fontsize=9, fontweight="bold")
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("push → result, ms (log scale); box 25–75 %, whiskers 5–95 %")
        ax.set_xlim(right=max(max(r[1]) for r in rows) * 12)
        ax.set_title(f"Push → result, cached 3,000-file clone, echo ok: the same {len(s['ours'])} pushes to each", fontsize=11)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        save(fig, "latency.png")

    rows = [(s, k, got(row_key(s, k))) for s, *_ in ROW_SECTIONS for k in URL_KINDS]
    rows = [(s, k, r) for s, k, r in rows if r and r.get("runs")]
    if rows:
        goals = {s: g for s, _, g, _ in ROW_SECTIONS}
        panels = [[r for r in rows if r[0] != "containers"], [r for r in rows if r[0] == "containers"]]
        panels = [p for p in panels if p]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels) + 1, 4.6), squeeze=False,
                                 gridspec_kw={"width_ratios": [len(p) for p in panels]})
        for ax, panel in zip(axes[0], panels):
            x = range(len(panel))
            ours = [row_medians(r)["p50_ms"] for _, _, r in panel]
            floor = [row_medians(r)["floor_p50_ms"] for _, _, r in panel]
            w = 0.38
            b1 = ax.bar([i - w / 2 for i in x], ours, w, label="ci-backend: push → result p50", color="#1f77b4")
            b2 = ax.bar([i + w / 2 for i in x], floor, w, label="by hand: fetch + checkout + step, p50", color="#999999")
            for bars in (b1, b2):
                for b in bars:
                    v = b.get_height()
                    ax.annotate(f"{v:,.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
            for i, (s, k, r) in enumerate(panel):
                ratio = row_medians(r)["paired_ratio_p50"]
                ax.annotate(f"{ratio:.2f}×\n(goal ≤ {goals[s]:.2f})", (i, max(ours[i], floor[i])), xytext=(0, 16), textcoords="offset points",
                            ha="center", va="bottom", fontsize=9, fontweight="bold", color="#2ca02c" if ratio <= goals[s] else "#d62728")
            ax.set_xticks(list(x), [f"{ {'latency': 'bare', 'containers': 'container', 'reuse': 'reused', 'reuse_ff': 'reused, ff'}[s]}\n{k}" for s, k, _ in panel], fontsize=9)
            ax.set_ylim(0, max(ours + floor) * 1.4)
            ax.set_ylabel("ms, p50 (median of runs)")
            ax.set_title("container step (echo ok)" if panel[0][0] == "containers" else "bare step; reused step (no checkout)", fontsize=10)
        fig.suptitle("Push → result vs the same by hand, cached 3,000-file clone (ratio: median of push ÷ its floor)", fontsize=11)
        fig.legend(*axes[0][0].get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, 0.94))
        fig.tight_layout(rect=(0, 0.04, 1, 0.9))
        save(fig, "push-to-result.png")

    tv = got("throughput_variants")
    if tv:
        names = list(tv)
        warm = [median([r["builds_per_s"] for r in tv[n]["rounds"] if not r["cold"]] or [0]) for n in names]
        wait = [median([r["queue_wait_p95_ms"] for r in tv[n]["rounds"] if not r["cold"]] or [0]) / 1000 for n in names]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        colors = ["#d62728" if n.startswith("slow") else "#2ca02c" if n.endswith("-http") else "#1f77b4" for n in names]
        bars = a1.bar(names, warm, color=colors)
        for b, v in zip(bars, warm):
            a1.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=9, fontweight="bold")
        a1.set_ylabel("builds/s (warm rounds, median)")
        unread = not any(tv[n].get("slave_mentions_executors_or_steal") for n in names)
        a1.set_title(f"Throughput, {TP_SLAVES} slaves: x<executors>, -steal, -http (git server)"
                     + ("\n(this slave ignored SLAVE_EXECUTORS / SLAVE_STEAL_AFTER)" if unread else ""), fontsize=11)
        bars = a2.bar(names, wait, color=colors)
        for b, v in zip(bars, wait):
            a2.annotate(f"{v:.1f} s", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=9, fontweight="bold")
        a2.set_ylabel("queue wait p95, s (started_at − queued_at)")
        a2.set_title("Queue wait p95 (slow-: one repository's builds take "
                     f"{next((tv[n]['slow_seconds'] for n in names if tv[n].get('slow_seconds')), TP_SLOW_SECONDS)} s)")
        for a in (a1, a2):
            a.tick_params(axis="x", labelrotation=20, labelsize=8)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        save(fig, "throughput.png")

    cp = got("control")
    if cp and cp.get("rows"):
        rows = cp["rows"]
        v = [r["slaves"] for r in rows]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        a1.plot(v, [r["builds_per_s"] for r in rows], "o-", label="measured (clients on the same cores)")
        a1.plot(v, [r["ceiling_builds_per_s"] for r in rows], "s--", color="#d62728", label="one Redis core: 1 s ÷ Redis CPU per build")
        for r in rows:
            a1.annotate(f"{r['builds_per_s']:,.0f}/s", (r["slaves"], r["builds_per_s"]), xytext=(0, -14), textcoords="offset points",
                        ha="center", fontsize=9, fontweight="bold")
            a1.annotate(f"{r['ceiling_builds_per_s']:,.0f}/s", (r["slaves"], r["ceiling_builds_per_s"]), xytext=(0, 6),
                        textcoords="offset points", ha="center", fontsize=9, color="#d62728")
        a1.set_xscale("log")
        a1.set_ylim(0, max(max(r["ceiling_builds_per_s"], r["builds_per_s"]) for r in rows) * 1.25)
        a1.set_xlim(min(v) / 2, max(v) * 2)
        a1.set_xlabel("virtual slaves (threads, each holding an index)")
        a1.set_ylabel("builds scheduled per second")
        a1.set_title(f"Control plane: {cp['repos']:,} builds, one Redis (AOF fsync always)", fontsize=11)
        a1.legend(fontsize=8, loc="lower left")
        a2.bar([str(x) for x in v], [r["redis_cpu_us_per_build"] for r in rows], color="#1f77b4")
        for i, r in enumerate(rows):
            a2.annotate(f"{r['redis_cpu_us_per_build']:.0f} µs\n{r['round_trips_per_build']:.1f} trips\n{r['idle_renews_per_s']:.0f} renews/s",
                        (i, r["redis_cpu_us_per_build"]), ha="center", va="bottom", fontsize=8)
        a2.set_xlabel("virtual slaves")
        a2.set_ylabel("Redis CPU per build, µs")
        a2.set_title("What a build costs Redis")
        a2.margins(y=0.35)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        save(fig, "control-plane.png")
    RESULTS["charts"] = made
    log(f"charts: {made}")


# ---------------------------------------------------------------- 4. footprint


def footprint():
    f = {"hook_bytes": os.path.getsize(os.path.join(BIN, "hook")), "slave_bytes": os.path.getsize(os.path.join(BIN, "slave")),
         "binaries_sha256": RESULTS.get("binaries_sha256")}
    try:
        out = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}\t{{.CreatedSince}}"],
                             capture_output=True, text=True, timeout=20)
        f["images"] = [l.split("\t") for l in out.stdout.splitlines() if l.startswith("ci-backend/")]
        if out.returncode != 0:
            f["images_error"] = out.stderr.strip()[:200]
    except (OSError, subprocess.TimeoutExpired) as e:
        f["images"] = []
        f["images_error"] = str(e)
    RESULTS["footprint"] = f


# ---------------------------------------------------------------- 5. balance


def balance():
    names = owner_names(10000)
    crcs = [zlib.crc32(n.encode()) for n in names]
    rows = []
    for n in range(2, 17):
        loads = [0] * n
        for c in crcs:
            loads[c % n] += 1
        mean = len(crcs) / n
        moved = sum(1 for c in crcs if c % n != c % (n + 1)) / len(crcs)
        rows.append({"N": n, "max_over_mean": max(loads) / mean, "min_over_mean": min(loads) / mean,
                     "moved_to_N+1": moved, "ideal_moved": 1 / (n + 1)})
    RESULTS["balance"] = {"names": len(names), "sample": names[:12], "rows": rows}
    with open(os.path.join(LOGS, "balance-names.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


# ---------------------------------------------------------------- report


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    ver = lambda argv: subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": os.uname().release, "mem_gib": round(mem / 1024 / 1024, 1),
            "os": next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release") if l.startswith("PRETTY_NAME")), "?"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "redis": ver(["redis-server", "--version"]), "webhook": ver(["/usr/bin/webhook", "-version"]),
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.strip().splitlines()[0],
            "git": ver(["git", "--version"]),
            "commit": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
            "dirty": bool(subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml"],
                                         capture_output=True, text=True).stdout.strip())}


def fmt(v, d=1):
    return "—" if v is None else f"{v:,.{d}f}"


# The latency-style sections, their goals (push → result / the floor by hand, issue 21) and what the floor ran.
ROW_SECTIONS = [("latency", "bare step `echo ok`", 1.10, "git fetch + git checkout --force + bash -c 'echo ok'"),
                ("containers", f"container step (`image: {TEST_IMAGE}`) `echo ok`", 0.90,
                 f"git fetch + git checkout --force + docker run --rm -v <checkout>:/ci/checkout -w /ci/checkout {TEST_IMAGE} sh -c 'echo ok'"),
                ("reuse", "step already passed (`inputs: [README.md]`, a src/ file changed): reused, no checkout", 0.50,
                 "git fetch + git checkout --force + bash -c 'echo ok'"),
                ("reuse_ff", "the same, the commit already built on another branch (a fast-forward merge): no fetch, no checkout", 0.50,
                 "git fetch (the commit's objects already fetched with the feature) + git checkout --force + bash -c 'echo ok'")]


def row_medians(res):
    return {k: median([r[k] for r in res["runs"]]) for k in ("p50_ms", "p99_ms", "floor_p50_ms", "floor_p99_ms", "ratio_p50", "paired_ratio_p50")}


def containment_summary():
    """Point 5 of issue 21: what the container path costs per build beside the bare one (push → result
    p50 of the container row minus the bare row's, same bench run, per URL kind; the floors' `docker run`
    against `bash`), with the bare step's containment measured by the latency section."""
    out = {}
    for kind in URL_KINDS:
        lat, con = RESULTS.get(row_key("latency", kind)), RESULTS.get(row_key("containers", kind))
        if lat and con and "runs" in con:
            out[kind] = {"container_minus_bare_ms": row_medians(con)["p50_ms"] - row_medians(lat)["p50_ms"],
                         "floor_docker_run_minus_bash_ms": con["floor_parts"]["bash"]["p50"] - lat["floor_parts"]["bash"]["p50"],
                         "floor_container_minus_bare_ms": row_medians(con)["floor_p50_ms"] - row_medians(lat)["floor_p50_ms"]}
    return out


def report_rows():
    """results.md's section 2: every latency-style row (bare, container, reuse; file:// and http)."""
    L = []
    rows = [(s, k, RESULTS[row_key(s, k)], what, goal, fl) for s, what, goal, fl in ROW_SECTIONS for k in URL_KINDS
            if row_key(s, k) in RESULTS and "runs" in RESULTS[row_key(s, k)]]
    skipped = [(s, RESULTS[s]["skipped"]) for s, *_ in ROW_SECTIONS if "skipped" in RESULTS.get(s, {})]
    if not rows and not skipped:
        return L
    L.append("\n## 2. Push → result against the same by hand (cached 3,000-file clone; medians of runs)\n")
    gs = RESULTS.get("git_server")
    if gs:
        L.append(f"http rows: the push's clone URL and the floor's `origin` are {gs['url']}, served by {gs['server']} running "
                 f"{gs['backend']} as a CGI (smart HTTP, checked in its access log: POST git-upload-pack, no dumb requests). "
                 "file rows: file:// (the slave) and the repository's path (the floor).\n")
    L.append("| section | URL | pushes × runs | p50 ms | floor p50 ms | p50 / floor p50 | median of push / its floor (runs) | goal | failed |")
    L.append("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for s, k, res, what, goal, _ in rows:
        m = row_medians(res)
        ok = "met" if m["paired_ratio_p50"] <= goal else "not met"
        L.append(f"| {s}: {what} | {k} | {res['pushes_per_run']} × {len(res['runs'])} | {m['p50_ms']:.1f} | {m['floor_p50_ms']:.1f} | "
                 f"{m['ratio_p50']:.2f} | **{m['paired_ratio_p50']:.2f}** ({' '.join('%.2f' % r['paired_ratio_p50'] for r in res['runs'])}) | "
                 f"≤ {goal:.2f} ({ok}) | {sum(r['failed'] for r in res['runs'])} |")
    for s, why in skipped:
        L.append(f"| {s} | | | | | | skipped: {why} | | |")
    names = {"post_202": "POST → 202 (client)", "to_queued": "POST → queued_at (hook)", "queue_wait": "queued_at → started_at (queue, BLMOVE, start script)",
             "build": "started_at → finished_at (slave: git, the step, store)",
             "seen_after": ("finished_at → the follower's stream ends (live log)" if FOLLOW else f"finished_at → seen by the {POLL_S * 1000:g} ms poller"),
             "total": "total"}
    for s, k, res, what, goal, fl in rows:
        L.append(f"\n### {s}, {k}: {what}\n")
        L.append(f"clone URL {res['url']}; the floor by hand: {fl}, on a cached clone, interleaved with the pushes.\n")
        L.append("| run | p50 ms | p99 ms | floor p50 ms | floor p99 ms | p50 / floor p50 | median of push / its floor | failed |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(res["runs"], 1):
            L.append(f"| {i} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['floor_p50_ms']:.1f} | {r['floor_p99_ms']:.1f} | {r['ratio_p50']:.2f} | "
                     f"{r['paired_ratio_p50']:.2f} | {r['failed']} |")
        med = row_medians(res)
        L.append(f"| **median** | **{med['p50_ms']:.1f}** | **{med['p99_ms']:.1f}** | **{med['floor_p50_ms']:.1f}** | **{med['floor_p99_ms']:.1f}** | "
                 f"**{med['ratio_p50']:.2f}** | **{med['paired_ratio_p50']:.2f}** | |")
        L.append("\nwhere the time goes (all pushes; ms):\n")
        L.append("| part | p50 | p99 |")
        L.append("|---|---:|---:|")
        for key, v in res["breakdown_all_pushes"].items():
            L.append(f"| {names[key]} | {v['p50']:.1f} | {v['p99']:.1f} |")
        fp = res["floor_parts"]
        step = "docker run" if s == "containers" else "bash -c 'echo ok'"
        for key, label in (("fetch", "git fetch"), ("checkout", "git checkout"), ("bash", step)):
            L.append(f"| floor by hand: {label} | {fp[key]['p50']:.1f} | {fp[key]['p99']:.1f} |")
        if "show" in fp:
            L.append(f"| git show -s by hand (the slave reads the loose commit instead; git show only for packed ones) | {fp['show']['p50']:.1f} | {fp['show']['p99']:.1f} |")
        if "git_server_requests" in res:
            g = res["git_server_requests"]
            L.append(f"\ngit server, this repository (slave and floor): {g['post_upload_pack']} POST git-upload-pack, "
                     f"{g['info_refs_smart']} GET info/refs?service=git-upload-pack, {g['other']} other, {g['not_200']} not 200; "
                     f"Git-Protocol headers {g['protocols']}; server time per POST p50 {fmt(g['post_server_ms_p50'], 2)} ms")
        if s == "reuse_ff":
            L.append(f"\nevery measured push's log had `[reused] ok (passed in build …)` and no `[passed]`: {res['reused_pushes']} pushes")
        if s == "reuse":
            L.append(f"\nevery measured push's log had `[reused] ok (passed in build …)` and no `[passed]`: {res['reused_pushes']} pushes; "
                     f"the slave logged `build.no_checkout` {res['no_checkout_builds']} times; the input trees read from the mirror "
                     f"(`build.trees trees_ms=`) {fmt(res['trees_ms_p50'], 2)} ms p50. integration.yml: "
                     f"`{'; '.join(res['integration_yml'].strip().splitlines())}`")
            share = fp["fetch"]["p50"] / med["floor_p50_ms"]
            L.append(f"\nthe floor's `git fetch` alone is {fmt(fp['fetch']['p50'])} ms p50, {share:.2f} of the floor's p50: a build that "
                     f"fetches the same new commit from the same URL (as this one must, to read integration.yml and the input trees) "
                     f"stays above about {share:.2f}× unless its fetch is faster than the floor's")
        tr = res.get("traced")
        if tr:
            L.append(f"\ninside the slave ({tr['analysed']} of {tr['pushes']} extra pushes traced with perf sched_process_fork/exec/exit; ms):\n")
            L.append("| part | p50 | p99 |")
            L.append("|---|---:|---:|")
            for key, v in tr["parts"].items():
                L.append(f"| {key} | {v['p50']:.1f} | {v['p99']:.1f} |")
        elif res.get("untraced"):
            L.append(f"\nthe trace inside the slave was skipped: {res['untraced']}")
    L += report_containment()
    return L


def report_containment():
    L = []
    cs = containment_summary()
    RESULTS["containment_costs"] = cs
    bare = [(k, RESULTS[row_key("latency", k)]) for k in URL_KINDS if "containment" in RESULTS.get(row_key("latency", k), {})]
    if not bare and not cs:
        return L
    L.append("\n## 2g. What containment costs, per build (same run)\n")
    L.append("| what | URL | cost per build | how measured |")
    L.append("|---|---|---:|---|")
    for k, lat in bare:
        c = lat["containment"]
        L.append(f"| groups per repository and branch (`SLAVE_BUILD_GROUPS`) | {k} | {c['groups_ms']['p50']:.3f} ms p50 ({c['groups_ms']['p99']:.3f} p99) | "
                 f"the slave's `build.finished groups_us=`, {c['builds']} builds |")
        L.append(f"| `.git` taken back (disarm) | {k} | {c['disarm_ms']['p50']:.3f} ms p50 ({c['disarm_ms']['p99']:.3f} p99) | `build.finished disarm_us=` |")
        L.append(f"| the subreaper's sweeps | {k} | {c['reaper_cpu_ms_per_build']:.3f} CPU-ms | the slave's `reaper` thread's CPU over the row ÷ builds |")
    h = next((lat["git_hardening"] for _, lat in bare if lat.get("git_hardening")), None)
    if h:
        d = h["hardened_minus_plain_ms"]
        L.append(f"| git hardening ({h['options']}) | — | {d['wall_ms']:+.2f} ms wall, {d['cpu_ms']:+.2f} CPU-ms per checkout | "
                 f"`git checkout --force` between two commits of the 3,000-file clone, {h['checkouts_each']} with and without, interleaved: "
                 f"p50 (p25–p75) wall {h['plain']['wall_ms']['p50']:.2f} ({h['plain']['wall_ms']['p25']:.2f}–{h['plain']['wall_ms']['p75']:.2f}) vs "
                 f"{h['hardened']['wall_ms']['p50']:.2f} ({h['hardened']['wall_ms']['p25']:.2f}–{h['hardened']['wall_ms']['p75']:.2f}) ms; CPU "
                 f"{h['plain']['cpu_ms']['p50']:.2f} vs {h['hardened']['cpu_ms']['p50']:.2f} ms: a difference inside the spread is none |")
    for k, c in cs.items():
        L.append(f"| the container path (a container step instead of a bare one) | {k} | {c['container_minus_bare_ms']:.1f} ms | "
                 f"push → result p50, containers row − latency row |")
        L.append(f"| by hand: `docker run --rm` instead of `bash -c` | {k} | {c['floor_docker_run_minus_bash_ms']:.1f} ms | "
                 f"floor parts p50, containers − latency (whole floor: {c['floor_container_minus_bare_ms']:.1f} ms) |")
    return L


def report():
    L = []
    m = RESULTS["machine"]
    L.append(f"# ci-backend benchmark results — {m['date']}")
    L.append(f"machine: {m['nproc']} x {m['cpu']}, {m['mem_gib']} GiB, kernel {m['kernel']}, {m['os']}; "
             f"{m['redis']}; {m['webhook']}; {m['wrk']}; {m['git']}; ci-backend {m['commit']}{' (+uncommitted src)' if m['dirty'] else ''}")
    L.append(f"waited {RESULTS['quiet_wait']['waited_s']} s for idle CPUs before starting (busy in the last second: {100 * RESULTS['quiet_wait']['busy_last_s']:.0f}%)")
    L.append(f"runs per measurement: {RUNS} (medians; ingest {INGEST_RUNS} rounds, container rows {CONTAINER_RUNS} runs, throughput {TP_RUNS} "
             f"warm rounds of {'/'.join(TP_FULL)}, {TP_VARIANT_WARM} of the other variants); total {RESULTS.get('total_seconds')} s; load average (1/5/15 min) before/after each section: "
             + "; ".join(f"{k} {' '.join(v['before'])} → {' '.join(v['after'])}" for k, v in RESULTS.get("loadavg", {}).items()))
    if "ingest" in RESULTS:
        b = RESULTS["ingest_body_bytes"]
        L.append(f"\n## 1. Ingest ({CONNS} connections, keep-alive, {SECONDS}s per run, bodies {b['min']}–{b['max']} B)\n")
        L.append("| fsync | target | answers/s (median) | p50 ms | p99 ms | in Redis /s when the run ended | per-run answers/s | notes |")
        L.append("|---|---|---:|---:|---:|---:|---|---|")
        names = {"hook": "ci-backend hook", "webhook": "adnanh/webhook, default (answers before its command)",
                 "webhook-sync": "adnanh/webhook, include-command-output-in-response", "redis": "redis-benchmark LPUSH 7000 B"}
        for mode, res in RESULTS["ingest"].items():
            med = {}
            for t, rs in res.items():
                if not rs:
                    continue
                med[t] = {k: median([r[k] for r in rs]) for k in ("rps", "p50_ms", "p99_ms", "durable_rps")}
                note = ""
                if t == "hook":
                    note = (f"time inside the handler (its log's ms=): p50 {fmt(median([r['handler_p50_ms'] for r in rs]), 2)} ms, "
                            f"p99 {fmt(median([r['handler_p99_ms'] for r in rs]), 2)} ms; threads after a run {max(r['threads'] for r in rs)}; "
                            f"202 counted by the hook: {sum(r['accepted_202'] for r in rs):,} of {sum(r['requests'] for r in rs):,} "
                            f"requests; non-2xx {sum(r['non2xx'] for r in rs)}; socket errors {sum(r['socket_errors'] for r in rs)}")
                elif t.startswith("webhook"):
                    note = f"non-2xx {sum(r['non2xx'] for r in rs)}; socket errors {sum(r['socket_errors'] for r in rs)}"
                    lc = RESULTS.get("ingest_webhook_loss_check")
                    if t == "webhook" and mode == "always" and lc:
                        note += (f"; loss check (one more run with -verbose, not in the medians): {lc['requests']:,} answered, "
                                 f"{lc['in_redis_at_end']:,} in Redis when the load ended, {lc['children_at_end']} commands still running, "
                                 f"{lc['eventually_in_redis']:,} in Redis {lc['backlog_s']} s later ({lc['children_left']} still running), "
                                 f"{lc['lost']:,} lost; its log: {lc['errors']}")
                cpu = median([r["cpu_us_per_req"] for r in rs if "cpu_us_per_req" in r])
                rcpu = median([r["redis_cpu_us_per_req"] for r in rs])
                note = (f"CPU per request: {fmt(cpu, 0)} µs in the server, " if cpu is not None else "CPU per request: ") + f"{fmt(rcpu, 0)} µs in Redis; " + note
                L.append(f"| {mode} | {names[t]} | {fmt(med[t]['rps'])} | {fmt(med[t]['p50_ms'], 2)} | {fmt(med[t]['p99_ms'], 2)} | "
                         f"{fmt(med[t]['durable_rps'])} | {' '.join('%.0f' % r['rps'] for r in rs)} | {note} |")
            h = med.get("hook")
            for t in ("webhook", "webhook-sync", "redis"):
                if h and t in med:
                    o = med[t]
                    L.append(f"| {mode} | ratio hook / {t} | {h['rps'] / o['rps']:.1f}x | | hook p99 = {h['p99_ms'] / o['p99_ms']:.2f}x | "
                             f"{h['durable_rps'] / max(o['durable_rps'], 1e-9):.1f}x | | hook = {100 * h['rps'] / o['rps']:.1f}% of {t} |")
        rss = RESULTS["ingest_rss"]
        L.append(f"\nhook RSS idle {fmt(rss['hook_idle'].get('VmRSS', 0) / 1024)} MiB, after load {fmt(rss['hook_after_max_rss'] / 1024)} MiB "
                 f"(VmHWM {fmt((rss['hook_after_load'] or {}).get('VmHWM', 0) / 1024)} MiB); webhook RSS idle "
                 f"{fmt(rss['webhook_idle'].get('VmRSS', 0) / 1024)} MiB, right after a run "
                 + ", ".join(f"{k} {fmt(v / 1024)} MiB" for k, v in rss["webhook_peak_after_run"].items()))
    L += report_rows()
    if "throughput" in RESULTS:
        tp = RESULTS["throughput"]
        L.append(f"\n## 3. Build throughput ({TP_REPOS} repositories x {TP_BRANCHES} branches = {TP_REPOS * TP_BRANCHES} builds per round, {TP_SLAVES} slaves)\n")
        parts = ["hook", "redis", "slaves", "slave_children", "bench"]
        L.append("| round | caches | builds | seconds | builds/s | failed | coalesced | CPU busy (all processes) | CPU-ms per build | "
                 "of which: hook / Redis / slaves / their children (git both sides, bash, guards) / bench client |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in tp["rounds"]:
            by = r.get("cpu_ms_per_build_by_part", {})
            L.append(f"| {r['round']} | {'cold (clone)' if r['cold'] else 'warm (fetch)'} | {r['builds']} | {r['seconds']:.2f} | {r['builds_per_s']:.1f} | {r['failed']} | {r['coalesced']} | {100 * r['cpu_busy']:.0f}% | {r['cpu_ms_per_build']:.0f} | "
                     + " / ".join(fmt(by.get(k), 1) for k in parts) + " |")
        warm = [r["builds_per_s"] for r in tp["rounds"] if not r["cold"]]
        L.append(f"| **median warm** | | | | **{median(warm):.1f}** | | | | | |")
        fl = RESULTS.get("throughput_floor_cpu_ms")
        if fl:
            L.append(f"\nthe floor by hand (CPU-ms per warm build, {fl['builds']} builds, one at a time): git fetch with its upload side "
                     f"{fl['fetch']:.1f} + git checkout {fl['checkout']:.1f} + bash {fl['bash']:.1f} = **{fl['total']:.1f}**: at most "
                     f"{os.cpu_count() * 1000 / fl['total']:.0f} builds/s on {os.cpu_count()} fully busy cores with nothing else running")
        L.append(f"\nbuilds per slave (log count): {tp['builds_per_slave_log']}; 202 `slave` ≠ CRC32 mod 3: {tp['slave_field_not_crc32_mod_3']}")
    if "ingest" in RESULTS and "always" in RESULTS["ingest"]:
        res = RESULTS["ingest"]["always"]
        h, rb = res.get("hook") or [], res.get("redis") or []
        if h and rb:
            share = median([r["rps"] for r in h]) / median([r["rps"] for r in rb])
            ev = [r["cmdstats"].get("evalsha", {}) for r in h]
            lp = [r["cmdstats"].get("lpush", {}) for r in rb]
            ev_us = median([e["usec"] / e["calls"] for e in ev if e.get("calls")])
            lp_us = median([e["usec"] / e["calls"] for e in lp if e.get("calls")])
            nested = median([sum(v["calls"] for k, v in r["cmdstats"].items() if k not in ("evalsha", "eval", "info", "config|get",
                                                                                           "config|set", "get", "ping"))
                             / max(1, r["cmdstats"].get("evalsha", {}).get("calls", 1)) for r in h])
            busy_h, busy_r = median([r["redis_busy"] for r in h]), median([r["redis_busy"] for r in rb])
            hook_cpu = median([r["cpu_us_per_req"] for r in h if "cpu_us_per_req" in r])
            L.append(f"\n## 1b. Ingest against the ceiling (fsync always)\n")
            L.append(f"hook = **{100 * share:.1f} %** of redis-benchmark LPUSH 7,000 B ({fmt(median([r['rps'] for r in h]))}/s vs "
                     f"{fmt(median([r['rps'] for r in rb]))}/s).")
            L.append(f"Redis CPU per call (INFO commandstats, medians of runs): enqueue script (EVALSHA, including the "
                     f"{fmt(nested)} commands it runs) {fmt(ev_us, 1)} µs; LPUSH {fmt(lp_us, 1)} µs; ratio {ev_us / lp_us:.1f}x. "
                     f"Redis process CPU per request {fmt(median([r['redis_cpu_us_per_req'] for r in h]), 0)} µs (hook) vs "
                     f"{fmt(median([r['redis_cpu_us_per_req'] for r in rb]), 0)} µs (LPUSH). Redis busy during the run: "
                     f"{100 * busy_h:.0f} % of a core (hook) vs {100 * busy_r:.0f} % (redis-benchmark). Hook CPU per push {fmt(hook_cpu, 0)} µs.")
            if share < 0.5:
                rcpu_h = median([r['redis_cpu_us_per_req'] for r in h])
                why = (f"Redis's CPU was {100 * busy_h:.0f} % busy while the hook ran, so Redis CPU is not what limits it "
                       "(with fsync always Redis also waits on the disk, which CPU time does not show: that wait is the same "
                       f"for both); the hook's own CPU per push is {fmt(hook_cpu, 0)} µs, {hook_cpu / rcpu_h:.1f}x what Redis "
                       f"spends on it, on {m['nproc']} cores shared with wrk and Redis"
                       if busy_h < 0.8 else
                       f"Redis's CPU was saturated ({100 * busy_h:.0f} %): each enqueue costs it {ev_us / lp_us:.1f}x a LPUSH "
                       "(the script's own commands)")
                L.append(f"Below 50 %: {why}. Redis alone would take {fmt(1e6 / ev_us, 0)} enqueue scripts/s "
                         f"(1 s ÷ {fmt(ev_us, 1)} µs).")
    if "buildbot" in RESULTS:
        bb = RESULTS["buildbot"]
        v = bb["versions"]
        L.append(f"\n## 6. Buildbot as the peer (buildbot {v.get('buildbot')}, buildbot-worker {v.get('buildbot-worker')}, "
                 f"buildbot-www {v.get('buildbot-www')}, Twisted {v.get('Twisted')}, SQLAlchemy {v.get('SQLAlchemy')})\n")
        L.append(f"{bb['pushes']} pushes on the latency section's 3,000-file repository; each new commit went to ours, to Buildbot "
                 f"and to the floor (order rotating). Buildbot's first build (its clone) took {bb['cold_first_build_ms']:,.0f} ms "
                 f"(not counted). Refused as they should be: {bb['refused']}.\n")
        L.append("| push → result | p50 ms | p90 ms | p99 ms | n | failed |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for k, label in (("ours", "ci-backend hook + slave"), ("buildbot", "Buildbot (github hook, worker)"), ("floor", "floor by hand")):
            x = bb["latency"][k]
            L.append(f"| {label} | {x['p50']:.1f} | {x['p90']:.1f} | {x['p99']:.1f} | {x['n']} | {bb['failed'].get(k, '')} |")
        L.append(f"\nBuildbot p50 / ours p50: {bb['latency']['buildbot']['p50'] / bb['latency']['ours']['p50']:.1f}x\n")
        L.append(f"| ingest ({CONNS} connections, {SECONDS}s) | answers/s (median) | p50 ms | p99 ms | non-2xx | per-run answers/s | pushes recorded (per run) | how counted |")
        L.append("|---|---:|---:|---:|---:|---|---|---|")
        for k, label in (("ours", "ci-backend hook"), ("buildbot", "Buildbot /change_hook/github")):
            rs = bb["ingest"][k]
            if rs:
                L.append(f"| {label} | {fmt(median([r['rps'] for r in rs]))} | {fmt(median([r['p50_ms'] for r in rs]), 2)} | "
                         f"{fmt(median([r['p99_ms'] for r in rs]), 2)} | {sum(r['non2xx'] for r in rs)} | "
                         f"{' '.join('%.0f' % r['rps'] for r in rs)} | {' '.join(str(r['recorded']) + ' of ' + str(r['requests']) for r in rs)} | "
                         f"{rs[0]['recorded_note']} |")
        L.append("\nUnfair, and how it was handled:\n")
        for u in bb["unfair"]:
            L.append(f"- {u}")
    if "control" in RESULTS:
        cp = RESULTS["control"]
        L.append(f"\n## 7. Control plane: virtual slaves ({cp['repos']:,} builds per size, {cp['producers']} producers, "
                 f"lease {cp['lease_ms']} ms; {cp['enqueue_path']}; {cp['connections_note']}; Redis maxclients {cp['maxclients']}, "
                 f"ulimit -n {cp['ulimit_n']})\n")
        L.append("| virtual slaves | builds/s | Redis CPU µs/build | Redis busy | 1 core ceiling builds/s | round trips/build (incl. empty takes, renews) "
                 "| commands in scripts/build | B/build (used_memory) | B/record | idle renews/s | idle empty takes/s | idle Redis busy |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in cp["rows"]:
            L.append(f"| {r['slaves']:,} | {r['builds_per_s']:,.0f} | {r['redis_cpu_us_per_build']:.0f} | {100 * r['redis_busy']:.0f} % | "
                     f"{r['ceiling_builds_per_s']:,.0f} | {r['round_trips_per_build']:.2f} ({r['build_round_trips_per_build']:.2f} for the build) | "
                     f"{r['commands_in_scripts_per_build']:.1f} | {r['bytes_per_build_used_memory']:,.0f} | {r['bytes_build_record']:,} | "
                     f"{r['idle_renews_per_s']:.1f} | {r['idle_empty_takes_per_s']:.0f} | {100 * r['idle_redis_cpu_share']:.1f} % |")
        if cp["rows"]:
            L.append(f"\nper-branch keys (bytes, MEMORY USAGE): {cp['rows'][-1]['bytes_branch_keys']}; a history entry "
                     f"{fmt(cp['rows'][-1].get('bytes_history_entry'))} B more (a list of HISTORY_KEEP ids against one of 1)")
            L.append("membership: " + "; ".join(
                f"V={r['slaves']:,}: the heartbeat's {r['heartbeat_renews_per_s']:,.0f} renews/s × {r['renew_us']:.0f} µs = "
                f"{r['heartbeat_renews_per_s'] * r['renew_us'] / 1e4:.2f} % of a Redis core" for r in cp["rows"]))
    if "throughput_variants" in RESULTS:
        L.append("\n## 3b. Throughput variants (SLAVE_EXECUTORS, SLAVE_STEAL_AFTER; slow- = one repository's builds take "
                 f"{TP_SLOW_SECONDS} s on its first {TP_SLOW_BRANCHES} branches)\n")
        L.append("| variant | slave env | slave read it | warm builds/s (median) | cold builds/s | queue wait p95 ms (warm) | "
                 "p95 other repositories | max wait ms | failed | wall s |")
        L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for n, tv in RESULTS["throughput_variants"].items():
            warm = [r for r in tv["rounds"] if not r["cold"]]
            cold = [r for r in tv["rounds"] if r["cold"]]
            L.append(f"| {n} | {' '.join(f'{k}={v}' for k, v in tv['slave_env'].items())} | "
                     f"{'yes' if tv['slave_mentions_executors_or_steal'] else 'no (not merged yet?)'} | "
                     f"{fmt(median([r['builds_per_s'] for r in warm]))} | {fmt(median([r['builds_per_s'] for r in cold]))} | "
                     f"{fmt(median([r['queue_wait_p95_ms'] for r in warm]), 0)} | {fmt(median([r['queue_wait_p95_ms_other_repos'] for r in warm]), 0)} | "
                     f"{fmt(max([r['queue_wait_max_ms'] or 0 for r in warm] or [0]), 0)} | {sum(r['failed'] for r in tv['rounds'])} | {tv.get('wall_s')} |")
        for n, tv in RESULTS["throughput_variants"].items():
            g = tv.get("git_server_requests")
            if g:
                L.append(f"\n{n}: every clone URL http:// through the git server ({RESULTS['git_server']['server'].split(' ')[0]} + git http-backend); "
                         f"its first repository saw {g['post_upload_pack']} POST git-upload-pack, {g['info_refs_smart']} GET "
                         f"info/refs?service=git-upload-pack, {g['other']} other, {g['not_200']} not 200 (server time per POST p50 "
                         f"{fmt(g['post_server_ms_p50'], 2)} ms); CPU-ms per warm build (median of rounds) "
                         + ", ".join(f"{k} {fmt(median([r['cpu_ms_per_build_by_part'].get(k, 0) for r in tv['rounds'] if not r['cold']]), 1)}"
                                     for k in ("hook", "redis", "slaves", "slave_children", "git_server")))
        clients = {n: tv["client"] for n, tv in RESULTS["throughput_variants"].items() if tv.get("client")}
        if clients:
            L.append("\n## 3c. Throughput as a client sees it (bench/client_throughput.py: 8 keep-alive connections post every push "
                     "at once after the variant's rounds, /metrics polled; first POST → last build counted)\n")
            L.append("| variant | builds/s alone | builds/s with GET /repos every " + TP_CLIENT_POLL + " s | builds/s in bursts of "
                     f"{TP_CLIENT_BURST} | polls (p50 ms) | "
                     "hook CPU-ms per /repos (branches) | per 100 branches | CPU-ms per build alone: hook / Redis / slaves / children |")
            L.append("|---|---:|---:|---:|---|---:|---:|---|")
            for n, c in clients.items():
                a, w = c.get("alone", {}), c.get("repos_poller", {})
                bu = c.get(f"bursts_of_{TP_CLIENT_BURST}", {})
                rp, idle = w.get("repos_poll", {}), w.get("repos_poll_idle", {})
                by = a.get("cpu_ms_per_build_by_part", {})
                L.append(f"| {n} | {fmt(a.get('builds_per_s'))} | {fmt(w.get('builds_per_s'))} | {fmt(bu.get('builds_per_s'))} | {rp.get('polls')} ({fmt(rp.get('ms_p50'), 2)}) | "
                         f"{fmt(idle.get('hook_cpu_ms_per_poll'), 3)} ({idle.get('branches')}) | {fmt(idle.get('hook_cpu_ms_per_poll_per_100_branches'), 3)} | "
                         + " / ".join(fmt(by.get(k), 1) for k in ("hook", "redis", "slaves", "slave_children")) + " |")
    if RESULTS.get("charts"):
        L.append("\ncharts: " + ", ".join(RESULTS["charts"]))
    L.append("\nsection durations (s): " + ", ".join(f"{k} {v}" for k, v in RESULTS.get("section_seconds", {}).items())
             + f"; total {RESULTS.get('total_seconds')}")
    L.append("\n## 4. Footprint\n")
    f = RESULTS.get("footprint", {})
    if f:
        L.append(f"binaries: hook {f['hook_bytes']:,} B ({f['hook_bytes'] / 1048576:.2f} MiB), slave {f['slave_bytes']:,} B ({f['slave_bytes'] / 1048576:.2f} MiB); sha256 prefixes {f.get('binaries_sha256')}")
    if "ingest_rss" in RESULTS:
        rss = RESULTS["ingest_rss"]
        L.append(f"hook RSS: idle {rss['hook_idle'].get('VmRSS', 0)} KiB, after ingest load {rss['hook_after_max_rss']} KiB (VmHWM {(rss['hook_after_load'] or {}).get('VmHWM')})")
    if "throughput" in RESULTS:
        tp = RESULTS["throughput"]
        L.append(f"slave RSS: idle {[s.get('VmRSS') for s in tp['slave_idle']]} KiB, peak under throughput load {tp['slave_peak_rss_kib']} KiB, "
                 f"VmHWM after {[s.get('VmHWM') for s in tp['slave_after']]} KiB; hook peak during throughput {tp['hook_peak_rss_kib']} KiB")
    for img in f.get("images", []):
        L.append(f"image {img[0]}: {img[2]} (id {img[1]}, created {img[3]})")
    if f.get("images_error"):
        L.append(f"images: {f['images_error']}")
    if "balance" in RESULTS:
        bal = RESULTS["balance"]
        L.append(f"\n## 5. Balance: CRC32 mod N over {bal['names']:,} owner/name strings (e.g. {', '.join(bal['sample'][:6])})\n")
        L.append("| N | max/mean | min/mean | moved at N→N+1 | minimum possible 1/(N+1) |")
        L.append("|---:|---:|---:|---:|---:|")
        for r in bal["rows"]:
            L.append(f"| {r['N']} | {r['max_over_mean']:.3f} | {r['min_over_mean']:.3f} | {100 * r['moved_to_N+1']:.1f}% | {100 * r['ideal_moved']:.1f}% |")
    text = "\n".join(L) + "\n"
    with open(os.path.join(OUT, "results.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(OUT, "results.json"), "w") as fh:
        json.dump(RESULTS, fh, indent=1, default=str)
    print(text)


def main():
    os.makedirs(LOGS, exist_ok=True)
    for fn in os.listdir(LOGS):
        os.remove(os.path.join(LOGS, fn))
    t0 = time.monotonic()
    RESULTS["machine"] = machine()
    # run private copies: a rebuild of target/release during the run cannot swap binaries under us
    global BIN
    own = os.path.join(WORK, "bin")
    os.makedirs(own)
    for b in ("hook", "slave"):
        shutil.copy2(os.path.join(BIN, b), own)
        RESULTS.setdefault("binaries_sha256", {})[b] = hashlib.sha256(open(os.path.join(own, b), "rb").read()).hexdigest()[:16]
    BIN = own
    q = wait_for_quiet()
    RESULTS["quiet_wait"] = q
    log(f"waited {q['waited_s']} s for a quiet machine (CPU busy in the last second: {100 * q['busy_last_s']:.0f}%)")
    fixture = load_fixture()
    redis = Redis()
    steps = {"ingest": lambda: ingest(redis, fixture), "latency": lambda: latency(redis, fixture),
             "throughput": lambda: throughput(redis, fixture), "footprint": footprint, "balance": balance,
             "containers": lambda: containers(redis, fixture), "reuse": lambda: reuse(redis, fixture),
             "buildbot": lambda: buildbot(redis, fixture), "control": lambda: control(redis, fixture), "charts": charts}
    for name in SECTIONS:
        t = time.monotonic()
        if name != "charts":
            before = redis.write_ms()
            redis.fresh()
            q = settle()
            q.update(redis_write_ms_before_restart=before, redis_write_ms=redis.write_ms())
            RESULTS.setdefault("settled", {})[name] = q
            log(f"== {name} (a fresh Redis; waited {q['waited_s']} s for a quiet machine: {q})")
        else:
            log(f"== {name}")
        load0 = open("/proc/loadavg").read().split()[:3]
        steps[name]()
        RESULTS.setdefault("loadavg", {})[name] = {"before": load0, "after": open("/proc/loadavg").read().split()[:3]}
        RESULTS.setdefault("section_seconds", {})[name] = round(time.monotonic() - t, 1)
        log(f"== {name} done in {time.monotonic() - t:.0f}s")
    RESULTS["total_seconds"] = round(time.monotonic() - t0, 1)
    if SECTIONS == ["charts"]:  # charts redrawn from the last results: keep those results
        return
    report()
    log("section durations: " + ", ".join(f"{k} {v:.0f}s" for k, v in RESULTS["section_seconds"].items()))
    if RESULTS["total_seconds"] > BUDGET_S:
        log(f"over budget: {RESULTS['total_seconds']:.0f}s > {BUDGET_S}s for the whole bench (the budget: under 25 minutes)")
    log(f"total {time.monotonic() - t0:.0f}s; results in {os.path.relpath(OUT, ROOT)}/results.md and results.json")


if __name__ == "__main__":
    main()
