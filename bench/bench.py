#!/usr/bin/env python3
"""ci-backend benchmark suite (`make bench` → bench/run.sh → this file).

Python standard library only. Everything it starts (redis-server, hook, slaves,
adnanh/webhook, wrk, redis-benchmark) listens on 127.0.0.1 only, runs in its own
process group and is stopped by pid at the end. Every loop is bounded in time
or count. Results: bench/out/results.json and bench/out/results.md, logs in
bench/out/logs/.

Sections (issue 6):
  ingest      wrk → hook, wrk → /usr/bin/webhook (HMAC rule + redis-cli LPUSH),
              redis-benchmark LPUSH 7000 B (the ceiling); fsync always, then everysec
  latency     push → status "passed" on a cached 3,000-file repository, and the
              floor (git fetch + git checkout + bash -c 'echo ok' by hand) interleaved
  throughput  1,000 trivial builds over 50 repositories and 3 slaves
  footprint   RSS idle/under load, binary sizes, image sizes
  balance     CRC32 mod N over 10,000 owner/name strings
"""

import atexit
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BIN = os.path.join(ROOT, "target", "release")
OUT = os.environ.get("BENCH_OUT", os.path.join(BENCH, "out"))
LOGS = os.path.join(OUT, "logs")
FIXTURE = os.path.join(BENCH, "fixtures", "github-push-with-new-branch.payload.json")

RUNS = int(os.environ.get("BENCH_RUNS", "5"))  # runs per measurement (median reported)
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))  # wrk duration per run
CONNS = int(os.environ.get("BENCH_CONNS", "32"))
PUSHES = int(os.environ.get("BENCH_PUSHES", "100"))  # pushes per latency run
TP_REPOS = int(os.environ.get("BENCH_TP_REPOS", "50"))
TP_BRANCHES = int(os.environ.get("BENCH_TP_BRANCHES", "20"))  # 50 x 20 = 1,000 builds per run
TP_SLAVES = 3
EVERYSEC = os.environ.get("BENCH_EVERYSEC", "1") == "1"
SECTIONS = os.environ.get("BENCH_SECTIONS", "ingest,latency,throughput,footprint,balance").split(",")
POLL_S = float(os.environ.get("BENCH_POLL_MS", "1")) / 1000  # status poll interval (latency)
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


# ---------------------------------------------------------------- redis


