"""Cross-implementation check: vLLM (an engine nobody here wrote) must route exactly like our HF capture.

The vLLM side runs in a subprocess: vLLM's CPU worker binds OpenMP threads and replaces
``torch.set_num_threads`` for the whole process, which must not leak into the rest of the test session.
The engine runs with ``max_num_seqs=3`` and ``max_num_batched_tokens=32`` while every prompt is longer
than 32 tokens, so every prompt is prefilled in chunks and steps mix requests (prefill + decode).

This module also holds the vLLM helpers of ``test_vllm_judge_server.py`` (the demo model vLLM can run,
and the OpenAI-compatible server): when both modules run, the server is launched before this module's
engine starts, so the two start-ups (each mostly importing vLLM) overlap on the CI's two cores.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from steermoe.routing.vllm_backend import vllm_available

_SKIP = pytest.mark.skipif(not vllm_available(), reason="vllm is not installed: run .ci/install-vllm.sh (the [vllm] extra)")


def needs_vllm(test):
    """Marks a test ``vllm`` and skips it, saying why, where vllm cannot be imported."""
    return pytest.mark.vllm(_SKIP(test))

ROOT = Path(__file__).resolve().parents[1]
# Head sizes vLLM's CPU attention kernels accept (vllm/v1/attention/backends/cpu_attn.py).
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
MAX_NEW_TOKENS = 10
MAX_BATCHED_TOKENS = 32
MAX_NUM_SEQS = 3

_VLLM_SCRIPT = r"""
import json, sys, time
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
from steermoe.demo.prompt_sets import load_demo_prompts
from steermoe.generation import GenerationSettings
from steermoe.routing.collect import RoutingSettings
from steermoe.routing.vllm_backend import VLLMEngineSettings, collect_routing_vllm, make_llm
demo = load_demo_prompts(split="train").set_index("id", drop=False)
prompts = demo.loc[args["ids"]].reset_index(drop=True)
settings = VLLMEngineSettings(max_num_seqs=args["max_num_seqs"], max_num_batched_tokens=args["max_batched_tokens"], capture="hooks")
llm = make_llm(args["model"], settings, max_model_len=256)
t1 = time.perf_counter()
common = dict(generation=GenerationSettings(max_new_tokens=args["max_new_tokens"], batch_size=len(prompts)), progress=False,
              engine_settings=settings, llm=llm)
routing = RoutingSettings(record_logits=True, record_weights=True, shard_sequences=4)
collect_routing_vllm(args["model"], prompts, args["inline"], routing=routing, **common)
t2 = time.perf_counter()
collect_routing_vllm(args["model"], prompts, args["two_phase"], routing=RoutingSettings(mode="two_phase", shard_sequences=4), **common)
t3 = time.perf_counter()
print("TIMES " + json.dumps({"startup": t1 - t0, "inline": t2 - t1, "two_phase": t3 - t2}))
# The step-loop driver of the GPU path (continuous batching, more requests than max_num_seqs, a window of 4) against
# llm.generate on the same engine: same greedy tokens, prompt order kept.
from steermoe.modeling import load_tokenizer
from steermoe.routing.collect import tokenize_prompts
from steermoe.routing.vllm_backend import _eos_ids, _generate, _sampling_params, stream_generate
ids = tokenize_prompts(load_tokenizer(args["model"]), prompts, {})
eos = _eos_ids(args["model"], load_tokenizer(args["model"]))
params = lambda s: _sampling_params(args["max_new_tokens"], eos, False, 1.0, 1.0, None)
batches = []
streamed = stream_generate(llm, ids, params, window=4, batch=4, on_batch=lambda lo, outs: batches.append([lo, len(outs)]))
plain = _generate(llm, ids, params)
print("STREAM " + json.dumps({"stream": [list(o.outputs[0].token_ids) for o in streamed], "batches": batches,
                              "generate": [list(o.outputs[0].token_ids) for o in plain]}))
"""


def vllm_demo_model_path(request, tmp_path_factory) -> Path:
    """The shared tiny demo model when vLLM can run it, else the same recipe with a head size vLLM's CPU kernels support."""
    from steermoe.demo.model import ensure_demo_model
    from steermoe.demo.recipe import DemoRecipe

    recipe = DemoRecipe.tiny()
    if recipe.head_dim in VLLM_CPU_HEAD_DIMS:
        return Path(request.getfixturevalue("tiny_demo_model"))
    cache = tmp_path_factory.getbasetemp() / "vllm-demo-models"
    return ensure_demo_model(cache_dir=cache, recipe=replace(recipe, head_dim=32), progress=False)


