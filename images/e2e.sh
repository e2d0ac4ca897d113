#!/usr/bin/env bash
# Deployment end-to-end tests on a real Docker engine (what `make e2e` runs).
#
#   images/e2e.sh                  # Swarm stack if `docker swarm init` works, else Compose
#   E2E_MODE=compose images/e2e.sh # force docker-compose (1.29, or the `docker compose` plugin)
#   E2E_KEEP_LOGS=dir images/e2e.sh  # where container logs are saved (default target/e2e-logs)
#   E2E_ONLY=sentinel-failover images/e2e.sh  # only these groups (stack, haproxy-tls, sentinel-failover)
#
# Starts images/compose.yaml (redis, hook, 3 slaves) plus a volume of bare git
# repositories (file:// clone URLs), sends signed pushes with curl, and checks:
# builds in slave containers, `docker build` through the mounted socket, a
# slave killed mid-build, a slave cut off from the network past its lease,
# scaling 3 -> 4 -> 2 with jobs queued, HAProxy (TLS) in front of two hooks, and
# a Redis failover through Sentinel (master killed with pushes flowing).
# Redis is locked everywhere (its image's password, docs/deploying.md "Redis
# credentials"): this script asks it through `ci-redis-cli` inside the Redis
# container (the password on no command line), and a build's step must get
# NOAUTH and must not read the password file (check redis-locked).
# Everything it creates (stack or project, containers, networks, volumes, the
# images builds made, a swarm it initialised, temp files) is removed on exit.
# Only 127.0.0.1 and Docker's own networks are used; nothing is pulled.
# One `PASS <name>` / `FAIL <name>: why` line per check, then `e2e: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

T0=$(date +%s)
BUDGET="${E2E_BUDGET:-570}"             # checks; cleanup (bounded too) comes after: whole run < 12 min
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
TAG="${TAG:-$VERSION}"
STACK="${E2E_STACK:-cie2e}"
LEASE="${E2E_LEASE:-3}"                  # SLAVE_LEASE of the slaves under test
LOGDIR="${E2E_KEEP_LOGS:-$ROOT/target/e2e-logs}"
WORK="$(mktemp -d /tmp/ci-e2e.XXXXXX)"
mkdir -p "$WORK/repos" "$WORK/src" "$WORK/followed" "$WORK/tls"
LB_NET="${STACK}-lb"
SN_NET="${STACK}-sn"
SN_URL="" SN_SHA=""
REPOS_VOL="${STACK}-repos"

