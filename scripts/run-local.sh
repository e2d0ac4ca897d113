#!/usr/bin/env bash
# `make run`: a complete local backend — Redis, one hook on :5000 (the next
# free port when 5000 is taken and HOOK_ADDR is not set), three slaves — plus a
# bundled example repository and the curl line that builds it.
# Local slave i always holds index i (SLAVE_INDEX=i), caches in .run/cache-i
# and logs to .run/slave-i.log, so caches stay warm across restarts.
# Ctrl-C stops the slaves first (a running build finishes within their
# grace and is stored), then the hook, then Redis.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# RUN_DIR and BIN_DIR let the test suite run this script without touching
# the developer's .run or needing a release build.
run=${RUN_DIR:-$root/.run}
bin=${BIN_DIR:-$root/target/release}

# From a terminal, make runs this script in make's own process group, so a
# Ctrl-C reached make too, which then reported "Interrupt" or "Error 130" and
# exited so, however cleanly the script stopped. Run again as a job of its own
# in the terminal's foreground: Ctrl-C reaches this script alone, and make
# sees its 0. Only an interactive bash hands the terminal to a job (`fg`);
# its own notices go to /dev/null, the script's stderr to ours (fd 3).
if [ -t 0 ] && [ -z "${RUN_LOCAL_JOB:-}" ]; then
  export RUN_LOCAL_JOB=1
  exec 3>&2
  exec bash --norc --noprofile -i -c '"$0" "$@" 2>&3 3>&- & fg %1 >/dev/null' "$0" "$@" 2>/dev/null
fi
exec 3>&-

mkdir -p "$run"
# One make run per checkout: it holds an flock on $run/lock for its whole
# life (the kernel drops it when the script dies, even by kill -9, so no
# stale lock blocks the next one). A second one stops here, having touched
# nothing, and names the first from $run/running.
exec 9<>"$run/lock"
if ! flock -n 9; then
  echo "run: make run is already running in this checkout: $(cat "$run/running" 2>/dev/null || echo "pid unknown") (state in $run/); stop it (Ctrl-C in its terminal) first" >&2
  exit 1
fi
# A make run killed with kill -9 leaves its parts running (each in a session
# of its own); they still write $run/. Stop here while one is alive.
alive=()
for p in $(cat "$run/pids" 2>/dev/null); do
  case $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) in
    *redis-server*|*/hook*|*/slave*) alive+=("$p") ;;
  esac