SERVED_NAME = "steermoe-demo"
# The judge rubric is longer than the demo model's trained context; positions past it still compute (quality is moot).
SERVER_MAX_MODEL_LEN = 2048


class VLLMServer:
    """``python -m vllm.entrypoints.openai.api_server`` for a model on a free local port, in its own session."""

    def __init__(self, model: Path, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", SERVED_NAME,
            "--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager", "--dtype", "float32", "--no-enable-prefix-caching",
            "--max-model-len", str(SERVER_MAX_MODEL_LEN), "--hf-overrides", json.dumps({"max_position_embeddings": SERVER_MAX_MODEL_LEN}),
            "--max-num-seqs", "4", "--disable-log-stats",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
        self.started = time.perf_counter()
        with open(log, "w") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.ready_after: float | None = None

    def wait(self, timeout: float) -> str:
        """The base URL once ``/health`` answers 200; fails the test with the log tail otherwise."""
        while self.ready_after is None:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if time.perf_counter() - self.started > timeout:
                pytest.fail(f"vLLM server not healthy after {timeout}s:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.ready_after = time.perf_counter() - self.started
            except OSError:
                time.sleep(1.0)
        return self.base

    def stop(self) -> None:
        # The API server and the engine/worker processes it starts share the session we made for it.
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


_SERVERS: dict[str, VLLMServer] = {}


def launch_server(model: Path, log_dir: Path) -> VLLMServer:
    """Start (once per model) the server; returns at once."""
    if str(model) not in _SERVERS:
        log_dir.mkdir(parents=True, exist_ok=True)
        _SERVERS[str(model)] = VLLMServer(model, log_dir / "server.log")
    return _SERVERS[str(model)]


@atexit.register
def stop_servers() -> None:
    while _SERVERS:
        _SERVERS.popitem()[1].stop()


def server_log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "vllm-server"


@pytest.fixture(scope="module")
def vllm_model(request, tmp_path_factory) -> Path:
    return vllm_demo_model_path(request, tmp_path_factory)


@pytest.fixture(scope="module")
def prompts():
    import pandas as pd

    from steermoe.demo.prompt_sets import load_demo_prompts

    df = load_demo_prompts(split="train")
    # The longest prompts of each group, so every one needs several prefill chunks whatever the demo wording.
    df = df.assign(_chars=df["prompt"].str.len()).sort_values(["_chars", "id"], ascending=[False, True]).drop(columns="_chars")
    picked = [df[df["label"] == "unsafe"].head(4), df[df["category"] == "borderline"].head(2), df[(df["label"] == "safe")].head(3)]

    return pd.concat(picked).drop_duplicates("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def stores(request, vllm_model, prompts, tmp_path_factory):
    """HF (in this process) and vLLM inline + two-phase (subprocess) stores over the same prompts."""
    if any("test_vllm_judge_server" in item.nodeid for item in request.session.items):
        launch_server(vllm_model, server_log_dir(tmp_path_factory))  # overlaps its start-up with ours
    from steermoe.generation import GenerationSettings
    from steermoe.modeling import load_model, load_tokenizer
    from steermoe.routing import collect_routing
    from steermoe.routing.collect import RoutingSettings

    out = tmp_path_factory.mktemp("vllm-routing")
    tok = load_tokenizer(vllm_model)
    model = load_model(vllm_model, "float32", "cpu")
    hf = collect_routing(
        model, tok, prompts, out / "hf", generation=GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, batch_size=4),
        routing=RoutingSettings(shard_sequences=4, record_logits=True, record_weights=True), progress=False,
    )
    args = {
        "model": str(vllm_model), "ids": list(prompts["id"]), "inline": str(out / "vllm"), "two_phase": str(out / "vllm2"),
        "max_new_tokens": MAX_NEW_TOKENS, "max_num_seqs": MAX_NUM_SEQS, "max_batched_tokens": MAX_BATCHED_TOKENS,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _VLLM_SCRIPT, json.dumps(args)], capture_output=True, text=True, timeout=420, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, f"vLLM subprocess failed:\n{proc.stderr[-4000:]}"
    times = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("TIMES "))[6:])
    stream = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("STREAM "))[7:])
    print(f"vLLM subprocess {time.perf_counter() - started:.1f}s: {times}")
    from steermoe.routing import RoutingStore

    return {"hf": hf, "vllm": RoutingStore(out / "vllm"), "two_phase": RoutingStore(out / "vllm2"), "tokenizer": tok, "stream": stream}


