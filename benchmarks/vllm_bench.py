"""vLLM as the routing engine, side by side with our own decoders, in one run (one JSON).

Sections (``all`` runs each in a subprocess of its own, so every engine gets the whole card, and keeps going
when one fails):

  throughput  vLLM plain generation vs routing collection through our vLLM backend (routed-experts capture,
              store + manifest written, each shard encoded while the engine answers the next batch), at every
              ``--batches`` size, same prompts and sampling parameters; Qwen3-30B-A3B shape, dummy weights
              (``load_format="dummy"``: a folder with config.json and a word-level tokenizer only). Plain and capture need two engines (the capture is
              an engine setting): each runs in its own subprocess, one after the other.
  decoders    our static decoder and HF generate with capture at the throughput shape (the side-by-side table).
  static      our static decoder (``routing.backend: hf_static``) at ``--static-batch``, before (repeated KV heads)
              and after (folded grouped-query SDPA), with a kernel breakdown of one eager decode step and of one
              graph replay for each.
  exactness   a reduced-depth (``--ex-layers``) Qwen3-30B-A3B-shaped folder with random weights saved once;
              vLLM's recorded expert sets (our backend's store) against HF two-phase capture over the same
              tokens, per layer, in bf16 and fp32; greedy tokens vLLM vs HF; and evaluation answers of a patched
              model through vLLM (merged folder) vs the HF patched model, with the base model as the control.

    python benchmarks/vllm_bench.py all --out $OUT                      # the GPU run (H200: about 8 minutes)
    python benchmarks/vllm_bench.py exactness --out /tmp/x --shape demo --device cpu --capture hooks   # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.routing_bench import SHAPES, build  # noqa: E402


def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def config_folder(shape: str, layers: int | None, path: Path) -> Path:
    """A folder holding only ``config.json`` (vLLM's dummy weights need nothing else)."""
    from transformers import AutoConfig

    kw = dict(SHAPES[shape])
    if layers:
        kw["num_hidden_layers"] = layers
    config = AutoConfig.for_model("qwen3_moe", **kw, max_position_embeddings=4096, tie_word_embeddings=False)
    config.architectures = ["Qwen3MoeForCausalLM"]  # vLLM picks the runner (generate) from it
    config.save_pretrained(path)
    return path


def word_tokenizer(vocab: int):
    """Ids as words (``t17``), split on spaces, with a plain chat template. EOS is the last id of the vocabulary (vLLM
    refuses stop ids outside it); prompts never contain it and a random model almost never picks it, so answers run
    to ``max_new_tokens`` (an early EOS is handled like any other)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"t{i}": i for i in range(vocab - 1)}
    words["<eos>"] = vocab - 1
    core = Tokenizer(models.WordLevel(words, unk_token="t1"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="t0")
    tok.padding_side = "left"
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(10, vocab - 10, length).tolist() for _ in range(n)]


def prompt_frame(n: int):
    import pandas as pd

    return pd.DataFrame({"id": [f"p{i}" for i in range(n)], "label": ["safe", "unsafe"] * (n // 2) + ["safe"] * (n % 2),
                         "split": "train", "prompt": "x"})


# ------------------------------------------------------------------------------------------------ throughput
def _spread(times: list[float]) -> dict:
    t = np.asarray(times, dtype=float)
    return {"median": round(float(np.median(t)), 4), "min": round(float(t.min()), 4), "max": round(float(t.max()), 4)} if len(t) else {}


def _intervals(start: float, stamps: list[float]) -> list[float]:
    return [round(b - a, 4) for a, b in zip([start, *stamps[:-1]], stamps)]


class StepTrace:
    """Every ``llm_engine.step()`` call's duration, for finding stalls (``--trace``): plain and ours both drive the
    engine through ``step()`` (``stream_generate`` / the backend's ``_Stream``), so one wrapper times both the same way.
    :meth:`take` returns the calls since the last take: how many, their median, and those over ``slow_s`` with their
    start (seconds since the take before) and how many outputs they returned."""

    def __init__(self, engine, slow_s: float = 0.25):
        self.slow_s, self._calls, self._t0 = slow_s, [], time.perf_counter()
        step = engine.step

        def timed(*a, **k):
            t = time.perf_counter()
            out = step(*a, **k)
            self._calls.append((t, time.perf_counter() - t, len(out)))
            return out

        engine.step = timed

    def take(self) -> dict:
        calls, t0 = self._calls, self._t0
        self._calls, self._t0 = [], time.perf_counter()
        if not calls:
            return {}
        d = np.asarray([c[1] for c in calls])
        slow = [{"at_s": round(t - t0, 3), "s": round(s, 3), "outputs": n} for t, s, n in calls if s > self.slow_s]
        return {"steps": len(calls), "median_ms": round(float(np.median(d)) * 1e3, 2), "sum_s": round(float(d.sum()), 3), "slow": slow}


def throughput_engine(args) -> dict:
    """One engine (``--kind plain`` or ``routed``), every batch size, every mode; run in its own process.

    Per size ``b``: a warm-up with a full batch (and once per engine, each code path on 16 prompts), then ``--rounds`` batches of ``b`` prompts in each mode, every
    batch's (or shard's) time kept. plain: ``sync`` (one ``llm.generate`` per batch, as vLLM's offline API runs)
    and ``stream`` (continuous batching over all the prompts: our backend's step loop, :func:`stream_generate`,
    at most ``b`` requests in the engine). routed: ``r3_sync`` (``llm.generate`` with the capture, no records;
    ``--r3-generate``), ``ours_sync`` (``collect_routing_vllm_ids(stream_window=0)``: store + manifest, one generate per
    batch, the next one generated while the current is recorded) and ``ours_stream`` (the backend's default,
    continuous batching, shards of ``b / --stream-shard-div`` sequences). The engine runs ``max_num_seqs`` = the
    largest size, so below it the stream's window is ``b`` (running at most ``b``, like the sync batch); at the
    largest size it is ``2 b`` (``b`` running, ``b`` waiting), what the pipeline runs with ``max_num_seqs = batch``."""
    from steermoe.generation import GenerationSettings
    from steermoe.routing.collect import RoutingSettings
    from steermoe.routing.vllm_backend import (
        ReadyEngine,
        VLLMEngineSettings,
        _generate,
        _sampling_params,
        collect_routing_vllm_ids,
        make_llm,
        stream_generate,
    )

    batches = [int(b) for b in args.batches.split(",")]
    folder = config_folder(args.shape, args.layers, Path(args.tmp) / "cfg")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    vocab = config.vocab_size
    tok = word_tokenizer(vocab)
    tok.save_pretrained(folder)  # a real (word-level) tokenizer: vLLM builds accept it; prompts go in as ids
    routed = args.kind == "routed"
    extra = dict(load_format="dummy", gpu_memory_utilization=args.gpu_memory_utilization)
    if args.capture_sizes:
        extra["compilation_config"] = {"cudagraph_capture_sizes": [int(x) for x in args.capture_sizes.split(",")]}
    settings = VLLMEngineSettings(dtype=args.dtype, max_num_seqs=max(batches), capture=args.capture if routed else "none",
                                  enforce_eager=args.eager, extra=extra)
    t0 = time.perf_counter()
    llm = make_llm(folder, settings, args.prompt_len + args.new_tokens + 8)
    startup = time.perf_counter() - t0
    log(f"{args.kind} engine up in {startup:.1f}s")
    trace = StepTrace(llm.llm_engine) if args.trace else None
    eos = {tok.eos_token_id}
    n = args.new_tokens
    modes = args.modes.split(",")
    out: dict = {"kind": args.kind, "label": args.label, "startup_s": round(startup, 1), "batches": {}}
    params = lambda i: _sampling_params(n, eos, False, 1.0, 1.0, 0)  # noqa: E731 (the backend's own params)
    ready = ReadyEngine(llm, config, eos, lambda layers: {"fingerprint": "dummy", "model_type": config.model_type, "layers": list(layers)},
                        args.capture)
    warm = random_prompts(16, args.prompt_len, vocab, seed=5)  # each code path once (imports, first calls), before any timing
    if routed:
        for stream in (False, True):
            collect_routing_vllm_ids(ready, tok, prompt_frame(16), warm, Path(args.tmp) / f"warm-{stream}", progress=False,
                                     stream_window=None if stream else 0,
                                     generation=GenerationSettings(max_new_tokens=n, batch_size=16), routing=RoutingSettings(shard_sequences=8))
    else:
        stream_generate(llm, warm, params, window=16)
    for b in batches:
        prompts = random_prompts(args.rounds * b, args.prompt_len, vocab, seed=b)  # `rounds` batches of b
        plain_tokens = len(prompts) * args.prompt_len + len(prompts) * n  # prompt + generated, as the issue counts
        window = 2 * b if b == max(batches) else b
        row: dict = {"prompts": len(prompts), "stream_window": window}
        _generate(llm, random_prompts(b, args.prompt_len, vocab, seed=7 + b), params)  # warm-up: a full batch
        if not routed:
            if "sync" in modes:
                _ = trace and trace.take()  # the steps before this mode's timing (warm-ups) are not its own
                stamps, t = [], time.perf_counter()
                outs = []
                for i in range(0, len(prompts), b):
                    outs += _generate(llm, prompts[i : i + b], params)
                    stamps.append(time.perf_counter())
                row["sync"] = {"s": round(stamps[-1] - t, 3), "batch_s": _intervals(t, stamps)}
                if trace:
                    row["sync"]["steps"] = trace.take()
                row["generated_tokens"] = sum(len(o.outputs[0].token_ids) for o in outs)
            if "stream" in modes:
                _ = trace and trace.take()  # the steps before this mode's timing (warm-ups) are not its own
                stamps, t = [], time.perf_counter()
                outs = stream_generate(llm, prompts, params, window=window, batch=b, on_batch=lambda lo, o, st=stamps: st.append(time.perf_counter()))
                row["stream"] = {"s": round(stamps[-1] - t, 3), "batch_s": _intervals(t, stamps)}
                if trace:
                    row["stream"]["steps"] = trace.take()
                row["generated_tokens"] = sum(len(o.outputs[0].token_ids) for o in outs)
        else:
            if "r3_sync" in modes:
                _ = trace and trace.take()  # the steps before this mode's timing (warm-ups) are not its own
                stamps, t = [], time.perf_counter()
                outs = []
                for i in range(0, len(prompts), b):
                    outs += _generate(llm, prompts[i : i + b], params)
                    stamps.append(time.perf_counter())
                row["r3_sync"] = {"s": round(stamps[-1] - t, 3), "batch_s": _intervals(t, stamps)}
                if trace:
                    row["r3_sync"]["steps"] = trace.take()
                row["routed_experts_shape"] = sorted({str(np.asarray(o.outputs[0].routed_experts).shape) for o in outs[:4]})
            df = prompt_frame(len(prompts))
            gen = GenerationSettings(max_new_tokens=n, batch_size=b)
            for mode, stream, shard in (("ours_sync", False, b), ("ours_stream", True, max(b // args.stream_shard_div, 1))):
                if mode not in modes:
                    continue
                common = dict(generation=gen, routing=RoutingSettings(shard_sequences=shard), progress=False,
                              stream_window=window if stream else 0)
                stamps: list[float] = []
                _ = trace and trace.take()
                t = time.perf_counter()
                store = collect_routing_vllm_ids(ready, tok, df, prompts, Path(args.tmp) / f"store-{mode}-{b}",
                                                 on_shard=lambda s, st=stamps: st.append(time.perf_counter()), **common)
                seconds = time.perf_counter() - t
                counts = store.manifest["counts"]
                recorded = counts["prompt_tokens"] + counts["generated_tokens"]
                row[mode] = {"s": round(seconds, 3), "shard_sequences": shard, "shard_s": _intervals(t, stamps),
                             "recorded_tokens": recorded, "recorded_tok_s": round(recorded / seconds, 1), "store_complete": store.complete}
                row["generated_tokens"] = counts["generated_tokens"]
                if trace:
                    row[mode]["steps"] = trace.take()
        for mode in ("sync", "stream", "r3_sync", "ours_sync", "ours_stream"):
            if mode in row:
                row[mode]["plain_equivalent_tok_s"] = round(plain_tokens / row[mode]["s"], 1)
                per = row[mode].get("batch_s") or row[mode].get("shard_s")
                row[mode]["spread"] = _spread(per)
        out["batches"][b] = row
        log(args.kind, b, {k: ({kk: vv for kk, vv in v.items() if kk not in ("batch_s", "shard_s", "steps")} if isinstance(v, dict) else v)
                           for k, v in row.items()})
    return out


def throughput_table(engines: list[dict], batches: list[int]) -> dict:
    """Ours vs plain from engine results in run order (plain, routed, plain, routed, ...): each routed engine is paired
    with the plain engine just before it; per size and mode, the time ratio plain / ours (same prompts, same tokens)
    for every pair, and the median over pairs."""
    pairs, last_plain = [], None
    for e in engines:
        if e.get("kind") == "plain" and "batches" in e:
            last_plain = e
        elif e.get("kind") == "routed" and "batches" in e and last_plain is not None:
            pairs.append((last_plain, e))
    rows = []
    for b in batches:
        get = lambda e, b=b: e["batches"].get(str(b)) or e["batches"].get(b)  # noqa: E731 (JSON keys are strings)
        row: dict = {"batch": b, "pairs": []}
        for plain, routed in pairs:
            p, r = get(plain), get(routed)
            if not p or not r:
                continue
            pair = {"plain": plain.get("label"), "routed": routed.get("label")}
            for ours, base in (("ours_sync", "sync"), ("ours_stream", "stream"), ("ours_stream", "sync"), ("r3_sync", "sync")):
                if ours in r and base in p:
                    pair[f"{ours}/{base}"] = round(p[base]["s"] / r[ours]["s"], 4)
            for k in ("sync", "stream"):
                if k in p:
                    pair[f"plain_{k}_s"] = p[k]["s"]
            for k in ("r3_sync", "ours_sync", "ours_stream"):
                if k in r:
                    pair[f"{k}_s"] = r[k]["s"]
                    if "recorded_tok_s" in r[k]:
                        pair[f"{k}_recorded_tok_s"] = r[k]["recorded_tok_s"]
            row["pairs"].append(pair)
        keys = sorted({k for pr in row["pairs"] for k in pr if k not in ("plain", "routed")})
        row["median"] = {k: round(float(np.median([pr[k] for pr in row["pairs"] if k in pr])), 4) for k in keys}
        rows.append(row)
    return {"pairs": len(pairs), "rows": rows}


def throughput(args) -> dict:
    results: dict = {"engines": []}
    for i, kind in enumerate(args.order.split(",")):
        label = f"{kind}{i // 2 + 1}" if args.order.count(kind) > 1 else kind
        e = sub_section(args, "throughput-engine", ["--kind", kind, "--label", label], timeout=args.engine_timeout)
        e.setdefault("kind", kind)
        e.setdefault("label", label)
        results["engines"].append(e)
        (Path(args.out) / "throughput.json").write_text(json.dumps(results, indent=2, default=str))
    results["table"] = throughput_table(results["engines"], [int(b) for b in args.batches.split(",")])
    return results


def combine(args) -> dict:
    """The table over engine JSONs of several runs (``--inputs a.json,b.json``: ``throughput.json`` files of
    one or more ``throughput`` sections, in run order)."""
    engines = []
    for f in args.inputs.split(","):
        engines += json.loads(Path(f).read_text())["engines"]
    return {"throughput": {"engines": engines, "table": throughput_table(engines, [int(b) for b in args.batches.split(",")])}}


# ------------------------------------------------------------------------------------------------ static decoder
def kernel_breakdown(fn, steps: int) -> dict:
    """CUDA kernel time of ``fn()`` (run ``steps`` times) by kernel, and by the issue's categories."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0 and e.key not in ("", "cudaGraphLaunch"):
            rows.append((e.key, t / steps / 1000.0, e.count // steps))
    rows.sort(key=lambda r: -r[1])
    kernel_rows = [r for r in rows if not r[0].startswith(("aten::", "cuda", "Runtime"))]
    total = sum(r[1] for r in kernel_rows)

    def category(name: str) -> str:
        low = name.lower()
        if "groupproblemshape" in low or "grouped" in low or "group_gemm" in low:
            return "grouped expert GEMM"
        if "fmha" in low or "sdpa" in low or "attention" in low or "flash" in low:
            return "SDPA"
        if "direct_copy" in low or "memcpy" in low or "catarray" in low:
            return "copies"
        if "gemm" in low or "nvjet" in low or "cublas" in low:
            return "dense GEMM"
        if "elementwise" in low or "vectorized" in low or "reduce" in low or "softmax" in low:
            return "elementwise / reductions"
        return "other"

    cats: dict = {}
    for name, ms, _ in kernel_rows:
        cats[category(name)] = cats.get(category(name), 0.0) + ms
    return {
        "ms_per_step": round(total, 3),
        "categories_ms": {k: round(v, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])},
        "categories_share": {k: round(v / total, 3) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])} if total else {},
        "top_kernels": [{"kernel": k[:140], "ms": round(ms, 4), "calls": c} for k, ms, c in kernel_rows[:14]],
    }


def step_profiles(dec, start: int) -> dict:
    """Kernel breakdown of graph replays and of eager steps of ``dec``'s last shape, and the replay time. Each group
    of steps starts with the cache rolled back to ``start`` tokens, so the steps write inside it."""
    import torch

    slot = dec._slot[1]
    row: dict = {}
    with torch.no_grad(), dec._sync_free_experts(), dec._folded_gqa():
        if slot.graph is not None:
            dec._set_lengths(slot, start)
            row["graph_replay_profile"] = kernel_breakdown(slot.graph.replay, 5)
            dec._set_lengths(slot, start)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(10):
                slot.graph.replay()
            torch.cuda.synchronize()
            row["graph_replay_ms"] = round((time.perf_counter() - t) * 100, 2)
        dec._set_lengths(slot, start)
        row["eager_step_profile"] = kernel_breakdown(lambda: dec._forward_step(slot), 2)
    return row


def static(args) -> dict:
    import torch

    from benchmarks.routing_bench import run_store, sync
    from steermoe.generation import GenerationSettings
    from steermoe.routing.recorder import RouterRecorder
    from steermoe.routing.static_decode import StaticDecoder

    device = args.device
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model = build(args.shape, args.static_layers, device, dtype, experts="grouped_mm" if device.startswith("cuda") else None)
    vocab = model.config.vocab_size
    tok = word_tokenizer(vocab)
    b = args.static_batch
    prompts = random_prompts(b * args.static_batches, args.prompt_len, vocab, seed=1)
    params = GenerationSettings(max_new_tokens=args.new_tokens)
    out: dict = {"batch": b, "batches": args.static_batches, "layers": model.config.num_hidden_layers, "variants": {}}
    for name, fold in (("before: repeated KV heads (transformers sdpa)", False), ("after: folded grouped-query SDPA", True)):
        dec = StaticDecoder(model, params, pad_token_id=tok.pad_token_id, eos_token_ids=[tok.eos_token_id], gqa_attention=fold)
        row: dict = {"gqa_attention": dec.gqa_attention, "graph": dec.use_graph}
        with RouterRecorder(model) as rec:
            run_store(model, tok, prompts[:b], params, "inline", Path(args.tmp) / f"warm{fold}", decoder=dec, recorder=rec)  # capture
            sync(device)
            t = time.perf_counter()
            rec_tokens, gen_tokens = run_store(model, tok, prompts, params, "inline", Path(args.tmp) / f"s{fold}", decoder=dec, recorder=rec,
                                               batch=b)
            sync(device)
            s = time.perf_counter() - t
        row.update(seconds=round(s, 3), recorded_tokens=rec_tokens, recorded_tok_s=round(rec_tokens / s, 1),
                   ms_per_decode_step_upper_bound=round(1000 * s / (args.static_batches * args.new_tokens), 2))
        if device.startswith("cuda"):
            try:
                row.update(step_profiles(dec, args.prompt_len))
            except Exception as e:  # the timings above stand; say why the profile is missing
                row["profile_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                traceback.print_exc()
        out["variants"][name] = row
        log("static", name, {k: v for k, v in row.items() if "profile" not in k})
        del dec
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def decoders(args) -> dict:
    """Our own engines at the throughput section's shape and lengths, for the side-by-side table: the static decoder
    (``routing.backend: hf_static``, default settings) at every ``--decoder-batches`` size and HF ``generate`` with
    capture (``routing.backend: hf``) at ``--hf-batch``; each ``--static-batches`` / ``--hf-batches`` timed batches after a
    warm-up (the static decoder's captures its graphs), store + manifest written, one model for both."""
    import torch

    from benchmarks.routing_bench import run_store, sync
    from steermoe.generation import GenerationSettings
    from steermoe.routing.recorder import RouterRecorder
    from steermoe.routing.static_decode import StaticDecoder

    device = args.device
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    t0 = time.perf_counter()
    model = build(args.shape, args.static_layers, device, dtype)
    out: dict = {"layers": model.config.num_hidden_layers, "build_s": round(time.perf_counter() - t0, 1), "engines": {}}
    vocab = model.config.vocab_size
    tok = word_tokenizer(vocab)
    params = GenerationSettings(max_new_tokens=args.new_tokens)
    runs = [("hf_static", int(b), args.static_batches) for b in args.decoder_batches.split(",") if b]
    runs += [("hf_generate", args.hf_batch, args.hf_batches)] if args.hf_batches else []
    with RouterRecorder(model) as rec:
        for engine, b, n in runs:
            dec = StaticDecoder(model, params, pad_token_id=tok.pad_token_id, eos_token_ids=[tok.eos_token_id]) if engine == "hf_static" else None
            prompts = random_prompts(b * n, args.prompt_len, vocab, seed=b)
            warm = random_prompts(b if dec is not None else 8, args.prompt_len, vocab, seed=7 + b)
            warm_params = params if dec is not None else GenerationSettings(max_new_tokens=4)
            run_store(model, tok, warm, warm_params, "inline", Path(args.tmp) / f"warm-{engine}-{b}", decoder=dec, recorder=rec, batch=len(warm))
            sync(device)
            t = time.perf_counter()
            recorded, generated = run_store(model, tok, prompts, params, "inline", Path(args.tmp) / f"{engine}-{b}", decoder=dec, recorder=rec,
                                            batch=b)
            sync(device)
            seconds = time.perf_counter() - t
            row = {"batch": b, "prompts": len(prompts), "s": round(seconds, 3), "recorded_tokens": recorded, "generated_tokens": generated,
                   "recorded_tok_s": round(recorded / seconds, 1),
                   "plain_equivalent_tok_s": round(len(prompts) * (args.prompt_len + args.new_tokens) / seconds, 1),
                   "graph": None if dec is None else dec.use_graph}
            out["engines"][f"{engine}-{b}"] = row
            log("decoders", engine, row)
            del dec
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------------ exactness
def _hf_two_phase(model, tok, prompts, generated, eos, batch):
    from steermoe.routing.hf_backend import teacher_forced_batch
    from steermoe.routing.recorder import RouterRecorder

    routed = []
    with RouterRecorder(model) as rec:
        for i in range(0, len(prompts), batch):
            routed += teacher_forced_batch(model, tok, rec, prompts[i : i + batch], generated[i : i + batch], eos)
    return routed


def agreement(vllm_store, hf_routed) -> dict:
    """Share of (token, layer) expert sets equal, per layer and per segment, over the positions vLLM recorded."""
    seqs = vllm_store.sequences()
    shards = list(vllm_store.iter_shards())
    experts = np.concatenate([s.experts for s in shards])
    seg = np.concatenate([s.segment for s in shards])
    seq = np.concatenate([s.seq for s in shards])
    pos = np.concatenate([s.position for s in shards])
    ref = []
    for sq, sg, p in zip(seq, seg, pos):
        r = hf_routed[sq]
        ref.append(r.prompt_experts[p] if sg == 0 else r.generated_experts[p])
    ref = np.stack(ref)
    same = (np.sort(experts, -1) == np.sort(ref, -1)).all(-1)  # (tokens, layers)
    return {
        "all": round(float(same.mean()), 5), "per_layer": [round(float(v), 5) for v in same.mean(0)],
        "prompt": round(float(same[seg == 0].mean()), 5), "generated": round(float(same[seg != 0].mean()), 5),
        "tokens": int(len(same)), "sequences": int(len(seqs)),
    }


def token_agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    def prefix(x, y):
        n = 0
        for u, v in zip(x, y):
            if u != v:
                break
            n += 1
        return n

    pre = [prefix(x, y) for x, y in zip(a, b)]
    return {"identical_sequences": round(float(np.mean([x == y for x, y in zip(a, b)])), 4),
            "mean_common_prefix": round(float(np.mean(pre)), 2), "mean_length": round(float(np.mean([len(x) for x in a])), 2)}


def saved_folder(args) -> tuple[Path, object, float]:
    """The reduced-depth (``--ex-layers``) random-weight folder both exactness and patched evaluation read."""
    device = args.device
    folder = Path(args.tmp) / "base"
    t0 = time.perf_counter()
    model = build(args.shape, args.ex_layers, device, "bfloat16" if device.startswith("cuda") else "float32")
    tok = word_tokenizer(model.config.vocab_size)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    seconds = round(time.perf_counter() - t0, 1)
    log("saved", folder, seconds)
    return folder, tok, seconds


def patched(args) -> dict:
    """Patched evaluation alone, in every ``--patched-dtypes`` dtype (the fp32 run separates arithmetic from merging)."""
    folder, tok, seconds = saved_folder(args)
    out: dict = {"layers": args.ex_layers, "save_s": seconds, "dtypes": {}}
    for dtype in args.patched_dtypes.split(","):
        try:
            out["dtypes"][dtype] = patched_evaluation(args, folder, tok, dtype)
        except Exception as e:
            out["dtypes"][dtype] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            traceback.print_exc()
    return out


def exactness(args) -> dict:
    import torch

    from steermoe.generation import GenerationSettings
    from steermoe.modeling import load_model
    from steermoe.routing.collect import RoutingSettings
    from steermoe.routing.vllm_backend import (
        ReadyEngine,
        VLLMEngineSettings,
        _eos_ids,
        collect_routing_vllm_ids,
        make_llm,
        vllm_header,
    )

    device = args.device
    tmp = Path(args.tmp)
    folder, tok, seconds = saved_folder(args)
    vocab = tok.eos_token_id + 1
    out: dict = {"layers": args.ex_layers, "save_s": seconds, "dtypes": {}}
    prompts = random_prompts(args.ex_prompts, args.prompt_len, vocab, seed=2)
    eos = _eos_ids(folder, tok)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    extra = dict(gpu_memory_utilization=args.ex_gpu_memory_utilization) if device.startswith("cuda") else {}
    for dtype in args.ex_dtypes.split(","):
        row: dict = {}
        try:
            settings = VLLMEngineSettings(dtype=dtype, max_num_seqs=args.ex_prompts, capture=args.capture, enforce_eager=True, extra=extra)
            from steermoe.evaluation.vllm_generation import _shutdown

            llm = make_llm(folder, settings, args.prompt_len + args.ex_new_tokens + 8)
            try:
                ready = ReadyEngine(llm, config, eos, lambda layers, dtype=dtype: vllm_header(folder, config, layers, dtype), args.capture)
                store = collect_routing_vllm_ids(
                    ready, tok, prompt_frame(len(prompts)), prompts, tmp / f"vllm-{dtype}",
                    generation=GenerationSettings(max_new_tokens=args.ex_new_tokens, batch_size=args.ex_prompts),
                    routing=RoutingSettings(shard_sequences=args.ex_prompts), progress=False,
                )
            finally:
                _shutdown(llm)
                del llm
            seqs = store.sequences()
            generated = [list(g) for g in seqs["generated_token_ids"]]
            hf = load_model(folder, dtype=dtype, device=device if device.startswith("cuda") else "cpu")
            hf_routed = _hf_two_phase(hf, tok, prompts, generated, eos, args.ex_batch)
            row["vllm_vs_hf_two_phase"] = agreement(store, hf_routed)
            from steermoe.routing.hf_backend import generate_batch

            hf_gen = []
            for i in range(0, len(prompts), args.ex_batch):
                hf_gen += generate_batch(hf, tok, prompts[i : i + args.ex_batch], GenerationSettings(max_new_tokens=args.ex_new_tokens))
            row["greedy_tokens_vllm_vs_hf_generate"] = token_agreement(generated, hf_gen)
            row["header_generation"] = store.manifest["generation"]
            row["layers_in_store"] = store.layers
            del hf
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
        except Exception as e:  # fp32 may not run in vLLM on every build: report it
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:400] if str(e) else ''}"
            traceback.print_exc()
        out["dtypes"][dtype] = row
        log("exactness", dtype, {k: v for k, v in row.items() if k != "header_generation"})
    try:
        out["patched_evaluation"] = patched_evaluation(args, folder, tok)
    except Exception as e:
        out["patched_evaluation"] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
        traceback.print_exc()
    return out


