"""The protocol every peer of `semflow bench` speaks, and the batching they share.

After loading its models a peer prints one line naming itself ({"peer": short name, "about":
versions and settings}); then it reads one JSON workload per line on stdin ({"name", "kind":
"embed"|"rerank", "metric", "requests": [[[token ids]]]}) and answers one JSON measurement per
line on stdout ({"seconds", "tokens", "padded_tokens", "sequences", "latencies_ms",
"minor_faults"}). semflow starts each peer and alternates with them round by round.

Batching is what sentence-transformers does: each request is cut into batches of `batch_size`
sequences after sorting by length, left-padded with <|endoftext|> (Qwen3-Embedding's padding
side) under an attention mask, so the last position of every row is its last token.
"""
import argparse
import json
import resource
import sys
import time

import numpy as np

PAD, YES, NO = 151643, 9693, 2152


def arguments(threads_help):
    """The command line semflow gives every peer (the model directories, device and dtype it
    appends), plus the batch size and threads a peer is started with."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="embedding model directory")
    ap.add_argument("--reranker", help="reranker model directory")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help=threads_help)
    return ap.parse_args()


def batches(seqs, size):
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), size):
        yield [seqs[i] for i in order[start:start + size]]


def padded(batch):
    """Left-padded ids and mask (int64, batch x longest) and the cells they hold."""
    width = max(len(s) for s in batch)
    ids = np.full((len(batch), width), PAD, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, s in enumerate(batch):
        ids[row, width - len(s):] = s
        mask[row, width - len(s):] = 1
    return ids, mask, width * len(batch)


def serve(name, about, run_batch, batch_size, sync=lambda: None):
    """Announces the peer, then times `run_batch(kind, ids, mask)` over each workload's
    requests (one after another, as semflow runs them) until stdin closes."""
    print(json.dumps({"peer": name, "about": about}), flush=True)
    for line in sys.stdin:
        work = json.loads(line)
        out = {"seconds": 0.0, "tokens": 0, "padded_tokens": 0, "sequences": 0, "latencies_ms": []}
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for request in work["requests"]:
            sync()
            start = time.perf_counter()
            for batch in batches(request, batch_size):
                ids, mask, cells = padded(batch)
                run_batch(work["kind"], ids, mask)
                out["padded_tokens"] += cells
            sync()
            ms = (time.perf_counter() - start) * 1000
            out["latencies_ms"].append(ms)
            out["seconds"] += ms / 1000
            out["tokens"] += sum(len(s) for s in request)
            out["sequences"] += len(request)
        out["minor_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        print(json.dumps(out), flush=True)
