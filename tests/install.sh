#!/bin/sh
# `make install` as someone outside the source tree meets it: installs into a
# temporary prefix, then, from /, runs the installed pikv (compare, eval,
# generate, duo-calibrate), builds tests/install_answer.c with nothing but
# `pkg-config --cflags --libs pikv` and checks its answer against the CLI's,
# pip-installs python/ (offline) and runs its tests against the installed
# library; also a staged install (DESTDIR), a moved prefix, a copied binary
# and make uninstall. Run by `make test-install`, from the repository root,
# with $VERSION and $COMMIT as the Makefile has them. Ends with
# "install: N passed, M failed".
. tests/lib/cli.sh
: "${MAKE:=make}" "${VERSION:?}" "${COMMIT:?}"
src=$(pwd)
prefix=$dir/prefix
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
# The Python: offline, pip builds python/ with the setuptools already there, which needs the
# wheel package below setuptools 70.1: the first python3 on PATH that can,
# else Debian's own (make test-install installs python3-pip for it).
for py in "${PYTHON:-python3}" /usr/bin/python3; do
  "$py" -c 'import importlib.util as u, setuptools as s, sys
sys.exit(not (u.find_spec("pip") and (u.find_spec("wheel") or tuple(map(int, s.__version__.split(".")[:2])) >= (70, 1))))' \
    2>/dev/null && break
done

# install_into LOG ARGS...: make install ARGS, its output in $dir/LOG.
install_into() {
  log=$1
  shift
  $MAKE --no-print-directory install LDCONFIG=: "$@" >"$dir/$log" 2>&1 || { cat "$dir/$log" >&2; return 1; }
}

check "make install PREFIX=$prefix" install_into install.log PREFIX="$prefix"
PIKV=$prefix/bin/pikv
for f in bin/pikv lib/libpikv.a lib/libpikv.so.$VERSION include/pikv.h lib/pkgconfig/pikv.pc \
         share/pikv/models/pikv-ref-14m/model.safetensors share/pikv/models/pikv-ref-14m/config.json \
         share/pikv/models/pikv-ref-14m/duo/full_attention_heads.tsv share/pikv/data/haystack.txt; do
  check "installed $f" [ -f "$prefix/$f" ]
done
check "libpikv.so.0 -> libpikv.so.$VERSION" [ "$(readlink "$prefix/lib/libpikv.so.0")" = "libpikv.so.$VERSION" ]
check "libpikv.so -> libpikv.so.0" [ "$(readlink "$prefix/lib/libpikv.so")" = libpikv.so.0 ]
check "soname libpikv.so.0" sh -c "readelf -d '$prefix/lib/libpikv.so.$VERSION' | grep -q 'SONAME.*\[libpikv.so.0\]'"
check "pikv.pc: version" [ "$(pkg-config --modversion pikv)" = "$VERSION" ]
check "pikv.pc: private libraries" sh -c "pkg-config --static --libs pikv | grep -q -- '-fopenmp' &&
  pkg-config --static --libs pikv | grep -q -- '-lopenblas' && pkg-config --static --libs pikv | grep -q -- '-lutf8proc' &&
  pkg-config --static --libs pikv | grep -q -- '-lcjson' && pkg-config --static --libs pikv | grep -q -- '-lm'"

# Everything below runs from /, where no relative path can reach the tree.
cd / || exit 1
run --version
check "--version" [ "$(head -n 1 "$dir/out")" = "pikv $VERSION (commit $COMMIT)" ]
check "--version: the installed data" [ "$(sed -n 2p "$dir/out")" = "data: $prefix/share/pikv" ]

