#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries (initdb, pg_ctl, postgres) are on this machine, from Debian's
# packages, and that the unprivileged OS user the test clusters run as exists. Prints the binary directory.
#
# Nothing else is assumed or changed: no system cluster is created or started (the tests and `make cluster`
# run throw-away clusters of their own, initdb'd into a temporary directory, see tests/pg_cluster.py).
# Idempotent; needs root only when something is missing.
set -euo pipefail

PG_TEST_USER="${CLOUDLAYER_PG_OS_USER:-cloudlayer-test}"

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

if ! bindir="$(find_bindir)"; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "ensure-postgres: PostgreSQL server binaries missing and not root: apt-get install postgresql" >&2
    exit 1
  fi
  echo "ensure-postgres: installing PostgreSQL from Debian's packages" >&2
  # Debian's postgresql-common would create and start a 'main' cluster on install: we want the binaries only.
  if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
    mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o Dpkg::Options::=--force-confold postgresql >/dev/null
  bindir="$(find_bindir)" || { echo "ensure-postgres: installed, but no initdb found" >&2; exit 1; }
fi

# initdb refuses to run as root: test clusters run as this system user (no home, no login shell).
if [[ "$(id -u)" == 0 ]] && ! id -u "$PG_TEST_USER" >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_TEST_USER"
  echo "ensure-postgres: created system user $PG_TEST_USER" >&2
fi

echo "$bindir"
