#!/usr/bin/env bash
# Provision a headless-capable Chromium for the dashboard's browser test: Debian's `chromium`
# package (driven by playwright-core; no browser download step). Prints the absolute path of the
# browser as the only line on stdout. Idempotent; exits non-zero with a reason when Chromium
# cannot be installed (the test run then fails; nothing is skipped).
set -euo pipefail

works() { [ -n "$1" ] && [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

find_bin() {
  for c in "${SIGNALBOX_CHROMIUM_BIN:-}" /usr/bin/chromium "$(command -v chromium 2>/dev/null || true)"; do
    if works "$c"; then echo "$c"; return 0; fi
  done
  return 1
}

if bin="$(find_bin)"; then echo "$bin"; exit 0; fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "provision-chromium: FAILED: no chromium found and no apt-get to install Debian's chromium package" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "provision-chromium: FAILED: chromium is missing and installing it needs root (apt-get install chromium)" >&2
    exit 1
  fi
fi
echo "provision-chromium: installing Debian's chromium package" >&2
# One installer at a time (parallel test runs share the machine).
exec 9>/tmp/signalbox-provision-chromium.lock
flock 9
if bin="$(find_bin)"; then echo "$bin"; exit 0; fi
if ! { $SUDO apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2; }; then
  echo "provision-chromium: FAILED: apt-get install chromium did not succeed" >&2
  exit 1
fi
if bin="$(find_bin)"; then echo "$bin"; exit 0; fi
echo "provision-chromium: FAILED: chromium was installed but does not run (chromium --version)" >&2
exit 1
