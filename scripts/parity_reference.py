#!/usr/bin/env python3
"""Reference outputs for semflow's parity tests, computed with Hugging Face transformers.

Writes tests/fixtures/parity/reference.json. The models are the random `tiny` Qwen3 models
that `semflow model random` writes for fixed seeds; the Rust test regenerates them and checks
the weights are byte-identical (sha256) before comparing outputs.

Reference recipe (Qwen3 Embedding paper / model cards), one input at a time, no padding:
- embedding: Qwen3Model last hidden state at the final <|endoftext|> (id 151643, appended
  exactly once), L2-normalised; queries are "Instruct: {instruction}\\nQuery:{query}";
  Matryoshka dims keep the first `dims` components and re-normalise.
- rerank: Qwen3ForCausalLM last-position logits of "yes" (9693) and "no" (2152), softmax.

Setup (not needed by CI):  python3 -m venv .venv && .venv/bin/pip install torch transformers tokenizers
Run:  cargo build && .venv/bin/python scripts/parity_reference.py --semflow target/debug/semflow
"""
import argparse
import hashlib
import json
import pathlib
import subprocess
import tempfile

import torch
from tokenizers import Tokenizer
from transformers import AutoModel, AutoModelForCausalLM

EOS, YES, NO = 151643, 9693, 2152
EMBED_SEED, RERANK_SEED = 42, 43
MAX_LEN = 512  # max_position_embeddings of the tiny preset
RERANK_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
                 "and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n"
                 "<|im_start|>user\n")
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTR = "Given a web search query, retrieve relevant passages that answer the query"

LONG = " ".join(f"Graphene sheet {i} conducts heat and electricity remarkably well." for i in range(80))
EMBED_CASES = [
    ("Graphene is a single layer of carbon atoms arranged in a hexagonal lattice.", None),
    ("what is graphene", "Given a web search query, retrieve relevant passages that answer the query"),
    ("石墨烯是一种由碳原子以sp²杂化轨道组成六角型呈蜂巢晶格的二维碳纳米材料。", None),
    ("石墨烯是什么", "根据问题检索相关段落"),
    ("I love 🦀 Rust and 🚀 rockets! 👩‍👩‍👧", None),
    ("Cafe\u0301 na\u0308ive — combining marks", None),
    ("", None),
    ("already ends with eos<|endoftext|>", None),
    ("  leading and trailing whitespace\n\n\ttabs  ", None),
    (LONG, None),
    (LONG, "Find passages about heat conduction"),
    ("x", None),
]
RERANK_CASES = [
    ("what is graphene", "Graphene is a single layer of carbon atoms arranged in a hexagonal lattice.", None),
    ("what is graphene", "The capital of France is Paris.", None),
    ("石墨烯是什么", "石墨烯是一种二维碳纳米材料。", "根据问题判断文档是否相关"),
    ("emoji 🦀", "", None),
    ("", "empty query", "Custom instruction"),
    ("heat conduction", LONG, None),
]


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def embedding_ids(tok, text, instruction):
    if instruction:
        text = f"Instruct: {instruction}\nQuery:{text}"
    ids = tok.encode(text, add_special_tokens=False).ids
    if not ids or ids[-1] != EOS:
        ids.append(EOS)
    if len(ids) > MAX_LEN:
        ids = ids[: MAX_LEN - 1] + [EOS]
    return ids


def rerank_ids(tok, query, doc, instruction):
    instruction = instruction or DEFAULT_INSTR
    body = tok.encode(f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}", add_special_tokens=False).ids
    prefix = tok.encode(RERANK_PREFIX, add_special_tokens=False).ids
    suffix = tok.encode(RERANK_SUFFIX, add_special_tokens=False).ids
    room = MAX_LEN - len(prefix) - len(suffix)
    return prefix + body[:room] + suffix


def unit(v):
    return v / torch.linalg.vector_norm(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--semflow", required=True, help="path to the semflow binary")
    ap.add_argument("--out", default="tests/fixtures/parity/reference.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        emb_dir, rr_dir = f"{tmp}/emb", f"{tmp}/rr"
        for kind, seed, out in (("embedding", EMBED_SEED, emb_dir), ("reranker", RERANK_SEED, rr_dir)):
            subprocess.run([args.semflow, "model", "random", "--kind", kind, "--preset", "tiny",
                            "--seed", str(seed), "--dtype", "f32", "--out", out], check=True)
        tok = Tokenizer.from_file(f"{emb_dir}/tokenizer.json")
        model = AutoModel.from_pretrained(emb_dir, torch_dtype=torch.float32).eval()
        embeddings = []
        with torch.no_grad():
            for text, instruction in EMBED_CASES:
                ids = embedding_ids(tok, text, instruction)
                hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1].double()
                full = unit(hidden)
                embeddings.append({
                    "text": text, "instruction": instruction, "token_ids": ids,
                    "vector": full.tolist(),
                    "dims32": unit(hidden[:32]).tolist(),
                    "dims64": unit(hidden[:64]).tolist(),
                })
        rr_tok = Tokenizer.from_file(f"{rr_dir}/tokenizer.json")
        rr = AutoModelForCausalLM.from_pretrained(rr_dir, torch_dtype=torch.float32).eval()
        reranks = []
        with torch.no_grad():
            for query, doc, instruction in RERANK_CASES:
                ids = rerank_ids(rr_tok, query, doc, instruction)
                logits = rr(input_ids=torch.tensor([ids])).logits[0, -1].double()
                p = torch.softmax(torch.stack([logits[YES], logits[NO]]), dim=0)[0].item()
                reranks.append({"query": query, "document": doc, "instruction": instruction,
                                "token_ids": ids, "yes_logit": logits[YES].item(),
                                "no_logit": logits[NO].item(), "p_yes": p})
        fixture = {
            "generated_by": "scripts/parity_reference.py",
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "embedding_model": {"preset": "tiny", "seed": EMBED_SEED, "dtype": "f32",
                                "model_safetensors_sha256": sha256(f"{emb_dir}/model.safetensors")},
            "reranker_model": {"preset": "tiny", "seed": RERANK_SEED, "dtype": "f32",
                               "model_safetensors_sha256": sha256(f"{rr_dir}/model.safetensors")},
            "max_len": MAX_LEN,
            "embeddings": embeddings,
            "rerank": reranks,
        }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fixture, ensure_ascii=False, indent=1))
    print(f"wrote {out}: {len(embeddings)} embeddings, {len(reranks)} rerank pairs")


if __name__ == "__main__":
    main()