PASSED=0 FAILED=0
MODE="" CREATED_SWARM="" GWBRIDGE_BEFORE="" OWNED="" WATCHDOG="" TOKEN="" HOOK_URL="" REDIS_CID=""
declare -A FOLLOWERS=()
say()  { printf '  %s\n' "$*"; }
note() { printf '%s %s\n' "$(date +%T)" "$*" >>"$WORK/e2e.log"; }
pass() { PASSED=$((PASSED + 1)); printf 'PASS %s%s\n' "$1" "${2:+ ($2)}"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL %s: %s\n' "$1" "$2"; }
elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

# --- bounded time ------------------------------------------------------------
on_timeout() {
    trap - USR1
    fail "time" "the checks took over ${BUDGET}s; stopped"
    exit 1
}
trap on_timeout USR1
# Over budget: USR1 (the script fails and cleans up); 30 s later, if a docker
# command still hangs, its children are ended so that the trap can run.
bash -c 'sleep "$1" && kill -USR1 "$2" && sleep 30 && pkill -TERM -P "$2"' _ "$BUDGET" "$$" 2>/dev/null &
WATCHDOG=$!

# wait_for <seconds> <command...>: polls every 0.5 s until the command succeeds.
wait_for() {
    local limit=$(( $(date +%s) + $1 )); shift
    until "$@" 2>/dev/null; do
        [ "$(date +%s)" -lt "$limit" ] || return 1
        sleep 0.5
    done
}

# --- Docker helpers ----------------------------------------------------------
compose() {
    if command -v docker-compose >/dev/null; then
        docker-compose -p "$STACK" -f images/compose.yaml -f "$WORK/override.yaml" "$@"
    else
        docker compose -p "$STACK" -f images/compose.yaml -f "$WORK/override.yaml" "$@"
    fi
}
svc_filter() {   # label filter of a service's containers
    if [ "$MODE" = swarm ]; then echo "label=com.docker.swarm.service.name=${STACK}_$1"
    else echo "label=com.docker.compose.project=$STACK"; fi
}
containers() {   # containers <service> [-a]: ids of that service's containers
    local extra=()
    [ "$MODE" = swarm ] || extra=(--filter "label=com.docker.compose.service=$1")
    docker ps ${2:-} -q --no-trunc --filter "$(svc_filter "$1")" "${extra[@]}"
}
net_name() { echo "${STACK}_default"; }
have_container() { [ "$(containers "$1" | wc -l)" -ge "${2:-1}" ]; }
# Redis asked with its password, inside its container (ci-redis-cli: REDISCLI_AUTH from the file).
rget() { docker exec "$REDIS_CID" ci-redis-cli --raw "$@"; }

# Every slave container's log is followed into a file, so that the log of one
# Compose removes on scale-down is kept.
follow_slaves() {
    local id
    for id in $(containers slave); do     # running ones only: `logs -f` of a created one ends at once
        # (again after a restart: `logs -f` ends when the container stops, and prints it all anew)
        [ -n "${FOLLOWERS[$id]:-}" ] && kill -0 "${FOLLOWERS[$id]}" 2>/dev/null && continue
        docker logs -f "$id" >"$WORK/followed/$id.log" 2>&1 &
        FOLLOWERS[$id]=$!
    done
}
# slave_logs: all slave logs (existing containers read afresh, removed ones from their file).
slave_logs() {
    local id f
    local live=" $(containers slave -a | tr '\n' ' ') "
    for id in $live; do docker logs "$id" 2>&1 || true; done
    for f in "$WORK"/followed/*.log; do
        [ -e "$f" ] || continue
        id="$(basename "$f" .log)"
        case "$live" in *" $id "*) ;; *) cat "$f" ;; esac
    done
}
clog() { docker logs "$1" 2>&1 || true; }                     # one container's log
builder_of() {   # the running slave container whose log has `build.started id=<id> ...attempt=<n>`
    local id
    for id in $(containers slave); do
        if clog "$id" | grep -q "build.started id=$1 .*attempt=${2:-[0-9]*}\$"; then echo "$id"; return 0; fi
    done
    return 1
}

# --- git repositories (a volume of bare repos; slaves clone file:///repos/...) --
git_() { git -c user.name=e2e -c user.email=e2e@localhost -c init.defaultBranch=main -c commit.gpgsign=false -c core.hooksPath=/dev/null "$@"; }
repo_dir() { echo "${1//\//--}"; }
# commit <repo> <message> <file=content>...: commits into the work tree, pushes
# to the bare repo, prints the sha.
commit() {
    local repo="$1" msg="$2" d; shift 2
    d="$WORK/src/$(repo_dir "$repo")"
    if [ ! -d "$d" ]; then
        git_ init -q --bare "$WORK/repos/$(repo_dir "$repo").git"
        git_ init -q -b main "$d"
    fi
    local kv
    for kv in "$@"; do printf '%s\n' "${kv#*=}" >"$d/${kv%%=*}"; done
    git_ -C "$d" add -A
    git_ -C "$d" commit -q --allow-empty -m "$msg"
    git_ -C "$d" push -q "$WORK/repos/$(repo_dir "$repo").git" HEAD:refs/heads/main
    git_ -C "$d" rev-parse HEAD
}

# --- web-hooks ---------------------------------------------------------------
DELIVERY=0
payload() {   # payload <repo> <sha> <message> > file: a GitHub push body
    jq -n --arg repo "$1" --arg sha "$2" --arg msg "$3" --arg url "file:///repos/$(repo_dir "$1").git" '{
        ref: "refs/heads/main", before: "0000000000000000000000000000000000000000", after: $sha,
        created: false, deleted: false, forced: false,
        repository: {full_name: $repo, name: ($repo | split("/") | last),
                     owner: {login: ($repo | split("/") | first), name: ($repo | split("/") | first)},
                     clone_url: $url, default_branch: "main", master_branch: "main"},
        head_commit: {id: $sha, message: $msg}, commits: [{id: $sha, message: $msg}]}'
}
# push <repo> <sha> <message> [base url] [curl args...]: sets CODE and BODY.
push() {
    local repo="$1" sha="$2" msg="$3" base="${4:-$HOOK_URL}" sig; shift 3; [ $# -gt 0 ] && shift
    DELIVERY=$((DELIVERY + 1))
    payload "$repo" "$sha" "$msg" >"$WORK/payload.json"
    sig="$(openssl dgst -sha256 -hmac "$TOKEN" <"$WORK/payload.json" | awk '{print $NF}')"
    CODE="$(curl -sS -o "$WORK/resp" -w '%{http_code}' --max-time 20 "$@" \
        -H 'Expect:' -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
        -H "X-GitHub-Delivery: e2e-$$-$DELIVERY" -H "X-Hub-Signature-256: sha256=$sig" \
        --data-binary @"$WORK/payload.json" "$base/")" || CODE="curl-error"
    BODY="$(cat "$WORK/resp" 2>/dev/null || true)"
    note "push $repo ${sha:0:10} -> $CODE $BODY"
}
status_json() { curl -sS --max-time 10 -H 'Accept: application/json' "${2:-$HOOK_URL}/status/$1?branch=main" ${3:+"$3"}; }
state_is() {   # state_is <repo> <state> [sha]
    local j; j="$(status_json "$1")" || return 1
    [ "$(jq -r .state <<<"$j")" = "$2" ] && { [ -z "${3:-}" ] || [ "$(jq -r .sha <<<"$j")" = "$3" ]; }
}
finished() { state_is "$1" passed "$2" || state_is "$1" failed "$2"; }
build_is() {   # build_is <id> <state>: from Redis, any build (not only the latest)
    [ "$(rget HGET "ci:build:$1" state)" = "$2" ]
}
metric() { curl -sS --max-time 5 "$HOOK_URL/metrics" | awk -v k="$1" '$1 == k { print $2 }'; }
slaves_are() { [ "$(metric 'ci_slaves{cluster="slave"}')" = "$1" ]; }

# --- cleanup -----------------------------------------------------------------
cleanup() {
    local rc=$?
    set +e
    trap '' USR1
    [ -n "$WATCHDOG" ] && { pkill -P "$WATCHDOG" 2>/dev/null; kill "$WATCHDOG" 2>/dev/null; }   # its sleep, then itself
    local t; t=$(date +%s)
    if [ -z "$OWNED" ]; then   # nothing of ours in Docker (failed before, or someone else's)
        rm -rf "$WORK"
        printf 'e2e: %d passed, %d failed (%s)\n' "$PASSED" "$FAILED" "$(elapsed "$T0")"
        exit 1
    fi
    # keep the logs for diagnosis
    rm -rf "$LOGDIR"; mkdir -p "$LOGDIR"
    cp "$WORK/e2e.log" "$LOGDIR/e2e.log" 2>/dev/null
    local id name
    for id in $(docker ps -aq --filter "label=com.docker.swarm.service.name" 2>/dev/null; docker ps -aq --filter "label=com.docker.compose.project=$STACK"; docker ps -aq --filter "label=ci-e2e=$STACK"); do
        name="$(docker inspect -f '{{.Name}}' "$id" 2>/dev/null | tr -d /)"
        case "$name" in "$STACK"*) docker logs -t "$id" >"$LOGDIR/$name.log" 2>&1 ;; esac
    done
    for f in "$WORK"/followed/*.log; do [ -e "$f" ] && cp "$f" "$LOGDIR/followed-$(basename "$f" | cut -c1-12).log"; done
    for pid in "${FOLLOWERS[@]}"; do kill "$pid" 2>/dev/null; done
    local left=""
    if [ "$MODE" = swarm ]; then
        docker stack rm "$STACK" >/dev/null 2>&1
        sleep 1   # no grace needed: what they were building is thrown away
        docker kill $(docker ps -q --filter "label=com.docker.stack.namespace=$STACK") >/dev/null 2>&1
        # the network goes last; redeploying before it is gone fails
        wait_for 60 bash -c "! docker network inspect $(net_name) >/dev/null 2>&1 && [ -z \"\$(docker ps -aq --filter label=com.docker.stack.namespace=$STACK)\" ]" \
            || left+=" stack"
        docker volume rm "${STACK}_redis-data" "${STACK}_redis-secret" >/dev/null 2>&1
    elif [ "$MODE" = compose ]; then
        compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || left+=" compose"
    fi
    docker rm -fv $(docker ps -aq --filter "label=ci-e2e=$STACK") >/dev/null 2>&1
    docker network rm "$LB_NET" "$SN_NET" >/dev/null 2>&1
    docker volume rm "$REPOS_VOL" "${STACK}-lb-redis" "${STACK}-lb-secret" "${STACK}-sn-secret" >/dev/null 2>&1
    local imgs; imgs="$(docker image ls -q ci-e2e-built | sort -u)"
    [ -n "$imgs" ] && docker image rm -f $imgs >/dev/null 2>&1
    if [ -n "$CREATED_SWARM" ]; then
        docker swarm leave --force >/dev/null 2>&1 || left+=" swarm"
        # swarm init created docker_gwbridge; leave takes only ingress away
        [ -n "$GWBRIDGE_BEFORE" ] || { wait_for 20 docker network rm docker_gwbridge >/dev/null || left+=" network:docker_gwbridge"; }
    fi
    # what is left?
    [ -z "$(docker ps -aq --filter "label=ci-e2e=$STACK")" ] || left+=" containers"
    docker network inspect "$LB_NET" >/dev/null 2>&1 && left+=" network:$LB_NET"
    docker network inspect "$SN_NET" >/dev/null 2>&1 && left+=" network:$SN_NET"
    docker network inspect "$(net_name)" >/dev/null 2>&1 && left+=" network:$(net_name)"
    for v in "$REPOS_VOL" "${STACK}_redis-data" "${STACK}_redis-secret" "${STACK}-lb-redis" "${STACK}-lb-secret" "${STACK}-sn-secret"; do
        docker volume inspect "$v" >/dev/null 2>&1 && left+=" volume:$v"
    done
    [ -z "$(docker image ls -q ci-e2e-built)" ] || left+=" images"
    rm -rf "$WORK"
    if [ -n "$MODE" ]; then
        if [ -z "$left" ]; then pass cleanup "$(elapsed "$t"); logs in ${LOGDIR#$ROOT/}"; else fail cleanup "left behind:$left"; fi
    fi
    printf 'e2e: %d passed, %d failed (%s)\n' "$PASSED" "$FAILED" "$(elapsed "$T0")"
    if [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then exit 1; fi
    exit 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# =============================================================================
# 1. images
# =============================================================================
check_images() {
    local p missing=""
    for p in hook slave redis; do
        docker image inspect "ci-backend/$p:$TAG" >/dev/null 2>&1 || missing+=" $p"
    done
    if [ -n "$missing" ]; then
        if [ -x target/release/hook ] && [ -x target/release/slave ]; then
            say "building missing images:$missing"
            PARTS="${missing# }" NO_CARGO=1 images/build-images.sh >>"$WORK/e2e.log" 2>&1 \
                || { WHY="images/build-images.sh failed (see e2e.log)"; return 1; }
        else
            WHY="ci-backend/{${missing# }}:$TAG missing and no target/release binaries: run make images"; return 1
        fi
    fi
    if ! docker image inspect "ci-backend/haproxy:$TAG" >/dev/null 2>&1; then
        say "building ci-backend/haproxy:$TAG (Debian's haproxy)"
        docker build -f images/haproxy/Dockerfile -t "ci-backend/haproxy:$TAG" . >>"$WORK/e2e.log" 2>&1 \
            || { WHY="docker build of images/haproxy/Dockerfile failed"; return 1; }
    fi
    docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' 'ci-backend/*' | grep ":$TAG " | sort | sed 's/^/  size /'
    local user nobody; user="$(docker image inspect -f '{{.Config.User}}' "ci-backend/hook:$TAG")"
    [ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || { WHY="hook image runs as root"; return 1; }
    # The Redis password file is the hook's uid's (mode 0400): steps must not run as that uid.
    nobody="$(docker run --rm --entrypoint id "ci-backend/slave:$TAG" -u nobody)" || { WHY="no user nobody in the slave image"; return 1; }
    [ "${user%%:*}" = 10001 ] && [ "$nobody" != 10001 ] || { WHY="the hook runs as '$user', steps as uid $nobody: expected 10001 and another uid"; return 1; }
    docker run --rm --entrypoint docker "ci-backend/slave:$TAG" --version >/dev/null 2>&1 \
        || { WHY="no docker CLI in the slave image"; return 1; }
}

# =============================================================================
# 2. stack up, a signed push built in a slave container
# =============================================================================
free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 12000))     # below the ephemeral range (32768-)
        [ -z "$(ss -Htan "sport = :$p" 2>/dev/null)" ] && { echo "$p"; return 0; }
    done
    return 1
}
write_override() {
    # Test settings only: short lease, quick restarts, the repos volume.
    cat >"$WORK/override.yaml" <<EOF
version: "3.8"
services:
  slave:
    environment:
      SLAVE_LEASE: "$LEASE"
      SLAVE_GRACE: "20"
    volumes:
      - repos:/repos:ro
    deploy:
      restart_policy:
        condition: any
        delay: 1s
volumes:
  repos:
    external: true
    name: $REPOS_VOL
EOF
}
stack_up() {
    # A previous run's leftovers (or a concurrent run) are not touched: say so.
    local busy=""
    docker network inspect "$(net_name)" >/dev/null 2>&1 && busy+=" network $(net_name)"
    docker volume inspect "$REPOS_VOL" >/dev/null 2>&1 && busy+=" volume $REPOS_VOL"
    docker network inspect "$LB_NET" >/dev/null 2>&1 && busy+=" network $LB_NET"
    local l
    for l in "ci-e2e=$STACK" "com.docker.stack.namespace=$STACK" "com.docker.compose.project=$STACK"; do
        [ -z "$(docker ps -aq --filter "label=$l")" ] || { busy+=" containers ($l)"; break; }
    done
    if [ -n "$busy" ]; then
        WHY="another e2e run (or its leftovers) holds:$busy; remove them (docker stack rm $STACK / docker-compose -p $STACK down -v) or set E2E_STACK"
        return 1
    fi
    OWNED=1
    HOOK_PORT="$(free_port)" || { WHY="no free port"; return 1; }
    HOOK_URL="http://127.0.0.1:$HOOK_PORT"
    export HOOK_PORT TAG
    write_override
    docker volume create --driver local --opt type=none --opt o=bind --opt "device=$WORK/repos" "$REPOS_VOL" >/dev/null
    if [ "${E2E_MODE:-}" != compose ]; then
        case "$(docker info -f '{{.Swarm.LocalNodeState}}')" in
            active) MODE=swarm ;;
            inactive)
                docker network inspect docker_gwbridge >/dev/null 2>&1 && GWBRIDGE_BEFORE=1
                if docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >>"$WORK/e2e.log" 2>&1; then
                    MODE=swarm CREATED_SWARM=1
                fi ;;
        esac
    fi
    [ -n "$MODE" ] || MODE=compose
    say "mode: $MODE${CREATED_SWARM:+ (swarm initialised here, left at the end)}; hook on 127.0.0.1:$HOOK_PORT; SLAVE_LEASE=$LEASE"
    if [ "$MODE" = swarm ]; then
        docker stack deploy --resolve-image never -c images/compose.yaml -c "$WORK/override.yaml" "$STACK" >>"$WORK/e2e.log" 2>&1 \
            || { WHY="docker stack deploy failed (see e2e.log)"; return 1; }
    else
        compose up -d --scale slave=3 >>"$WORK/e2e.log" 2>&1 || { WHY="compose up failed (see e2e.log)"; return 1; }
    fi
    wait_for 60 have_container slave 3 || { WHY="3 slave containers not running after 60 s"; return 1; }
    follow_slaves
    wait_for 60 have_container redis || true
    REDIS_CID="$(containers redis | head -n1)"
    [ -n "$REDIS_CID" ] || { WHY="no redis container"; return 1; }
    local hook
    wait_for 60 have_container hook || true
    hook="$(containers hook | head -n1)"
    [ -n "$hook" ] || { WHY="no hook container"; return 1; }
    wait_for 60 bash -c "docker logs $hook 2>&1 | grep -q 'hook.token '" || { WHY="no hook.token line in the hook's log after 60 s"; return 1; }
    TOKEN="$(docker logs "$hook" 2>&1 | sed -n 's/.*hook\.token .*token=\([^ ]*\).*/\1/p' | head -n1)"
    [ "${#TOKEN}" -ge 16 ] || { WHY="token not found in the hook's log"; return 1; }
    wait_for 30 bash -c "curl -sf --max-time 2 $HOOK_URL/ping >/dev/null" || { WHY="GET /ping on $HOOK_URL: no 200 after 30 s"; return 1; }
    wait_for 60 slaves_are 3 || { WHY="ci_slaves{cluster=\"slave\"} is '$(metric 'ci_slaves{cluster="slave"}')', not 3, after 60 s"; return 1; }
}
check_first_build() {
    local sha id slave text host hosts j
    sha="$(commit e2e/hello 'say hello' 'hello.txt=hello' 'integration.yml=- step: hello
  shell:
    - echo "built $COMMIT_SHORT on $HOST"
    - test -f hello.txt
  debug: true')"
    push e2e/hello "$sha" 'say hello'
    [ "$CODE" = 202 ] || { WHY="push answered $CODE $BODY (expected 202)"; return 1; }
    id="$(jq -r .id <<<"$BODY")"; slave="$(jq -r .slave <<<"$BODY")"
    wait_for 60 state_is e2e/hello passed "$sha" || { WHY="build $id not passed after 60 s: $(status_json e2e/hello | jq -c '{state,log}')"; return 1; }
    text="$(curl -sS -i --max-time 10 "$HOOK_URL/status/e2e/hello")"
    grep -q '^HTTP/1.1 200' <<<"$text" || { WHY="GET /status/e2e/hello: $(head -n1 <<<"$text")"; return 1; }
    local want
    for want in "- commit ${sha:0:10} (say hello)" "- hello" "[passed] test -f hello.txt (" "[passed]   . built ${sha:0:10} on "; do
        grep -qF -- "$want" <<<"$text" || { WHY="status log lacks '$want': $(tr '\n' '|' <<<"$text")"; return 1; }
    done
    host="$(sed -n "s/.*built ${sha:0:10} on \([^ ]*\).*/\1/p" <<<"$text" | tr -d '\r' | head -n1)"
    hosts=" $(for c in $(containers slave); do docker inspect -f '{{.Config.Hostname}}' "$c"; done | tr '\n' ' ') "
    case "$hosts" in *" $host "*) ;; *) WHY="built on host '$host', not one of the slave containers ($hosts)"; return 1 ;; esac
    builder_of "$id" >/dev/null || { WHY="no slave container logged build.started id=$id"; return 1; }
    DETAIL="build $id on $slave, container $host"
}

