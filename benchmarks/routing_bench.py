"""Routing collection benchmark: plain ``generate`` vs our capture vs seed-style capture, side by side in one run.

Random-weight Qwen3-MoE models (no hub access): ``--shape demo`` is the demo model's shape (CPU), ``--shape
qwen3-30b-a3b`` the Qwen3-30B-A3B shape (48 layers, 128 experts, top-8; GPU). Prompts are random token ids of
``--prompt-len`` tokens; EOS is an id the model cannot produce, so every variant generates the same number of tokens.

Variants (one batch of ``--batch`` prompts each, timed with device sync):
  plain      ``model.generate`` with ``max_new_tokens`` (records nothing)
  inline     our capture: router hooks into device buffers during ``generate`` (+1 decode step), one host copy,
             shard built and written to a Parquet store (end to end through ``run_collection``)
  two_phase  plain ``generate`` then one teacher-forced forward with router hooks, store written
  static     (``--static``) two-phase with ``cache_implementation="static"`` (auto-compiled decode) for generation
  graph      our static decoder (``routing.backend=hf_static``): static KV cache, each decode step a replayed CUDA graph
             (eager loop on CPU); plain generation with it, inline capture (hooks recorded inside the graph through a
             device-side cursor) and two-phase, so its capture overhead is measured against the same engine
  seed       the seed's way: one prompt at a time, full router logits copied to host and ``np.save``'d per layer
             per step (``--seed-prompts`` prompts; reported per token)

    python benchmarks/routing_bench.py --device cpu --shape demo
    python benchmarks/routing_bench.py --device cuda --shape qwen3-30b-a3b --batch 128 --prompt-len 64 --new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "demo": dict(hidden_size=128, num_hidden_layers=4, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=256,
                 intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=2048),
    "qwen3-30b-a3b": dict(hidden_size=2048, num_hidden_layers=48, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
                          intermediate_size=6144, num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936),
}


def build(shape: str, layers: int | None, device: str, dtype: str, experts: str | None = None, router_std: float | None = None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(SHAPES[shape])
    if layers:
        kw["num_hidden_layers"] = layers
    config = AutoConfig.for_model("qwen3_moe", **kw, max_position_embeddings=4096, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id = None
    if router_std:
        # Random init (std 0.02) leaves router logits nearly uniform; trained routers are sharper.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("mlp.gate.weight"):
                    p.normal_(0, router_std)
    if experts:
        model.set_experts_implementation(experts)
    return model.eval()


def tokenizer_for(vocab: int):
    """A word-level tokenizer over the model's ids; EOS is one id past the model's vocabulary (never generated)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab)}
    words["<eos>"] = vocab
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="t1")), eos_token="<eos>", pad_token="t0")
    tok.padding_side = "left"
    return tok


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def run_store(model, tok, prompts, params, mode: str, out: Path, generate_kwargs=None, decoder=None, recorder=None, batch=None):
    """Our capture, end to end: batch -> host once -> shard tables -> atomic Parquet shard + manifest.

    ``decoder``: a StaticDecoder to generate with instead of ``model.generate``; ``recorder``: an entered
    RouterRecorder to reuse (a collection run keeps one for all its batches, so its graph is captured once);
    ``batch``: prompts per batch and per shard (default: all in one).
    """
    from contextlib import nullcontext

    import pandas as pd

    from steermoe.routing.collect import model_header, run_collection
    from steermoe.routing.hf_backend import eos_ids_of, generate_batch, inline_batch, static_inline_batch, teacher_forced_batch
    from steermoe.routing.recorder import RouterRecorder

    rows = pd.DataFrame({"id": [f"r{i}" for i in range(len(prompts))], "label": "safe", "split": "train"})
    with nullcontext(recorder) if recorder is not None else RouterRecorder(model) as rec:
        header = {"model": model_header(model, rec, fingerprint="random"), "mode": mode}
        eos = eos_ids_of(model, tok)

        def run_batch(chunk, first):
            if mode == "inline":
                if decoder is not None:
                    return static_inline_batch(decoder, tok, rec, chunk, first)
                return inline_batch(model, tok, rec, chunk, params)
            rec.enabled = False
            if decoder is not None:
                gen = decoder(chunk, first)
            else:
                gen = generate_batch(model, tok, chunk, params, generate_kwargs)
            rec.enabled = True
            return teacher_forced_batch(model, tok, rec, chunk, gen, eos)

        size = batch or len(prompts)
        store = run_collection(rows, prompts, out, header, run_batch, batch_size=size, shard_sequences=size, progress=False)
    c = store.manifest["counts"]
    return c["prompt_tokens"] + c["generated_tokens"], c["generated_tokens"]