run compare --context-tokens 1000 --tasks 2 --reps 1 -n 12 --threads 2
check "compare from / (exit $rc: $(tail -n 1 "$dir/err"))" [ "$rc" -eq 0 ]
check "compare: a recommendation" grep -q '^RECOMMENDATION' "$dir/out"
check "compare: No Compression finds the key" grep -Eq '^No Compression +"[^"]*" +\(correct\)' "$dir/out"
run eval --tasks 2 --threads 2
check "eval --tasks 2 from / (exit $rc: $(tail -n 1 "$dir/err"))" [ "$rc" -eq 0 ]
check "eval: none answers both tasks" grep -Eq '^\| none +\| query-agnostic +\| +1\.00 \|' "$dir/out"
run generate --prompt "In the beginning" -n 8 --print-ids --threads 1
check "generate from /" [ "$rc" -eq 0 ]
cp "$dir/out" "$dir/ids-installed"
(cd "$src" && build/pikv generate --prompt "In the beginning" -n 8 --print-ids --threads 1 >"$dir/ids-tree" 2>/dev/null)
check "generate: the same ids as the source tree's pikv" cmp -s "$dir/ids-installed" "$dir/ids-tree"
run duo-calibrate --samples 1 --min-tokens 400 --max-tokens 500 --out "$dir/duo" --threads 2
check "duo-calibrate from / (exit $rc: $(tail -n 1 "$dir/err"))" [ "$rc" -eq 0 ]
check "duo-calibrate wrote a pattern" [ -f "$dir/duo/full_attention_heads.tsv" ]
export PIKV_DATA_DIR="$dir/nowhere"
expect_error "PIKV_DATA_DIR is used, and named when wrong" 1 "$dir/nowhere/models/pikv-ref-14m/config.json" \
  generate --prompt hi
unset PIKV_DATA_DIR

# A copy of the binary with no share/ beside it falls back to the prefix compiled in;
# a moved prefix finds its data beside its own bin/.
mkdir -p "$dir/elsewhere" && cp "$prefix/bin/pikv" "$dir/elsewhere/pikv"
check "a copied pikv uses PREFIX/share/pikv" [ "$("$dir/elsewhere/pikv" --version | sed -n 2p)" = "data: $prefix/share/pikv" ]
cp -R "$prefix" "$dir/moved"
check "a moved prefix finds its own data" [ "$("$dir/moved/bin/pikv" --version | sed -n 2p)" = "data: $dir/moved/share/pikv" ]
PIKV=$dir/moved/bin/pikv
run generate --prompt "In the beginning" -n 8 --print-ids --threads 1
check "a moved prefix generates the same ids" cmp -s "$dir/out" "$dir/ids-tree"
PIKV=$prefix/bin/pikv
rm -rf "$dir/moved"

# A C program built against the installed files only.
ctx=$dir/context.txt
{ head -n 20 "$prefix/share/pikv/data/haystack.txt"
  printf ' The pass key is 52817. Remember it. 52817 is the pass key.\n'
  sed -n 21,40p "$prefix/share/pikv/data/haystack.txt"; } >"$ctx"
q=" What is the pass key? The pass key is"
# shellcheck disable=SC2046
check "cc with pkg-config --cflags --libs pikv" \
  cc -o "$dir/answer" "$src/tests/install_answer.c" $(pkg-config --cflags --libs pikv)
check "it links the installed libpikv.so.0" sh -c "LD_LIBRARY_PATH='$prefix/lib' ldd '$dir/answer' | grep -q '$prefix/lib/libpikv.so.0'"
LD_LIBRARY_PATH=$prefix/lib "$dir/answer" "$prefix/share/pikv/models/pikv-ref-14m" "$ctx" "$q" snapkv:0.5 >"$dir/c.txt"
c_rc=$?
check "the C program runs" [ "$c_rc" -eq 0 ]
# The library's defaults: float32 weights and cache (the command's are F16 as stored and an f16 cache).
run generate --context-file "$ctx" --question "$q" --press snapkv:0.5 -n 12 --threads 1 --weights f32 --kv-type f32 --json
"$py" - "$dir/c.txt" "$dir/out" <<'PY' >"$dir/cmp.txt" 2>&1
import json, sys
c = dict(line.rstrip("\n").split(" ", 1) for line in open(sys.argv[1]))
j = json.load(open(sys.argv[2]))
assert c["ids"].split() == [str(i) for i in j["answers"][0]["ids"]], (c["ids"], j["answers"][0]["ids"])
assert c["text"] == j["answers"][0]["text"], c["text"]
assert int(c["kv_bytes_before"]) == j["kv_bytes_before"] and int(c["kv_bytes_after"]) == j["kv_bytes_after"]
PY
cmp_rc=$?
check "the C program's answer and KV bytes equal the CLI's ($(tail -n 1 "$dir/cmp.txt"))" [ "$cmp_rc" -eq 0 ]
# shellcheck disable=SC2046
check "libpikv.a links with pkg-config --static's private libraries" \
  cc -o "$dir/answer-static" "$src/tests/install_answer.c" $(pkg-config --cflags pikv) "$prefix/lib/libpikv.a" \
  $(pkg-config --static --libs pikv | sed 's/ -lpikv / /')