class Redis:
    def __init__(self):
        self.port = free_port()
        self.dir = os.path.join(WORK, "redis")
        os.makedirs(self.dir, exist_ok=True)
        # as deployed (images/, make run): no RDB snapshots, AOF fsync'ed on every write
        self.proc = start("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                                    "--save", "", "--appendonly", "yes", "--appendfsync", "always"])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        wait_for(lambda: self.try_cli("PING") == "PONG", 10, "redis-server")

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


def start_slave(redis, name, cache, cluster="slave"):
    logf = os.path.join(LOGS, f"{name}.log")
    p = start(name, [os.path.join(BIN, "slave")],
              env={"REDIS_URL": redis.url, "SLAVE_CACHE": cache, "SLAVE_CLUSTER": cluster, "RUST_LOG": "info"})
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


def run_wrk(port, path, bodies, name):
    out = run(["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", "--latency", "-s", os.path.join(BENCH, "post.lua"),
               f"http://127.0.0.1:{port}", "--", bodies, path], timeout=SECONDS + 60)
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
        log(f"ingest: appendfsync {mode}, {RUNS} rounds of {' / '.join(targets[mode])}, {SECONDS}s each")
        for rnd_i in range(RUNS):
            order = targets[mode][rnd_i % len(targets[mode]):] + targets[mode][:rnd_i % len(targets[mode])]
            for target in order:
                redis.reset()
                register_fake_slave(redis)
                who = {"hook": hook.pid, "redis": None}.get(target) or (wh[target][0].pid if target in wh else None)
                cpu0 = (proc_cpu(who, children=True) if who else 0.0, proc_cpu(redis.proc.pid))
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
    stop(hook)


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


def make_medium_repo(path, files=3000):
    """A 3,000-file repository (~3 MB of text), like the one SPEC.md measured."""
    git("init", "-q", "-b", "main", path)
    rnd = random.Random(11)
    words = NOUN + ADJ + LAST
    lines = ["commit refs/heads/main", "committer Bench <bench@localhost> 1767225600 +0000", "data 14", "initial import"]
    blob = []
    for i in range(files):
        text = "\n".join(" ".join(rnd.choice(words) for _ in range(12)) for _ in range(12)) + "\n"
        blob.append((f"src/mod{i // 100:02d}/file{i:04d}.txt", text))
    blob.append(("integration.yml", INTEGRATION))
    blob.append(("README.md", "# medium\nA benchmark repository.\n"))
    for p, text in blob:
        data = text.encode()
        lines.append(f"M 644 inline {p}")
        lines.append(f"data {len(data)}")
        lines.append(text)
    stream = ("\n".join(lines) + "\n").encode()
    subprocess.run(["git", "fast-import", "--quiet"], input=stream, cwd=path, check=True)
    git("checkout", "-q", "-f", "main", cwd=path)


def latency(redis, fixture):
    base = os.path.join(WORK, "latency")
    work = os.path.join(base, "work")
    bare = os.path.join(base, "medium.git")
    make_medium_repo(work)
    git("clone", "-q", "--bare", work, bare)
    git("remote", "add", "origin", bare, cwd=work)
    git("fetch", "-q", "origin", cwd=work)
    url = f"file://{bare}"
    repo, branch = "bench/medium", "main"

    redis.reset()
    hook, hport = start_hook(redis, "latency-hook")
    cache = os.path.join(base, "cache")
    slave = start_slave(redis, "latency-slave", cache)
    cli = Client(hport)

    # first build: the clone (cold), not measured
    sha = git("rev-parse", "HEAD", cwd=work).strip()
    code, _ = cli.push(push_body(fixture, repo, sha, branch, url, "initial import"))
    assert code == 202, code
    wait_for(lambda: (cli.status(repo, branch) or {}).get("state") in ("passed", "failed"), 120, "first build")
    first = cli.status(repo, branch)
    if first["state"] != "passed":
        raise RuntimeError(f"latency: first build failed: {first.get('log')}")
    checkout = os.path.join(cache, "bench%2Fmedium", "main")
    if not os.path.isdir(os.path.join(checkout, ".git")):
        raise RuntimeError(f"latency: no cached clone at {checkout}")
    floor_dir = os.path.join(base, "floor-clone")
    shutil.copytree(checkout, floor_dir, symlinks=True)
    git("update-index", "-q", "--refresh", cwd=floor_dir)  # the copy has new inodes: refresh the stat cache once
    # The slave's checkout fetches from its mirror; the floor fetches from the repository itself.
    git("remote", "set-url", "origin", bare, cwd=floor_dir)

    gitc = ["git", "-C", floor_dir, "-c", "advice.detachedHead=false", "-c", "gc.auto=0"]
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")

    def timed(argv, cwd=None):
        t = time.perf_counter()
        subprocess.run(argv, check=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return (time.perf_counter() - t) * 1000

    def floor(sha):
        r = {"fetch": timed(gitc + ["fetch", "--quiet", "--no-tags", "origin", "+refs/heads/main:refs/remotes/origin/main"]),
             "checkout": timed(gitc + ["checkout", "--quiet", "--force", "--detach", sha]),
             "bash": timed(["bash", "-c", "echo ok"], cwd=floor_dir)}
        r["total"] = r["fetch"] + r["checkout"] + r["bash"]
        # what the slave runs besides: `cat-file -e` before and after the fetch, `show` after the checkout
        r["catfile"] = timed(gitc + ["cat-file", "-e", f"{sha}^{{commit}}"])
        r["show"] = timed(gitc + ["show", "-s", "--format=%cI%n%B", sha])
        return r

    def through_hook(sha, message):
        body = push_body(fixture, repo, sha, branch, url, message)
        t0w, t0 = time.time(), time.perf_counter()
        code, answer = cli.push(body)
        t202 = time.perf_counter()
        if code != 202:
            raise RuntimeError(f"latency push answered {code}: {answer[:200]}")
        polls = 0
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
                "build": (f("finished_at") - f("started_at")) * 1000, "seen_after": (t1w - f("finished_at")) * 1000}

    runs = []
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

    log(f"latency: {RUNS} runs x {PUSHES} pushes on a cached 3,000-file clone, floor interleaved")
    for r_i in range(RUNS):
        pushes, floors = [], []
        for i in range(PUSHES):
            sha, msg = new_commit()
            if i % 2 == 0:  # alternate who goes first, so neither always finds the objects in the page cache
                floors.append(floor(sha))
                pushes.append(through_hook(sha, msg))
            else:
                pushes.append(through_hook(sha, msg))
                floors.append(floor(sha))
        failed = sum(1 for p in pushes if p["state"] != "passed")
        tot = [p["total"] for p in pushes]
        fl = [f["total"] for f in floors]
        summary = {"p50_ms": median(tot), "p99_ms": pct(tot, 99), "floor_p50_ms": median(fl), "floor_p99_ms": pct(fl, 99),
                   "failed": failed}
        summary["ratio_p50"] = summary["p50_ms"] / summary["floor_p50_ms"]
        runs.append({"summary": summary, "pushes": pushes, "floors": floors})
        log(f"  run {r_i + 1}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    allp = [p for r in runs for p in r["pushes"]]
    allf = [f for r in runs for f in r["floors"]]
    breakdown = {k: {"p50": median([p[k] for p in allp]), "p99": pct([p[k] for p in allp], 99)}
                 for k in ("total", "post_202", "to_queued", "queue_wait", "build", "seen_after")}
    floor_parts = {k: {"p50": median([f[k] for f in allf]), "p99": pct([f[k] for f in allf], 99)}
                   for k in ("fetch", "checkout", "bash", "total", "catfile", "show")}
    RESULTS["latency"] = {"runs": [r["summary"] for r in runs], "breakdown_all_pushes": breakdown, "floor_parts": floor_parts,
                          "slave_rss": proc_status(slave.pid), "hook_rss": proc_status(hook.pid)}
    if shutil.which("perf") and os.geteuid() == 0 and os.environ.get("BENCH_PERF", "1") == "1":
        RESULTS["latency"]["traced"] = traced_pushes(slave, new_commit, through_hook)
    with open(os.path.join(LOGS, "latency-samples.json"), "w") as fh:
        json.dump(runs, fh)
    stop(slave)
    stop(hook)


def perf_children(text, root_pid):
    """(fork, exec, exit, program) of every process the slave (any of its threads) started,
    from `perf script` output of sched_process_{fork,exec,exit}."""
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
    threads = {root_pid}
    for child, (ts, parent) in sorted(forks.items(), key=lambda x: x[1][0]):
        if parent in threads and child not in execs:
            threads.add(child)
    kids = sorted((ts, c) for c, (ts, parent) in forks.items() if parent in threads and c in execs)
    return [(f, execs[c][0], exits.get(c), os.path.basename(execs[c][1])) for f, c in kids]


def traced_pushes(slave, new_commit, through_hook, count=30):
    """Extra pushes (not in the latency figures) with `perf record` of process fork/exec/exit on
    CLOCK_MONOTONIC: splits the slave's build into its child processes and the time between them."""
    data = os.path.join(WORK, "perf.data")
    perf = start("perf-record", ["perf", "record", "-q", "-k", "CLOCK_MONOTONIC", "-a", "-o", data, "-e",
                                 "sched:sched_process_fork,sched:sched_process_exec,sched:sched_process_exit"])
    time.sleep(1.0)
    samples = []
    for _ in range(count):
        sha, msg = new_commit()
        samples.append(through_hook(sha, msg))
    time.sleep(0.2)
    os.killpg(perf.pid, signal.SIGINT)
    perf.wait(30)
    PROCS.remove(perf)
    text = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True).stdout
    kids = perf_children(text, slave.pid)
    parts = {}
    fetch_names = ["cat-file", "fetch", "cat-file (again)", "checkout", "show"]
    for s in samples:
        t0, t202, t1 = s["mono"]
        mine = [k for k in kids if t202 - 0.001 <= k[0] <= t1 and k[2] is not None]
        gits = [k for k in mine if k[3] == "git"]
        bash = [k for k in mine if k[3] == "bash"]
        if len(gits) not in (3, 5) or len(bash) != 1:
            continue
        names = fetch_names if len(gits) == 5 else ["cat-file", "checkout", "show"]
        row = {"POST → 202": (t202 - t0), "202 → first git spawned (queue, BLMOVE, start script)": gits[0][0] - t202}
        prev_exit = None
        gaps = 0.0
        for name, k in zip(names + ["bash -c 'echo ok'"], gits + bash):
            row[f"{name}: spawn → exit"] = k[2] - k[0]
            if prev_exit is not None:
                gaps += k[0] - prev_exit
            prev_exit = k[2]
        row["slave between its children (sum of gaps)"] = gaps
        row["bash exit → finished_at (log, finish script)"] = s["finished_mono"] - bash[0][2]
        row["finished_at → seen by the poller"] = t1 - s["finished_mono"]
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


def make_tp_repo(bare, nrounds, branches):
    """A tiny repository with `nrounds` commits on each branch, under refs/bench/ (unreachable from branches
    until a run points the branch at them). Returns {branch: [sha per round]}."""
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
    base = os.path.join(WORK, "throughput")
    os.makedirs(base)
    repos = owner_names(TP_REPOS, seed=99)
    branches = BRANCHES[:TP_BRANCHES]
    nrounds = RUNS + 1  # round 0 = cold caches (clones), then RUNS warm rounds
    t = time.monotonic()
    shas = {}
    for i, full in enumerate(repos):
        bare = os.path.join(base, f"r{i:02d}.git")
        shas[full] = (bare, make_tp_repo(bare, nrounds, branches))
    log(f"throughput: {len(repos)} repositories x {len(branches)} branches prepared in {time.monotonic() - t:.1f}s")

    redis.reset()
    hook, hport = start_hook(redis, "tp-hook")
    slaves = []
    for s in range(TP_SLAVES):
        slaves.append(start_slave(redis, f"tp-slave-{s}", os.path.join(base, f"cache-{s}")))
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
        for b in branches:  # branch-major: all three slaves get work from the start
            for full in repos:
                bare, s = shas[full]
                bodies.append((full, push_body(fixture, full, s[b][k], b, f"file://{bare}", f"{b} round {k}")))
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
        t0 = time.perf_counter()
        coalesced = 0
        for full, body in bodies:
            code, ans = cli.push(body)
            if code != 202:
                raise RuntimeError(f"throughput push answered {code}: {ans[:200]}")
            a = json.loads(ans)
            coalesced += bool(a.get("coalesced"))
            if a["slave"] != f"slave-{zlib.crc32(full.encode()) % TP_SLAVES}":
                mismatched_slave += 1
        t_posted = time.perf_counter()
        expect = len(bodies) - coalesced
        m = wait_for(lambda: (lambda m: m if builds_done(m) - done0 >= expect else None)(cli.metrics()), 600,
                     f"{expect} builds", every=0.02)
        t1 = time.perf_counter()
        cpu1 = cpu_ticks()
        sampler_stop.set()
        th.join()
        peak_slave_rss = max(peak_slave_rss, peaks["slave"])
        peak_hook_rss = max(peak_hook_rss, peaks["hook"])
        r = {"round": k, "cold": k == 0, "builds": expect, "coalesced": coalesced,
             "failed": int(m.get('ci_builds_total{result="failed"}', 0) - failed0),
             "seconds": t1 - t0, "post_seconds": t_posted - t0, "builds_per_s": expect / (t1 - t0),
             "peak_slave_rss_kib": peaks["slave"], "peak_hook_rss_kib": peaks["hook"],
             "cpu_busy": (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1]),
             "cpu_ms_per_build": (cpu1[0] - cpu0[0]) * 1000 / os.sysconf("SC_CLK_TCK") / max(1, expect)}
        rounds.append(r)
        log(f"  round {k} ({'cold: clones' if k == 0 else 'warm: fetch'}): {expect} builds in {r['seconds']:.2f}s = "
            f"{r['builds_per_s']:.1f}/s (posting took {r['post_seconds']:.2f}s), failed {r['failed']}, coalesced {coalesced}, "
            f"CPU busy {100 * r['cpu_busy']:.0f}%, {r['cpu_ms_per_build']:.0f} CPU-ms per build")
    per_slave = {}
    for i, p in enumerate(slaves):
        per_slave[f"slave-{i}"] = open(os.path.join(LOGS, f"tp-slave-{i}.log")).read().count("build.finished")
    RESULTS["throughput"] = {"rounds": rounds, "slave_idle": slave_idle, "hook_idle": hook_idle,
                             "slave_peak_rss_kib": peak_slave_rss, "hook_peak_rss_kib": peak_hook_rss,
                             "slave_after": [proc_status(p.pid) for p in slaves], "builds_per_slave_log": per_slave,
                             "slave_field_not_crc32_mod_3": mismatched_slave}
    for p in slaves:
        stop(p)
    stop(hook)


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