def graph_variants(model, tok, prompts, params, args, tmp: Path) -> tuple[list, dict]:
    """Our static decoder: plain generation, inline capture and two-phase, best of ``--graph-repeats`` each (after a
    warm-up that captures the graphs), over ``--graph-batches`` batches (shards are written while the next batch
    generates). Also how far inline and two-phase routing agree (same tokens; decode steps vs one teacher-forced pass)."""
    from steermoe.generation import GenerationSettings
    from steermoe.routing.hf_backend import eos_ids_of
    from steermoe.routing.recorder import RouterRecorder
    from steermoe.routing.static_decode import StaticDecoder

    eos = sorted(eos_ids_of(model, tok))
    b = args.batch

    def decoder():
        return StaticDecoder(model, GenerationSettings(max_new_tokens=args.new_tokens), pad_token_id=tok.pad_token_id, eos_token_ids=eos)

    def plain(dec):
        return [g for i in range(0, len(prompts), b) for g in dec(prompts[i : i + b], i)]

    def store(mode, dec, out):
        return run_store(model, tok, prompts, params, mode, out, decoder=dec, recorder=rec, batch=b)

    plain_dec, inline_dec, two_dec = decoder(), decoder(), decoder()  # one graph each: no recapture between variants
    best: dict = {}
    with RouterRecorder(model) as rec:
        rec.enabled = False
        timed(args.device, lambda: plain_dec(prompts[:b]))  # warm-up + capture
        rec.enabled = True
        timed(args.device, lambda: run_store(model, tok, prompts[:b], params, "inline", tmp / "g-warm", decoder=inline_dec, recorder=rec))
        timed(args.device, lambda: run_store(model, tok, prompts[:b], params, "two_phase", tmp / "g-warm2", decoder=two_dec, recorder=rec))
        for r in range(args.graph_repeats):
            rec.enabled = False
            s, gen = timed(args.device, lambda: plain(plain_dec))
            rec.enabled = True
            best["graph_plain"] = min(best.get("graph_plain", 1e9), s)
            s, (rec1, gen1) = timed(args.device, lambda r=r: store("inline", inline_dec, tmp / f"g-inline{r}"))
            best["graph_inline"] = min(best.get("graph_inline", 1e9), s)
            print(f"graph repeat {r}: plain {best['graph_plain']:.2f}s inline {s:.2f}s", flush=True)
        s2, (rec2, gen2) = timed(args.device, lambda: store("two_phase", two_dec, tmp / "g-two"))
    gen_tokens = sum(len(g) for g in gen)
    rows = [
        ("static decoder (CUDA graph on GPU), plain generation", best["graph_plain"], len(prompts) * args.prompt_len + gen_tokens, gen_tokens),
        ("our capture, inline, static decoder", best["graph_inline"], rec1, gen1),
        ("our capture, two-phase, static decoder", s2, rec2, gen2),
    ]
    agreement = set_agreement(tmp / f"g-inline{args.graph_repeats - 1}", tmp / "g-two")
    facts = {
        "graph_batches": len(prompts) // b,
        "graph_captures": plain_dec.graph_captures + inline_dec.graph_captures + two_dec.graph_captures,
        "graph_used": plain_dec.use_graph and inline_dec.use_graph,
        "graph_inline_overhead_vs_plain": round(best["graph_inline"] / best["graph_plain"] - 1, 4),
        "graph_inline_vs_two_phase_set_agreement": agreement,
    }
    return rows, facts


def set_agreement(a: Path, b: Path) -> dict | None:
    """Share of (token, layer) expert sets two stores agree on: overall, per MoE layer, per segment; and how varied
    the generated tokens are (a random-weight model often repeats a few tokens, so one near-tied router can
    move the whole figure)."""
    from steermoe.routing import PROMPT, RoutingStore

    def load(path):
        shards = list(RoutingStore(path).iter_shards())
        return (np.concatenate([np.sort(s.experts, -1) for s in shards]), np.concatenate([s.segment for s in shards]),
                np.concatenate([s.token_id for s in shards]))

    (x, segment, token_id), (y, _, _) = load(a), load(b)
    if x.shape != y.shape:
        return None
    same = (x == y).all(-1)  # (tokens, layers)
    generated = segment != PROMPT
    return {
        "all": round(float(same.mean()), 4), "per_layer": [round(float(v), 4) for v in same.mean(0)],
        "prompt": round(float(same[~generated].mean()), 4), "generated": round(float(same[generated].mean()), 4),
        "distinct_generated_tokens": int(len(np.unique(token_id[generated]))), "generated_tokens": int(generated.sum()),
    }


