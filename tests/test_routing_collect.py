"""collect_routing: inline vs two-phase agreement, pads and post-EOS never recorded, resume, OOM, sampling."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from steermoe.routing import GENERATION, PROMPT, RoutingStore, collect_routing
from tests.routing_fixtures import ARCHS, make_model, make_prompts, make_tokenizer, one_thread, recorded_tokens, routing_kwargs  # noqa: F401 (autouse fixture)

KW = dict(max_new_tokens=10, batch_size=4, shard_sequences=4, progress=False)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_inline_and_two_phase_agree(arch, tok, tmp_path):
    model = make_model(arch)
    prompts = make_prompts(6)
    inline = collect_routing(model, tok, prompts, tmp_path / "inline", **routing_kwargs(mode="inline", **KW))
    two = collect_routing(model, tok, prompts, tmp_path / "two", **routing_kwargs(mode="two_phase", **KW))
    a, b = recorded_tokens(inline), recorded_tokens(two)
    for x, y in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(x, y)  # same tokens, same positions
    agree = (a[4] == b[4]).all(-1).mean()  # per (token, layer)
    assert agree >= 0.999, f"{arch}: inline and two-phase agree on {agree:.4%} of (token, layer) sets"
    assert inline.manifest["counts"]["generated_tokens"] > 0
    if arch == "deepseek_v3":
        assert inline.layers == [1, 2] and inline.manifest["model"]["dense_layers"] == [0]
        assert inline.manifest["model"]["shared_experts"] == ["shared_experts"]


@pytest.fixture(scope="module")
def early_eos_model(tok):
    """A qwen3 model whose extra EOS id is a token some (not all) greedy answers produce mid-way."""
    from steermoe.generation import GenerationSettings
    from steermoe.routing.collect import tokenize_prompts
    from steermoe.routing.hf_backend import generate_batch

    model = make_model("qwen3_moe", seed=3)
    ids = tokenize_prompts(tok, make_prompts(8), None)
    gens = generate_batch(model, tok, ids, GenerationSettings(max_new_tokens=10))
    counts = {}
    for g in gens:
        for t in set(g[1:8]):
            counts[t] = counts.get(t, 0) + 1
    stop = next(t for t, c in sorted(counts.items(), key=lambda kv: kv[1]) if 0 < c < len(gens))
    model.generation_config.eos_token_id = [2, stop]
    return model, stop


def test_pads_and_tokens_after_eos_are_never_recorded(early_eos_model, tok, tmp_path):
    model, stop = early_eos_model
    prompts = make_prompts(8)
    store = collect_routing(model, tok, prompts, tmp_path / "s", **routing_kwargs(**{**KW, "batch_size": 8}))
    seqs = store.sequences()
    assert (seqs["stop"] == "eos").any() and (seqs["stop"] == "length").any()
    seq, segment, position, token_id, experts = recorded_tokens(store)
    for row in seqs.itertuples():
        mine = seq == row.seq
        gen = list(row.generated_token_ids)
        expected_gen = gen[:-1] if row.stop == "eos" else gen
        if row.stop == "eos":
            assert gen[-1] == stop and stop not in gen[:-1]
        np.testing.assert_array_equal(token_id[mine & (segment == PROMPT)], row.prompt_token_ids)
        np.testing.assert_array_equal(token_id[mine & (segment == GENERATION)], expected_gen)
        assert row.generated_tokens == len(expected_gen) and row.prompt_tokens == len(row.prompt_token_ids)
    assert (token_id != tok.pad_token_id).all()
    two = recorded_tokens(collect_routing(model, tok, prompts, tmp_path / "two", **routing_kwargs(mode="two_phase", **{**KW, "batch_size": 8})))
    for x, y in zip(two, (seq, segment, position, token_id, experts)):
        np.testing.assert_array_equal(x, y)  # two-phase trims at EOS the same way
    # Padding leaks nowhere: a sequence routed alone (no pads) gets the same prompt routing as in its padded batch.
    alone = collect_routing(model, tok, prompts.iloc[[0]].reset_index(drop=True), tmp_path / "alone", **routing_kwargs(**KW))
    a = recorded_tokens(alone)
    first = (seq == 0) & (segment == PROMPT)
    np.testing.assert_array_equal(a[4][a[1] == PROMPT], experts[first])


def test_killed_run_resumes_to_byte_identical_shards(tok, tmp_path):
    model = make_model("mixtral")
    prompts = make_prompts(10)
    kw = {**KW, "batch_size": 2, "shard_sequences": 4, "do_sample": True, "seed": 7}
    full = collect_routing(model, tok, prompts, tmp_path / "full", **routing_kwargs(**kw))

    def die_after_first(index):
        if index == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect_routing(model, tok, prompts, tmp_path / "resumed", **routing_kwargs(on_shard=die_after_first, **kw))
    assert not RoutingStore(tmp_path / "resumed").complete
    (tmp_path / "resumed" / ".shard-00001.tokens.parquet.tmp-1").write_bytes(b"half-written")  # leftover of a kill
    written = []
    resumed = collect_routing(model, tok, prompts, tmp_path / "resumed", **routing_kwargs(on_shard=written.append, **kw))
    assert written == [1, 2]  # only the missing shards were recomputed
    assert resumed.complete and resumed.manifest["counts"] == full.manifest["counts"]
    files = sorted(p.name for p in (tmp_path / "full").glob("shard-*"))
    assert files == sorted(p.name for p in (tmp_path / "resumed").iterdir() if p.name.startswith("shard-")) and len(files) == 6
    for name in files:
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "resumed" / name).read_bytes(), name
    assert resumed.manifest["shards"] == full.manifest["shards"]
    resumed.verify()
    again = []
    collect_routing(model, tok, prompts, tmp_path / "resumed", **routing_kwargs(on_shard=again.append, **kw))
    assert again == []  # a complete store is reused as is


def test_resume_with_other_settings_is_refused(tok, tmp_path):
    from steermoe.errors import InputError

    model = make_model("olmoe")
    prompts = make_prompts(3)
    collect_routing(model, tok, prompts, tmp_path / "s", **routing_kwargs(**KW))
    with pytest.raises(InputError, match="different generation"):
        collect_routing(model, tok, prompts, tmp_path / "s", **routing_kwargs(**{**KW, "max_new_tokens": 3}))


def test_batch_halves_on_out_of_memory(tok, tmp_path):
    model = make_model("qwen2_moe")
    prompts = make_prompts(6)

    def too_big(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated: more than 2 rows)")

    handle = model.register_forward_pre_hook(too_big, with_kwargs=True)
    try:
        store = collect_routing(model, tok, prompts, tmp_path / "oom", **routing_kwargs(**{**KW, "batch_size": 8, "shard_sequences": 6}))
    finally:
        handle.remove()
    assert store.manifest["summary"]["final_batch_size"] == 2
    ref = collect_routing(model, tok, prompts, tmp_path / "ref", **routing_kwargs(**{**KW, "batch_size": 2, "shard_sequences": 6}))
    for x, y in zip(recorded_tokens(store), recorded_tokens(ref)):
        np.testing.assert_array_equal(x, y)


def test_sampling_is_seeded_and_optional_columns_are_stored(tok, tmp_path):
    model = make_model("gpt_oss")
    prompts = make_prompts(4)
    kw = {**KW, "do_sample": True, "temperature": 1.5, "record_logits": True, "record_weights": True}
    a = collect_routing(model, tok, prompts, tmp_path / "a", **routing_kwargs(seed=1, **kw))
    b = collect_routing(model, tok, prompts, tmp_path / "b", **routing_kwargs(seed=1, **kw))
    c = collect_routing(model, tok, prompts, tmp_path / "c", **routing_kwargs(seed=2, **kw))
    gen = [s.sequences()["generated_token_ids"].map(list).tolist() for s in (a, b, c)]
    assert gen[0] == gen[1] and gen[0] != gen[2]
    shard = next(a.iter_shards(logits=True, weights=True))
    n = len(shard.seq)
    assert shard.experts.dtype == np.int16 and shard.logits.shape == (n, 3, 8) and shard.logits.dtype == np.float16
    assert shard.weights.shape == (n, 3, 2)
    np.testing.assert_allclose(shard.weights.astype(np.float32).sum(-1), 1.0, atol=2e-3)  # GPT-OSS: softmax over the chosen
    top = np.sort(np.argsort(-shard.logits.astype(np.float32), -1)[..., :2], -1)
    assert (top == np.sort(shard.experts, -1)).all(-1).mean() > 0.99  # fp16 rounding may tie a few
    schema = pq.read_schema(a.path / "shard-00000.tokens.parquet")
    assert {"seq", "segment", "position", "token_id", "experts", "weights", "logits"} <= set(schema.names)


def test_demo_model_with_its_chat_template(tiny_demo_model, tmp_path):
    from steermoe.demo.prompt_sets import load_demo_prompts
    from steermoe.modeling import load_model, load_tokenizer

    model, tok = load_model(tiny_demo_model, device="cpu"), load_tokenizer(tiny_demo_model)
    prompts = load_demo_prompts("train").groupby("label").head(2).reset_index(drop=True)
    kw = {**KW, "max_new_tokens": 6, "chat_template_kwargs": {"enable_thinking": False}}
    inline = collect_routing(model, tok, prompts, tmp_path / "inline", **routing_kwargs(**kw))
    two = collect_routing(model, tok, prompts, tmp_path / "two", **routing_kwargs(mode="two_phase", **kw))
    a, b = recorded_tokens(inline), recorded_tokens(two)
    np.testing.assert_array_equal(a[3], b[3])
    assert (a[4] == b[4]).all(-1).mean() >= 0.999
    from steermoe.modeling import model_fingerprint

    assert inline.manifest["model"]["fingerprint"] == model_fingerprint(tiny_demo_model)
    assert sorted(inline.sequences()["label"]) == ["safe", "safe", "unsafe", "unsafe"]
