"""Expert-selective vs full fine-tuning under the same DeepSpeed stage: peak GPU memory and step time.

A Qwen3-30B-A3B-shaped model (hidden 2048, 128 experts, top-8, moe_intermediate 768, 32 heads /
4 KV heads, head_dim 128, vocab 151936) cut to ``--layers`` decoder layers, random bf16 weights,
ZeRO-2 bf16, torch AdamW, one GPU. Each mode runs in its own process so peak memory is its own.

    python benchmarks/finetune_bench.py --layers 4 --experts 50 --out results.json

Memory is read from ``torch.cuda.memory_allocated``: ``model`` after the model is on the GPU,
``train_state`` = allocated after the measured steps minus ``model`` (gradients, optimizer states
and DeepSpeed buffers that outlive a step), ``peak`` = the maximum during the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QWEN3_30B_A3B = dict(
    hidden_size=2048, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768, intermediate_size=6144,
    num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936, max_position_embeddings=4096,
    tie_word_embeddings=False, norm_topk_prob=True,
)


TINY = dict(QWEN3_30B_A3B, hidden_size=64, moe_intermediate_size=32, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512)


def build_model(layers: int, experts_impl: str, shape: dict, device: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("qwen3_moe", num_hidden_layers=layers, **shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, experts_implementation=experts_impl)
    return model


def random_experts(layers: int, n: int, num_experts: int, seed: int = 0):
    from steermoe.selection import ExpertSelection

    pairs = sorted(random.Random(seed).sample([(layer, e) for layer in range(layers) for e in range(num_experts)], n))
    return ExpertSelection(pairs, [0.0] * n, "random", {"seed": seed})


def run_mode(args) -> dict:
    import torch

    from steermoe.config import FinetuneConfig
    from steermoe.finetune.engine import _init_engine, ensure_dist_env
    from steermoe.finetune.experts import count_parameters, materialize, prepare_full, prepare_selective

    ensure_dist_env()
    import deepspeed

    cuda = args.device == "cuda"
    shape = TINY if args.tiny else QWEN3_30B_A3B
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(0)
    mem = torch.cuda.memory_allocated if cuda else (lambda: 0)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model = build_model(args.layers, args.experts_impl, shape, args.device)
    model_bytes = mem()
    selection = random_experts(args.layers, args.experts, shape["num_experts"]) if args.mode == "selective" else None
    base_cpu = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()} if selection is not None and args.check else None
    plan = prepare_selective(model, selection) if selection is not None else prepare_full(model)
    trainable, total = count_parameters(model)
    selected_bytes = trainable * 2  # bf16 parameter bytes of what is trained
    cfg = FinetuneConfig(zero_stage=args.zero_stage, precision="bf16", batch_size=args.batch, learning_rate=1e-4, warmup_steps=1, weight_decay=0.01)
    engine = _init_engine(model, cfg, 1)
    gen = torch.Generator(device=args.device).manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, loss = _steps(engine, gen, shape, args.batch, args.seq, args, sync)
    after = mem()
    peak = torch.cuda.max_memory_allocated() if cuda else 0  # before the sweep resets it
    sweep = _sweep(engine, model, gen, shape, args, sync) if args.sweep else None
    result = {
        "mode": args.mode,
        "layers": args.layers,
        "zero_stage": args.zero_stage,
        "batch": args.batch,
        "seq": args.seq,
        "experts_impl": args.experts_impl,
        "selected_experts": len(selection) if selection is not None else None,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "trained_param_bytes": selected_bytes,
        "model_bytes": model_bytes,
        "train_state_bytes": after - model_bytes,
        "peak_bytes": peak,
        "step_seconds_median": sorted(times)[len(times) // 2],
        "step_seconds_all": times,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "final_loss": float(loss),
    }
    if sweep is not None:
        result["sweep"] = sweep
    if base_cpu is not None:
        materialize(model, plan)
        result["bit_identity"] = check_identity(model, base_cpu, selection)
    return result


def _steps(engine, gen, shape: dict, batch: int, seq: int, args, sync) -> tuple[list[float], object]:
    """``--warmup`` + ``--steps`` optimizer steps on random ids; the measured steps' seconds and the last loss."""
    import torch

    times, loss = [], None
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, shape["vocab_size"], (batch, seq), device=args.device, generator=gen)
        sync()
        t0 = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    return times, loss


