#!/usr/bin/env bash
# Validate images/kubernetes/ (what `make test` runs):
#
#   images/kubernetes/validate.sh [--self-test] [-k 1.30.0 ...]
#
# Installs the pinned kubernetes-validate from PyPI into a venv once
# (KUBE_VENV, default target/kube-venv; Debian needs python3-venv, which
# `make deps` installs), then runs images/kubernetes/validate.py with it:
# strict schema validation against Kubernetes 1.28 and 1.30 plus the
# project's own checks; --self-test proves the broken manifests of
# tests/fixtures/kubernetes/ are rejected. Exit 0 valid, 1 invalid, 2 no tool.
set -euo pipefail
cd "$(dirname "$0")/../.."
PIN="kubernetes-validate==1.37.0"
VENV="${KUBE_VENV:-target/kube-venv}"
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$PIN" ]; then
    echo "validate: installing $PIN into $VENV (once)"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || {
        echo "validate: python3 -m venv failed: install python3-venv (make deps does on Debian)" >&2; exit 2; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$PIN" || {
        echo "validate: pip install $PIN failed (PyPI unreachable?)" >&2; exit 2; }
    echo "$PIN" > "$VENV/.installed"
fi
exec "$VENV/bin/python" images/kubernetes/validate.py "$@"
