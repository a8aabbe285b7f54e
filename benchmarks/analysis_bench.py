"""Benchmark: risk difference on 200,000 tokens x 48 layers x 128 experts (top-8) per class.

Builds a real routing store once (cached under --workdir), then times in one run:

- ``steermoe.analysis.risk_difference`` on the whole store (reading the shards included);
- the seed's counting loop (Python loops over tokens and layers, then over every (layer, expert)),
  on data already in memory. It is far too slow for the whole set, so it runs on the first
  ``--seed-tokens`` tokens of each class and its token loop is extrapolated linearly to all tokens.

Usage: ``python -m benchmarks.analysis_bench [--tokens 200000] [--seed-tokens 2000] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from steermoe.analysis import _bin_counts, risk_difference
from steermoe.routing.store import RoutingStore, RoutingStoreWriter, tokens_table


def synthetic_experts(rng, tokens: int, layers: int, num_experts: int, k: int, skew: float) -> np.ndarray:
    """Distinct top-k indices per (token, layer): a random start plus k strictly increasing gaps (mod E)."""
    max_gap = (num_experts - 1) // k  # k gaps of at most max_gap never wrap onto the start
    start = (rng.random((tokens, layers, 1)) ** skew * num_experts).astype(np.int64)  # skew > 1 favours low ids
    gaps = rng.integers(1, max_gap + 1, size=(tokens, layers, k))
    gaps[..., 0] = 0
    return ((start + np.cumsum(gaps, axis=-1)) % num_experts).astype(np.int16)  # (tokens, layers, k)


def build_store(path: Path, tokens: int, layers: int = 48, num_experts: int = 128, k: int = 8, seq_len: int = 200, shard_seqs: int = 64) -> RoutingStore:
    if (path / "manifest.json").exists() and RoutingStore(path).complete:
        return RoutingStore(path)
    rng = np.random.default_rng(0)
    header = {"model": {"layers": list(range(layers)), "num_experts": num_experts, "top_k": k}}
    writer = RoutingStoreWriter(path, header)
    n_seq = tokens // seq_len
    labels = ["safe"] * n_seq + ["unsafe"] * n_seq
    for index, lo in enumerate(range(0, len(labels), shard_seqs)):
        ids = np.arange(lo, min(lo + shard_seqs, len(labels)))
        seqs = pd.DataFrame({
            "seq": ids, "prompt_id": [f"p{i}" for i in ids], "label": [labels[i] for i in ids],
            "category": "bench", "split": "train", "generated_text": "Sure, here is [details withheld]",
        })  # fmt: skip
        experts = np.concatenate([synthetic_experts(rng, seq_len, layers, num_experts, k, 1.3 if labels[i] == "unsafe" else 1.0) for i in ids])
        seq = np.repeat(ids, seq_len)
        segment = np.tile(np.r_[np.zeros(seq_len // 4), np.ones(seq_len - seq_len // 4)], len(ids))
        position = np.tile(np.arange(seq_len), len(ids))
        writer.write_shard(index, seqs, tokens_table(seq, segment, position, np.zeros_like(seq), experts))
    return writer.finish()


def seed_style(experts_by_class: dict[str, np.ndarray], num_experts: int) -> pd.DataFrame:
    """The seed's algorithm on top-k indices: per token and layer, += 1 on activated and deactivated experts."""
    layers = next(iter(experts_by_class.values())).shape[1]
    counts = {}
    everyone = np.arange(num_experts)
    for name, experts in experts_by_class.items():
        a = np.zeros((layers, num_experts))
        d = np.zeros((layers, num_experts))
        for t in range(experts.shape[0]):
            for layer in range(layers):
                active = experts[t, layer]
                a[layer, active] += 1
                d[layer, np.setdiff1d(everyone, active, assume_unique=True)] += 1
        counts[name] = (a, d)
    rows = []
    (a_s, d_s), (a_u, d_u) = counts["safe"], counts["unsafe"]
    for layer in range(layers):
        for e in range(num_experts):
            p_s = a_s[layer, e] / (a_s[layer, e] + d_s[layer, e] + 1e-10)
            p_u = a_u[layer, e] / (a_u[layer, e] + d_u[layer, e] + 1e-10)
            rows.append({"layer": layer, "expert": e, "a_safe_n": p_s, "a_unsafe_n": p_u, "risk_diff": p_u - p_s})
    return pd.DataFrame(rows).sort_values("risk_diff", ascending=False)