# =============================================================================
# 2b. a step cannot reach Redis: NOAUTH, and the password file unreadable
# =============================================================================
# The step (bash in a slave container, as the build user) speaks RESP to
# redis:6379 itself (no redis-cli in the slave image) and tries the password
# file the slave reads. The oracle is Redis's own answer and the file's
# owner and mode, not the backend's code.
check_redis_locked() {
    local sha id j log pw slave mode hook want n
    sha="$(commit e2e/locked 'knock on redis' 'probe.sh=echo "step uid $(id -u)"
if exec 3<>/dev/tcp/redis/6379; then
    printf "PING\r\nGET ci:token\r\nKEYS *\r\n" >&3
    for i in 1 2 3; do IFS= read -r -t 10 line <&3 || line="(no answer)"; echo "redis says: ${line%$'"'"'\r'"'"'}"; done
else
    echo "redis unreachable"
fi
if cat /run/ci-redis/password >/dev/null 2>&1; then echo "password file: READ"; else echo "password file: unreadable"; fi
echo "REDIS variables: $(env | grep -c "^REDIS")"' 'integration.yml=- step: knock
  shell: bash probe.sh
  debug: true')"
    push e2e/locked "$sha" 'knock on redis'
    [ "$CODE" = 202 ] || { WHY="push answered $CODE $BODY"; return 1; }
    id="$(jq -r .id <<<"$BODY")"
    wait_for 60 finished e2e/locked "$sha" || { WHY="build $id not finished after 60 s"; return 1; }
    j="$(status_json e2e/locked)"; log="$(jq -r '.log[]' <<<"$j")"
    for want in "step uid 65534" "password file: unreadable" "REDIS variables: 0"; do
        grep -qF -- "$want" <<<"$log" || { WHY="the step's log lacks '$want': $(tr '\n' '|' <<<"$log")"; return 1; }
    done
    n="$(grep -cF -- "redis says: -NOAUTH Authentication required." <<<"$log" || true)"
    [ "$n" = 3 ] || { WHY="Redis answered the step's PING, GET ci:token, KEYS * with $n NOAUTH (expected 3): $(grep 'redis says' <<<"$log" | tr '\n' '|')"; return 1; }
    # The password and the token appear nowhere in the log, nor on any command line of this host.
    pw="$(docker exec "$REDIS_CID" cat /run/ci-redis/password)"
    [ "${#pw}" = 64 ] || { WHY="the generated password is ${#pw} characters, expected 64"; return 1; }
    ( umask 077; printf '%s\n%s\n' "$pw" "$TOKEN" >"$WORK/secrets.lst" )
    if grep -qF -f "$WORK/secrets.lst" <<<"$log"; then WHY="the step's log holds the Redis password or the token"; return 1; fi
    if ps -eo args= | grep -qF -f "$WORK/secrets.lst"; then WHY="a command line on this host holds the Redis password or the token"; return 1; fi
    # Redis itself: NOAUTH without the password, PONG with it.
    [ "$(docker exec "$REDIS_CID" redis-cli ping 2>&1 | head -c 6)" = NOAUTH ] || { WHY="redis-cli without a password got: $(docker exec "$REDIS_CID" redis-cli ping 2>&1)"; return 1; }
    [ "$(rget ping)" = PONG ] || { WHY="ci-redis-cli ping did not answer PONG"; return 1; }
    slave="$(containers slave | head -n1)"
    mode="$(docker exec "$slave" stat -c '%a %u:%g' /run/ci-redis/password)"
    [ "$mode" = "400 10001:10001" ] || { WHY="the password file in a slave container is '$mode', expected '400 10001:10001'"; return 1; }
    [ "$(metric ci_redis_auth)" = 1 ] || { WHY="/metrics says ci_redis_auth '$(metric ci_redis_auth)', expected 1"; return 1; }
    hook="$(containers hook | head -n1)"
    if clog "$hook" | grep -q 'redis.open'; then WHY="the hook logged redis.open: $(clog "$hook" | grep -m1 redis.open)"; return 1; fi
    DETAIL="build $id: the step (uid 65534) got NOAUTH x3 and could not read the password file ($mode); ci_redis_auth 1"
}

