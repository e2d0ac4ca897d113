#!/usr/bin/env bash
# Build a local debian:bookworm-slim image with debootstrap, for machines that
# cannot pull from a registry. Does nothing when the image already exists.
#
#   images/base/build-base.sh            # builds debian:bookworm-slim if missing
#   BASE_IMAGE=debian:bookworm-slim FORCE=1 images/base/build-base.sh   # rebuild
#   MIRROR=http://deb.debian.org/debian images/base/build-base.sh         # pick a mirror
#
# Needs root, debootstrap and a Docker engine. The result mimics the official
# slim image: minbase, no docs/man/locales, no apt lists, dpkg excludes for docs.
set -euo pipefail

IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
SUITE="${SUITE:-bookworm}"
ARCH="${ARCH:-$(dpkg --print-architecture 2>/dev/null || echo amd64)}"

say() { printf 'build-base: %s\n' "$*"; }
die() { printf 'build-base: error: %s\n' "$*" >&2; exit 1; }

if [ -z "${FORCE:-}" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    say "$IMAGE already present ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-19)); nothing to do"
    exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
command -v docker >/dev/null || die "docker CLI not found"
[ "$(id -u)" = 0 ] || die "debootstrap needs root"

# The Debian mirror apt already uses on this machine (deb822 .sources or one-line .list).
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { if (deb && suite && uri) { print uri; exit } deb=0; suite=0; uri=""; next }
            /^Types:/  { for (i=2;i<=NF;i++) if ($i=="deb") deb=1 }
            /^URIs:/   { uri=$2 }
            /^Suites:/ { for (i=2;i<=NF;i++) if ($i=="'"$SUITE"'") suite=1 }
            END { if (deb && suite && uri) print uri }' "$f" | head -n1
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1=="deb" { u=$2; if (u ~ /^\[/) u=$3; s=($2 ~ /^\[/)?$4:$3; if (s=="'"$SUITE"'") print u }' "$f"
    done
}
find_security() {
    local f
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        grep -Ev '^[[:space:]]*#' "$f" | grep -Eo 'https?://[^ ]*debian-security[^ ]*' | head -n1
    done | head -n1
}

MIRROR="${MIRROR:-$(find_mirror | head -n1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY="${SECURITY_MIRROR:-$(find_security)}"
SECURITY="${SECURITY:-http://deb.debian.org/debian-security}"
say "suite=$SUITE arch=$ARCH mirror=$MIRROR security=$SECURITY -> image $IMAGE"

ROOTFS="$(mktemp -d /tmp/bookworm-rootfs.XXXXXX)"
cleanup() { say "removing $ROOTFS"; rm -rf --one-file-system "$ROOTFS"; }
trap cleanup EXIT

say "debootstrap --variant=minbase $SUITE $ROOTFS $MIRROR (a few minutes)"
debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$ROOTFS" "$MIRROR"

say "configuring apt and dpkg like the official slim image"
rm -f "$ROOTFS/etc/apt/sources.list"
cat > "$ROOTFS/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d" "$ROOTFS/etc/apt/apt.conf.d"
cat > "$ROOTFS/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
# keep images small: no docs, man pages or translations from later installs
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
cat > "$ROOTFS/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
cat > "$ROOTFS/etc/apt/apt.conf.d/docker-no-recommends" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
CFG
cat > "$ROOTFS/etc/apt/apt.conf.d/docker-gzip-indexes" <<'CFG'
Acquire::GzipIndexes "true";
CFG
cat > "$ROOTFS/usr/sbin/policy-rc.d" <<'CFG'
#!/bin/sh
exit 101
CFG
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"

say "trimming docs, man pages, locales, apt lists and caches"
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/groff/* \
       "$ROOTFS"/usr/share/lintian/* "$ROOTFS"/usr/share/linda/*
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/debconf/*-old \
       "$ROOTFS"/var/lib/dpkg/*-old "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/root/.bash_history
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
# The host's identity must not leak into the image.
: > "$ROOTFS/etc/hostname"
rm -f "$ROOTFS/etc/machine-id" "$ROOTFS/var/lib/dbus/machine-id"
printf 'nameserver 127.0.0.53\n' > "$ROOTFS/etc/resolv.conf"

say "rootfs is $(du -sh "$ROOTFS" | cut -f1); importing as $IMAGE"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --message "debootstrap --variant=minbase $SUITE $MIRROR" \
    - "$IMAGE"
say "done: $(docker image ls --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' "$IMAGE")"
