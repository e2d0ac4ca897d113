#!/usr/bin/env python3
"""Throughput as a client sees it: a light client outside the bench (stdlib only).

Against a running hook (and its slaves), posts signed pushes over N keep-alive HTTP connections all at
once, polls `/metrics` (ci_builds_total) until the builds they queued are counted, and prints one JSON
object: builds/s from the first POST to the poll that counted the last build. With `--poll-repos S`, a
second client reads `GET /repos` (JSON) every S seconds during the backlog, as a dashboard or a script
would; with `--hook-pid`, the hook's CPU per such poll is measured afterwards, with nothing else running
(the hook's threads' `/proc/<pid>/task/*/schedstat`, nanoseconds; `/proc/<pid>/stat` ticks as a fallback),
and given per 100 branches listed.

    python3 bench/client_throughput.py --url http://127.0.0.1:5000 --token-file T --bodies pushes.jsonl \
        [--connections 8] [--burst N] [--poll-repos 0.2] [--hook-pid PID] [--timeout 600]

`--burst N`: N pushes at a time instead, each burst waited for (counted) before the next is posted, as a
client that pushes in waves sees it.

`--bodies`: one GitHub push body a line (minified JSON, sent byte for byte, signed with the token). The
bench (bench.py, section throughput, BENCH_TP_CLIENT) writes that file for a round and runs this client
after a cold round that cloned every repository. Exit 1 when a push is refused or the builds are not all
counted within --timeout.
"""

import argparse
import hashlib
import hmac
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.parse


class Conn:
    """One keep-alive connection (reopened once when the hook closed it)."""

    def __init__(self, host, port):
        self.host, self.port, self.c = host, port, None

    def request(self, method, path, body=None, headers=None):
        for attempt in range(2):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection(self.host, self.port, timeout=60)
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


def builds_counted(conn):
    """ci_builds_total summed over results (passed, failed, canceled, ...), from /metrics."""
    _, body = conn.request("GET", "/metrics")
    n = 0.0
    for line in body.decode().splitlines():
        if line.startswith("ci_builds_total{"):
            n += float(line.rpartition(" ")[2])
    return n


