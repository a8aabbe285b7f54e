"""Routing collection on Ray: in-process vs 1 Ray worker vs N Ray workers, side by side in one run.

The demo model (built once into the cache), the first ``--prompts`` demo prompts, greedy decoding;
each variant collects into a fresh store, and every store is checked to hold the same shards
(checksums) as the in-process one. ``seconds`` is the wall clock of the whole collection, including
starting the workers and loading the model in each (what a user waits for; Ray itself is started
once, before); ``shards_s`` the part after every worker had loaded the model (in-process: after the
load), i.e. the work that scales with workers.

    OMP_NUM_THREADS=1 python benchmarks/ray_bench.py --prompts 96 --workers 2
    python benchmarks/ray_bench.py --device cuda --workers 1 --prompts 512 --batch 64 --shard 64   # Ray's overhead on one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shard", type=int, default=8, help="routing.shard_sequences")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: each worker (and the in-process run) on one GPU")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import ray
    import torch

    from steermoe.config import RunConfig
    from steermoe.demo import load_demo_prompts
    from steermoe.modeling import resolve_model_path
    from steermoe.stages import collect_with_backend

    if args.device == "cpu":
        torch.set_num_threads(1)  # the in-process run gets what one Ray worker gets: one CPU
    cfg = RunConfig.model_validate({
        "model": {"device": args.device},
        "execution": {"gpus_per_worker": 1 if args.device == "cuda" else 0},
        "generation": {"max_new_tokens": args.new_tokens, "batch_size": args.batch},
        "routing": {"shard_sequences": args.shard},
    })
    model_path = resolve_model_path(cfg.model, cfg.cache_dir)
    prompts = load_demo_prompts()
    prompts = prompts[prompts["split"] == "train"].head(args.prompts).reset_index(drop=True)
    ray.init(num_cpus=max(args.workers, os.cpu_count() if args.device == "cuda" else 1), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    rows, stores = [], {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            variants = [("in-process", "local", 1), ("ray, 1 worker", "ray", 1)]
            if args.workers > 1:
                variants.append((f"ray, {args.workers} workers", "ray", args.workers))
            for name, executor, workers in variants:
                run_cfg = cfg.model_copy(deep=True)
                run_cfg.execution.executor, run_cfg.execution.num_workers = executor, workers
                start = time.perf_counter()
                store = collect_with_backend(run_cfg, model_path, prompts, Path(tmp) / name.replace(" ", "_").replace(",", ""), progress=False)
                seconds = time.perf_counter() - start
                tokens = store.manifest["counts"]["prompt_tokens"] + store.manifest["counts"]["generated_tokens"]
                summary = store.manifest["summary"]
                shards = summary["seconds"] - summary.get("startup_seconds", 0.0)  # after the workers loaded the model
                stores[name] = store.manifest["shards"]
                rows.append({
                    "variant": name, "seconds": round(seconds, 2), "startup_s": round(seconds - shards, 2), "shards_s": round(shards, 2),
                    "recorded_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1), "shard_tokens_per_s": round(tokens / shards, 1),
                })
                print(json.dumps(rows[-1]), flush=True)
    finally:
        ray.shutdown()
    result = {
        "rows": rows,
        "ray_1_worker_over_in_process": round(rows[1]["seconds"] / rows[0]["seconds"], 2),
        "ray_1_worker_over_in_process_after_startup": round(rows[1]["shards_s"] / rows[0]["shards_s"], 2),
        **({
            "speedup_workers": round(rows[1]["seconds"] / rows[2]["seconds"], 2),
            "speedup_workers_after_startup": round(rows[1]["shards_s"] / rows[2]["shards_s"], 2),
        } if len(rows) > 2 else {}),
        "stores_identical": all(s == stores["in-process"] for s in stores.values()),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "args": vars(args) | {"out": str(args.out) if args.out else None},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
