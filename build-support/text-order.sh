#!/usr/bin/env bash
# Writes the start-up function lists the proxies' release builds link first
# (ztunnel/link/ztunnel.order, waypoint/link/waypoint.order; see proxy_link.rs).
#
#   build-support/text-order.sh [BIN_DIR]           write the lists
#   build-support/text-order.sh --check [BIN_DIR]   how many listed names the build still has
#
# BIN_DIR holds a release build's `bench`, `ztunnel` and `waypoint` (default:
# $CARGO_TARGET_DIR/release). Needs valgrind. It runs `bench mesh --only memory` with both
# proxies under callgrind, waits until the mesh is up, every path has carried a connection
# and the proxies are idle (what the benchmark's idle memory measures), has callgrind write
# what ran so far, stops the lab, and keeps each executable's functions that ran, by their
# mangled symbol names (their hash comes from the crate's identity and the function's path
# and type parameters, not from its code, so they survive edits that do not rename a
# function; a new rustc or new dependency versions change them: run this again after
# either, and compare the benchmark's idle memory).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
check=0
if [ "${1:-}" = --check ]; then check=1; shift; fi
bin=${1:-${CARGO_TARGET_DIR:-$root/target}/release}

# "name size-in-hex" of each function an executable defines.
functions_of() {
  nm -S "$1" | awk 'NF == 4 && ($3 == "t" || $3 == "T") { print $4, $2 }'
}

if [ $check = 1 ]; then
  for b in ztunnel waypoint; do
    list=$root/$b/link/$b.order
    have=$(functions_of "$bin/$b" | cut -d' ' -f1 | sort -u |
      comm -12 - <(sort -u "$list") | wc -l)
    echo "$b: $have of $(wc -l <"$list") listed functions in $bin/$b"
  done
  exit 0
fi
for b in bench ztunnel waypoint; do
  [ -x "$bin/$b" ] || { echo "text-order: $bin/$b is missing (cargo build --release -p bench -p ztunnel -p waypoint)" >&2; exit 1; }
done
command -v valgrind >/dev/null || { echo "text-order: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }

work=$(mktemp -d -t ambient-text-order.XXXXXX)
trap 'rm -rf "$work"' EXIT
# bench runs the proxies found next to itself: wrappers that run the real ones under callgrind.
cp "$bin/bench" "$work/bench"
for b in ztunnel waypoint; do
  cat >"$work/$b" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file=$work/$b.%p.out "$bin/$b" "\$@"
EOF
  chmod +x "$work/$b"
done

setsid "$work/bench" mesh --only memory >"$work/bench.log" 2>&1 &
lab=$!
for _ in $(seq 1 600); do
  grep -q "mesh up" "$work/bench.log" && break
  kill -0 "$lab" 2>/dev/null || { cat "$work/bench.log" >&2; exit 1; }
  sleep 0.2
done
grep "mesh up" "$work/bench.log"
# The benchmark reads its idle figure right after that line; a few seconds more let what
# start-up left running (xDS acknowledgements, the first metric upkeep) run once too.
sleep 3
for pid in $(pgrep -f "callgrind-out-file=$work/"); do
  callgrind_control -d "$pid" >/dev/null 2>&1   # returns once the dump is written
done
kill -TERM -- "-$lab" 2>/dev/null || true
wait "$lab" 2>/dev/null || true

for b in ztunnel waypoint; do
  dumps=("$work"/$b.*.out.*)
  [ -e "${dumps[0]}" ] || { echo "text-order: no callgrind dump for $b" >&2; exit 1; }
  out=$root/$b/link/$b.order
  mkdir -p "$(dirname "$out")"
  functions_of "$bin/$b" >"$work/$b.symbols"
  python3 - "$bin/$b" "$work/$b.symbols" "$out" "${dumps[@]}" <<'PY'
import re, sys
exe, symbols, out, dumps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
size = {}
for line in open(symbols):
    name, hexsize = line.split()
    size[name] = int(hexsize, 16)
ran = set()
# callgrind names each object and function once as "(id) name" and later by "(id)" alone;
# fn= is a function that ran, cfn= one it called, in the object of the last ob= / cob=.
ref = re.compile(r"^(ob|cob|fn|cfn)=\((\d+)\)(?: (.*))?$")
for dump in dumps:
    names = {"ob": {}, "fn": {}}
    ob = cob = None
    for line in open(dump, errors="replace"):
        m = ref.match(line.rstrip("\n"))
        if not m:
            continue
        kind, ident, name = m.groups()
        table = names["ob" if kind in ("ob", "cob") else "fn"]
        if name is not None:
            table[ident] = name
        if kind == "ob":
            ob, cob = table.get(ident), None
        elif kind == "cob":
            cob = table.get(ident)
        else:
            obj = ob if kind == "fn" else (cob or ob)
            if kind == "fn":
                cob = None
            fn = table.get(ident, "")
            if obj == exe or (obj and obj.endswith("/" + exe.rsplit("/", 1)[-1])):
                fn = re.sub(r"'\d+$", "", fn)  # callgrind's recursion suffix
                if fn in size:
                    ran.add(fn)
with open(out, "w") as f:
    for name in sorted(ran):
        print(name, file=f)
total = sum(size.values())
used = sum(size[n] for n in ran)
print(f"{out}: {len(ran)} of {len(size)} functions, {used / 1e6:.2f} of {total / 1e6:.2f} MB of code")
PY
done
