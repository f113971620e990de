#!/usr/bin/env bash
# Build Signalbox's JWT fast-path filter (native/jwt-check/jwt_check.c) as an Envoy dynamic module
# for the pinned Envoy release, into a git-ignored cache folder. Prints the folder to give Envoy as
# ENVOY_DYNAMIC_MODULES_SEARCH_PATH (it holds libsignalbox_jwt_check.so) as the only line on stdout.
#
# A dynamic module must be built against the exact ABI header of the Envoy that loads it. The
# header is not copied into this repository: it is read from Envoy's own source at the pinned tag,
# which the Go module proxy serves (github.com/envoyproxy/envoy@v<version>). Needs go and a C
# compiler. Idempotent; exits non-zero with a reason when the module cannot be built.
set -euo pipefail
ENVOY_VERSION="${ENVOY_VERSION:-1.36.2}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/native/jwt-check/jwt_check.c"
digest="$(sha256sum "$src" | cut -c1-16)"
out="${SIGNALBOX_CACHE_DIR:-$repo/.cache}/jwt-module/$ENVOY_VERSION-$digest"
lib="$out/libsignalbox_jwt_check.so"

if [ -f "$lib" ]; then echo "$out"; exit 0; fi

mkdir -p "$out"
exec 9>"$out.lock"
flock 9
if [ -f "$lib" ]; then echo "$out"; exit 0; fi

for tool in go cc; do
  if ! command -v "$tool" >/dev/null; then
    echo "provision-jwt-module: FAILED: '$tool' is not installed (needed to build the JWT module)" >&2
    exit 1
  fi
done
echo "provision-jwt-module: fetching Envoy v$ENVOY_VERSION's module ABI header from the Go module proxy" >&2
if ! dir="$(cd "$out" && GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download -json "github.com/envoyproxy/envoy@v$ENVOY_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')" || [ -z "$dir" ]; then
  echo "provision-jwt-module: FAILED to download github.com/envoyproxy/envoy@v$ENVOY_VERSION from the Go module proxy" >&2
  exit 1
fi
abi="$dir/source/extensions/dynamic_modules"
if [ ! -f "$abi/abi.h" ] || [ ! -f "$abi/abi_version.h" ]; then
  echo "provision-jwt-module: FAILED: no abi.h in $abi" >&2
  exit 1
fi
echo "provision-jwt-module: building $lib" >&2
cc -std=c11 -O2 -fPIC -shared -Wall -Wextra -Werror -Wno-unused-variable -I"$abi" -o "$lib.tmp" "$src"
mv "$lib.tmp" "$lib"
echo "$out"
