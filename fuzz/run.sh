#!/usr/bin/env bash
# Builds the fuzz targets (cargo-fuzz / libFuzzer) and runs each one: a smoke test by
# default, 10 s a target. See docs/reliability.md, "Fuzzing".
#
#   fuzz/run.sh                     build, then run every target for 10 s
#   fuzz/run.sh -t 60 dns zds       60 s each, only these targets
#   fuzz/run.sh --long [targets]    at least 10^7 executions a target (hours: see the doc)
#   fuzz/run.sh --long --fork 2 t   the same in one run of two worker processes (libFuzzer
#                                   -fork: one target on two cores; stops at 10^7 in all)
#   fuzz/run.sh --build             build only (prints how long it took)
#   fuzz/run.sh --seeds             build, then rewrite fuzz/corpus/ and fuzz/fixtures/
#   fuzz/run.sh --list              the targets
#
# Environment:
#   CARGO_TARGET_DIR   default $HOME/.cache/ambient-rs/target-fuzz (never inside the clone)
#   FUZZ_JOBS          parallel compile jobs, default 1 (the machine is shared)
#   FUZZ_SANITIZER     address (default) or none
#   FUZZ_WORK          where new inputs and crash artifacts go, default a fresh temp dir
#
# What it runs, in full (stable rustc: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z flags;
# `cargo fuzz build` has no -j, CARGO_BUILD_JOBS does that):
#   cd fuzz && RUSTC_BOOTSTRAP=1 CARGO_BUILD_JOBS=1 nice -n 19 cargo fuzz build -s address
#   $CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/<target> <work>/corpus/<target> \
#       fuzz/corpus/<target> -max_total_time=10 -print_final_stats=1 ...
# New inputs go to the work directory; the committed seeds (the second corpus directory)
# are only read.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self=$here/$(basename "${BASH_SOURCE[0]}")
cd "$here"

TARGETS=(xds_address xds_authorization xds_l7 zds hbone_connect spiffe_verify dns manifests http_route prometheus cni jwt ca_csr)
LONG_RUNS=10000000

seconds=10
mode=smoke
fork=0
chosen=()
while [ $# -gt 0 ]; do
  case "$1" in
    -t|--time) seconds=$2; shift 2 ;;
    --long) mode=long; shift ;;
    --fork) fork=$2; shift 2 ;;
    --build) mode=build; shift ;;
    --seeds) mode=seeds; shift ;;
    --list) printf '%s\n' "${TARGETS[@]}"; exit 0 ;;
    -h|--help) sed -n '2,25p' "$self"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) chosen+=("$1"); shift ;;
  esac
done
[ ${#chosen[@]} -gt 0 ] || chosen=("${TARGETS[@]}")

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ambient-rs/target-fuzz}
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${FUZZ_JOBS:-1}
sanitizer=${FUZZ_SANITIZER:-address}
triple=x86_64-unknown-linux-gnu
bin=$CARGO_TARGET_DIR/$triple/release

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: nice -n 19 cargo install cargo-fuzz -j 1 --locked" >&2
  exit 1
fi

start=$(date +%s)
nice -n 19 cargo fuzz build -s "$sanitizer"
echo "build: $(( $(date +%s) - start )) s (sanitizer $sanitizer, $CARGO_BUILD_JOBS job(s))"

case $mode in
  build) exit 0 ;;
  seeds) "$bin/seeds"; exit 0 ;;
esac

work=${FUZZ_WORK:-$(mktemp -d -t ambient-fuzz.XXXXXX)}
mkdir -p "$work"
echo "work directory: $work"
failed=0
summary=()
for t in "${chosen[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  case $mode in
    smoke) budget=(-max_total_time="$seconds") ;;
    long) budget=(-runs="$LONG_RUNS") ;;
  esac
  # -fork=N: N worker processes, their new inputs merged into the first corpus directory;
  # -runs then counts every worker's executions.
  [ "$fork" -gt 0 ] && budget+=(-fork="$fork")
  log=$work/$t.log
  set +e
  nice -n 19 "$bin/$t" "$work/corpus/$t" "corpus/$t" "${budget[@]}" \
    -print_final_stats=1 -timeout=10 -rss_limit_mb=4096 \
    -artifact_prefix="$work/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\) .*/\1/p' "$log" | tail -n 1)
  if [ "$fork" -gt 0 ]; then
    # A fork run has no final stats; its last status line ("#N: cov: C ... exec/s: R")
    # counts every worker.
    status=$(grep -E '^#[0-9]+: cov:' "$log" | tail -n 1)
    execs=$(sed -n 's/^#\([0-9]*\):.*/\1/p' <<<"$status")
    rate=$(sed -n 's/.* exec\/s: \([0-9]*\) .*/\1/p' <<<"$status")
  fi
  if [ $rc -eq 0 ]; then
    result=ok
  else
    result="FAILED (exit $rc, see $log)"
    failed=1
    grep -m 1 -A 12 -E "panicked|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" >&2 || tail -n 20 "$log" >&2
    ls "$work/artifacts/$t/" >&2 || true
  fi
  line=$(printf '%-18s %12s execs %8s/s  cov %6s  %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$result")
  echo "$line"
  summary+=("$line")
done
echo
echo "== fuzz $mode summary =="
printf '%s\n' "${summary[@]}"
exit $failed
