#!/usr/bin/env bash
# provision-redis.sh — a real Redis server for the global rate-limit tests and benchmark.
#
# Usage:   scripts/provision-redis.sh
# Output:  the absolute path of a working redis-server binary, as the ONLY line on stdout.
# Exit:    0 on success; non-zero with the reason on stderr when Redis cannot be provisioned
#          (the test run then fails; nothing is skipped).
#
# Which Redis: Debian's `redis-server` package (7.0.x on bookworm), installed with apt-get.
# Registries are what these machines reach, and the distribution's package is the one with
# security updates; a pinned source build would add a C build of several minutes for nothing the
# tests need (they use INCRBY, PEXPIRE, EVALSHA, AUTH and TLS-less loopback only).
#
# Cached: once installed, the binary is found and printed at once (no apt-get). An explicit
# SIGNALBOX_REDIS_BIN that runs wins over everything. Installs are serialised with a lock, since
# test runs may share the machine.
set -euo pipefail
exec 3>&1 1>&2

log() { printf '[provision-redis] %s\n' "$*" >&2; }
die() { printf '[provision-redis] FAILED: %s\n' "$*" >&2; exit 1; }

works() { [ -n "$1" ] && [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

find_bin() {
  for c in "${SIGNALBOX_REDIS_BIN:-}" /usr/bin/redis-server "$(command -v redis-server 2>/dev/null || true)"; do
    if works "$c"; then echo "$c"; return 0; fi
  done
  return 1
}

if bin="$(find_bin)"; then echo "$bin" >&3; exit 0; fi

command -v apt-get >/dev/null 2>&1 || die "no redis-server found and no apt-get to install Debian's redis-server package"
SUDO=""
if [ "$(id -u)" != "0" ]; then
  command -v sudo >/dev/null 2>&1 || die "redis-server is missing and installing it needs root (apt-get install redis-server)"
  SUDO="sudo -n"
fi

exec 9>/tmp/signalbox-provision-redis.lock
flock 9
if bin="$(find_bin)"; then echo "$bin" >&3; exit 0; fi
log "installing Debian's redis-server package (apt-get update first)"
$SUDO apt-get update -qq || die "apt-get update did not succeed"
# --no-install-recommends: no redis-tools or service units beyond what the package needs. The
# package's own service is not started here (no init in these containers); the tests start their
# own servers on loopback.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends redis-server || die "apt-get install redis-server did not succeed"
bin="$(find_bin)" || die "redis-server was installed but does not run (redis-server --version)"
log "$("$bin" --version)"
echo "$bin" >&3