def report():
    L = []
    m = RESULTS["machine"]
    L.append(f"# ci-backend benchmark results — {m['date']}")
    L.append(f"machine: {m['nproc']} x {m['cpu']}, {m['mem_gib']} GiB, kernel {m['kernel']}, {m['os']}; "
             f"{m['redis']}; {m['webhook']}; {m['wrk']}; {m['git']}; ci-backend {m['commit']}{' (+uncommitted src)' if m['dirty'] else ''}")
    L.append(f"waited {RESULTS['quiet_wait']['waited_s']} s for idle CPUs before starting (busy in the last second: {100 * RESULTS['quiet_wait']['busy_last_s']:.0f}%)")
    L.append(f"runs per measurement: {RUNS} (medians); total {RESULTS.get('total_seconds')} s; load average (1/5/15 min) before/after each section: "
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
    if "latency" in RESULTS:
        lat = RESULTS["latency"]
        L.append(f"\n## 2. Push → passed latency ({PUSHES} pushes per run, cached 3,000-file clone, `echo ok`)\n")
        L.append("| run | p50 ms | p99 ms | floor p50 ms | floor p99 ms | p50 / floor p50 | failed |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(lat["runs"]):
            L.append(f"| {i + 1} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['floor_p50_ms']:.1f} | {r['floor_p99_ms']:.1f} | {r['ratio_p50']:.2f} | {r['failed']} |")
        med = {k: median([r[k] for r in lat["runs"]]) for k in ("p50_ms", "p99_ms", "floor_p50_ms", "floor_p99_ms", "ratio_p50")}
        L.append(f"| **median** | **{med['p50_ms']:.1f}** | **{med['p99_ms']:.1f}** | **{med['floor_p50_ms']:.1f}** | **{med['floor_p99_ms']:.1f}** | **{med['ratio_p50']:.2f}** | |")
        L.append("\nwhere the time goes (all pushes; ms):\n")
        L.append("| part | p50 | p99 |")
        L.append("|---|---:|---:|")
        names = {"post_202": "POST → 202 (client)", "to_queued": "POST → queued_at (hook)", "queue_wait": "queued_at → started_at (queue, BLMOVE, start script)",
                 "build": "started_at → finished_at (slave: git + bash + store)", "seen_after": "finished_at → seen by the 1 ms poller", "total": "total"}
        for k, v in lat["breakdown_all_pushes"].items():
            L.append(f"| {names[k]} | {v['p50']:.1f} | {v['p99']:.1f} |")
        fp = lat["floor_parts"]
        L.append(f"| floor by hand: git fetch | {fp['fetch']['p50']:.1f} | {fp['fetch']['p99']:.1f} |")
        L.append(f"| floor by hand: git checkout | {fp['checkout']['p50']:.1f} | {fp['checkout']['p99']:.1f} |")
        L.append(f"| floor by hand: bash -c 'echo ok' | {fp['bash']['p50']:.1f} | {fp['bash']['p99']:.1f} |")
        L.append(f"| slave extra (by hand): git cat-file -e (runs 2x) | {fp['catfile']['p50']:.1f} | {fp['catfile']['p99']:.1f} |")
        L.append(f"| slave extra (by hand): git show -s | {fp['show']['p50']:.1f} | {fp['show']['p99']:.1f} |")
        tr = lat.get("traced")
        if tr:
            L.append(f"\ninside the slave ({tr['analysed']} of {tr['pushes']} extra pushes traced with perf sched_process_fork/exec/exit; ms):\n")
            L.append("| part | p50 | p99 |")
            L.append("|---|---:|---:|")
            for k, v in tr["parts"].items():
                L.append(f"| {k} | {v['p50']:.1f} | {v['p99']:.1f} |")
    if "throughput" in RESULTS:
        tp = RESULTS["throughput"]
        L.append(f"\n## 3. Build throughput ({TP_REPOS} repositories x {TP_BRANCHES} branches = {TP_REPOS * TP_BRANCHES} builds per round, {TP_SLAVES} slaves)\n")
        L.append("| round | caches | builds | seconds | builds/s | failed | coalesced | CPU busy (all processes) | CPU-ms per build |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in tp["rounds"]:
            L.append(f"| {r['round']} | {'cold (clone)' if r['cold'] else 'warm (fetch)'} | {r['builds']} | {r['seconds']:.2f} | {r['builds_per_s']:.1f} | {r['failed']} | {r['coalesced']} | {100 * r['cpu_busy']:.0f}% | {r['cpu_ms_per_build']:.0f} |")
        warm = [r["builds_per_s"] for r in tp["rounds"] if not r["cold"]]
        L.append(f"| **median warm** | | | | **{median(warm):.1f}** | | | | |")
        L.append(f"\nbuilds per slave (log count): {tp['builds_per_slave_log']}; 202 `slave` ≠ CRC32 mod 3: {tp['slave_field_not_crc32_mod_3']}")
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
             "throughput": lambda: throughput(redis, fixture), "footprint": footprint, "balance": balance}
    for name in SECTIONS:
        t = time.monotonic()
        log(f"== {name}")
        load0 = open("/proc/loadavg").read().split()[:3]
        steps[name]()
        RESULTS.setdefault("loadavg", {})[name] = {"before": load0, "after": open("/proc/loadavg").read().split()[:3]}
        RESULTS.setdefault("section_seconds", {})[name] = round(time.monotonic() - t, 1)
        log(f"== {name} done in {time.monotonic() - t:.0f}s")
    RESULTS["total_seconds"] = round(time.monotonic() - t0, 1)
    report()
    log(f"total {time.monotonic() - t0:.0f}s; results in {os.path.relpath(OUT, ROOT)}/results.md and results.json")


if __name__ == "__main__":
    main()
