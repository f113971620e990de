#!/usr/bin/env bash
# The JWT module's own checks, run by `npm test`: the unit tests of its answer and config readers
# and of its memory of allows (test_core.c), then a fuzz run of the same code bounded to
# JWT_FUZZ_SECONDS (default 4) (fuzz_core.c), both under AddressSanitizer and
# UndefinedBehaviorSanitizer; any report fails. Also checks that both ABI generations of the
# module compile warning-free with the hardening flags. Needs only a C compiler.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$(mktemp -d "${TMPDIR:-/tmp}/jwt-check.XXXXXX")"
trap 'rm -rf "$out"' EXIT
san=(-std=c11 -g -O1 -Wall -Wextra -Werror -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

cc "${san[@]}" -o "$out/test_core" "$here/test_core.c" "$here/jwt_core.c"
"$out/test_core"

cc "${san[@]}" -o "$out/fuzz_core" "$here/fuzz_core.c" "$here/jwt_core.c"
"$out/fuzz_core" "${JWT_FUZZ_SECONDS:-4}" ${JWT_FUZZ_SEED:+"$JWT_FUZZ_SEED"}

for layout in SB_ABI_PTRLEN SB_ABI_BUFFERS; do
  cc -std=c11 -O2 -fPIC -shared -Wall -Wextra -Werror -fstack-protector-strong -D_FORTIFY_SOURCE=2 -Wl,-z,relro,-z,now \
    -DSB_ABI_LAYOUT="$layout" -DSB_ABI_VERSION='"check"' -o "$out/module-$layout.so" "$here/jwt_check.c" "$here/jwt_core.c"
done
echo "jwt module: both ABI generations build with hardening flags"
