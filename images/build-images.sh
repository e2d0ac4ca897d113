#!/usr/bin/env bash
# Build the hook, slave and redis images (what `make images` runs), tagged with
# the crate version and `latest`:
#
#   images/build-images.sh                 # cargo build --release, then 3 images
#   NO_CARGO=1 images/build-images.sh      # reuse target/release/{hook,slave}
#   BASE=debian:bookworm-slim TAG=0.1.0 images/build-images.sh
#   PARTS="hook slave" images/build-images.sh
#   CARGO_TARGET_DIR=/tmp/t images/build-images.sh   # binaries from there, copied to target/release
#
# The build context is the repository root (.dockerignore keeps it to
# target/release/{hook,slave} and images/). When the base image cannot be
# found locally it is built with debootstrap (images/base/build-base.sh), since
# this may be a machine without access to any registry.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE="${BASE:-debian:bookworm-slim}"
VERSION="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)"
TAG="${TAG:-$VERSION}"
PARTS="${PARTS:-hook slave redis}"
say() { printf 'images: %s\n' "$*"; }

if [ -z "${NO_CARGO:-}" ]; then
    say "cargo build --release --bin hook --bin slave"
    cargo build --release --bin hook --bin slave
fi
# The build context holds target/release/{hook,slave} (.dockerignore): binaries
# built into another CARGO_TARGET_DIR are copied there first.
out="${CARGO_TARGET_DIR:-target}/release"
for bin in hook slave; do
    [ -x "$out/$bin" ] || { echo "images: $out/$bin missing (cargo build --release)" >&2; exit 1; }
    if [ "$(realpath "$out")" != "$(realpath -m target/release)" ]; then
        install -D -m 0755 "$out/$bin" "target/release/$bin"
    fi
done

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if [ "$BASE" = "debian:bookworm-slim" ] && ! docker pull -q "$BASE" >/dev/null 2>&1; then
        say "$BASE cannot be pulled; building it locally"
        BASE_IMAGE="$BASE" images/base/build-base.sh
    fi
fi

for part in $PARTS; do
    say "docker build -f images/marathon/$part/Dockerfile --build-arg BASE=$BASE -t ci-backend/$part:$TAG ."
    docker build --build-arg "BASE=$BASE" -f "images/marathon/$part/Dockerfile" \
        -t "ci-backend/$part:$TAG" -t "ci-backend/$part:latest" .
done
say "built:"
for part in $PARTS; do
    docker image ls --format '  {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' "ci-backend/$part:$TAG"
done
