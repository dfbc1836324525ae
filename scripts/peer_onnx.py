#!/usr/bin/env python3
"""The ONNX Runtime peer of `semflow bench`: the same workloads on the same model directories,
exported to ONNX (scripts/onnx_export.py, run here on first use) and run by ONNX Runtime fp32
on CPU with all its graph optimizations, as sentence-transformers' `backend="onnx"`,
Infinity and fastembed serve embedding models on CPUs. Protocol and batching (length-sorted,
left-padded batches): scripts/peer_protocol.py.

    semflow bench --embed-model DIR --rerank-model DIR --peer ".venv/bin/python scripts/peer_onnx.py"

Setup (not part of CI): python3 -m venv .venv && .venv/bin/pip install torch transformers onnx
onnxscript onnxruntime (torch only for the export).
"""
import os
import subprocess
import sys

import onnxruntime as ort

from peer_protocol import arguments, serve


def session(model_dir, kind_flag, threads):
    """A session on the directory's export, exporting it first if it has none (in another
    process, so torch's memory is not the peer's)."""
    path = os.path.join(model_dir, "onnx", "model.onnx")
    if not os.path.exists(path):
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([sys.executable, os.path.join(here, "onnx_export.py"), kind_flag, model_dir],
                       check=True, stdout=sys.stderr)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"]), opset(path)


def opset(path):
    import onnx

    model = onnx.load(path, load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def main():
    args = arguments("intra-op threads (0: ONNX Runtime's default, one per physical core)")
    if args.device != "cpu":
        sys.exit(f"peer_onnx.py: CPU only (asked for {args.device})")
    sessions, opsets = {}, set()
    for kind, flag, model_dir in [("embed", "--model", args.model),
                                  ("rerank", "--reranker", args.reranker)]:
        if model_dir:
            sessions[kind], version = session(model_dir, flag, args.threads)
            opsets.add(version)

    def run_batch(kind, ids, mask):
        sessions[kind].run(None, {"input_ids": ids, "attention_mask": mask})

    about = (f"onnxruntime {ort.__version__}, fp32, opset {'/'.join(map(str, sorted(opsets)))}, CPU, "
             f"{args.threads or 'default'} intra-op threads, batches of {args.batch_size}")
    serve("onnxruntime", about, run_batch, args.batch_size)


if __name__ == "__main__":
    main()