def hook_cpu_ns(pid):
    """CPU nanoseconds of the hook's live threads; None when /proc says nothing."""
    total, seen = 0, False
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
                    seen = True
            except (FileNotFoundError, ProcessLookupError):
                pass
    except FileNotFoundError:
        return None
    if seen:
        return total
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def branches_in(body):
    return sum(len(r.get("branches", [])) for r in json.loads(body))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the hook, http://host:port")
    ap.add_argument("--token-file", required=True, help="a file holding the web-hook token (HOOK_TOKEN)")
    ap.add_argument("--bodies", required=True, help="push bodies, one minified JSON a line")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--burst", type=int, default=0, metavar="N", help="post N at a time, each burst counted before the next")
    ap.add_argument("--poll-repos", type=float, default=0.0, metavar="SECONDS", help="GET /repos every SECONDS meanwhile")
    ap.add_argument("--hook-pid", type=int, help="measure the hook's CPU per /repos poll (afterwards, alone)")
    ap.add_argument("--idle-polls", type=int, default=100, help="polls of the afterwards measurement")
    ap.add_argument("--metrics-every", type=float, default=0.02, metavar="SECONDS")
    ap.add_argument("--timeout", type=float, default=600.0)
    a = ap.parse_args()

    u = urllib.parse.urlsplit(a.url)
    host, port = u.hostname, u.port or 80
    token = open(a.token_file).read().strip().encode()
    bodies = [line.rstrip(b"\n") for line in open(a.bodies, "rb") if line.strip()]
    signed = [(b, "sha256=" + hmac.new(token, b, hashlib.sha256).hexdigest()) for b in bodies]
    auth = {"Authorization": "Bearer " + token.decode(), "Accept": "application/json"}

    meter = Conn(host, port)
    done0 = builds_counted(meter)

    answers = [None] * len(signed)
    failures = []
    burst = a.burst if a.burst > 0 else len(signed)
    next_i = [0, burst]  # the next push to post, the end of the current burst
    lock = threading.Lock()
    go = threading.Event()
    posted = threading.Semaphore(0)  # one per push answered
    cleared = [threading.Event() for _ in range(0, len(signed), burst)]  # burst k may be posted

    def poster():
        c = Conn(host, port)
        go.wait()
        while True:
            with lock:
                i = next_i[0]
                if i < len(signed) and i < next_i[1]:
                    next_i[0] += 1
            if i >= len(signed) or failures:
                break
            if i >= next_i[1] or not cleared[i // burst].is_set():
                cleared[i // burst].wait()
                continue
            body, sig = signed[i]
            try:
                code, ans = c.request("POST", "/", body, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                                                          "X-Hub-Signature-256": sig})
            except (OSError, http.client.HTTPException) as e:
                failures.append(f"push {i}: {e}")
                break
            if code != 202:
                failures.append(f"push {i} answered {code}: {ans[:200]!r}")
                break
            answers[i] = json.loads(ans)
            posted.release()
        c.close()

    polls = {"ms": [], "branches": 0, "errors": 0}
    stop_poll = threading.Event()

    def poller():
        c = Conn(host, port)
        go.wait()
        while not stop_poll.is_set():
            t = time.perf_counter()
            try:
                code, body = c.request("GET", "/repos", headers=auth)
                if code == 200:
                    polls["ms"].append((time.perf_counter() - t) * 1000)
                    polls["branches"] = branches_in(body)
                else:
                    polls["errors"] += 1
            except (OSError, http.client.HTTPException, ValueError):
                polls["errors"] += 1
            stop_poll.wait(max(0.0, a.poll_repos - (time.perf_counter() - t)))
        c.close()

    threads = [threading.Thread(target=poster, daemon=True) for _ in range(a.connections)]
    if a.poll_repos > 0:
        threads.append(threading.Thread(target=poller, daemon=True))
    for t in threads:
        t.start()
    time.sleep(0.2)  # every connection's thread waiting on `go`
    t0 = time.perf_counter()
    deadline = t0 + a.timeout
    counted, expect, t_posted = 0, 0, t0
    cleared[0].set()
    go.set()
    for k in range(len(cleared)):
        end = min(len(signed), (k + 1) * burst)
        for _ in range(k * burst, end):
            while not posted.acquire(timeout=1):
                if failures or time.perf_counter() > deadline:
                    break
            if failures:
                break
        if failures:
            break
        t_posted = time.perf_counter()
        expect = end - sum(bool(x.get("coalesced")) for x in answers[:end])
        while time.perf_counter() < deadline:
            counted = builds_counted(meter) - done0
            if counted >= expect:
                break
            time.sleep(a.metrics_every)
        if k + 1 < len(cleared):
            with lock:
                next_i[1] = min(len(signed), (k + 2) * burst)
            cleared[k + 1].set()
    for c in cleared:
        c.set()
    for t in threads[:a.connections]:
        t.join()
    if failures:
        stop_poll.set()
        print(json.dumps({"error": failures[0], "posted": sum(x is not None for x in answers)}))
        return 1
    coalesced = sum(bool(x.get("coalesced")) for x in answers)
    t1 = time.perf_counter()
    stop_poll.set()
    for t in threads[a.connections:]:
        t.join()
    out = {"pushes": len(answers), "coalesced": coalesced, "builds": expect, "counted": int(counted),
           "connections": a.connections, "burst": a.burst or None, "seconds": round(t1 - t0, 3), "post_seconds": round(t_posted - t0, 3),
           "builds_per_s": round(expect / (t1 - t0), 1)}
    if a.poll_repos > 0:
        ms = polls["ms"]
        out["repos_poll"] = {"every_s": a.poll_repos, "polls": len(ms), "errors": polls["errors"], "branches": polls["branches"],
                             "ms_p50": round(statistics.median(ms), 2) if ms else None, "ms_max": round(max(ms), 2) if ms else None}
    if a.hook_pid and counted >= expect:
        # the hook's CPU per poll with the backlog done, nothing else asking it anything
        c = Conn(host, port)
        code, body = c.request("GET", "/repos", headers=auth)
        branches = branches_in(body) if code == 200 else 0
        c0, w0 = hook_cpu_ns(a.hook_pid), time.perf_counter()
        for _ in range(a.idle_polls):
            c.request("GET", "/repos", headers=auth)
        c1, w1 = hook_cpu_ns(a.hook_pid), time.perf_counter()
        c.close()
        if c0 is not None and c1 is not None and branches:
            per = (c1 - c0) / 1e6 / a.idle_polls
            out["repos_poll_idle"] = {"polls": a.idle_polls, "branches": branches, "wall_ms_per_poll": round((w1 - w0) * 1000 / a.idle_polls, 3),
                                      "hook_cpu_ms_per_poll": round(per, 3),
                                      "hook_cpu_ms_per_poll_per_100_branches": round(per * 100 / branches, 3)}
    meter.close()
    print(json.dumps(out))
    return 0 if counted >= expect else 1


if __name__ == "__main__":
    sys.exit(main())