def _tokens(store, **kw):
    shards = list(store.iter_shards(**kw))
    cat = {k: np.concatenate([getattr(s, k) for s in shards]) for k in ("seq", "segment", "position", "token_id", "experts")}
    for k in ("weights", "logits"):
        parts = [getattr(s, k) for s in shards]
        cat[k] = None if any(p is None for p in parts) else np.concatenate(parts)
    return cat


@needs_vllm
def test_prompts_force_chunked_prefill_and_mixed_batches(stores, prompts):
    lengths = stores["hf"].sequences()["prompt_tokens"]
    assert lengths.min() > MAX_BATCHED_TOKENS, "every prompt must need more than one prefill chunk"
    assert len(prompts) > MAX_NUM_SEQS, "more prompts than the engine decodes at once"


@needs_vllm
def test_streamed_step_loop_answers_as_llm_generate(stores, prompts):
    s = stores["stream"]
    assert len(s["stream"]) == len(prompts) > 4  # more requests than the window and than max_num_seqs
    assert s["stream"] == s["generate"]  # same greedy tokens, in prompt order
    assert s["batches"] == [[lo, min(4, len(prompts) - lo)] for lo in range(0, len(prompts), 4)]
    assert all(len(t) > 0 for t in s["stream"])


@needs_vllm
def test_vllm_generates_the_same_tokens_as_hf(stores):
    hf, vl = stores["hf"].sequences(), stores["vllm"].sequences()
    assert list(hf["prompt_id"]) == list(vl["prompt_id"])
    for a, b in zip(hf["prompt_token_ids"], vl["prompt_token_ids"]):
        assert list(a) == list(b)
    for pid, a, b in zip(hf["prompt_id"], hf["generated_token_ids"], vl["generated_token_ids"]):
        assert list(a) == list(b), f"{pid}: vLLM generated {list(b)}, HF {list(a)}"
    assert list(hf["stop"]) == list(vl["stop"]) and list(hf["generated_text"]) == list(vl["generated_text"])
    assert vl["generated_tokens"].sum() > 0


@needs_vllm
def test_vllm_topk_sets_equal_hf_on_every_token(stores):
    hf, vl = _tokens(stores["hf"]), _tokens(stores["vllm"])
    for key in ("seq", "segment", "position", "token_id"):
        assert np.array_equal(hf[key], vl[key]), key
    assert vl["experts"].min() >= 0, "a position was never recorded"
    same = (np.sort(hf["experts"], -1) == np.sort(vl["experts"], -1)).all(-1)  # (tokens, layers)
    bad = np.argwhere(~same)
    assert same.all(), f"{len(bad)} (token, layer) sets differ, first: token {bad[0][0]} layer {bad[0][1]}"
    assert (vl["segment"] == 1).sum() > 0 and (vl["segment"] == 0).sum() > 0


@needs_vllm
def test_vllm_logits_and_weights_match_hf(stores):
    hf, vl = _tokens(stores["hf"], logits=True, weights=True), _tokens(stores["vllm"], logits=True, weights=True)
    assert vl["logits"] is not None and vl["weights"] is not None
    np.testing.assert_allclose(vl["logits"].astype(np.float32), hf["logits"].astype(np.float32), atol=2e-3)
    # Weights are per chosen expert, in the router's order: compare them matched by expert id.
    order_h, order_v = np.argsort(hf["experts"], -1), np.argsort(vl["experts"], -1)
    wh = np.take_along_axis(hf["weights"].astype(np.float32), order_h, -1)
    wv = np.take_along_axis(vl["weights"].astype(np.float32), order_v, -1)
    np.testing.assert_allclose(wv, wh, atol=2e-3)
    # The ids vLLM dispatched to are the softmax top-k of the gate logits it produced (Qwen3-MoE's rule).
    top = np.sort(np.argsort(-vl["logits"].astype(np.float32), -1, kind="stable")[..., : vl["experts"].shape[-1]], -1)
    agree = (top == np.sort(vl["experts"], -1)).all(-1).mean()
    assert agree > 0.999  # fp16-stored logits may tie where fp32 did not


@needs_vllm
def test_vllm_store_header_matches_hf(stores):
    hm, vm = stores["hf"].manifest, stores["vllm"].manifest
    assert vm["model"] == hm["model"]
    assert vm["tokenizer"] == hm["tokenizer"] and vm["prompts"] == hm["prompts"]
    assert vm["generation"]["backend"] == "vllm" and hm["generation"]["backend"] == "hf"
    assert stores["vllm"].complete
    stores["vllm"].verify()