def _sweep(engine, model, gen, shape: dict, args, sync) -> list[dict]:
    """Peak memory and step time of each ``BATCHxSEQ[:gc]`` micro-batch of ``--sweep`` on the same engine (the model
    and train state are shared; the peak is reset before each). ``gc``: activation checkpointing per decoder layer,
    as ``finetune.gradient_checkpointing``. What fits a smaller card is read from these peaks."""
    import torch

    from steermoe.finetune.engine import enable_gradient_checkpointing

    cuda = args.device == "cuda"
    rows = []
    for spec in args.sweep.split(","):
        size, _, flag = spec.partition(":")
        batch, seq = (int(x) for x in size.split("x"))
        if flag == "gc":
            enable_gradient_checkpointing(model)
        else:
            model.gradient_checkpointing_disable()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times, _ = _steps(engine, gen, shape, batch, seq, args, sync)
        row = {"micro_batch": batch, "seq": seq, "gradient_checkpointing": flag == "gc",
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else 0.0,
               "reserved_peak_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else 0.0,
               "step_seconds_median": round(sorted(times)[len(times) // 2], 4)}
        rows.append(row)
        print("SWEEP " + json.dumps(row), flush=True)
    model.gradient_checkpointing_disable()
    return rows


def check_identity(model, base_cpu: dict, selection) -> dict:
    """Unselected parameters and rows equal to the base bit for bit; every selected row changed."""
    import torch

    by_layer = selection.by_layer()
    unchanged_ok, changed_ok = True, True
    for name, value in model.state_dict().items():
        value, base = value.cpu(), base_cpu[name]
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        if ".experts." in name and layer in by_layer:
            sel = torch.tensor(by_layer[layer])
            keep = torch.ones(value.shape[0], dtype=torch.bool)
            keep[sel] = False
            unchanged_ok &= torch.equal(value[keep], base[keep])
            changed_ok &= bool((value[sel] != base[sel]).flatten(1).any(1).all())
        else:
            unchanged_ok &= torch.equal(value, base)
    return {"unselected_identical": unchanged_ok, "selected_all_changed": changed_ok}


def markdown(results: list[dict]) -> str:
    gib = 1 << 30
    by = {r["mode"]: r for r in results}
    lines = [
        "| mode | trainable params | trainable fraction | model GiB | train state GiB | peak GiB | step s (median) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['mode']} | {r['trainable_params']:,} | {r['trainable_fraction']:.4f} | {r['model_bytes'] / gib:.2f} | "
            f"{r['train_state_bytes'] / gib:.2f} | {r['peak_bytes'] / gib:.2f} | {r['step_seconds_median']:.3f} |"
        )
    for r in results:
        for row in r.get("sweep", []):
            lines.append(f"- {r['mode']} micro-batch {row['micro_batch']} x {row['seq']}{' + activation checkpointing' if row['gradient_checkpointing'] else ''}: "
                         f"peak {row['peak_gib']:.2f} GiB allocated ({row['reserved_peak_gib']:.2f} reserved), {row['step_seconds_median']:.3f} s/step")
    if "selective" in by and "full" in by:
        s, f = by["selective"], by["full"]
        lines.append("")
        lines.append(f"- step time selective / full: {s['step_seconds_median'] / f['step_seconds_median']:.2f} (target <= 0.7)")
        lines.append(f"- train state (grads + optimizer + buffers) / trained bf16 parameter bytes: {s['train_state_bytes'] / max(s['trained_param_bytes'], 1):.2f}")
        ideal = s["trainable_params"] * (2 + 4 + 4 + 4)  # bf16 grad + fp32 master + Adam m, v
        lines.append(f"- train state / ideal AdamW footprint of the selected experts (14 B/param): {s['train_state_bytes'] / ideal:.2f} (target <= 2)")
        lines.append(f"- peak memory selective / full: {s['peak_bytes'] / max(f['peak_bytes'], 1):.2f}")
        if "bit_identity" in s:
            lines.append(f"- bit identity on GPU: {s['bit_identity']}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["selective", "full", "both"], default="both")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=50)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--experts-impl", default="grouped_mm", help="transformers experts implementation (eager, grouped_mm, batched_mm)")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run (with --tiny)")
    p.add_argument("--tiny", action="store_true", help="a tiny shape instead of Qwen3-30B-A3B (smoke runs)")
    p.add_argument("--check", action="store_true", help="check the bit-identity rule after the selective run")
    p.add_argument("--sweep", default="", help="after the measured steps, more micro-batches on the same engine: BATCHxSEQ[:gc],... "
                   "(gc: activation checkpointing), e.g. 8x256,8x256:gc,4x256")
    p.add_argument("--out", type=Path, default=None, help="write results JSON (and a .md table beside it)")
    args = p.parse_args()
    if args.mode != "both":
        result = run_mode(args)
        print("RESULT " + json.dumps(result), flush=True)
        if args.out:
            args.out.write_text(json.dumps([result], indent=2))
            args.out.with_suffix(".md").write_text(markdown([result]) + "\n")
        return 0
    results = []
    for mode in ("selective", "full"):
        cmd = [sys.executable, __file__, "--mode", mode] + [a for a in sys.argv[1:] if a not in ("--mode", "both")]
        cmd = _drop_out(cmd)
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MASTER_PORT": str(29500 + len(results))})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
            raise SystemExit(f"{mode} run failed (exit {proc.returncode})")
        results.append(json.loads(line[len("RESULT "):]))
    table = markdown(results)
    print(table)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        args.out.with_suffix(".md").write_text(table + "\n")
    return 0


def _drop_out(cmd: list[str]) -> list[str]:
    out, skip = [], False
    for a in cmd:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