"$dir/answer-static" "$prefix/share/pikv/models/pikv-ref-14m" "$ctx" "$q" snapkv:0.5 >"$dir/c-static.txt"
check "the static build gives the same answer" cmp -s "$dir/c.txt" "$dir/c-static.txt"

# The Python package: pip-installed offline (from a copy, as setuptools writes
# build files beside its sources), its tests run from / against the prefix,
# with the python3 chosen at the top.
cp -R "$src/python" "$dir/pysrc"
"$py" -m pip install --quiet --no-build-isolation --no-index --no-deps --target "$dir/py" "$dir/pysrc" \
  >"$dir/pip.log" 2>&1
pip_rc=$?
check "pip install ./python, offline ($(tail -n 1 "$dir/pip.log"))" [ "$pip_rc" -eq 0 ]
check "the package's version is the Makefile's" \
  [ "$(PYTHONPATH=$dir/py "$py" -c 'import importlib.metadata as m; print(m.version("pikv"))')" = "$VERSION" ]
check "the package loads the installed library" [ "$(PATH="$prefix/bin:$PATH" PYTHONPATH=$dir/py "$py" -c \
  'import pikv; print(pikv.library_path())')" = "$prefix/lib/libpikv.so.$VERSION" ]
PATH="$prefix/bin:$PATH" PYTHONPATH="$dir/py:$src/python/tests" \
  "$py" -m unittest discover -v -s "$src/python/tests" -t "$src/python/tests" >"$dir/py.log" 2>&1
py_rc=$?
py_ok=$(grep -c ' \.\.\. ok$' "$dir/py.log")
py_bad=$(grep -Ec ' \.\.\. (FAIL|ERROR)$' "$dir/py.log")
passed=$((passed + py_ok))
failed=$((failed + py_bad))
grep -E -A 12 '^(FAIL|ERROR):' "$dir/py.log" >&2
check "$py -m unittest (exit $py_rc, $py_ok ok)" [ "$py_rc" -eq 0 -a "$py_ok" -gt 0 ]
cd "$src" || exit 1

check "make uninstall" sh -c "$MAKE --no-print-directory uninstall PREFIX='$prefix' >'$dir/uninstall.log' 2>&1"
check "nothing left in the prefix" [ -z "$(find "$prefix" -type f -o -type l)" ]

# A staged install for packaging: files under DESTDIR, paths without it.
stage=$dir/stage
check "make install DESTDIR=... PREFIX=/usr/local" install_into stage.log DESTDIR="$stage" PREFIX=/usr/local
check "pikv.pc names /usr/local" grep -qx 'libdir=/usr/local/lib' "$stage/usr/local/lib/pkgconfig/pikv.pc"
check "the staged pikv finds the staged data" \
  [ "$(cd / && "$stage/usr/local/bin/pikv" --version | sed -n 2p)" = "data: $stage/usr/local/share/pikv" ]
check "make uninstall DESTDIR=..." sh -c "$MAKE --no-print-directory uninstall DESTDIR='$stage' PREFIX=/usr/local >/dev/null 2>&1"
check "nothing left in DESTDIR" [ -z "$(find "$stage" -type f -o -type l)" ]

finish install
