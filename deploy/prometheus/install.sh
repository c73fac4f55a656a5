#!/usr/bin/env bash
# Unpack Debian's `prometheus` package (prometheus + promtool: static Go binaries) into a
# folder, without installing it system-wide: no root needed, no service started, nothing
# outside DEST touched. The tests use DEST/usr/bin/{prometheus,promtool}.
#   bash deploy/prometheus/install.sh [DEST]      (default: .venv/prometheus)
set -euo pipefail
dest="${1:-.venv/prometheus}"
if [ -x "$dest/usr/bin/promtool" ] && [ -x "$dest/usr/bin/prometheus" ]; then
  exit 0
fi
command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
  echo "install.sh: needs apt-get and dpkg (Debian/Ubuntu). Elsewhere install Prometheus >= 2.42" \
       "and point SILENTWATCH_PROMETHEUS_BIN_DIR at the folder holding prometheus and promtool." >&2
  exit 1
}
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
fetch() { (cd "$tmp" && apt-get download prometheus >/dev/null 2>"$tmp/err"); }
if ! fetch; then
  # No package lists yet (a fresh container): refresh them, which needs root.
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && fetch
  else
    cat "$tmp/err" >&2
    echo "install.sh: 'apt-get download prometheus' failed; run 'sudo apt-get update' and retry" >&2
    exit 1
  fi
fi
mkdir -p "$dest"
dpkg -x "$tmp"/prometheus_*.deb "$dest"
"$dest/usr/bin/promtool" --version 2>&1 | head -1
