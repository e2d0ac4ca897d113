#!/usr/bin/env bash
# `make run`: a complete local backend — Redis, one hook on :5000, three
# slaves — plus a bundled example repository and the curl line that builds it.
# Ctrl-C stops everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
run="$root/.run"
bin="$root/target/release"
mkdir -p "$run"

port=${REDIS_PORT:-6379}
while redis-cli -p "$port" ping >/dev/null 2>&1; do port=$((port + 1)); done
hook_addr=${HOOK_ADDR:-0.0.0.0:5000}
hook_port=${hook_addr##*:}

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "run: stopping slaves, hook and redis"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

redis-server --port "$port" --bind 127.0.0.1 --dir "$run" --appendonly yes --appendfsync always --save '' >"$run/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$port" ping >/dev/null || { echo "run: redis did not start, see $run/redis.log" >&2; exit 1; }
export REDIS_URL="redis://127.0.0.1:$port/0"

: >"$run/hook.log"
HOOK_ADDR="$hook_addr" "$bin/hook" >>"$run/hook.log" 2>&1 &
pids+=($!)
for i in 1 2 3; do
  SLAVE_CACHE="$run/cache-$i" "$bin/slave" >"$run/slave-$i.log" 2>&1 &
  pids+=($!)
done

# The bundled example, as a bare repository the slaves clone over file://.
example="$run/example.git"
if [ ! -d "$example" ]; then
  work=$(mktemp -d)
  cp -r "$root/examples/hello/." "$work/"
  git -C "$work" init -q -b main
  git -C "$work" add .
  git -C "$work" -c user.name=ci-backend -c user.email=ci@localhost commit -qm "hello: first build"
  git clone -q --bare "$work" "$example"
  rm -rf "$work"
fi
sha=$(git -C "$example" rev-parse main)

token=""
for _ in $(seq 100); do
  token=$(sed -n 's/.*hook.token source=[a-z]* token=\([^ ]*\).*/\1/p' "$run/hook.log" | head -1)
  # A configured HOOK_TOKEN is logged as its fingerprint only.
  grep -q 'hook.token source=configured' "$run/hook.log" && token=${HOOK_TOKEN:-}
  [ -n "$token" ] && break; sleep 0.1
done
[ -n "$token" ] || { echo "run: the hook did not start, see $run/hook.log" >&2; exit 1; }

cat >"$run/example-push.json" <<JSON
{"ref":"refs/heads/main","after":"$sha","repository":{"full_name":"example/hello","clone_url":"file://$example","default_branch":"main"},"head_commit":{"message":"hello: first build"}}
JSON
sig=$(openssl dgst -sha256 -hmac "$token" <"$run/example-push.json" | sed 's/^.* //')

cat <<MSG

ci-backend is running: redis on 127.0.0.1:$port, hook on $hook_addr, 3 slaves.
Logs: $run/{hook,slave-1,slave-2,slave-3,redis}.log

Secret token: $token

Build the bundled example repository:

  curl -i http://127.0.0.1:$hook_port/ -H 'X-GitHub-Event: push' -H 'Content-Type: application/json' \\
       -H 'X-Hub-Signature-256: sha256=$sig' --data-binary @$run/example-push.json

Then read its status:

  curl -i http://127.0.0.1:$hook_port/status/example/hello

Ctrl-C stops everything.
MSG
tail -n 0 -f "$run/hook.log" "$run"/slave-*.log &
pids+=($!)
wait