def first_tokens(store: RoutingStore, per_class: int) -> dict[str, np.ndarray]:
    out = {"safe": [], "unsafe": []}
    have = {"safe": 0, "unsafe": 0}
    for shard in store.iter_shards():
        label = dict(zip(shard.sequences["seq"], shard.sequences["label"]))
        cls = np.array([label[s] for s in shard.seq])
        for name in out:
            take = shard.experts[cls == name][: per_class - have[name]]
            out[name].append(take)
            have[name] += len(take)
        if all(v >= per_class for v in have.values()):
            break
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=200_000, help="tokens per class")
    ap.add_argument("--seed-tokens", type=int, default=2_000, help="tokens per class for the seed-style loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "steermoe-analysis-bench")
    args = ap.parse_args()

    t0 = time.perf_counter()
    store = build_store(args.workdir / f"store-{args.tokens}", args.tokens)
    build_s = time.perf_counter() - t0
    layers, num_experts, k = len(store.layers), store.num_experts, store.top_k

    ours, ours_cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        table = risk_difference(store, weighting="token", progress=False)
        ours.append(time.perf_counter() - t0)
        ours_cpu.append(time.process_time() - c0)
    t0, c0 = time.perf_counter(), time.process_time()
    risk_difference(store, weighting="sequence", progress=False)
    ours_seq, ours_seq_cpu = time.perf_counter() - t0, time.process_time() - c0

    subset = first_tokens(store, args.seed_tokens)
    t0, c0 = time.perf_counter(), time.process_time()
    seed_table = seed_style(subset, num_experts)
    seed_s, seed_cpu = time.perf_counter() - t0, time.process_time() - c0
    seed_full_s = seed_s * args.tokens / args.seed_tokens  # token loop dominates; linear in tokens

    # Same subset through our counting kernel must give the seed's risk differences.
    ours_subset = {c: _bin_counts(x, np.zeros(len(x), dtype=np.int64), 1, num_experts)[0] / len(x) for c, x in subset.items()}
    seed_rd = seed_table.sort_values(["layer", "expert"])["risk_diff"].to_numpy().reshape(layers, num_experts)
    agree = bool(np.allclose(ours_subset["unsafe"] - ours_subset["safe"], seed_rd, atol=1e-9))
    best = float(np.min(ours))
    result = {
        "tokens_per_class": args.tokens, "layers": layers, "experts": num_experts, "top_k": k,
        "store_mb": round(sum(p.stat().st_size for p in store.path.glob("*.parquet")) / 2**20, 1),
        "store_build_s": round(build_s, 1), "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "risk_difference_token_wall_s": [round(x, 3) for x in ours], "risk_difference_token_cpu_s": [round(x, 3) for x in ours_cpu],
        "risk_difference_sequence_wall_s": round(ours_seq, 3), "risk_difference_sequence_cpu_s": round(ours_seq_cpu, 3),
        "seed_loop_subset_tokens": args.seed_tokens, "seed_loop_subset_wall_s": round(seed_s, 2), "seed_loop_subset_cpu_s": round(seed_cpu, 2),
        "seed_loop_extrapolated_s": round(seed_full_s, 1), "speedup_wall": round(seed_full_s / best, 1),
        "top_expert": [int(table["layer"].iloc[0]), int(table["expert"].iloc[0])], "rows": len(table),
        "seed_and_ours_agree_on_subset": agree,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    cpu = float(np.min(ours_cpu))
    print(f"\nrisk_difference (token weighting, whole store, read included): {best:.2f} s wall, {cpu:.2f} s CPU (best of {args.repeats}); target <= 2 s")
    print(f"seed-style loop: {seed_s:.1f} s on {args.seed_tokens} tokens/class -> ~{seed_full_s:.0f} s extrapolated to {args.tokens} (wall)")
    print(f"ratio (wall): {seed_full_s / best:.0f}x; ratio (CPU): {seed_cpu * args.tokens / args.seed_tokens / cpu:.0f}x")


if __name__ == "__main__":
    main()
