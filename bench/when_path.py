"""The cost of `when: path` per build: the slave's `git diff` of the push's before..after in its
mirror of the 3,000-file repository of bench.py (make_medium_repo), read off the slave's own
`build.diff ... diff_ms=` log lines.

    BENCH_BIN=<dir of hook and slave> python3 bench/when_path.py [pushes, default 30]

Uses bench.py's rig (redis-server, hook, one slave, the cached clone; logs in bench/out/logs/
when-path-*.log). Each push changes one file (src/…) and names its parent as `before`; the
integration.yml has one step per glob (`src/**` runs, `docs/**` is skipped). Then one push that
changes every file. For each, the same diff run by hand in the bare repository (the floor: git
alone, no slave) beside it. Prints medians, p95 and max in milliseconds.
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402

YML = (
    "- step: always\n  shell: echo ok\n"
    "- step: docs\n  shell: echo docs\n  when: {path: \"docs/**\"}\n"
    "- step: src\n  shell: echo src\n  when: {path: \"src/**\"}\n"
)


def diff_line(logf, short):
    with open(logf) as fh:
        for line in fh:
            if "build.diff" in line and f"sha={short}" in line:
                return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
    return None


def push(rig, fixture, sha, before, msg):
    body = json.loads(B.push_body(fixture, rig.repo, sha, rig.branch, rig.url, msg))
    body["before"] = before
    code, answer = rig.cli.push(json.dumps(body, separators=(",", ":")).encode())
    if code != 202:
        raise RuntimeError(f"push answered {code}: {answer[:200]}")
    B.wait_for(lambda: (rig.cli.status(rig.repo, rig.branch) or {}).get("sha") == sha
               and rig.cli.status(rig.repo, rig.branch).get("state") in ("passed", "failed"), 60, f"build of {sha}")
    st = rig.cli.status(rig.repo, rig.branch)
    logf = os.path.join(B.LOGS, "when-path-slave.log")
    line = B.wait_for(lambda: diff_line(logf, sha[:10]), 10, f"build.diff of {sha}") or diff_line(logf, sha[:10])
    t = time.perf_counter()
    subprocess.run(["git", "-C", rig.bare, "diff", "--name-only", "-z", "--no-renames", before, sha, "--"],
                   check=True, stdout=subprocess.DEVNULL)
    floor = (time.perf_counter() - t) * 1000
    return st, line, floor


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    os.makedirs(B.LOGS, exist_ok=True)
    for name in ("when-path-hook.log", "when-path-slave.log"):
        if os.path.exists(os.path.join(B.LOGS, name)):
            os.remove(os.path.join(B.LOGS, name))
    redis = B.Redis()
    fixture = B.load_fixture()
    rig = B.latency_rig(redis, fixture, tag="when-path", integration=YML)
    one, floor_one, files = [], [], set()
    for _ in range(n):
        before = B.git("rev-parse", "HEAD", cwd=rig.work).strip()
        sha, msg = rig.new_commit()
        st, line, floor = push(rig, fixture, sha, before, msg)
        if st["state"] != "passed" or "[skipped] step docs (when: the 1 changed file does not match docs/**)" not in st["log"]:
            raise RuntimeError(f"unexpected build of {sha}: {st}")
        one.append(float(line["diff_ms"]))
        floor_one.append(floor)
        files.add(line.get("files"))
    # Every file changed at once.
    before = B.git("rev-parse", "HEAD", cwd=rig.work).strip()
    B.run(["bash", "-c", "for f in src/*/*.txt; do echo wide >> \"$f\"; done"], cwd=rig.work)
    B.git("commit", "-q", "-am", "every file", cwd=rig.work)
    B.git("push", "-q", "origin", "HEAD:main", cwd=rig.work)
    sha = B.git("rev-parse", "HEAD", cwd=rig.work).strip()
    st, wide, floor_wide = push(rig, fixture, sha, before, "every file")
    print(f"when: path, {n} pushes of 1 changed file (files={sorted(files)}), 3,000-file repository:")
    print(f"  slave diff_ms median {B.median(one):.2f} p95 {B.pct(one, 95):.2f} max {max(one):.2f}; "
          f"git diff by hand median {B.median(floor_one):.1f} ms")
    print(f"  one push changing every file: files={wide.get('files')} diff_ms={wide['diff_ms']}; "
          f"git diff by hand {floor_wide:.1f} ms")


if __name__ == "__main__":
    main()
