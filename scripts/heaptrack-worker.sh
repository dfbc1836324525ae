#!/usr/bin/env bash
# Runs a semflow binary under heaptrack so that what it holds when stopped is recorded:
# point a test's SEMFLOW_TEST_BIN here (BENCHMARKS.md §7, session 17).
#
#   SEMFLOW_HEAPTRACK_BIN=/tmp/semflow-glibc SEMFLOW_TEST_BIN=$PWD/scripts/heaptrack-worker.sh \
#       SEMFLOW_SOAK_RUN_SECS=210 scripts/with-kafka.sh cargo test --test workers soak::run -- --nocapture
#   heaptrack_print -f "$(cat /tmp/semflow-heaptrack/final.*)" --flamegraph-cost-type leaked -F live.stacks
#
# On SIGTERM the worker is SIGKILLed instead of shutting down, so heaptrack's "leaked" is what
# was live at that moment; a SIGKILL of this script takes the worker with it (parent-death
# signal). Use a binary built with the system allocator (heaptrack sees malloc, not mimalloc's
# own arenas): comment out `#[global_allocator]` in src/main.rs and `cargo build --bin semflow`.
set -u
dir=/tmp/semflow-heaptrack
mkdir -p "$dir"
out="$dir/worker.$$.zst"
pipe="$dir/fifo.$$"
mkfifo "$pipe"
/usr/lib/heaptrack/libexec/heaptrack_interpret <"$pipe" | zstd -q -c >"$out" &
setpriv --pdeathsig KILL env LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so \
    DUMP_HEAPTRACK_OUTPUT="$pipe" "${SEMFLOW_HEAPTRACK_BIN:?the semflow binary to trace}" "$@" &
child=$!
trap 'kill -9 "$child"; wait "$child" 2>/dev/null; sleep 2; rm -f "$pipe"; echo "$out" >"$dir/final.$$"; exit 0' TERM
wait "$child"
