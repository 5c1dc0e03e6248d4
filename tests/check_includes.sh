#!/usr/bin/env bash
# Rejects any #include that goes against the layer arrows of STYLE.md 1:
# server -> engine -> index, engine -> wal; index/ and wal/ see only
# engine/base.h of the engine; server/ sees only engine/fermata.h and
# engine/base.h; nothing includes server/.
set -uo pipefail
cd "$(dirname "$0")/.."
bad=0
check() { # folder, allowed-regex
  local dir=$1 allow=$2
  while IFS= read -r line; do
    inc=$(sed -E 's/.*#include "([^"]+)".*/\1/' <<<"${line#*:*:}")
    if ! grep -qE "$allow" <<<"$inc"; then
      echo "include against the layer arrows: $line"
      bad=1
    fi
  done < <(grep -nE '^#include "' "$dir"/*.[ch] 2>/dev/null)
}
check index  '^(index/|engine/base\.h$)'
check wal    '^(wal/|engine/base\.h$)'
check engine '^(engine/|index/|wal/)'
check server '^(server/|engine/fermata\.h$|engine/base\.h$)'
check tests  '^(engine/|index/|wal/|server/|tests/)'
check tests/fuzz '^(engine/|index/|wal/|server/|tests/fuzz/)'
check bench  '^(engine/|index/|wal/|server/|bench/)'
[ $bad -eq 0 ] && echo "include check: ok"
exit $bad
