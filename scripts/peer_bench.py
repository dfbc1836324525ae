#!/usr/bin/env python3
"""The transformers peer of `semflow bench`: the same workloads (token ids) on the same model
directories with Hugging Face transformers, as users run Qwen3-Embedding / Qwen3-Reranker
without semflow. Protocol and batching: scripts/peer_protocol.py.

    semflow bench --embed-model DIR --rerank-model DIR --peer ".venv/bin/python scripts/peer_bench.py"

Setup (not part of CI): python3 -m venv .venv && .venv/bin/pip install torch transformers

Embeddings are the last position's final hidden state, L2-normalised; rerank reads the last
position's "yes"/"no" logits (logits_to_keep=1). fp32 on CPU, bf16 with SDPA on GPU.
"""
import torch
import transformers
from transformers import AutoModel, AutoModelForCausalLM

from peer_protocol import NO, YES, arguments, serve


def main():
    args = arguments("torch CPU threads (0: torch's default)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device.startswith("cuda") else "cpu")
    dtype = torch.float32 if args.dtype in ("f32", "float32") or device.type == "cpu" else torch.bfloat16
    kw = dict(dtype=dtype, attn_implementation="sdpa")
    embedder = AutoModel.from_pretrained(args.model, **kw).to(device).eval() if args.model else None
    reranker = AutoModelForCausalLM.from_pretrained(args.reranker, **kw).to(device).eval() if args.reranker else None

    def run_batch(kind, ids, mask):
        ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        with torch.inference_mode():
            if kind == "embed":
                hidden = embedder(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
                torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()
            else:
                logits = reranker(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
                torch.softmax(logits[:, [YES, NO]].float(), dim=-1)[:, 0].cpu()

    about = (f"transformers {transformers.__version__}, torch {torch.__version__}, "
             f"{str(dtype).removeprefix('torch.')}, SDPA, {device.type}, "
             f"{torch.get_num_threads()} threads, batches of {args.batch_size}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    serve("transformers", about, run_batch, args.batch_size, sync)


if __name__ == "__main__":
    main()
