#!/usr/bin/env python3
"""Exports Qwen3-Embedding / Qwen3-Reranker model directories to ONNX for the ONNX Runtime peer
of `semflow bench` (scripts/peer_onnx.py), as people who serve these models on CPUs do
(optimum / sentence-transformers' `backend="onnx"` export the same graph through torch.onnx).

    .venv/bin/python scripts/onnx_export.py --model DIR [--reranker DIR] [--out DIR]

Each directory gets `model.onnx` (+ `model.onnx.data`, the fp32 weights) in OUT/<name of the
directory> (default: DIR/onnx). The graphs (opset 23: ONNX's fused Attention, RMSNormalization and RotaryEmbedding
ops) take left-padded `input_ids` and `attention_mask` (batch x length, int64) and end where
the recipe ends, so the peer does no work semflow skips:
- embedding: the last position's final hidden state, L2-normalised (the recipe's pooling);
- reranker: P(yes) = softmax over the "yes"/"no" logits at the last position, computing only
  those two rows of the LM head (semflow computes only them too).
Checked after export: ONNX Runtime's outputs against transformers' on a mixed-length batch.

Setup (not part of CI): python3 -m venv .venv && .venv/bin/pip install torch transformers onnx
onnxscript onnxruntime
"""
import argparse
import os
import sys

import numpy as np
import torch
from transformers import AutoModel, AutoModelForCausalLM

PAD, YES, NO = 151643, 9693, 2152


def positions(attention_mask):
    """Each token's position counted from its sequence's first real token. Rotary embeddings
    are relative, so this equals transformers' default (0.. over the padding too) up to
    rounding; given per row, it lets opset 23's RotaryEmbedding take a (batch, length) cache,
    which ONNX Runtime requires."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class Embedder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=positions(attention_mask)).last_hidden_state
        return torch.nn.functional.normalize(hidden[:, -1], dim=-1)


class Reranker(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model.model
        # The two rows of the LM head the score reads, not the 151,669 the model has.
        self.head = torch.nn.Parameter(model.lm_head.weight[[YES, NO]].detach().clone())

    def forward(self, input_ids, attention_mask):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=positions(attention_mask)).last_hidden_state
        logits = hidden[:, -1] @ self.head.T
        return torch.softmax(logits, dim=-1)[:, 0]


def sample_batch(lengths=(5, 17, 11)):
    """Left-padded sequences of these lengths (the layout the peer feeds)."""
    width = max(lengths)
    rng = np.random.default_rng(0)
    ids = np.full((len(lengths), width), PAD, dtype=np.int64)
    mask = np.zeros((len(lengths), width), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = rng.integers(1000, 100000, size=n)
        ids[row, -1] = PAD  # sequences end in <|endoftext|>, as the recipe's inputs do
        mask[row, width - n:] = 1
    return ids, mask


def export(wrapper, out_dir, opset):
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.onnx")
    ids, mask = sample_batch()
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    program = torch.onnx.export(
        wrapper,
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
        input_names=["input_ids", "attention_mask"],
        output_names=["output"],
        dynamo=True,
        opset_version=opset,
        external_data=True,
    )
    program.save(path, external_data=True)
    return path


def check(wrapper, path):
    """ONNX Runtime against the wrapped model on the traced batch and on one of other sizes."""
    import onnxruntime as ort

    run = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run
    diff = 0.0
    for lengths in ([5, 17, 11], [40, 3]):
        ids, mask = sample_batch(lengths)
        with torch.inference_mode():
            want = wrapper(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        got = run(None, {"input_ids": ids, "attention_mask": mask})[0]
        diff = max(diff, float(np.abs(got - want).max()))
    print(f"{path}: max |onnxruntime - transformers| = {diff:.2e}", file=sys.stderr)
    if not diff <= 1e-4:
        sys.exit(f"{path}: the exported graph disagrees with transformers ({diff})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="embedding model directory")
    ap.add_argument("--reranker", help="reranker model directory")
    ap.add_argument("--out", help="put each export in OUT/<directory name> (default DIR/onnx)")
    ap.add_argument("--opset", type=int, default=23,
                    help="23 (default): attention, RMSNorm and rotary embeddings as ONNX's fused "
                         "Attention, RMSNormalization and RotaryEmbedding ops, ONNX Runtime's "
                         "fastest graph here; 20: decomposed into MatMul/Softmax/ReduceMean, the "
                         "graph older exporters (optimum) produce")
    args = ap.parse_args()
    kw = dict(dtype=torch.float32, attn_implementation="sdpa")
    for src, load, wrap in [(args.model, AutoModel, Embedder),
                            (args.reranker, AutoModelForCausalLM, Reranker)]:
        if not src:
            continue
        out = os.path.join(args.out, os.path.basename(os.path.normpath(src))) if args.out \
            else os.path.join(src, "onnx")
        wrapper = wrap(load.from_pretrained(src, **kw)).eval()
        path = export(wrapper, out, args.opset)
        check(wrapper, path)
        print(path)


if __name__ == "__main__":
    main()
