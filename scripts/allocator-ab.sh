#!/usr/bin/env bash
# The allocator A/B of BENCHMARKS §7: the inference crate's `bench` example built twice in
# release (the system allocator with semflow's settings, and mimalloc), run alternately on the
# same workloads; the system build also with glibc's defaults (any GLIBC_TUNABLES makes semflow
# leave malloc as glibc sets it; arena_max=16 is glibc's own default on 2 cores). Reports (tables
# with page faults per round and peak memory) go to OUT_DIR.
#
#     scripts/allocator-ab.sh [OUT_DIR] [RUNS]
set -euo pipefail
out=${1:-/tmp/allocator-ab}
runs=${2:-2}
mkdir -p "$out"
build() { # $1 = name, rest = cargo flags
    local name=$1; shift
    cargo build --release --locked -p semflow-inference --example bench "$@" >&2
    cp target/release/examples/bench "$out/bench-$name"
}
[ -x "$out/bench-system" ] || build system
[ -x "$out/bench-mimalloc" ] || build mimalloc --features mimalloc
small=(--embed-model random:small --rerank-model random:small --workloads w1,w2,w3 --rounds 3 --docs 256)
large=(--embed-model random:0.6b --workloads w3 --rounds 1 --docs 24)
for run in $(seq 1 "$runs"); do
    for shape in small large; do
        declare -n args=$shape
        "$out/bench-system" "${args[@]}" > "$out/$shape-system-semflow-$run.md"
        "$out/bench-mimalloc" "${args[@]}" > "$out/$shape-mimalloc-$run.md"
        GLIBC_TUNABLES=glibc.malloc.arena_max=16 "$out/bench-system" "${args[@]}" \
            > "$out/$shape-glibc-defaults-$run.md"
    done
done
grep -H "tok/s\|p50\|peak" "$out"/*.md
