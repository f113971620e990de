#!/usr/bin/env bash
# provision-consul.sh — build (once) and cache a real Consul agent binary.
#
# Usage:   scripts/provision-consul.sh
# Output:  the absolute path of the consul binary, as the ONLY line on stdout.
#          Everything else (progress, go output, errors) goes to stderr.
# Exit:    0 on success; non-zero with a message on stderr if the binary
#          cannot be provisioned.
#
# Environment:
#   CONSUL_VERSION       Consul release to build (default below; "v" prefix optional).
#   SIGNALBOX_CACHE_DIR  cache root (default: <repo>/.cache). The binary lands in
#                        $SIGNALBOX_CACHE_DIR/consul/<version>/consul
#   GOSUMDB, GOPROXY, GOMODCACHE, GOCACHE are honoured as usual.
#
# Why build from source?
#   Only package registries are reachable from our machines (no release
#   downloads), so the binary is built from the Go module proxy's copy of the
#   github.com/hashicorp/consul module.
#
# Why 1.14.11?
#   * Licence: Consul 1.17 and later are under the Business Source Licence
#     (not open source). 1.14.x is MPL-2.0; the script checks that the
#     module's LICENSE file says "Mozilla Public License, version 2.0" and
#     refuses to build otherwise.
#   * The nested modules github.com/hashicorp/consul/envoyextensions and
#     github.com/hashicorp/consul/troubleshoot (not open source; not to be used
#     in this project) first appear in 1.15. 1.14 needs neither; the script
#     checks go.mod and the module graph (`go list -m -e all`) for both and
#     refuses to build if either shows up.
#   * v1.14.11 is the newest 1.14 patch the module proxy serves.
#
# How the build works (and what was needed):
#   1. `go mod download -json github.com/hashicorp/consul@vX` fetches the module
#      source into GOMODCACHE (read-only). `go install ...@vX` cannot be used:
#      the root go.mod has `replace` directives (./api, ./sdk, ./proto-public)
#      and go install refuses modules with replaces.
#   2. The source is copied to a writable temp dir (chmod -R u+w).
#   3. The module zip does not contain the nested modules (api, sdk,
#      proto-public are separate modules and are excluded from the root zip),
#      so the local-path replaces are dropped with `go mod edit -dropreplace`;
#      the versions required in go.mod (api v1.18.1, sdk v0.13.0,
#      proto-public v0.2.1 for 1.14.11, all MPL-2.0) then come from the proxy.
#   4. `CGO_ENABLED=0 go build` with GOFLAGS=-mod=mod (go.sum of the release
#      lacks a few go.mod hashes that the newer go command wants; -mod=mod lets
#      it add them, verified against the checksum DB through the proxy).
#      GOTOOLCHAIN=local: never try to download another Go toolchain.
#   With Go 1.26.8, v1.14.11 built as is: no dependency bump and no
#   -checklinkname=0 were needed (its golang.org/x/sys v0.13.0 is new enough).
#   Note: `go list -m all` (without -e) fails for this module because one
#   module in the (unpruned) graph, inet.af/netaddr, is not served by the proxy
#   (403). It is not part of the build (only coredns's go.mod mentions it), so
#   the check uses `go list -m -e all`.
#   A cold build takes roughly 5-6 minutes on 2 cores (plus ~40 s of module
#   downloads); later runs print the cached path at once.
#
# Concurrency/atomicity: a flock on <cache>/consul/.lock serialises builds; the
# binary is built in a temp dir, checked (`consul version`), copied next to its
# final place and renamed into place, so a half-written binary is never seen.
set -euo pipefail

# All progress goes to stderr; keep the real stdout on fd 3 for the one result line.
exec 3>&1 1>&2

log() { printf '[provision-consul] %s\n' "$*" >&2; }
die() { printf '[provision-consul] ERROR: %s\n' "$*" >&2; exit 1; }

