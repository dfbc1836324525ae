#!/usr/bin/env bash
# Binary (and int8) vectors judged against exact float search (issue 36, BENCHMARKS §12):
# a BEIR set of DOCS synthetic documents and QUERIES queries whose qrels are the exact float32
# top 10 of each query (computed by semflow itself), then `semflow eval --forms int8,binary
# --rescore R`: recall@10 of each form is its recall against exact search (float32 exact must
# score 1.0, which checks the set), with bytes per vector and query latency p50/p99 side by side.
#
# usage: scripts/eval-quantized.sh [DOCS] [QUERIES] [MODEL] [RESCORE]
#   MODEL: a random preset (tiny, small, 0.6b, …) or a model directory / hub id (a trained
#   checkpoint, which judges binary codes as random weights cannot);
#   defaults 100000 200 small 4; SEMFLOW=path/to/semflow (default target/release/semflow);
#   OUT=dir (default benchmarks/eval-quantized-<commit>)
set -euo pipefail
cd "$(dirname "$0")/.."
docs=${1:-100000}
queries=${2:-200}
preset=${3:-small}
# A preset name means its random-weight model; anything else is a model spec as given.
case $preset in
    tiny | small | 0.6b | 4b | 8b) model="random:$preset" ;;
    *) model=$preset ;;
esac
rescore=${4:-4}
semflow=${SEMFLOW:-target/release/semflow}
commit=$(git rev-parse --short HEAD)
out=${OUT:-benchmarks/eval-quantized-$commit}
set_dir=$(mktemp -d)
trap 'rm -rf "$set_dir"' EXIT
mkdir -p "$out" "$set_dir/set/qrels"

# Documents and queries: seeded random word sequences (same seed, same set).
python3 - "$set_dir/set" "$docs" "$queries" <<'EOF'
import json, random, sys
root, docs, queries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(36)
words = [f"w{i}" for i in range(5000)]
def text(n):
    return " ".join(rng.choice(words) for _ in range(n))
with open(f"{root}/corpus.jsonl", "w") as f:
    for i in range(docs):
        f.write(json.dumps({"_id": f"d{i}", "text": text(rng.randint(3, 8))}) + "\n")
with open(f"{root}/queries.jsonl", "w") as f:
    for i in range(queries):
        f.write(json.dumps({"_id": f"q{i}", "text": text(rng.randint(2, 5))}) + "\n")
EOF

# The qrels: each query's exact float32 top 10, as semflow eval's own exact search ranks it
# (query prompt 'query', documents plain).
"$semflow" sql --embed-model "$model" --format csv -o "$set_dir/top10.csv" "
CREATE TABLE d AS SELECT doc_id, embed(trim(concat_ws(' ', title, text))) AS e FROM beir('$set_dir/set', 'corpus');
CREATE TABLE q AS SELECT query_id, embed(text, 'query') AS e FROM beir('$set_dir/set', 'queries');
SELECT query_id, doc_id FROM (
  SELECT query_id, doc_id,
         row_number() OVER (PARTITION BY query_id ORDER BY s DESC, doc_id DESC) AS r
  -- Scores first: the window then holds (query, document, score) rows, not their vectors.
  FROM (SELECT q.query_id, d.doc_id, cosine_similarity(d.e, q.e) AS s FROM q CROSS JOIN d))
WHERE r <= 10"
python3 - "$set_dir/top10.csv" "$set_dir/set/qrels/test.tsv" <<'EOF'
import csv, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as g:
    g.write("query-id\tcorpus-id\tscore\n")
    for row in csv.DictReader(f):
        g.write(f"{row['query_id']}\t{row['doc_id']}\t1\n")
EOF

# The evaluation alone is timed (the qrels step above is the set's preparation).
started=$(date +%s.%N)
"$semflow" eval --set "$set_dir/set" --embed-model "$model" --k 10 \
    --measures recall@10,ndcg@10 --forms int8,binary --rescore "$rescore" \
    --json "$out/report.json" | tee "$out/report.txt"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; commit $commit" | tee -a "$out/report.txt"
echo "eval took $(python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')") s" | tee -a "$out/report.txt"
