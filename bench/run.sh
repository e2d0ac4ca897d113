#!/usr/bin/env bash
# `make bench`: builds the release binaries and runs the benchmark suite of
# issue 6 (bench/bench.py) against a private redis-server on a free port.
# Everything listens on 127.0.0.1. Results: bench/out/results.{md,json},
# logs: bench/out/logs/. About 8 minutes on 2 cores.
#
# Knobs (environment): BENCH_RUNS (5), BENCH_SECONDS (10, per wrk run),
# BENCH_CONNS (32), BENCH_PUSHES (100, per latency run), BENCH_EVERYSEC (1:
# repeat ingest with appendfsync everysec), BENCH_SECTIONS
# (ingest,latency,throughput,footprint,balance), BENCH_KEEP=1 keeps the
# scratch directory (repositories, Redis AOF).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

missing=()
for tool in redis-server redis-cli redis-benchmark wrk git python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -x /usr/bin/webhook ] || missing+=("webhook (/usr/bin/webhook)")
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: missing: ${missing[*]} — on Debian: apt-get install redis-server redis-tools wrk webhook git python3" >&2
  exit 1
fi

${CARGO:-cargo} build --release --bins
exec python3 bench/bench.py "$@"