def seed_style(model, tok, prompts, new_tokens: int, device: str, tmp: Path) -> int:
    """One prompt at a time; every router call copies its full logits to host and saves one .npy per layer per step."""
    import torch

    from steermoe.adapters import moe_layers

    state = {"step": 0, "prompt": 0}

    def hook(layer):
        def save(module, args, output):
            logits = output[0]  # (T, E)
            np.save(tmp / f"p{state['prompt']}_s{state['step']}_l{layer}.npy", logits.float().cpu().numpy())
            if layer == last:
                state["step"] += 1

        return save

    layers = moe_layers(model)
    last = layers[-1].layer
    handles = [m.router.register_forward_hook(hook(m.layer)) for m in layers]
    tokens = 0
    try:
        for i, p in enumerate(prompts):
            state.update(prompt=i, step=0)
            ids = torch.tensor([p], device=device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                                     top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            tokens += len(p) + out.shape[1] - len(p) - 1  # tokens whose routing was saved
    finally:
        for h in handles:
            h.remove()
    return tokens


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="demo")
    ap.add_argument("--layers", type=int, default=None, help="Fewer decoder layers (memory).")
    ap.add_argument("--dtype", default=None, help="Default: float32 on CPU, bfloat16 on GPU.")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="Alternating repeats of plain/inline (best kept).")
    ap.add_argument("--seed-prompts", type=int, default=2)
    ap.add_argument("--graph-repeats", type=int, default=None, help="Repeats of the static-decoder variants (default: --repeats).")
    ap.add_argument("--graph-batches", type=int, default=1, help="Batches of --batch prompts in each static-decoder run.")
    ap.add_argument("--static", action="store_true", help="Also try two-phase with a static-cache compiled generate.")
    ap.add_argument("--static-deadline", type=float, default=300, help="Skip --static when this many seconds have passed.")
    ap.add_argument("--skip", default="", help="Comma-separated variants to skip: hf (plain generate + inline), two_phase, seed, graph.")
    ap.add_argument("--experts", default=None, help="transformers experts implementation: eager, grouped_mm, batched_mm.")
    ap.add_argument("--router-std", type=float, default=None, help="Re-draw router weights with this std (sharper routing).")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is steadiest on a shared machine).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    args.graph_repeats = args.graph_repeats or args.repeats

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from steermoe.generation import GenerationSettings

    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    t0 = time.perf_counter()
    model = build(args.shape, args.layers, args.device, dtype, args.experts, args.router_std)
    print("experts implementation:", model.config._experts_implementation, flush=True)
    tok = tokenizer_for(model.config.vocab_size)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, model.config.vocab_size, args.prompt_len).tolist() for _ in range(args.batch)]
    params = GenerationSettings(max_new_tokens=args.new_tokens)
    skip = set(filter(None, args.skip.split(",")))
    plain_ids = torch.tensor(prompts, device=args.device)

    def plain(n=args.new_tokens):
        with torch.no_grad():
            return model.generate(input_ids=plain_ids, attention_mask=torch.ones_like(plain_ids), max_new_tokens=n, do_sample=False,
                                  top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)

    results = {"config": vars(args) | {"dtype": dtype, "json": None}, "device_name": _device_name(args.device), "build_s": round(build_s, 1)}
    if "hf" not in skip:
        timed(args.device, lambda: plain(4))  # warm-up (kernels, allocator)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen_tokens = args.batch * args.new_tokens
        best = {}
        # Warm-up of our path too (first Parquet write, imports, allocator), like plain's warm-up above.
        if "hf" not in skip:
            timed(args.device, lambda: run_store(model, tok, prompts, GenerationSettings(max_new_tokens=2), "inline", tmp / "warm-inline"))
        for r in range(0 if "hf" in skip else args.repeats):
            s, out = timed(args.device, plain)
            assert out.shape[1] == args.prompt_len + args.new_tokens
            best["plain"] = min(best.get("plain", 1e9), s)
            s, (rec, gen) = timed(args.device, lambda r=r: run_store(model, tok, prompts, params, "inline", tmp / f"inline{r}"))
            best["inline"] = min(best.get("inline", 1e9), s)
            print(f"repeat {r}: plain {best['plain']:.2f}s inline {s:.2f}s", flush=True)
        if "hf" not in skip:
            rows.append(("plain generate", best["plain"], args.batch * args.prompt_len + gen_tokens, gen_tokens))
            rows.append(("our capture, inline", best["inline"], rec, gen))
        if "two_phase" not in skip and "hf" not in skip:
            s, (rec2, gen2) = timed(args.device, lambda: run_store(model, tok, prompts, params, "two_phase", tmp / "two"))
            rows.append(("our capture, two-phase", s, rec2, gen2))
            print(f"two-phase: {s:.2f}s", flush=True)
            results["hf_inline_vs_two_phase_set_agreement"] = set_agreement(tmp / f"inline{args.repeats - 1}", tmp / "two")
        if "seed" not in skip and args.seed_prompts:
            seed_dir = tmp / "seed"
            seed_dir.mkdir()
            s, rec4 = timed(args.device, lambda: seed_style(model, tok, prompts[: args.seed_prompts], args.new_tokens, args.device, seed_dir))
            print(f"seed-style: {s:.2f}s for {rec4} tokens", flush=True)
            rows.append((f"seed-style, one prompt at a time ({args.seed_prompts} prompts)", s, rec4, rec4 - args.seed_prompts * args.prompt_len))
        if "graph" not in skip:
            more = [rng.integers(1, model.config.vocab_size, args.prompt_len).tolist() for _ in range(args.batch * (args.graph_batches - 1))]
            graph_rows, graph_facts = graph_variants(model, tok, prompts + more, params, args, tmp)
            rows += graph_rows
            results.update(graph_facts)
        if args.static and time.perf_counter() - t0 < args.static_deadline:
            try:
                kw = {"cache_implementation": "static"}
                timed(args.device, lambda: run_store(model, tok, prompts[:args.batch], params, "two_phase", tmp / "warm",
                                                     generate_kwargs=kw))  # compile
                s, (rec3, gen3) = timed(args.device, lambda: run_store(model, tok, prompts, params, "two_phase", tmp / "static", generate_kwargs=kw))
                rows.append(("our capture, two-phase, static-cache compiled generate", s, rec3, gen3))
            except Exception as e:  # report, do not hide: compile paths fail in version-specific ways
                results["static_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                print("static path failed:", results["static_error"], flush=True)
    table = []
    for name, s, rec, gen in rows:
        table.append({"variant": name, "seconds": round(s, 3), "recorded_tokens": rec, "generated_tokens": gen,
                      "tokens_per_s": round(rec / s, 1), "generated_per_s": round(gen / s, 1)})
    results["rows"] = table
    if "plain" in best:
        results["inline_overhead_vs_plain"] = round(best["inline"] / best["plain"] - 1, 4)
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def _device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"


def _print(results: dict) -> None:
    print(f"\n{results['device_name']}  {json.dumps(results['config'])}")
    print("| variant | seconds | tokens recorded (prompt+generated) | tokens/s | generated tokens/s |")
    print("|---|---:|---:|---:|---:|")
    for r in results["rows"]:
        print(f"| {r['variant']} | {r['seconds']:.2f} | {r['recorded_tokens']} | {r['tokens_per_s']:.0f} | {r['generated_per_s']:.0f} |")
    if "inline_overhead_vs_plain" in results:
        print(f"inline capture overhead vs plain generate: {results['inline_overhead_vs_plain']:+.1%}")
    if "graph_inline_overhead_vs_plain" in results:
        print(f"static decoder: inline capture overhead vs its plain generation {results['graph_inline_overhead_vs_plain']:+.1%}; "
              f"graph used: {results['graph_used']} ({results['graph_captures']} captures)")
    for key in ("hf_inline_vs_two_phase_set_agreement", "graph_inline_vs_two_phase_set_agreement"):
        if results.get(key):
            r = results[key]
            print(f"{key}: {r['all']:.4f} (prompt {r['prompt']:.4f}, generated {r['generated']:.4f}; "
                  f"{r['distinct_generated_tokens']} distinct of {r['generated_tokens']} generated tokens); per layer {r['per_layer']}")
    if "static_error" in results:
        print("static path:", results["static_error"])


if __name__ == "__main__":
    main()
