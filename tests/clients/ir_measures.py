"""The reference retrieval measures for tests/sql_functions.rs's `ir_measures` check:
pytrec_eval (trec_eval's C code, from pytrec-eval-terrier) and ranx, on the same run and qrels.
Prints one JSON object: per reference and configuration, query id -> semflow's measure name ->
value, plus the references' versions.

usage: ir_measures.py RUN_CSV QRELS_CSV
RUN_CSV has query_id,doc_id,score rows; QRELS_CSV query_id,doc_id,relevance rows.
"""

import csv
import json
import sys
import warnings
from importlib.metadata import version

import pytrec_eval
import ranx

# numba's cast warnings from ranx's kernels would go to stderr on every call.
warnings.filterwarnings("ignore")

# semflow's measure name -> pytrec_eval's, and -> ranx's (None: ranx has no such measure).
MEASURES = {
    "ndcg@10": ("ndcg_cut.10", "ndcg@10"),
    "ndcg": ("ndcg", "ndcg"),
    "map@100": ("map_cut.100", "map@100"),
    "map": ("map", "map"),
    "mrr": ("recip_rank", "mrr"),
    "mrr@10": (None, "mrr@10"),
    "precision@5": ("P.5", "precision@5"),
    "precision@20": ("P.20", "precision@20"),
    "recall@10": ("recall.10", "recall@10"),
    "recall@100": ("recall.100", "recall@100"),
}


def read(path, value):
    table = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            table.setdefault(row["query_id"], {})[row["doc_id"]] = value(row)
    return table


def pytrec(run, qrels, **flags):
    names = {trec: ours for ours, (trec, _) in MEASURES.items() if trec}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, set(names), **flags)
    # pytrec_eval reports "ndcg_cut_10" for "ndcg_cut.10".
    key = {trec.replace(".", "_"): ours for trec, ours in names.items()}
    return {
        query: {key[m]: v for m, v in values.items()}
        for query, values in evaluator.evaluate(run).items()
    }


def trec_ranks(docs):
    """A query's documents scored by their place in trec_eval's ranking (score descending, then
    document id descending): ranx sorts ties with an unstable sort, so the tie-breaking is
    given to it as distinct scores. Every measure here depends only on the order."""
    ranked = sorted(docs.items(), key=lambda d: d[0].encode(), reverse=True)
    ranked.sort(key=lambda d: d[1], reverse=True)
    return {doc: float(len(ranked) - i) for i, (doc, _) in enumerate(ranked)}


def with_ranx(run, qrels):
    # ranx evaluates the queries both hold (as trec_eval does), given to it in that set.
    queries = sorted(set(run) & set(qrels))
    measures = [r for _, r in MEASURES.values() if r]
    scores = ranx.evaluate(
        ranx.Qrels({q: qrels[q] for q in queries}),
        ranx.Run({q: trec_ranks(run[q]) for q in queries}),
        measures,
        return_mean=False,
    )
    ours = {r: o for o, (_, r) in MEASURES.items() if r}
    return {
        q: {ours[m]: float(scores[m][i]) for m in measures} for i, q in enumerate(queries)
    }


def main():
    run = read(sys.argv[1], lambda r: float(r["score"]))
    qrels = read(sys.argv[2], lambda r: int(r["relevance"]))
    print(
        json.dumps(
            {
                "versions": {p: version(p) for p in ("pytrec-eval-terrier", "ranx")},
                "pytrec_eval": {
                    "": pytrec(run, qrels),
                    "judged_only": pytrec(run, qrels, judged_docs_only_flag=True),
                    "relevance_level=2": pytrec(run, qrels, relevance_level=2),
                },
                "ranx": with_ranx(run, qrels),
            }
        )
    )


if __name__ == "__main__":
    main()
