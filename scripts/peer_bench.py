#!/usr/bin/env python3
"""The peer for `semflow bench`: the same workloads (token ids) on the same model directories
with Hugging Face transformers, as users run Qwen3-Embedding / Qwen3-Reranker without semflow.

Protocol: one JSON workload per line on stdin ({"name", "kind": "embed"|"rerank", "metric",
"requests": [[[token ids]]]}); one JSON measurement per line on stdout ({"seconds", "tokens",
"padded_tokens", "sequences", "latencies_ms", "minor_faults"}). semflow starts it and alternates with it:

    semflow bench --embed-model DIR --rerank-model DIR --peer ".venv/bin/python scripts/peer_bench.py"

Setup (not part of CI): python3 -m venv .venv && .venv/bin/pip install torch transformers

How the peer runs (what sentence-transformers does): each request is cut into batches of
--batch-size sequences after sorting by length, left-padded (Qwen3-Embedding's padding side)
with an attention mask; embeddings are the last position's final hidden state, L2-normalised;
rerank reads the last position's "yes"/"no" logits (logits_to_keep=1). fp32 on CPU, bf16 with
SDPA on GPU.
"""
import argparse
import json
import resource
import sys
import time

import torch
from transformers import AutoModel, AutoModelForCausalLM

PAD, YES, NO = 151643, 9693, 2152


def batches(seqs, size):
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for start in range(0, len(order), size):
        yield [seqs[i] for i in order[start:start + size]]


def padded(batch, device):
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, s in enumerate(batch):
        ids[row, width - len(s):] = torch.tensor(s)
        mask[row, width - len(s):] = 1
    return ids.to(device), mask.to(device), width * len(batch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--reranker")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    dtype = torch.float32 if args.dtype in ("f32", "float32") or device.type == "cpu" else torch.bfloat16
    kw = dict(dtype=dtype, attn_implementation="sdpa")
    embedder = AutoModel.from_pretrained(args.model, **kw).to(device).eval() if args.model else None
    reranker = AutoModelForCausalLM.from_pretrained(args.reranker, **kw).to(device).eval() if args.reranker else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    for line in sys.stdin:
        work = json.loads(line)
        out = {"seconds": 0.0, "tokens": 0, "padded_tokens": 0, "sequences": 0, "latencies_ms": []}
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with torch.inference_mode():
            for request in work["requests"]:
                sync()
                start = time.perf_counter()
                for batch in batches(request, args.batch_size):
                    ids, mask, cells = padded(batch, device)
                    if work["kind"] == "embed":
                        hidden = embedder(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
                        torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()
                    else:
                        logits = reranker(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
                        torch.softmax(logits[:, [YES, NO]].float(), dim=-1)[:, 0].cpu()
                    out["padded_tokens"] += cells
                sync()
                ms = (time.perf_counter() - start) * 1000
                out["latencies_ms"].append(ms)
                out["seconds"] += ms / 1000
                out["tokens"] += sum(len(s) for s in request)
                out["sequences"] += len(request)
        out["minor_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
