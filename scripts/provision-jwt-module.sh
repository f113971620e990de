#!/usr/bin/env bash
# Build Signalbox's JWT fast-path filter (native/jwt-check) as an Envoy dynamic module for one
# Envoy version (ENVOY_VERSION: x.y.z, "pinned" (the default) or "newest", as listed in
# envoy-versions.json), into a
# git-ignored cache folder. Prints the folder to give Envoy as ENVOY_DYNAMIC_MODULES_SEARCH_PATH
# (it holds libsignalbox_jwt_check.so) as the only line on stdout.
#
# Needs only a C compiler. Envoy's side of the module interface is declared by Signalbox itself
# (native/jwt-check/envoy_abi.h); envoy-versions.json says, per Envoy version, which generation of
# that interface it takes and the ABI version string it checks. A version not listed there has no
# build: this exits non-zero and says so (proxies on such an Envoy get the Lua fast path). Built
# hardened (stack protector, FORTIFY_SOURCE, full RELRO). Idempotent.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/native/jwt-check"

# "<version> <layout> <abiVersion>" for the requested (or pinned) version.
if ! read -r version layout abi < <(node -e '
  const list = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const want = process.env.ENVOY_VERSION || "pinned";
  const v = list.versions.find((x) => x.version === want || x.role === want);
  if (!v || !v.jwtModule) {
    console.error(`provision-jwt-module: FAILED: the JWT module declares no ABI for Envoy ${want} (envoy-versions.json lists ${list.versions.filter((x) => x.jwtModule).map((x) => x.version).join(", ")}); proxies on that Envoy run the Lua fast path`);
    process.exit(1);
  }
  console.log(`${v.version} ${v.jwtModule.layout} ${v.jwtModule.abiVersion}`);
' "$repo/envoy-versions.json"); then
  exit 1
fi
case "$layout" in
  ptrlen) abi_layout=SB_ABI_PTRLEN ;;
  buffers) abi_layout=SB_ABI_BUFFERS ;;
  *) echo "provision-jwt-module: FAILED: unknown module ABI layout '$layout' for Envoy $version in envoy-versions.json" >&2; exit 1 ;;
esac
if ! [[ "$abi" =~ ^[A-Za-z0-9.]+$ ]]; then
  echo "provision-jwt-module: FAILED: ABI version '$abi' for Envoy $version is not a plain string" >&2
  exit 1
fi

digest="$( (cat "$src/jwt_check.c" "$src/jwt_core.c" "$src/jwt_core.h" "$src/envoy_abi.h" "${BASH_SOURCE[0]}"; echo "$layout $abi") | sha256sum | cut -c1-16)"
out="${SIGNALBOX_CACHE_DIR:-$repo/.cache}/jwt-module/$version-$digest"
lib="$out/libsignalbox_jwt_check.so"

if [ -f "$lib" ]; then echo "$out"; exit 0; fi

mkdir -p "$out"
exec 9>"$out.lock"
flock 9
if [ -f "$lib" ]; then echo "$out"; exit 0; fi

if ! command -v cc >/dev/null; then
  echo "provision-jwt-module: FAILED: 'cc' is not installed (needed to build the JWT module)" >&2
  exit 1
fi
echo "provision-jwt-module: building $lib for Envoy $version (module ABI $layout, version $abi)" >&2
cc -std=c11 -O2 -fPIC -shared -Wall -Wextra -Werror \
  -fstack-protector-strong -D_FORTIFY_SOURCE=2 -fvisibility=default \
  -Wl,-z,relro,-z,now -Wl,-z,noexecstack \
  -DSB_ABI_LAYOUT="$abi_layout" -DSB_ABI_VERSION="\"$abi\"" \
  -o "$lib.tmp" "$src/jwt_check.c" "$src/jwt_core.c"
mv "$lib.tmp" "$lib"
echo "$out"
