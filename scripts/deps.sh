#!/usr/bin/env bash
# Makes sure the programs the backend and its tests run are installed:
# apt-get when missing and running as root, else a clear message.
# Arguments add more `command:package` pairs (`make images` asks for
# debootstrap:debootstrap), or `py:module:package` for a Python module.
# A path stands for a program bash also has as a
# builtin (the tests run /bin/kill, which slim images lack).
# `--check PAIRS…` (make check) looks only for those and cargo and installs
# nothing: a missing one is named, with the command that installs it.
set -euo pipefail
need=()
if [ "${1:-}" = --check ]; then
  shift
  for want in "$@"; do
    cmd=${want%%:*}; pkg=${want#*:}
    command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
  done
  command -v cargo >/dev/null 2>&1 || { echo "deps: cargo is missing: install Rust (https://rustup.rs) first" >&2; exit 1; }
  [ ${#need[@]} -eq 0 ] && exit 0
  echo "deps: missing ${need[*]}: run make deps (as root it installs them with apt-get), or: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
# What make deps installs when missing: `command:package` (and, below, the
# Python modules make test needs).
pairs=(busybox:busybox-static redis-server:redis-server redis-sentinel:redis-sentinel redis-cli:redis-tools git:git openssl:openssl curl:curl bash:bash python3:python3 flock:util-linux setsid:util-linux runuser:util-linux /bin/kill:procps chromium:chromium xmllint:libxml2-utils)
python_packages=(python3-jsonschema python3-yaml python3-venv)
# `--list`: every package this script may install, once each (make help).
if [ "${1:-}" = --list ]; then
  seen=" "
  for pair in "${pairs[@]}" "${python_packages[@]/#/:}"; do
    pkg=${pair#*:}
    case $seen in *" $pkg "*) ;; *) seen="$seen$pkg " ;; esac
  done
  echo $seen
  exit 0
fi
for pair in "${pairs[@]}"; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
for want in "$@"; do
  cmd=${want%%:*}; pkg=${want#*:}
  if [ "$cmd" = py ]; then
    # py:<module>:<package>: a module Debian's python3 ships apart (bench/run.sh: ensurepip, for venvs)
    mod=${pkg%%:*}; pkg=${pkg#*:}
    python3 -c "import $mod" >/dev/null 2>&1 || need+=("$pkg")
    continue
  fi
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
command -v cargo >/dev/null 2>&1 || { echo "deps: cargo is missing: install Rust (https://rustup.rs) first" >&2; exit 1; }
# images/validate.py (run by make test) needs jsonschema and PyYAML; with
# Debian's python3 they come from apt, otherwise validate.py uses pip.
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import jsonschema, yaml' 2>/dev/null \
   && [ "$(command -v python3)" = /usr/bin/python3 ]; then
  need+=("${python_packages[@]:0:2}")
fi
# images/kubernetes/validate.sh (run by make test) makes a venv for
# kubernetes-validate from PyPI; Debian's python3 makes venvs only with
# python3-venv (ensurepip).
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' 2>/dev/null \
   && [ "$(command -v python3)" = /usr/bin/python3 ]; then
  need+=("${python_packages[2]}")
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "deps: installing ${need[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "deps: missing ${need[*]}: install them (Debian/Ubuntu: sudo apt-get install ${need[*]})" >&2
  exit 1
fi
