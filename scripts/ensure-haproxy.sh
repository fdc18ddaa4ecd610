#!/usr/bin/env bash
# Put an HAProxy binary at $1 (e.g. .venv/bin/haproxy) for `make cluster` (tools/cluster.py), from Debian's
# haproxy package, the way the Makefile gets promtool: the package is downloaded and only /usr/sbin/haproxy
# unpacked, so no haproxy service, user or /etc/haproxy is created and nothing is started. The shared libraries
# the binary links (the package's lib* dependencies: Lua, OpenTracing, PCRE2, OpenSSL...) are installed as
# packages when missing; libraries start nothing. One haproxy already on PATH is used as it is.
# Idempotent; needs root only when something is missing.
set -euo pipefail

dest="${1:?usage: ensure-haproxy.sh DEST}"

if command -v haproxy >/dev/null 2>&1; then
  ln -sf "$(command -v haproxy)" "$dest"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download haproxy >/dev/null 2>&1 || { apt-get update -qq && apt-get download haproxy >/dev/null; }
deb="$(ls haproxy_*.deb)"

# "libc6 (>= 2.34), liblua5.3-0, libfoo | libbar, adduser" -> the first alternative of each lib* dependency.
libs="$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/ //g' | grep '^lib' || true)"
missing=""
for lib in $libs; do
  dpkg-query -W -f='${Status}' "$lib" 2>/dev/null | grep -q "install ok installed" || missing="$missing $lib"
done
if [[ -n "$missing" ]]; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "ensure-haproxy: haproxy's libraries missing and not root: apt-get install$missing" >&2
    exit 1
  fi
  echo "ensure-haproxy: installing haproxy's libraries from Debian's packages:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

dpkg-deb --fsys-tarfile "$deb" | tar -x ./usr/sbin/haproxy
install -m 0755 usr/sbin/haproxy "$dest"
"$dest" -v | head -1 >&2
