#!/usr/bin/env python3
"""Published checkpoint layouts, written by Hugging Face transformers, and their reference outputs.

Writes tests/fixtures/parity/layouts.json. Starting from the random tiny parity models (the ones
scripts/parity_reference.py uses), transformers saves each in a layout real checkpoints have:

- embedding-st-sharded-bf16: what a sentence-transformers fine-tune of Qwen3-Embedding saves:
  `Qwen3Model` (keys without `model.`, no lm_head), bf16, two shards + index, the config as
  transformers 5 writes it (`rope_parameters`, no top-level `rope_theta`), and its own named
  prompts in config_sentence_transformers.json.
- embedding-rope-theta-10000: the same weights with rope_theta 10000 (outputs must change).
- reranker-untied-sharded: Qwen3-Reranker-8B's layout: `model.` keys, an untied `lm_head.weight`
  (the embedding matrix with the "yes" and "no" rows swapped, so a loader that ignored it would
  be caught), two shards + index, max_position_embeddings 40960.

For each layout the fixture records the config.json and index transformers wrote, a digest of
every tensor (name, dtype, raw bytes; sorted by name) so the Rust test can check that the
layout it rebuilds holds exactly these tensors, and reference outputs computed by transformers
from the saved directory (fp32 compute).

Setup (not needed by CI):  python3 -m venv .venv && .venv/bin/pip install torch transformers tokenizers safetensors
Run:  cargo build && .venv/bin/python scripts/parity_layouts.py --semflow target/debug/semflow
"""
import argparse
import hashlib
import json
import pathlib
import shutil
import subprocess
import tempfile

import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import AutoModel, AutoModelForCausalLM

EOS, YES, NO = 151643, 9693, 2152
EMBED_SEED, RERANK_SEED = 42, 43
MAX_LEN = 512
ST_FILES = ["tokenizer.json", "tokenizer_config.json", "modules.json", "1_Pooling/config.json",
            "config_sentence_transformers.json"]
FINE_TUNE_PROMPTS = {"query": "Instruct: Find scientific facts\nQuery:", "passage": "passage: "}
RERANK_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
                 "and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n"
                 "<|im_start|>user\n")
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTR = "Given a web search query, retrieve relevant passages that answer the query"
LONG = " ".join(f"Graphene sheet {i} conducts heat and electricity remarkably well." for i in range(30))

# Texts exactly as the model reads them (prompts already applied).
EMBED_TEXTS = [
    "Graphene is a single layer of carbon atoms arranged in a hexagonal lattice.",
    "Instruct: Find scientific facts\nQuery:what is graphene",
    "passage: Graphene conducts heat.",
    LONG,
]
RERANK_CASES = [
    ("what is graphene", "Graphene is a single layer of carbon atoms arranged in a hexagonal lattice."),
    ("heat conduction", LONG),
]