@needs_vllm
def test_vllm_two_phase_agrees_with_inline(stores):
    inline, two = _tokens(stores["vllm"]), _tokens(stores["two_phase"])
    for key in ("seq", "segment", "position", "token_id"):
        assert np.array_equal(inline[key], two[key]), key
    same = (np.sort(inline["experts"], -1) == np.sort(two["experts"], -1)).all(-1)
    assert same.mean() >= 0.999
    assert stores["two_phase"].manifest["generation"]["mode"] == "two_phase"


def test_moe_layer_indices_agree_with_the_hf_adapters():
    """The layers read from vLLM's routed_experts (GPU path) are the MoE layers our HF adapters find."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from steermoe.adapters import adapter_for, moe_layers
    from steermoe.routing.vllm_backend import _moe_layer_indices

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    cases = {
        "qwen3_moe": dict(moe_intermediate_size=16, num_experts=8, num_experts_per_tok=2, head_dim=8, mlp_only_layers=[1]),
        "deepseek_v3": dict(
            n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=2,
            n_group=2, topk_group=1, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
        ),
    }
    for model_type, extra in cases.items():
        config = AutoConfig.for_model(model_type, **small, **extra)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        expected = [m.layer for m in moe_layers(model)]
        assert _moe_layer_indices(config, adapter_for(config)) == expected, model_type
        assert len(expected) < 4  # the case really has dense layers


def test_external_request_id_strips_vllms_suffix():
    from steermoe.routing.vllm_backend import _external_id

    assert _external_id("12-3f9a0c1d") == "12"
    assert _external_id("batch-7-0badc0de") == "batch-7"


def test_softmax_topk_weights_follow_the_routing_rule():
    from steermoe.routing.vllm_backend import _softmax_topk_weights

    logits = np.array([[[2.0, 1.0, 0.0, -1.0]]], dtype=np.float32)  # (tokens=1, layers=1, E=4)
    experts = np.array([[[1, 0]]], dtype=np.int16)
    probs = np.exp(logits[0, 0]) / np.exp(logits[0, 0]).sum()
    w = _softmax_topk_weights(logits, experts, normalise=False)
    np.testing.assert_allclose(w[0, 0], probs[[1, 0]], atol=1e-3)
    wn = _softmax_topk_weights(logits, experts, normalise=True)
    np.testing.assert_allclose(wn[0, 0], probs[[1, 0]] / probs[[1, 0]].sum(), atol=1e-3)


def test_collect_routing_vllm_rejects_a_bad_mode_and_no_prompts(tmp_path, prompt_rows):
    import pandas as pd

    from steermoe.errors import InputError
    from steermoe.routing.collect import RoutingSettings
    from steermoe.routing.vllm_backend import collect_routing_vllm

    with pytest.raises(InputError, match="routing.mode"):
        RoutingSettings(mode="streaming")
    with pytest.raises(InputError, match="no prompts"):
        collect_routing_vllm(tmp_path, pd.DataFrame(prompt_rows).iloc[:0], tmp_path / "out")


def _r3_array(tokens: int, n_layers: int, k: int, dense: Sequence[int] = ()) -> np.ndarray:
    """What vLLM's routed_experts holds for one request: a row for every position fed and every decoder layer (dense
    layers never written: zero), expert ids as uint8. Ids encode (position, layer) so slicing errors show."""
    pos = np.arange(tokens)[:, None, None]
    layer = np.arange(n_layers)[None, :, None]
    ids = ((pos * 7 + layer * 3 + np.arange(k)[None, None, :]) % 120).astype(np.uint8)
    ids[:, list(dense)] = 0
    return ids


def test_r3_records_every_fed_token_and_only_moe_layers():
    from steermoe.routing.records import shard_tables
    from steermoe.routing.vllm_backend import r3_routing

    prompt, layers, k = [5, 6, 7, 8], [1, 3], 2  # layers 0 and 2 dense (DeepSeek-V3-style)
    for generated, stop in (([11, 12, 13], "length"), ([11, 2], "eos")):
        routed = _r3_array(len(prompt) + len(generated) - 1, 4, k, dense=[0, 2])  # the last token was never fed
        r = r3_routing(prompt, generated, stop, routed, layers, "text")
        r.check()
        assert not r.last_token_fed
        assert r.prompt_experts.shape == (4, 2, k) and r.generated_experts.shape == (len(generated) - 1, 2, k)
        assert r.prompt_experts.dtype == np.int16
        np.testing.assert_array_equal(r.prompt_experts, routed[:4][:, layers])
        np.testing.assert_array_equal(r.generated_experts, routed[4:][:, layers])
        assert r.recorded_generated_ids == generated[:-1]
        _, tokens = shard_tables(0, [{"id": "a"}], [r])
        assert tokens.num_rows == len(prompt) + len(generated) - 1


def test_r3_refuses_missing_or_short_routing():
    from steermoe.routing.vllm_backend import routed_rows

    with pytest.raises(RuntimeError, match="enable_return_routed_experts"):
        routed_rows(None, 3, [0])
    with pytest.raises(RuntimeError, match="at least 5 positions"):
        routed_rows(_r3_array(4, 2, 2), 5, [0, 1])
    with pytest.raises(RuntimeError, match="3 layers"):
        routed_rows(_r3_array(6, 2, 2), 5, [0, 2])


def test_r3_store_header_says_the_last_token_is_not_recorded():
    from steermoe.generation import GenerationSettings
    from steermoe.routing.collect import GENERATION_SEGMENT
    from steermoe.routing.vllm_backend import generation_header

    sampled = GenerationSettings(max_new_tokens=8, batch_size=4, do_sample=True, temperature=0.7, top_p=0.9, seed=3)
    r3 = generation_header("inline", "routed_experts", sampled)
    hooks = generation_header("inline", "hooks", sampled)
    assert r3["last_token_recorded"] is False and hooks["last_token_recorded"] is True
    assert r3["generation_segment"] != GENERATION_SEGMENT == hooks["generation_segment"]
    assert r3["capture"] == "routed_experts" and (r3["temperature"], r3["top_p"], r3["seed"]) == (0.7, 0.9, 3)
    assert "seed + s" in r3["seeds"]


def test_prefetch_generates_the_next_planned_batch_while_the_current_is_recorded():
    from steermoe.routing.vllm_backend import _Prefetch

    events: list = []

    def generate(chunk, first):
        events.append(("start", first))
        time.sleep(0.05)
        events.append(("end", first))
        return [first] * len(chunk)

    ids = [[i] for i in range(5)]
    prefetch = _Prefetch(generate, ids)
    prefetch.plan([(0, 2), (2, 4), (4, 5)])
    try:
        deadline = time.perf_counter() + 5  # the first planned batch starts at plan(), before anyone asks for it
        while ("end", 0) not in events and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert ("end", 0) in events
        prefetch.plan([(0, 2), (2, 4), (4, 5)])  # planned again (run_collection after the early plan): not restarted
        assert prefetch.outputs(ids, ids[0:2], 0) == [0, 0]
        deadline = time.perf_counter() + 5  # "recording" batch 0: batch 1 generates meanwhile, unasked
        while ("end", 2) not in events and time.perf_counter() < deadline:
            time.sleep(0.01)
        assert ("end", 2) in events
        assert prefetch.outputs(ids, ids[2:4], 2) == [2, 2]
        assert prefetch.outputs(ids, ids[4:5], 4) == [4]
    finally:
        prefetch.close()
    assert [e for e in events if e[0] == "start"] == [("start", 0), ("start", 2), ("start", 4)]  # each batch once


def test_run_collection_announces_exactly_the_batches_it_runs(tmp_path):
    from steermoe.routing.collect import fresh_plan, run_collection
    from steermoe.routing.records import SequenceRouting

    asked, planned = [], []

    def run_batch(chunk, first_seq):
        asked.append((first_seq, first_seq + len(chunk)))
        return [SequenceRouting(list(p), [9], "t", np.zeros((len(p), 1, 1), np.int16), np.zeros((1, 1, 1), np.int16)) for p in chunk]

    import pandas as pd

    rows = pd.DataFrame({"id": [f"p{i}" for i in range(7)], "label": "safe"})
    ids = [[1, 2]] * 7
    header = {"model": {"layers": [0], "num_experts": 2, "top_k": 1}}
    kw = dict(batch_size=2, shard_sequences=3, progress=False, on_plan=planned.extend)
    early = fresh_plan(tmp_path / "s", 7, 2, 3)  # known before any header: what the vLLM backend hands its engine first
    run_collection(rows, ids, tmp_path / "s", header, run_batch, **kw)
    assert early == planned == asked == [(0, 2), (2, 3), (3, 5), (5, 6), (6, 7)]
    assert fresh_plan(tmp_path / "s", 7, 2, 3) is None  # a store is there: its header is checked before anything runs
    for lost in [*(tmp_path / "s").glob("shard-00001.*"), *(tmp_path / "s").glob("shard-00002.*")]:
        lost.unlink()  # resume: only the shards missing from disk are planned (and run)
    asked.clear(), planned.clear()
    run_collection(rows, ids, tmp_path / "s", header, run_batch, **kw)
    assert planned == asked == [(3, 5), (5, 6), (6, 7)]
