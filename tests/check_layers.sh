#!/bin/sh
# The layering rule of docs/design.md: a source file may include headers of
# its own layer and of the layers below it, never of a layer above. The layers,
# lowest first, are the directories of src/ in this order; include/pikv.h (the
# public API) may be included anywhere. Ends with "check_layers: N passed, M failed".
set -u
LAYERS="util tokenizer kv model backend router press engine eval bench cli"

rank() {
  r=0
  for l in $LAYERS; do
    [ "$l" = "$1" ] && { echo "$r"; return; }
    r=$((r + 1))
  done
  echo -1
}

pass=0 fail=0
for f in $(find src -name '*.[ch]' -o -name '*.cu' | sort); do
  dir=$(echo "$f" | cut -d/ -f2)
  mine=$(rank "$dir")
  if [ "$mine" -lt 0 ]; then
    echo "FAIL $f: src/$dir is not a layer of docs/design.md ($LAYERS)"
    fail=$((fail + 1))
    continue
  fi
  bad=0
  for inc in $(sed -n 's/^#include "\([a-z_]*\)\/[^"]*".*/\1/p' "$f" | sort -u); do
    theirs=$(rank "$inc")
    if [ "$theirs" -lt 0 ] || [ "$theirs" -gt "$mine" ]; then
      echo "FAIL $f (layer $dir) includes $(grep -m1 "#include \"$inc/" "$f" | sed 's/#include //') (layer $inc)"
      bad=1
    fi
  done
  if [ "$bad" -eq 0 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
done
echo "check_layers: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