# =============================================================================
# 3. a build that runs `docker build` through the mounted socket
# =============================================================================
check_docker_build() {
    local sha tag
    sha="$(commit e2e/docker 'an image' 'payload.txt=built by ci-backend e2e' "Dockerfile=FROM debian:bookworm-slim
LABEL ci-e2e=$STACK
COPY payload.txt /payload.txt
RUN test -s /payload.txt
CMD [\"cat\", \"/payload.txt\"]" 'integration.yml=- step: image
  shell:
    - docker version --format "server {{.Server.Version}}"
    - docker build -q -t ci-e2e-built:$TAG .
    - docker run --rm ci-e2e-built:$TAG
  debug: true')"
    push e2e/docker "$sha" 'an image'
    [ "$CODE" = 202 ] || { WHY="push answered $CODE $BODY"; return 1; }
    wait_for 120 finished e2e/docker "$sha" \
        || { WHY="build not finished after 120 s"; return 1; }
    local j; j="$(status_json e2e/docker)"
    [ "$(jq -r .state <<<"$j")" = passed ] || { WHY="build failed: $(jq -c .log <<<"$j")"; return 1; }
    jq -r '.log[]' <<<"$j" | grep -F 'built by ci-backend e2e' >/dev/null || { WHY="the built image's output is not in the log: $(jq -c .log <<<"$j")"; return 1; }
    tag="ci-e2e-built:main-${sha:0:10}"
    docker image inspect "$tag" >/dev/null 2>&1 || { WHY="$tag not on the host's engine"; return 1; }
    DETAIL="$tag built on the host engine in $(jq -r .seconds <<<"$j") s"
}

# =============================================================================
# 4. docker kill of the slave running a long build
# =============================================================================
check_kill() {
    local sha id victim repl nmin=99 n t
    sha="$(commit e2e/long 'a long build' 'integration.yml=- step: long
  shell:
    - sleep 12
    - echo "finished on $HOST"
  debug: true')"
    push e2e/long "$sha" 'a long build'
    [ "$CODE" = 202 ] || { WHY="push answered $CODE $BODY"; return 1; }
    id="$(jq -r .id <<<"$BODY")"
    wait_for 30 builder_of "$id" 1 >/dev/null || { WHY="build $id never started"; return 1; }
    victim="$(builder_of "$id" 1)"
    sleep 2
    note "killing $victim (build $id)"
    docker kill "$victim" >/dev/null 2>&1 || { WHY="docker kill failed"; return 1; }
    t=$(date +%s)
    local how="Swarm replaced it"
    if [ "$MODE" = compose ]; then
        sleep 2
        # docker kill counts as a manual stop (no restart policy applies): start it again.
        how="restarted by its restart policy"
        if [ "$(docker inspect -f '{{.State.Running}}' "$victim")" != true ]; then
            docker start "$victim" >/dev/null; how="docker start"
        fi
    fi
    # the job runs again (attempt 2) after the replacement starts
    local limit=$(( $(date +%s) + 60 )) done=""
    while [ "$(date +%s)" -lt "$limit" ]; do
        follow_slaves
        n="$(metric 'ci_slaves{cluster="slave"}' || true)"; [ -n "$n" ] && [ "$n" -lt "$nmin" ] && nmin=$n
        if build_is "$id" passed; then done=1; break; fi
        sleep 0.5
    done
    [ -n "$done" ] || { WHY="build $id not passed 60 s after the kill: state=$(rget HGET "ci:build:$id" state) attempt=$(rget HGET "ci:build:$id" attempt)"; return 1; }
    local attempt; attempt="$(rget HGET "ci:build:$id" attempt)"
    [ "$attempt" = 2 ] || { WHY="build $id passed with attempt=$attempt (expected 2: killed once, run again)"; return 1; }
    repl="$(builder_of "$id" 2)" || { WHY="no running slave logged build.started id=$id attempt=2"; return 1; }
    if [ "$MODE" = swarm ]; then
        [ "$repl" != "$victim" ] || { WHY="attempt 2 ran in the killed container"; return 1; }
    fi
    state_is e2e/long passed "$sha" || { WHY="status of e2e/long is not passed at $sha"; return 1; }
    local ready; ready="$(clog "$repl" | grep -m1 'slave.ready' | sed 's/.*\(index=[0-9]*\).*/\1/')"
    DETAIL="killed ${victim:0:12} ($how); attempt 2 on ${repl:0:12} ($ready) after $(elapsed "$t"); min ci_slaves seen: $nmin"
    [ "$nmin" = 3 ] || say "note: ci_slaves dipped to $nmin while the replacement started (docs/operations.md: N never changes on replacement)"
}

# =============================================================================
# 5. a slave cut off from the network past its lease
# =============================================================================
check_partition() {
    local sha1 sha2 id1 id2 cut idx net other
    net="$(net_name)"
    sha1="$(commit e2e/cut 'slow commit' 'delay=12' 'integration.yml=- step: wait
  shell: sleep "$(cat delay)"')"
    push e2e/cut "$sha1" 'slow commit'
    [ "$CODE" = 202 ] || { WHY="push 1 answered $CODE $BODY"; return 1; }
    id1="$(jq -r .id <<<"$BODY")"
    wait_for 30 builder_of "$id1" 1 >/dev/null || { WHY="build $id1 never started"; return 1; }
    cut="$(builder_of "$id1" 1)"
    idx="$(rget HGET "ci:build:$id1" slave)"
    note "disconnecting ${cut:0:12} ($idx) from $net"
    docker network disconnect "$net" "$cut" || { WHY="docker network disconnect failed"; return 1; }
    local t; t=$(date +%s)
    sha2="$(commit e2e/cut 'fast commit' 'delay=1')"
    push e2e/cut "$sha2" 'fast commit'
    [ "$CODE" = 202 ] || { docker network connect "$net" "$cut"; WHY="push 2 answered $CODE $BODY"; return 1; }
    id2="$(jq -r .id <<<"$BODY")"
    note "build $id2 (newer) queued for $(jq -r .slave <<<"$BODY")"
    # the index is taken over / the queue rerouted: both builds done elsewhere
    if ! wait_for 60 bash -c "[ \"\$(docker exec $REDIS_CID ci-redis-cli --raw HGET ci:build:$id2 state)\" = passed ] && [ \"\$(docker exec $REDIS_CID ci-redis-cli --raw HGET ci:build:$id1 state)\" = passed ]"; then
        docker network connect "$net" "$cut"
        WHY="while ${cut:0:12} ($idx) was cut off: build $id1 state=$(rget HGET "ci:build:$id1" state) attempt=$(rget HGET "ci:build:$id1" attempt), build $id2 state=$(rget HGET "ci:build:$id2" state) after 60 s (no takeover)"
        return 1
    fi
    local took=$(( $(date +%s) - t ))
    [ "$(rget HGET "ci:build:$id1" attempt)" = 2 ] || { docker network connect "$net" "$cut"; WHY="build $id1: attempt=$(rget HGET "ci:build:$id1" attempt), expected 2"; return 1; }
    other="$(builder_of "$id2")" || { docker network connect "$net" "$cut"; WHY="no slave logged build.started id=$id2"; return 1; }
    [ "$other" != "$cut" ] || { docker network connect "$net" "$cut"; WHY="build $id2 ran on the cut-off slave"; return 1; }
    # the cut-off slave, its lease unconfirmed for 3/4 of SLAVE_LEASE, killed its own run (the
    # 12 s step) long before it could end: no build of its goes on beside attempt 2
    wait_for 30 bash -c "docker logs $cut 2>&1 | grep -q 'build.abandoned id=$id1 '" \
        || { docker network connect "$net" "$cut"; WHY="the cut-off slave never stopped its run of build $id1: $(clog "$cut" | tail -n 3 | tr '\n' '|')"; return 1; }
    clog "$cut" | grep -q 'slave.lease_unconfirmed' \
        || { docker network connect "$net" "$cut"; WHY="no slave.lease_unconfirmed in the cut-off slave's log"; return 1; }
    if clog "$cut" | grep -q "build.finished id=$id1 "; then
        docker network connect "$net" "$cut"; WHY="the cut-off slave finished build $id1 while cut off"; return 1
    fi
    note "reconnecting ${cut:0:12}"
    docker network connect "$net" "$cut" || { WHY="docker network connect failed"; return 1; }
    wait_for 30 slaves_are 3 || { WHY="ci_slaves not back to 3 after reconnecting"; return 1; }
    [ "$(rget HGET "ci:build:$id1" attempt)" = 2 ] && [ "$(rget HGET "ci:build:$id1" state)" = passed ] \
        || { WHY="after reconnecting, build $id1 is attempt=$(rget HGET "ci:build:$id1" attempt) state=$(rget HGET "ci:build:$id1" state)"; return 1; }
    local j; j="$(status_json e2e/cut)"
    [ "$(jq -r .sha <<<"$j")" = "$sha2" ] && [ "$(jq -r .state <<<"$j")" = passed ] \
        || { WHY="status after reconnect: $(jq -c '{id,sha,state}' <<<"$j"), expected passed at ${sha2:0:10}"; return 1; }
    curl -sS --max-time 10 "$HOOK_URL/status/e2e/cut" | grep -qF -- "- commit ${sha2:0:10} (fast commit)" \
        || { WHY="GET /status/e2e/cut (text) does not show the newer commit"; return 1; }
    [ "$(rget GET 'ci:done:e2e/cut:main')" = "$id2" ] || { WHY="ci:done points to $(rget GET 'ci:done:e2e/cut:main'), not $id2"; return 1; }
    local st; st="$(builder_of "$id1" 2 | cut -c1-12)"
    DETAIL="${cut:0:12} ($idx) cut off; it stopped its own run (lease unconfirmed); builds $id1 (attempt 2 on ${st:-?}) and $id2 (${sha2:0:10}) done by others in ${took}s"
}

# =============================================================================
# 6. scale 3 -> 4 -> 2 with jobs queued
# =============================================================================
scale_slaves() {
    if [ "$MODE" = swarm ]; then
        docker service scale -d "${STACK}_slave=$1" >>"$WORK/e2e.log" 2>&1
    else
        compose up -d --no-recreate --scale "slave=$1" slave >>"$WORK/e2e.log" 2>&1
    fi
}
check_scaling() {
    local i r sha ids=() repos=() shas=() t n
    t=$(date +%s)
    for i in $(seq -w 1 24); do
        r="e2e/scale-$i"
        sha="$(commit "$r" "scale $i" 'integration.yml=- step: short
  shell: sleep 2')"
        repos+=("$r"); shas+=("$sha")
    done
    follow_slaves
    for i in $(seq 0 11); do
        push "${repos[$i]}" "${shas[$i]}" "scale $i"
        [ "$CODE" = 202 ] || { WHY="push ${repos[$i]} answered $CODE $BODY"; return 1; }
        ids+=("$(jq -r .id <<<"$BODY")")
    done
    note "scale to 4; queues: $(metric_queues)"
    scale_slaves 4 || { WHY="scaling to 4 failed"; return 1; }
    wait_for 60 slaves_are 4 || { WHY="ci_slaves not 4 within 60 s of scaling up ($(metric 'ci_slaves{cluster="slave"}'))"; return 1; }
    follow_slaves
    local up=$(( $(date +%s) - t ))
    for i in $(seq 12 23); do
        push "${repos[$i]}" "${shas[$i]}" "scale $i"
        [ "$CODE" = 202 ] || { WHY="push ${repos[$i]} answered $CODE $BODY"; return 1; }
        ids+=("$(jq -r .id <<<"$BODY")")
    done
    local qdown; qdown="$(metric_queues)"
    local four; four="$(for i in $(seq 12 23); do rget HGET "ci:build:${ids[$i]}" slave; done | sort -u | tr '\n' ' ')"
    note "scale to 2; queues: $(metric_queues); slaves of the last 12: $four"
    follow_slaves
    scale_slaves 2 || { WHY="scaling to 2 failed"; return 1; }
    # every job built
    local limit=$(( $(date +%s) + 120 )) pending
    while :; do
        follow_slaves
        pending=""
        for i in $(seq 0 23); do build_is "${ids[$i]}" passed || pending+=" ${ids[$i]}"; done
        [ -z "$pending" ] && break
        [ "$(date +%s)" -lt "$limit" ] || { WHY="not built 120 s after scaling down:$(for p in $pending; do printf ' %s(%s,%s)' "$p" "$(rget HGET ci:build:$p state)" "$(rget HGET ci:build:$p slave)"; done); queues: $(metric_queues)"; return 1; }
        sleep 1
    done
    wait_for 60 slaves_are 2 || { WHY="ci_slaves{cluster=\"slave\"} is $(metric 'ci_slaves{cluster="slave"}') 60 s after scaling to 2, expected 2"; return 1; }
    # none twice (unless a slave died mid-build)
    sleep 1
    local logs twice="" c died
    logs="$(slave_logs)"
    for i in $(seq 0 23); do
        c="$(grep -c "build.started id=${ids[$i]} " <<<"$logs" || true)"
        if [ "$c" != 1 ]; then
            died="$(grep -c "build.finished id=${ids[$i]} " <<<"$logs" || true)"
            twice+=" ${ids[$i]}:started=$c,finished=$died"
        fi
    done
    [ -z "$twice" ] || { WHY="builds not started exactly once:$twice"; return 1; }
    local a2; a2="$(grep -c 'build.started .*attempt=2$' <<<"$logs" || true)"
    for i in $(seq 0 23); do
        [ "$(status_json "${repos[$i]}" | jq -r .sha)" = "${shas[$i]}" ] || { WHY="status of ${repos[$i]} is not its pushed sha"; return 1; }
    done
    # nothing stranded; indexes contiguous
    local held q
    wait_for 15 held_are "0 1 " || true
    held="$(rget HKEYS ci:holders:slave | sort -n | tr '\n' ' ')"
    [ "$held" = "0 1 " ] || { WHY="held indexes after scale-down: '$held', expected '0 1'"; return 1; }
    for i in 0 1 2 3; do
        q="$(rget LLEN "ci:queue:slave:$i")$(rget LLEN "ci:working:slave:$i")"
        [ "$q" = 00 ] || { WHY="queue/working of index $i not empty: $q"; return 1; }
    done
    local moved rerouted stopped
    moved="$(grep -c 'slave.moved' <<<"$logs" || true)"; rerouted="$(grep -c 'build.rerouted' <<<"$logs" || true)"
    stopped="$(grep 'slave.stopped' <<<"$logs" | sed 's/.*index=\([0-9]*\).*/\1/' | sort -n | tr '\n' ',')"
    DETAIL="24 jobs built once each (attempt=2 lines in all slave logs: $a2); 3->4 in ${up}s; 4->2 with queues ${qdown% }: stopped indexes ${stopped%,}, slave.moved x$moved, build.rerouted x$rerouted; ci_slaves 2; indexes 0 1"
}
held_are() { [ "$(rget HKEYS ci:holders:slave | sort -n | tr '\n' ' ')" = "$1" ]; }
metric_queues() { curl -sS --max-time 5 "$HOOK_URL/metrics" | awk '/^ci_queue_depth/ { sub(/ci_queue_depth\{cluster="slave",index=/, ""); gsub(/["}]/, ""); printf "%s=%s ", $1, $2 }'; }

# =============================================================================
# 7. HAProxy (TLS) in front of two hooks
# =============================================================================
check_haproxy() {
    local port url label=(--label "ci-e2e=$STACK") h c1 c2 sha i codes=""
    port="$(free_port)" || { WHY="no free port"; return 1; }
    url="https://127.0.0.1:$port"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
        -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
        -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" >>"$WORK/e2e.log" 2>&1 || { WHY="openssl req failed"; return 1; }
    cat "$WORK/tls/cert.pem" "$WORK/tls/key.pem" >"$WORK/tls/ci-backend.pem"
    chmod 600 "$WORK/tls/"*.pem
    docker network create "${label[@]}" "$LB_NET" >/dev/null 2>>"$WORK/e2e.log" || { WHY="docker network create failed"; return 1; }
    docker run -d "${label[@]}" --name "$STACK-lb-redis" --network "$LB_NET" --network-alias redis \
        -v "$STACK-lb-redis:/data" -v "$STACK-lb-secret:/run/ci-redis" "ci-backend/redis:$TAG" >/dev/null || { WHY="redis container failed"; return 1; }
    # Redis's password: generated by it into the volume, read by the hooks and the slave.
    local auth=(-v "$STACK-lb-secret:/run/ci-redis:ro" -e REDIS_PASSWORD_FILE=/run/ci-redis/password)
    for h in hook1 hook2; do
        docker run -d "${label[@]}" --name "$STACK-lb-$h" --network "$LB_NET" --network-alias "$h" "${auth[@]}" \
            -e REDIS_URL=redis://redis:6379/0 "ci-backend/hook:$TAG" >/dev/null || { WHY="$h container failed"; return 1; }
    done
    docker run -d "${label[@]}" --name "$STACK-lb-slave" --network "$LB_NET" -e REDIS_URL=redis://redis:6379/0 "${auth[@]}" \
        -e SLAVE_LEASE="$LEASE" -v "$REPOS_VOL:/repos:ro" "ci-backend/slave:$TAG" >/dev/null || { WHY="slave container failed"; return 1; }
    docker run -d "${label[@]}" --name "$STACK-lb-haproxy" --network "$LB_NET" -p "127.0.0.1:$port:443" \
        -v "$WORK/tls:/etc/haproxy/certs:ro" "ci-backend/haproxy:$TAG" >/dev/null || { WHY="haproxy container failed"; return 1; }
    for h in hook1 hook2; do
        wait_for 60 bash -c "docker logs $STACK-lb-$h 2>&1 | grep -q hook.listening" || { WHY="$h not listening after 60 s: $(clog "$STACK-lb-$h" | tail -n1)"; return 1; }
    done
    local t1 t2
    t1="$(clog "$STACK-lb-hook1" | sed -n 's/.*hook\.token .*token=\([^ ]*\).*/\1/p')"
    t2="$(clog "$STACK-lb-hook2" | sed -n 's/.*hook\.token .*token=\([^ ]*\).*/\1/p')"
    [ -n "$t1" ] && [ "$t1" = "$t2" ] || { WHY="the two hooks do not share one token"; return 1; }
    local saved="$TOKEN"; TOKEN="$t1"
    # both servers up in HAProxy (health checks on /ping, rise 2 x 5 s)
    wait_for 60 bash -c "[ \"\$(docker logs $STACK-lb-hook1 2>&1 | grep -c 'path=/ping')\" -ge 1 ] && [ \"\$(docker logs $STACK-lb-hook2 2>&1 | grep -c 'path=/ping')\" -ge 1 ]" \
        || { TOKEN="$saved"; WHY="HAProxy health checks never reached both hooks"; return 1; }
    wait_for 30 bash -c "docker logs $STACK-lb-slave 2>&1 | grep -q slave.ready" || { TOKEN="$saved"; WHY="slave not ready"; return 1; }
    sleep 1
    for i in 1 2 3 4 5 6; do
        sha="$(commit "e2e/tls-$i" 'over https' 'integration.yml=- step: tls
  shell: "true"')"
        push "e2e/tls-$i" "$sha" 'over https' "$url" -k
        codes+="$CODE "
    done
    TOKEN="$saved"
    [ "$codes" = "202 202 202 202 202 202 " ] || { WHY="pushes over HTTPS answered: $codes($BODY)"; return 1; }
    local n1 n2
    n1="$(clog "$STACK-lb-hook1" | grep -c 'method=POST path=/ code=202' || true)"
    n2="$(clog "$STACK-lb-hook2" | grep -c 'method=POST path=/ code=202' || true)"
    [ "$n1" -ge 1 ] && [ "$n2" -ge 1 ] || { WHY="202s by hook1: $n1, hook2: $n2 (expected both)"; return 1; }
    wait_for 60 bash -c "curl -sk --max-time 5 -o /dev/null -w '%{http_code}' $url/status/e2e/tls-6 | grep -q 200" \
        || { WHY="GET $url/status/e2e/tls-6 never 200"; return 1; }
    # A body over the 25 MiB limit: refused by HAProxy, never reaching a hook.
    # With `Expect: 100-continue` (curl's default for large bodies, as for most
    # senders) HAProxy answers 413 before any byte of the body is sent. Without
    # it the body is already on its way: HAProxy answers 413 and closes, and
    # the client may see a reset instead of the answer (a TCP race, not a choice).
    local before after big code code2 tries=0 rc
    before="$( (clog "$STACK-lb-hook1"; clog "$STACK-lb-hook2") | grep -c 'method=POST' || true)"
    big="$WORK/big.bin"; head -c $((25 * 1024 * 1024 + 1)) /dev/zero >"$big"
    code2="$(curl -sk -o /dev/null -w '%{http_code}' --max-time 30 -H 'X-GitHub-Event: push' \
        -H 'Content-Type: application/json' --data-binary @"$big" "$url/")" || true
    code=""
    while [ "$code" != 413 ] && [ "$tries" -lt 3 ]; do
        tries=$((tries + 1)); rc=0
        code="$(curl -sk -o /dev/null -w '%{http_code}' --max-time 30 -H 'Expect:' -H 'X-GitHub-Event: push' \
            -H 'Content-Type: application/json' --data-binary @"$big" "$url/")" || rc=$?
        note "oversized body without Expect: code=$code curl rc=$rc"
    done
    rm -f "$big"
    sleep 1
    after="$( (clog "$STACK-lb-hook1"; clog "$STACK-lb-hook2") | grep -c 'method=POST' || true)"
    [ "$code2" = 413 ] || { WHY="25 MiB + 1 body with Expect: 100-continue answered '$code2', expected 413"; return 1; }
    [ "$code" = 413 ] || { WHY="25 MiB + 1 body without Expect: no 413 in $tries tries (last '$code')"; return 1; }
    [ "$before" = "$after" ] || { WHY="the oversized body reached a hook ($before -> $after POST lines)"; return 1; }
    local n413; n413="$(clog "$STACK-lb-haproxy" | grep -c ' 413 ' || true)"
    [ "$n413" -ge $((1 + tries)) ] || { WHY="HAProxy logged $n413 answers 413, expected $((1 + tries))"; return 1; }
    DETAIL="6 pushes over TLS: 202 all, hook1 $n1 / hook2 $n2; 25 MiB+1 body -> 413 by HAProxy (Expect: 1st try; no Expect: $tries tries), hooks untouched"
}

# =============================================================================
# 8. Redis failover through Sentinel: master + 2 replicas + 3 sentinels
# =============================================================================
# Containers of their own (label ci-e2e, network $SN_NET): the
# hook (REDIS_MIN_REPLICAS=1) and two slaves find the master through the
# sentinels; pushes flow while the master container is killed. Every push
# answered 2xx must be built on the new master; the others must be 503s
# with a reason; the time from the kill to the first 2xx is the detail.
sn_role() { docker exec "$1" ci-redis-cli role 2>/dev/null | head -n1; }
sn_new_master() {   # the name of the replica that is master now
    local c
    for c in "$STACK-sn-replica1" "$STACK-sn-replica2"; do
        [ "$(sn_role "$c")" = master ] && { echo "$c"; return 0; }
    done
    return 1
}
sn_cli() {     # redis-cli to sentinel $1, with the password from the file (never on a command line)
    local i=$1; shift
    docker exec "$STACK-sn-sentinel$i" sh -c 'REDISCLI_AUTH="$(cat /run/ci-redis/password)" exec redis-cli -p 26379 "$@"' sh "$@"
}
sn_ready() {   # each sentinel knows 2 replicas and 2 other sentinels
    local i
    for i in 1 2 3; do
        [ "$(sn_cli "$i" sentinel replicas ci 2>/dev/null | grep -cx 'name')" = 2 ] || return 1
        [ "$(sn_cli "$i" sentinel sentinels ci 2>/dev/null | grep -cx 'name')" = 2 ] || return 1
    done
}
sn_push() {   # sn_push <k>: pushes repo e2e/sn-<k mod 4> at SN_SHA (a new commit when empty)
    local repo="e2e/sn-$(( $1 % 4 ))"
    [ -n "$SN_SHA" ] || SN_SHA="$(commit "$repo" "push $1" "n=$1" 'integration.yml=- step: s
  shell: "true"')"
    push "$repo" "$SN_SHA" "push $1" "$SN_URL"
}
check_sentinel() {
    # /data: the image's anonymous volume (owned by its redis user), removed with the container.
    local port label=(--label "ci-e2e=$STACK") net=(--network "$SN_NET") data=() i c
    OWNED=1
    port="$(free_port)" || { WHY="no free port"; return 1; }
    SN_URL="http://127.0.0.1:$port"
    docker network create "${label[@]}" "$SN_NET" >/dev/null 2>>"$WORK/e2e.log" || { WHY="docker network create failed"; return 1; }
    # One password for the set: the master generates it into $STACK-sn-secret; the replicas
    # (masterauth), the sentinels (auth-pass), the hook and the slaves read it there.
    local sec=(-v "$STACK-sn-secret:/run/ci-redis:ro") auth=(-e REDIS_PASSWORD_FILE=/run/ci-redis/password)
    docker run -d "${label[@]}" "${net[@]}" "${data[@]}" --name "$STACK-sn-master" --network-alias master \
        -v "$STACK-sn-secret:/run/ci-redis" "ci-backend/redis:$TAG" >/dev/null || { WHY="master container failed"; return 1; }
    wait_for 30 docker exec "$STACK-sn-master" test -s /run/ci-redis/password || { WHY="the master wrote no password in 30 s: $(clog "$STACK-sn-master" | tail -n2)"; return 1; }
    for i in 1 2; do
        docker run -d "${label[@]}" "${net[@]}" "${data[@]}" "${sec[@]}" --name "$STACK-sn-replica$i" --network-alias "replica$i" \
            "ci-backend/redis:$TAG" --replicaof master 6379 >/dev/null || { WHY="replica$i container failed"; return 1; }
    done
    wait_for 60 bash -c "[ \"\$(docker exec $STACK-sn-master ci-redis-cli info replication | grep -c 'state=online')\" = 2 ]" \
        || { WHY="the replicas are not online after 60 s"; return 1; }
    for i in 1 2 3; do
        # auth-pass: the sentinel's own config (it rewrites it), in its /data, the redis user's only.
        docker run -d "${label[@]}" "${net[@]}" "${data[@]}" "${sec[@]}" --name "$STACK-sn-sentinel$i" --network-alias "sentinel$i" \
            --entrypoint bash "ci-backend/redis:$TAG" -c 'umask 077 && printf "%s\n" "port 26379" "dir /data" "sentinel resolve-hostnames yes" \
                "sentinel monitor ci master 6379 2" "requirepass $(cat /run/ci-redis/password)" "sentinel auth-pass ci $(cat /run/ci-redis/password)" "sentinel down-after-milliseconds ci 1000" \
                "sentinel failover-timeout ci 5000" "sentinel parallel-syncs ci 2" >/data/sentinel.conf && chown redis:redis /data /data/sentinel.conf \
                && exec setpriv --reuid=redis --regid=redis --init-groups -- redis-sentinel /data/sentinel.conf' \
            >/dev/null || { WHY="sentinel$i container failed"; return 1; }
    done
    wait_for 60 sn_ready || { WHY="the sentinels do not know the 2 replicas and each other after 60 s"; return 1; }
    local env=(-e REDIS_URL=redis://unused:6379/0 -e REDIS_SENTINELS=sentinel1:26379,sentinel2:26379,sentinel3:26379 -e REDIS_MASTER_NAME=ci)
    docker run -d "${label[@]}" "${net[@]}" "${sec[@]}" "${auth[@]}" --name "$STACK-sn-hook" -p "127.0.0.1:$port:5000" "${env[@]}" \
        -e REDIS_MIN_REPLICAS=1 -e HOOK_TOKEN=sentinel-e2e-token "ci-backend/hook:$TAG" >/dev/null || { WHY="hook container failed"; return 1; }
    for i in 1 2; do
        docker run -d "${label[@]}" "${net[@]}" "${sec[@]}" "${auth[@]}" --name "$STACK-sn-slave$i" "${env[@]}" -e SLAVE_LEASE="$LEASE" \
            -v "$WORK/repos:/repos:ro" "ci-backend/slave:$TAG" >/dev/null || { WHY="slave$i container failed"; return 1; }
    done
    wait_for 60 bash -c "curl -sf --max-time 2 $SN_URL/ping >/dev/null" || { WHY="GET /ping: no 200 after 60 s: $(clog "$STACK-sn-hook" | tail -n2)"; return 1; }
    wait_for 60 bash -c "curl -sS --max-time 5 $SN_URL/metrics | grep -qx 'ci_slaves{cluster=\"slave\"} 2'" \
        || { WHY="the hook does not count 2 slaves after 60 s"; return 1; }
    local saved="$TOKEN" k=0 ids=() refused=0 reasons="" t0 t1="" now limit
    TOKEN=sentinel-e2e-token SN_SHA=""
    limit=$(( $(date +%s) + 60 ))
    while [ "${#ids[@]}" -lt 5 ] && [ "$(date +%s)" -lt "$limit" ]; do
        sn_push "$k"
        [ "$CODE" = 202 ] || { TOKEN="$saved"; WHY="before the kill, push $k answered $CODE $BODY"; return 1; }
        ids+=("$(jq -r .id <<<"$BODY")"); SN_SHA=""; k=$((k + 1))
    done
    [ "${#ids[@]}" -ge 5 ] || { TOKEN="$saved"; WHY="5 pushes not accepted within 60 s"; return 1; }
    local old; old="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$STACK-sn-master")"
    docker kill "$STACK-sn-master" >/dev/null
    t0="$(date +%s.%N)"
    local after=0
    limit=$(( $(date +%s) + 90 ))
    while [ "$after" -lt 5 ] && [ "$(date +%s)" -lt "$limit" ]; do
        sn_push "$k"
        now="$(date +%s.%N)"
        case "$CODE" in
            2??) ids+=("$(jq -r .id <<<"$BODY")"); SN_SHA=""; k=$((k + 1)); after=$((after + 1))
                 [ -n "$t1" ] || t1="$now" ;;
            503) refused=$((refused + 1))
                 local why; why="$(jq -r '.error // empty' <<<"$BODY" 2>/dev/null)"
                 [ -n "$why" ] || { TOKEN="$saved"; WHY="a 503 without its reason: $BODY"; return 1; }
                 why="${why%%[:;]*}"; case "$reasons" in *"[$why]"*) ;; *) reasons+="[$why]" ;; esac
                 sleep 0.2 ;;
            *) TOKEN="$saved"; WHY="during the failover a push answered $CODE $BODY (expected 2xx or 503)"; return 1 ;;
        esac
    done
    TOKEN="$saved"
    [ -n "$t1" ] || { WHY="no 2xx within 90 s of the kill ($refused refused: $reasons)"; return 1; }
    [ "$after" -ge 5 ] || { WHY="only $after pushes accepted within 90 s of the kill"; return 1; }
    local new; new="$(sn_new_master)" || { WHY="no replica is master"; return 1; }
    local lost=0 id state
    for id in "${ids[@]}"; do
        wait_for 90 bash -c "s=\$(docker exec $new ci-redis-cli hget ci:build:$id state); [ \"\$s\" = passed ] || [ \"\$s\" = failed ] || [ -z \"\$s\" ]" || true
        state="$(docker exec "$new" ci-redis-cli hget "ci:build:$id" state)"
        case "$state" in
            passed) ;;
            "") lost=$((lost + 1)); note "build $id: unknown to the new master" ;;
            *) WHY="build $id is $state on the new master"; return 1 ;;
        esac
    done
    [ "$lost" = 0 ] || { WHY="$lost of ${#ids[@]} pushes answered 2xx are unknown to the new master"; return 1; }
    local newip; newip="$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$new")"
    clog "$STACK-sn-hook" | grep -q "redis.failover old=$old:6379 new=$newip:6379" \
        || { WHY="no 'redis.failover old=$old:6379 new=$newip:6379' line in the hook's log"; return 1; }
    [ "$(docker inspect -f '{{.State.Running}}' "$STACK-sn-master")" = false ] || { WHY="the master container still runs"; return 1; }
    DETAIL="time to recover $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s (docker kill of the master to the first 2xx); 2xx ${#ids[@]}, built ${#ids[@]}, lost 0; refused $refused${reasons:+ with 503 $reasons}"
}