done
if [ ${#alive[@]} -gt 0 ]; then
  echo "run: an earlier make run in $run/ was killed without its Ctrl-C and left its parts running: pids ${alive[*]}; stop them first: kill ${alive[*]}" >&2
  exit 1
fi

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

port=${REDIS_PORT:-6379}
while port_taken "$port"; do port=$((port + 1)); done
if [ -n "${HOOK_ADDR:-}" ]; then
  hook_addr=$HOOK_ADDR
  hook_port=${hook_addr##*:}
  if port_taken "$hook_port"; then
    echo "run: HOOK_ADDR=$hook_addr: port $hook_port is already in use; stop what holds it or choose another HOOK_ADDR" >&2
    exit 1
  fi
else
  hook_port=5000
  while port_taken "$hook_port" || [ "$hook_port" = "$port" ]; do hook_port=$((hook_port + 1)); done
  [ "$hook_port" = 5000 ] || echo "run: port 5000 is in use; the hook listens on $hook_port instead"
  hook_addr=0.0.0.0:$hook_port
fi
grace=${SLAVE_GRACE:-30}
echo "pid $$, hook on http://127.0.0.1:$hook_port, redis on 127.0.0.1:$port" >"$run/running"

# Each part in its own session, so Ctrl-C reaches this script alone and it
# stops them in order.
slave_pids=()
hook_pid=""
redis_pid=""
tail_pid=""
stop_all() {
  trap - INT TERM EXIT
  rm -f "$run/running"
  echo; echo "run: stopping the slaves (a running build may take up to ${grace}s), then the hook, then redis"
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null || true
  for p in "${slave_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${slave_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -n "$hook_pid" ] && { kill -TERM "$hook_pid" 2>/dev/null || true; wait "$hook_pid" 2>/dev/null || true; }
  [ -n "$redis_pid" ] && { kill -TERM "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; }
  echo "run: stopped"
}
trap stop_all EXIT
# Ctrl-C and SIGTERM are the way to stop make run: a clean stop exits 0.
trap 'stop_all; exit 0' INT TERM

# Redis is locked: a build step that reached it would read the token and queue
# builds of its own. The password is made at the first start and kept in
# $run/redis.pass (0600); redis-server reads it from a config file and the hook
# and slaves from REDIS_URL in their environment — never a command line, which
# any local user (a step too) reads in /proc/<pid>/cmdline.
pass_file=$run/redis.pass
if [ ! -s "$pass_file" ]; then
  (umask 077 && openssl rand -hex 24 >"$pass_file")
fi
pass=$(cat "$pass_file")
(umask 077 && printf 'requirepass %s\n' "$pass" >"$run/redis.conf")
setsid redis-server "$run/redis.conf" --port "$port" --bind 127.0.0.1 --dir "$run" --appendonly yes --appendfsync always --save '' >"$run/redis.log" 2>&1 9>&- &
redis_pid=$!
echo "$redis_pid" >"$run/pids"
ping_redis() { REDISCLI_AUTH=$pass redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; }
for _ in $(seq 100); do ping_redis && break; sleep 0.1; done
ping_redis || { echo "run: redis did not start, see $run/redis.log" >&2; exit 1; }
export REDIS_URL="redis://:$pass@127.0.0.1:$port/0"

: >"$run/hook.log"
HOOK_ADDR="$hook_addr" setsid "$bin/hook" >>"$run/hook.log" 2>&1 9>&- &
hook_pid=$!
echo "$hook_pid" >>"$run/pids"
# Steps run as SLAVE_BUILD_USER (nobody) when the slaves run as root: the
# caches must be where that user can enter (a checkout under /root is not).
cache_root=$run
build_user=${SLAVE_BUILD_USER:-nobody}
if [ "$(id -u)" = 0 ] && ! runuser -u "$build_user" -- test -x "$run" 2>/dev/null; then
  cache_root=/var/tmp/ci-backend-$(printf %s "$run" | cksum | cut -d' ' -f1)
  mkdir -p "$cache_root" && chmod 755 "$cache_root"
  echo "run: $run is closed to the build user $build_user; the slaves' caches live in $cache_root"
fi
for i in 0 1 2; do
  SLAVE_INDEX=$i SLAVE_GRACE=$grace SLAVE_CACHE="$cache_root/cache-$i" setsid "$bin/slave" >"$run/slave-$i.log" 2>&1 9>&- &
  slave_pids+=($!)
  echo "$!" >>"$run/pids"
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
# Request 1 of the example, for the README's per-forge examples: its head is
# main's commit, kept where GitHub and Gitea/Forgejo (refs/pull/1/head) and
# GitLab (refs/merge-requests/1/head) keep a request's head.
for ref in refs/pull/1/head refs/merge-requests/1/head; do
  git -C "$example" rev-parse -q --verify "$ref" >/dev/null || git -C "$example" update-ref "$ref" "$sha"
done

token=""
for _ in $(seq 100); do
  if ! kill -0 "$hook_pid" 2>/dev/null; then
    echo "run: the hook exited at start:" >&2
    tail -n 5 "$run/hook.log" >&2
    exit 1
  fi
  if grep -q 'hook.listening' "$run/hook.log"; then
    token=$(sed -n 's/.*hook.token source=[a-z]* token=\([^ ]*\).*/\1/p' "$run/hook.log" | head -1)
    # A configured HOOK_TOKEN is logged as its fingerprint only.
    grep -q 'hook.token source=configured' "$run/hook.log" && token=${HOOK_TOKEN:-}
    [ -n "$token" ] && break
  fi
  sleep 0.1
done
[ -n "$token" ] || { echo "run: the hook did not start, see $run/hook.log" >&2; exit 1; }

cat >"$run/example-push.json" <<JSON
{"ref":"refs/heads/main","after":"$sha","repository":{"full_name":"example/hello","clone_url":"file://$example","default_branch":"main"},"head_commit":{"message":"hello: first build"}}
JSON
sig=$(openssl dgst -sha256 -hmac "$token" <"$run/example-push.json" | sed 's/^.* //')

cat <<MSG

ci-backend is running: redis on 127.0.0.1:$port (password in $pass_file), hook on $hook_addr,
3 slaves (indexes 0, 1, 2).
Logs: $run/{hook,slave-0,slave-1,slave-2,redis}.log

Secret token: $token

Build the bundled example repository:

  curl -i http://127.0.0.1:$hook_port/ -H 'X-GitHub-Event: push' -H 'Content-Type: application/json' \\
       -H 'X-Hub-Signature-256: sha256=$sig' --data-binary @$run/example-push.json

Then read its status, or watch it in a browser:

  curl -i http://127.0.0.1:$hook_port/status/example/hello
  http://127.0.0.1:$hook_port/                      (the dashboard)

Ctrl-C stops everything (slaves first, then the hook, then redis).
MSG
tail --pid=$$ -n 0 -f "$run/hook.log" "$run"/slave-*.log 9>&- &
tail_pid=$!
wait "$hook_pid"
echo "run: the hook exited; see $run/hook.log" >&2
exit 1