def patched_evaluation(args, folder: Path, tok, dtype: str | None = None) -> dict:
    """Answers of base and patched models through vLLM (merged folder) vs HF (load + apply_patch), greedy; ``dtype``
    default: bf16 on a GPU, fp32 on CPU."""
    import torch

    from steermoe.adapters import adapter_for
    from steermoe.evaluation.vllm_generation import merged_patched_folder, vllm_answer_fn
    from steermoe.finetune import load_patched_model
    from steermoe.finetune.experts import prepare_selective
    from steermoe.finetune.patch import save_patch
    from steermoe.generation import GenerationSettings
    from steermoe.modeling import generate, load_model, model_fingerprint
    from steermoe.selection import ExpertSelection

    device = args.device if args.device.startswith("cuda") else "cpu"
    tmp = Path(args.tmp) / f"patched-{dtype}" if dtype else Path(args.tmp)
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    t0 = time.perf_counter()
    cpu_model = load_model(folder, dtype=dtype, device="cpu")
    experts = adapter_for(cpu_model).num_experts(cpu_model.config)
    rng = np.random.default_rng(3)
    chosen = [(layer, int(e)) for layer in range(cpu_model.config.num_hidden_layers) for e in rng.choice(experts, max(2, experts // 8), replace=False)]
    selection = ExpertSelection(chosen, [0.1] * len(chosen), "manual")
    plan = prepare_selective(cpu_model, selection)
    with torch.no_grad():
        for s in plan.slices:
            s.module.rows.mul_(-3.0)
    save_patch(tmp / "patch", plan, model_fingerprint(folder), selection)
    del cpu_model, plan
    merged = merged_patched_folder(folder, tmp / "patch", tmp / "merged", dtype=dtype)
    out: dict = {"dtype": dtype, "selected_experts": len(chosen), "patch_and_merge_s": round(time.perf_counter() - t0, 1)}
    conversations = [[{"role": "user", "content": " ".join(f"t{i}" for i in p)}] for p in random_prompts(args.ex_prompts, args.prompt_len, tok.eos_token_id, 4)]
    extra = {"enforce_eager": True}
    if device == "cuda":
        extra["gpu_memory_utilization"] = args.ex_gpu_memory_utilization
    answers = {}
    # The base model's vLLM-vs-HF agreement (the control) is the exactness section's greedy token figure.
    t = time.perf_counter()
    answer = vllm_answer_fn(merged, tok, GenerationSettings(max_new_tokens=args.ex_new_tokens, batch_size=args.ex_prompts), dtype=dtype, extra=extra)
    answers["vllm_patched"] = answer(conversations, None).generated_token_ids
    out["vllm_patched_s"] = round(time.perf_counter() - t, 1)
    for name in ("base", "patched"):
        hf = load_model(folder, dtype=dtype, device=device) if name == "base" else load_patched_model(folder, tmp / "patch", dtype=dtype, device=device)
        answers[f"hf_{name}"] = generate(hf, tok, conversations, GenerationSettings(max_new_tokens=args.ex_new_tokens, batch_size=args.ex_batch), progress=False).generated_token_ids
        del hf
        if device == "cuda":
            torch.cuda.empty_cache()
    out["vllm_vs_hf_patched"] = token_agreement(answers["vllm_patched"], answers["hf_patched"])
    out["hf_patched_vs_hf_base"] = token_agreement(answers["hf_patched"], answers["hf_base"])
    log("patched evaluation", out)
    return out


# ------------------------------------------------------------------------------------------------ driver
SECTIONS = {"throughput": throughput, "throughput-engine": throughput_engine, "static": static, "decoders": decoders, "exactness": exactness,
            "patched": patched, "combine": combine}


def sub_section(args, name: str, more: list[str] | None = None, timeout: float = 600) -> dict:
    """Run one section in a fresh process (its own CUDA context and vLLM engines); its JSON, or the error."""
    result = Path(args.out) / f"{name}{'-' + more[-1] if more else ''}.json"
    cmd = [sys.executable, __file__, name, "--json", str(result)] + [a for a in _passthrough(args)] + (more or [])
    log("run", " ".join(cmd[2:]))
    t = time.perf_counter()
    # Its own session: on timeout the whole group goes (vLLM's engine-core process too, with the card's memory).
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        rc = "timeout"
    seconds = round(time.perf_counter() - t, 1)
    if result.exists():
        data = json.loads(result.read_text())
        data["wall_s"] = seconds
        return data
    return {"error": f"{name} exited with {rc} after {seconds}s", "wall_s": seconds}


def _passthrough(args) -> list[str]:
    keep = []
    for key, value in vars(args).items():
        if key in ("section", "json", "sections", "kind", "label", "order", "inputs") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        keep += [flag] if value is True else [flag, str(value)]
    return keep


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("section", choices=["all", *SECTIONS])
    ap.add_argument("--out", default=None, help="Folder for the JSON files and stores' scratch (default: a temp dir).")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--sections", default="throughput,static,exactness")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-30b-a3b")
    ap.add_argument("--layers", type=int, default=None, help="Throughput: fewer layers (smoke runs).")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", default="128,256,512")
    ap.add_argument("--kind", default="plain")
    ap.add_argument("--label", default=None, help="Throughput engine: its name in the table (plain1, routed1, ...).")
    ap.add_argument("--order", default="plain,routed", help="Throughput: the engines, in run order, each in its own process "
                    "(plain,routed,plain,routed: interleaved pairs).")
    ap.add_argument("--modes", default="sync,stream,ours_sync,ours_stream", help="Throughput: what each engine runs (add r3_sync: "
                    "vLLM's generate with the capture on, no records).")
    ap.add_argument("--stream-shard-div", type=int, default=4, help="Throughput ours_stream: shards of batch / this sequences.")
    ap.add_argument("--inputs", default=None, help="Section combine: throughput.json files, comma-separated, in run order.")
    ap.add_argument("--rounds", type=int, default=6, help="Throughput: batches per size and mode.")
    ap.add_argument("--trace", action="store_true", help="Throughput: time every engine step (stalls: StepTrace).")
    ap.add_argument("--eager", action="store_true", help="Throughput engines without CUDA graphs / compile (CPU smoke).")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--capture-sizes", default="1,2,4,8,16,32,64,128,256,512", help="CUDA-graph batch sizes ('' : vLLM's default).")
    ap.add_argument("--engine-timeout", type=float, default=300)
    ap.add_argument("--static-layers", type=int, default=None)
    ap.add_argument("--static-batch", type=int, default=256)
    ap.add_argument("--static-batches", type=int, default=2)
    ap.add_argument("--decoder-batches", default="128,256", help="Section decoders: the static decoder's batch sizes.")
    ap.add_argument("--hf-batch", type=int, default=128, help="Section decoders: HF generate's batch size.")
    ap.add_argument("--hf-batches", type=int, default=2, help="Section decoders: HF generate's timed batches (0: none).")
    ap.add_argument("--ex-layers", type=int, default=4)
    ap.add_argument("--ex-prompts", type=int, default=32)
    ap.add_argument("--ex-new-tokens", type=int, default=64)
    ap.add_argument("--ex-batch", type=int, default=32)
    ap.add_argument("--ex-dtypes", default="bfloat16,float32")
    ap.add_argument("--ex-gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--patched-dtypes", default="float32", help="Section 'patched': the dtypes of the patched evaluation.")
    ap.add_argument("--capture", default="routed_experts", help="vLLM capture for exactness (hooks: CPU smoke runs).")
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args(argv)
    args.out = args.out or tempfile.mkdtemp(prefix="vllm-bench-")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    if args.section == "all":
        results = {"command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        for name in args.sections.split(","):
            results[name] = throughput(args) if name == "throughput" else sub_section(args, name, timeout=args.engine_timeout * 2)
            (Path(args.out) / "vllm_bench.json").write_text(json.dumps(results, indent=2, default=str))
        _print(results)
        return results
    if args.section == "combine":
        results = combine(args)
        _print(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        return results
    args.tmp = args.tmp or tempfile.mkdtemp(prefix=f"vllm-bench-{args.section}-", dir=os.environ.get("BENCH_TMP"))
    import torch

    if args.device.startswith("cuda"):
        results = {"device": torch.cuda.get_device_name()}
    else:
        results = {"device": "cpu"}
    results.update(SECTIONS[args.section](args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return results


def _print(results: dict) -> None:
    t = results.get("throughput", {})
    for e in t.get("engines", []):
        print(f"engine {e.get('label')}: startup {e.get('startup_s')} s, wall {e.get('wall_s')} s {e.get('error', '')}")
    rows = t.get("table", {}).get("rows", [])
    if rows:
        print(f"\n{t['table']['pairs']} interleaved pair(s); medians over pairs (time ratio plain / ours; 1.0 = as fast as plain)")
        keys = sorted({k for r in rows for k in r["median"]})
        print("| batch | " + " | ".join(keys) + " |")
        print("|---:|" + "---:|" * len(keys))
        for r in rows:
            print(f"| {r['batch']} | " + " | ".join(f"{r['median'].get(k, float('nan')):,.4g}" for k in keys) + " |")
    for name, row in results.get("static", {}).get("variants", {}).items():
        print(f"static {name}: {row.get('recorded_tok_s')} tok/s, replay {row.get('graph_replay_ms')} ms/step, "
              f"categories {row.get('graph_replay_profile', {}).get('categories_ms')}")
    for name, row in results.get("decoders", {}).get("engines", {}).items():
        print(f"decoders {name}: {row.get('s')} s, {row.get('recorded_tok_s')} recorded tok/s, {row.get('plain_equivalent_tok_s')} prompt+generated tok/s")
    ex = results.get("exactness", {})
    for dtype, row in ex.get("dtypes", {}).items():
        a = row.get("vllm_vs_hf_two_phase", {})
        print(f"exactness {dtype}: {a.get('all')} (prompt {a.get('prompt')}, generated {a.get('generated')}) per layer {a.get('per_layer')} "
              f"tokens {row.get('greedy_tokens_vllm_vs_hf_generate')} {row.get('error', '')}")
    if ex.get("patched_evaluation"):
        print("patched evaluation:", json.dumps(ex["patched_evaluation"]))
    for dtype, row in results.get("patched", {}).get("dtypes", {}).items():
        print(f"patched evaluation {dtype}:", json.dumps(row))


if __name__ == "__main__":
    main()