def tensor_digest(directory):
    """sha256 over (name, dtype, raw bytes) of every tensor in the directory, sorted by name."""
    tensors = {}
    for f in sorted(pathlib.Path(directory).glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for name in st.keys():
                t = st.get_tensor(name)
                dtype = {torch.float32: "F32", torch.bfloat16: "BF16"}[t.dtype]
                raw = t.contiguous().view(torch.uint8).numpy().tobytes()
                tensors[name] = (dtype, raw)
    h = hashlib.sha256()
    for name in sorted(tensors):
        dtype, raw = tensors[name]
        h.update(name.encode() + b"\0" + dtype.encode() + b"\0")
        h.update(raw)
    return h.hexdigest()


def copy_st_files(src, dst):
    for f in ST_FILES:
        if (pathlib.Path(src) / f).exists():
            (pathlib.Path(dst) / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(pathlib.Path(src) / f, pathlib.Path(dst) / f)


def embed_reference(directory, tok):
    model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in EMBED_TEXTS:
            ids = tok.encode(text, add_special_tokens=False).ids + [EOS]
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].double()
            out.append({"model_text": text, "token_ids": ids,
                        "vector": (hidden / torch.linalg.vector_norm(hidden)).tolist()})
    return out


def rerank_reference(directory, tok):
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    prefix = tok.encode(RERANK_PREFIX, add_special_tokens=False).ids
    suffix = tok.encode(RERANK_SUFFIX, add_special_tokens=False).ids
    out = []
    with torch.no_grad():
        for query, doc in RERANK_CASES:
            body = tok.encode(f"<Instruct>: {DEFAULT_INSTR}\n<Query>: {query}\n<Document>: {doc}",
                              add_special_tokens=False).ids
            ids = prefix + body[: MAX_LEN - len(prefix) - len(suffix)] + suffix
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            p = torch.softmax(torch.stack([logits[YES], logits[NO]]), dim=0)[0].item()
            out.append({"query": query, "document": doc, "token_ids": ids, "p_yes": p})
    return out


def record(directory):
    d = pathlib.Path(directory)
    index = d / "model.safetensors.index.json"
    return {
        "config": json.loads((d / "config.json").read_text()),
        "index": json.loads(index.read_text()) if index.exists() else None,
        "safetensors_files": sorted(p.name for p in d.glob("*.safetensors")),
        "tensor_digest": tensor_digest(d),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--semflow", required=True, help="path to the semflow binary")
    ap.add_argument("--out", default="tests/fixtures/parity/layouts.json")
    args = ap.parse_args()
    layouts = {}
    with tempfile.TemporaryDirectory() as tmp:
        emb_src, rr_src = f"{tmp}/emb", f"{tmp}/rr"
        for kind, seed, out in (("embedding", EMBED_SEED, emb_src), ("reranker", RERANK_SEED, rr_src)):
            subprocess.run([args.semflow, "model", "random", "--kind", kind, "--preset", "tiny",
                            "--seed", str(seed), "--dtype", "f32", "--out", out], check=True)
        tok = Tokenizer.from_file(f"{emb_src}/tokenizer.json")

        # A sentence-transformers fine-tune: Qwen3Model, bf16, sharded, its own prompts.
        st = f"{tmp}/embedding-st-sharded-bf16"
        model = AutoModel.from_pretrained(emb_src, dtype=torch.float32)
        model.to(torch.bfloat16).save_pretrained(st, max_shard_size="10MB")
        copy_st_files(emb_src, st)
        cst = pathlib.Path(st) / "config_sentence_transformers.json"
        cfg = json.loads(cst.read_text())
        cfg["prompts"] = FINE_TUNE_PROMPTS
        cst.write_text(json.dumps(cfg, indent=2))
        layouts["embedding-st-sharded-bf16"] = {
            **record(st), "prompts": FINE_TUNE_PROMPTS, "embeddings": embed_reference(st, tok)}

        # The same weights with another RoPE theta, set where transformers 5 keeps it.
        theta = f"{tmp}/embedding-rope-theta-10000"
        AutoModel.from_pretrained(emb_src, dtype=torch.float32).save_pretrained(theta)
        copy_st_files(emb_src, theta)
        c = json.loads((pathlib.Path(theta) / "config.json").read_text())
        c.setdefault("rope_parameters", {})["rope_theta"] = 10000.0
        c.pop("rope_theta", None)
        (pathlib.Path(theta) / "config.json").write_text(json.dumps(c, indent=2))
        layouts["embedding-rope-theta-10000"] = {**record(theta), "embeddings": embed_reference(theta, tok)}

        # An untied reranker head (Qwen3-Reranker-8B's layout), sharded, 40960 positions.
        untied = f"{tmp}/reranker-untied-sharded"
        rr = AutoModelForCausalLM.from_pretrained(rr_src, dtype=torch.float32)
        head = rr.model.embed_tokens.weight.detach().clone()
        head[[YES, NO]] = head[[NO, YES]]
        rr.config.tie_word_embeddings = False
        rr.config.max_position_embeddings = 40960
        rr.lm_head.weight = torch.nn.Parameter(head)
        rr.save_pretrained(untied, max_shard_size="30MB")
        copy_st_files(rr_src, untied)
        layouts["reranker-untied-sharded"] = {**record(untied), "rerank": rerank_reference(untied, tok)}

    fixture = {
        "generated_by": "scripts/parity_layouts.py",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "layouts": layouts,
    }
    out = pathlib.Path(args.out)
    out.write_text(json.dumps(fixture, ensure_ascii=False, indent=1))
    for name, layout in layouts.items():
        print(name, layout["safetensors_files"], layout["config"].get("architectures"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
