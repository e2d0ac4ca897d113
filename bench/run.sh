#!/usr/bin/env bash
# `make bench`: installs what the bench runs, builds the release binaries and
# examples/virtual_slaves, and runs the benchmark suite (bench/bench.py) against a
# private redis-server on a free port. Everything listens on 127.0.0.1.
# Results: bench/out/results.{md,json}, logs: bench/out/logs/, charts: docs/bench/*.png.
# Under 25 minutes on 2 quiet cores at the defaults; each section prints its duration.
#
# What it installs (every program the bench uses comes from here):
#   Debian packages, through scripts/deps.sh (apt-get as root): redis-server, redis-tools
#   (redis-cli, redis-benchmark), wrk, webhook (adnanh/webhook, the ingest peer), python3-venv,
#   linux-perf (perf: the trace inside the slave; skipped, and said so, without it or root),
#   lighttpd (the git server: it runs git's own /usr/lib/git-core/git-http-backend, from Debian's git
#   package, as a CGI, so the http rows fetch over smart HTTP as from GitHub, Gitea or GitLab);
#   bench/.venv from PyPI: bench/requirements.txt (Buildbot 4.x, the latency/ingest peer; matplotlib).
#
# Knobs (environment), with defaults:
#   BENCH_SECTIONS   ingest,latency,containers,reuse,buildbot,throughput,control,footprint,balance,charts
#   BENCH_URLS (file,http) the rows of latency, containers and reuse: file:// and/or http:// through the git server
#   BENCH_RUNS (3)   runs per measurement (medians)    BENCH_SECONDS (10) per wrk run
#   BENCH_INGEST_RUNS, BENCH_CONTAINER_RUNS (BENCH_RUNS, at most 3) ingest rounds, container rows' runs
#   BENCH_CONNS (32) wrk connections                   BENCH_PUSHES (100) per latency run
#   BENCH_EVERYSEC (1) ingest again with appendfsync everysec   BENCH_POLL_MS (1) result poll
#   BENCH_BB_PUSHES (40) pushes to ours + Buildbot + floor       BENCH_BB_RUNS (3) ingest runs each
#   BENCH_REUSE_PUSHES (BENCH_PUSHES/2) per reuse run   BENCH_GIT_HARDENING_N (40) checkout pairs, git hardening's cost
#   BENCH_TP_REPOS (50) BENCH_TP_BRANCHES (20) BENCH_TP_VARIANTS (x1,x2,x2-http,slow-x2,slow-x2-steal):
#     x<SLAVE_EXECUTORS>[-steal (SLAVE_STEAL_AFTER=BENCH_TP_STEAL_AFTER, 2)][-http: clone URLs through the git server],
#     slow- = one slow repository
#   BENCH_TP_RUNS (3) warm rounds of the variants in BENCH_TP_FULL (x1,x2); BENCH_TP_VARIANT_WARM (1) of the
#     others (each after a cold round)
#   BENCH_TP_SLOW_SECONDS (10) BENCH_TP_SLOW_BRANCHES (3)
#   BENCH_TP_CLIENT (x2): variants also measured from outside by bench/client_throughput.py (more warm rounds:
#     alone, with GET /repos polled every BENCH_TP_CLIENT_POLL (0.2) s, in bursts of BENCH_TP_CLIENT_BURST (50;
#     0: no such round) each counted before the next); empty: none
#   BENCH_CP_SLAVES (10,100,1000) BENCH_CP_REPOS (10000) BENCH_CP_PRODUCERS (4) BENCH_CP_IDLE (5) BENCH_CP_LEASE_MS (10000)
#   BENCH_CHARTS_DIR (docs/bench) BENCH_NOTE (text under every chart's title)
#   BENCH_KEEP=1 keeps the scratch directory; BENCH_PERF, BENCH_QUIET_WAIT (180), BENCH_SETTLE (90: the most a
#   section waits for a quiet machine, CPU and disk, after a fresh Redis), BENCH_FOLLOW (1: latency waits by
#   following the live log; 0: polls /status every BENCH_POLL_MS), BENCH_BIN (the hook and slave to measure;
#   default: what this script builds, in $CARGO_TARGET_DIR/release or target/release)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/deps.sh redis-benchmark:redis-tools wrk:wrk /usr/bin/webhook:webhook py:ensurepip:python3-venv perf:linux-perf \
  /usr/sbin/lighttpd:lighttpd /usr/lib/git-core/git-http-backend:git

venv=bench/.venv
stamp=$venv/.requirements.sha256
want=$(sha256sum bench/requirements.txt | cut -d' ' -f1)
if [ ! -x $venv/bin/python ] || [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  echo "bench: installing bench/requirements.txt into $venv"
  python3 -m venv $venv
  $venv/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
  echo "$want" > $stamp
fi

${CARGO:-cargo} build --release --bins --example virtual_slaves
exec $venv/bin/python bench/bench.py "$@"
