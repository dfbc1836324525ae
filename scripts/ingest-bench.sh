#!/usr/bin/env bash
# K1-style ingest measurement: N JSON documents on a topic → `semflow run pipelines/index.sql`
# → Lance, timed from the pipeline's start until every document is committed.
#
#   scripts/with-kafka.sh scripts/ingest-bench.sh [DOCS] [SEMFLOW BINARY]
#
# Needs SEMFLOW_TEST_KAFKA (with-kafka.sh sets it). Uses the random tiny model unless
# SEMFLOW_EMBED_MODEL is set. Prints docs/s.
set -euo pipefail
docs=${1:-20000}
bin=${2:-target/debug/semflow}
work=$(mktemp -d -t semflow-ingest.XXXXXX)
trap 'rm -rf "$work"' EXIT
export SEMFLOW_KAFKA="$SEMFLOW_TEST_KAFKA" SEMFLOW_TOPIC="ingest-$$" SEMFLOW_GROUP="ingest-$$"
export SEMFLOW_INDEX="$work/idx" SEMFLOW_EMBED_MODEL="${SEMFLOW_EMBED_MODEL:-random:tiny}"
export SEMFLOW_CACHE_DIR="${SEMFLOW_CACHE_DIR:-$work/cache}"

"$bin" sql "CREATE EXTERNAL TABLE topic (id TEXT NOT NULL, title TEXT, body TEXT)
  STORED AS KAFKA LOCATION '$SEMFLOW_TOPIC' OPTIONS ('bootstrap.servers' '$SEMFLOW_KAFKA', 'key' 'id');
  INSERT INTO topic SELECT 'doc-' || v, 'Document ' || v,
    'Document number ' || v || ' describes streaming ingestion, vector search and retrieval models in a few dozen tokens of text.'
  FROM generate_series(1, $docs) AS t(v)" >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start=$(date +%s.%N)
"$bin" run pipelines/index.sql --metrics-addr "127.0.0.1:$port" 2>"$work/run.log" &
pid=$!
rows=0
while [[ "$rows" -lt "$docs" ]]; do
    sleep 0.2
    kill -0 "$pid" 2>/dev/null || { cat "$work/run.log" >&2; exit 1; }
    rows=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^semflow_pipeline_rows_written_total /{print int($2)}')
    rows=${rows:-0}
done
end=$(date +%s.%N)
curl -s "http://127.0.0.1:$port/metrics" | awk '/^semflow_pipeline_(query|commit|batch)_seconds_(sum|count) /{printf "%s %.2f\n", $1, $2}'
kill -TERM "$pid"; wait "$pid"
python3 -c "d=$docs; t=$end-$start; print(f'{d} docs in {t:.1f} s: {d/t:.0f} docs/s (from process start, model load included)')"