DEFAULT_CONSUL_VERSION="1.14.11"
CONSUL_VERSION="${CONSUL_VERSION:-$DEFAULT_CONSUL_VERSION}"
CONSUL_VERSION="${CONSUL_VERSION#v}"
[[ "$CONSUL_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] \
  || die "CONSUL_VERSION must look like 1.14.11 (got '$CONSUL_VERSION')"

# Known-good module hash (go.sum "h1:" form) of the default version; checked
# when the download had to be done without the checksum database.
declare -A KNOWN_MODULE_SUMS=(
  ["1.14.11"]="h1:AQqgpdtUQcQIh86DtcPfkOignrSWgRTpzByLgRzTOAc="
)

# Licence guard: 1.17.0 and later are BSL (not open source).
IFS=. read -r V_MAJOR V_MINOR _V_PATCH <<<"$CONSUL_VERSION"
if (( V_MAJOR > 1 || (V_MAJOR == 1 && V_MINOR >= 17) )); then
  die "Consul $CONSUL_VERSION is under the Business Source Licence (1.17+); use an MPL-2.0 release such as $DEFAULT_CONSUL_VERSION"
fi

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE_ROOT="${SIGNALBOX_CACHE_DIR:-$REPO_DIR/.cache}"
mkdir -p "$CACHE_ROOT/consul" || die "cannot create cache dir $CACHE_ROOT/consul"
CACHE_ROOT="$(cd "$CACHE_ROOT" && pwd)"   # make absolute
CONSUL_CACHE="$CACHE_ROOT/consul"
VERSION_DIR="$CONSUL_CACHE/$CONSUL_VERSION"
BIN="$VERSION_DIR/consul"

# True if $1 is an executable consul that reports the expected version.
binary_ok() {
  local out
  [[ -x "$1" ]] || return 1
  out="$("$1" version 2>/dev/null)" || return 1
  [[ "${out%%$'\n'*}" == "Consul v$CONSUL_VERSION" ]]
}

emit() { printf '%s\n' "$BIN" >&3; exit 0; }

# Fast path: already cached.
if binary_ok "$BIN"; then emit; fi

# Slow path: take the lock, check again (another process may have built it).
exec 9>"$CONSUL_CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
  if ! flock -n 9; then
    log "another provisioning run holds $CONSUL_CACHE/.lock; waiting for it..."
    flock 9 || die "could not lock $CONSUL_CACHE/.lock"
  fi
else
  log "flock not found; building without a lock (the final rename is still atomic)"
fi
if binary_ok "$BIN"; then emit; fi

command -v go >/dev/null 2>&1 \
  || die "the 'go' command is needed to build Consul from source, and it is not on PATH"

export GOTOOLCHAIN=local GOWORK=off GO111MODULE=on CGO_ENABLED=0
export GOFLAGS="-mod=mod -buildvcs=false"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/signalbox-consul-build.XXXXXX")"
cleanup() { rm -rf "$WORK" "${STAGED:-}" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

start_ts=$SECONDS
log "building Consul v$CONSUL_VERSION from source with $(go version | awk '{print $3}') (a cold build takes several minutes)"

# 1. Download the module source (module-less mode, from an empty dir).
mkdir -p "$WORK/dl"
dl_json=""
if ! dl_json="$(cd "$WORK/dl" && GOFLAGS= go mod download -json "github.com/hashicorp/consul@v$CONSUL_VERSION" 2>"$WORK/dl.err")"; then
  cat "$WORK/dl.err" >&2 || true
  printf '%s\n' "$dl_json" >&2
  if [[ -n "${KNOWN_MODULE_SUMS[$CONSUL_VERSION]:-}" && "${GOSUMDB:-}" != "off" ]]; then
    log "download failed; retrying without the checksum database (the module hash is then checked against the pinned one)"
    export GOSUMDB=off
    dl_json="$(cd "$WORK/dl" && GOFLAGS= go mod download -json "github.com/hashicorp/consul@v$CONSUL_VERSION")" \
      || die "could not download github.com/hashicorp/consul@v$CONSUL_VERSION from the Go module proxy"
  else
    die "could not download github.com/hashicorp/consul@v$CONSUL_VERSION from the Go module proxy"
  fi
fi
json_field() { printf '%s\n' "$dl_json" | sed -n "s/^[[:space:]]*\"$1\": \"\\(.*\\)\",\\{0,1\\}\$/\\1/p" | head -n 1 || true; }
SRC_DIR="$(json_field Dir)"
MOD_SUM="$(json_field Sum)"
INFO_FILE="$(json_field Info)"
[[ -n "$SRC_DIR" && -f "$SRC_DIR/go.mod" ]] || die "go mod download did not give a source dir for consul@v$CONSUL_VERSION"
expected_sum="${KNOWN_MODULE_SUMS[$CONSUL_VERSION]:-}"
if [[ -n "$expected_sum" && "$MOD_SUM" != "$expected_sum" ]]; then
  die "module hash mismatch for consul@v$CONSUL_VERSION: got '$MOD_SUM', want '$expected_sum'"
fi

# 2. Licence check on the downloaded source.
grep -q "Mozilla Public License, version 2.0" "$SRC_DIR/LICENSE" 2>/dev/null \
  || die "LICENSE of consul@v$CONSUL_VERSION is not the Mozilla Public License 2.0; refusing to build it"
log "licence: $SRC_DIR/LICENSE is the Mozilla Public License, version 2.0"

# 3. Writable copy; drop the replaces that point at nested modules not in the zip.
SRC="$WORK/src"
cp -R "$SRC_DIR" "$SRC"
chmod -R u+w "$SRC"
cd "$SRC"
drop=()
while read -r old; do
  [[ -n "$old" ]] || continue
  # Keep a replace if the nested module is present in the tree (never the
  # case for a module-proxy zip); otherwise use the version required in go.mod.
  if [[ ! -f "$SRC/${old#github.com/hashicorp/consul/}/go.mod" ]]; then
    drop+=("-dropreplace=$old")
  fi
done < <(sed -nE 's/^(replace)?[[:space:]]*(github\.com\/hashicorp\/consul\/[^[:space:]]+)([[:space:]]+v[^[:space:]]+)?[[:space:]]+=>[[:space:]]+\..*/\2/p' go.mod)
if ((${#drop[@]})); then
  log "go mod edit ${drop[*]}"
  go mod edit "${drop[@]}"
fi

# 4. Not-to-use modules: neither may appear in go.mod nor in the module graph.
FORBIDDEN_RE='github\.com/hashicorp/consul/(envoyextensions|troubleshoot)([[:space:]@]|$)'
if grep -qE "$FORBIDDEN_RE" go.mod; then
  die "consul@v$CONSUL_VERSION requires envoyextensions or troubleshoot (not open source); use $DEFAULT_CONSUL_VERSION"
fi
log "resolving the module graph..."
go mod download >&2 || die "could not download the dependencies of consul@v$CONSUL_VERSION"
mods="$(go list -m -e all 2>/dev/null)" || die "go list -m -e all failed"
# grep without -q in pipes: with pipefail, an early exit could SIGPIPE the writer and hide a match.
if printf '%s\n' "$mods" | grep -E "^$FORBIDDEN_RE" >/dev/null; then
  die "the module graph of consul@v$CONSUL_VERSION contains envoyextensions or troubleshoot (not open source)"
fi

# 5. Build.
ldflags="-s -w"
build_date="$(sed -n 's/.*"Time"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$INFO_FILE" 2>/dev/null | head -n 1 || true)"
if [[ -n "$build_date" ]]; then
  ldflags+=" -X github.com/hashicorp/consul/version.BuildDate=$build_date"
fi
log "go build (CGO_ENABLED=0, -trimpath)..."
go build -trimpath -ldflags "$ldflags" -o "$WORK/consul" . >&2 \
  || die "go build of consul@v$CONSUL_VERSION failed (see the output above)"

# 6. Sanity check, then install atomically.
got="$("$WORK/consul" version 2>&1 || true)"
got="${got%%$'\n'*}"
[[ "$got" == "Consul v$CONSUL_VERSION" ]] \
  || die "built binary reports '$got', expected 'Consul v$CONSUL_VERSION'"
if go version -m "$WORK/consul" | grep -E "[[:space:]]$FORBIDDEN_RE" >/dev/null; then
  die "built binary links envoyextensions or troubleshoot; refusing it"
fi
mkdir -p "$VERSION_DIR"
STAGED="$VERSION_DIR/.consul.tmp.$$"
cp "$WORK/consul" "$STAGED"
chmod 0755 "$STAGED"
mv -f "$STAGED" "$BIN"
STAGED=""
binary_ok "$BIN" || die "installed binary $BIN does not run"
log "built Consul v$CONSUL_VERSION in $((SECONDS - start_ts)) s -> $BIN"
emit