# =============================================================================
run_check() {   # run_check <name> <function>
    local name="$1" fn="$2" t
    t=$(date +%s); WHY=""; DETAIL=""
    note "=== $name"
    if "$fn"; then
        pass "$name" "$(elapsed "$t")${DETAIL:+; $DETAIL}"
        return 0
    fi
    fail "$name" "${WHY:-failed} [$(elapsed "$t")]"
    return 1
}
skip() { fail "$1" "skipped: $2"; }
# E2E_ONLY="stack haproxy-tls sentinel-failover": the groups to run (default all;
# `stack` is the Compose/Swarm stack and the checks on it).
want() { [ -z "${E2E_ONLY:-}" ] || [[ " $E2E_ONLY " == *" $1 "* ]]; }

IMAGES_OK="" STACK_OK=""
run_check images check_images && IMAGES_OK=1
if want stack; then
    if [ -n "$IMAGES_OK" ]; then
        if run_check stack-up stack_up; then
            run_check push-build-status check_first_build && STACK_OK=1
        else
            skip push-build-status "the stack is not up"
        fi
    else
        skip stack-up "no images"; skip push-build-status "no images"
    fi
    for c in "redis-locked:check_redis_locked" "docker-build:check_docker_build" "kill-mid-build:check_kill" "network-partition:check_partition" "scale-3-4-2:check_scaling"; do
        if [ -n "$STACK_OK" ]; then run_check "${c%%:*}" "${c#*:}" || true; else skip "${c%%:*}" "the stack is not up"; fi
    done
fi
if want haproxy-tls; then
    if [ -n "$IMAGES_OK" ] && [ -n "$OWNED" ]; then run_check haproxy-tls check_haproxy || true
    else skip haproxy-tls "${IMAGES_OK:+stack-up failed}${IMAGES_OK:-no images}"; fi
fi
if want sentinel-failover; then
    if [ -n "$IMAGES_OK" ]; then run_check sentinel-failover check_sentinel || true
    else skip sentinel-failover "no images"; fi
fi
