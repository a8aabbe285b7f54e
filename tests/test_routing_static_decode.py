"""StaticDecoder (routing.backend=hf_static): same tokens and routing as ``model.generate``, on every architecture.

On CPU the decode loop runs eagerly; the CUDA-graph path is checked against it where a GPU is present
(``python -m pytest -m gpu tests/test_routing_static_decode.py``; passed on an H100 through the device tool).
"""

import numpy as np
import pytest
import torch

from steermoe.errors import InputError
from steermoe.generation import GenerationSettings
from steermoe.routing import collect_routing
from steermoe.routing.collect import tokenize_prompts
from steermoe.routing.hf_backend import generate_batch
from steermoe.routing.recorder import RouterRecorder
from steermoe.routing.static_decode import StaticDecoder
from tests.routing_fixtures import ARCHS, make_model, make_prompts, make_tokenizer, one_thread, recorded_tokens, routing_kwargs  # noqa: F401 (autouse fixture)

KW = dict(max_new_tokens=10, batch_size=4, shard_sequences=4, progress=False)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _decoder(model, tok, n=10, cuda_graph=None, **sampling):
    return StaticDecoder(model, GenerationSettings(max_new_tokens=n, **sampling), pad_token_id=tok.pad_token_id, eos_token_ids=[2], cuda_graph=cuda_graph)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_greedy_tokens_and_routing_equal_generate(arch, tok, tmp_path):
    model = make_model(arch)
    prompts = make_prompts(6)  # lengths differ: left padding
    ids = tokenize_prompts(tok, prompts, None)
    assert _decoder(model, tok)(ids) == generate_batch(model, tok, ids, GenerationSettings(max_new_tokens=10))
    reference = recorded_tokens(collect_routing(model, tok, prompts, tmp_path / "hf", **routing_kwargs(**KW)))
    for mode in ("inline", "two_phase"):
        store = collect_routing(model, tok, prompts, tmp_path / mode, **routing_kwargs(engine="static", mode=mode, **KW))
        assert store.manifest["generation"]["backend"] == "hf_static"
        for ours, theirs in zip(recorded_tokens(store), reference):
            np.testing.assert_array_equal(ours, theirs)  # every token, position and expert set


def test_demo_model_stops_at_eos_like_generate(tiny_demo_model, tmp_path):
    from steermoe.demo.prompt_sets import load_demo_prompts
    from steermoe.modeling import load_model, load_tokenizer

    model, tok = load_model(tiny_demo_model, "float32", "cpu"), load_tokenizer(tiny_demo_model)
    prompts = load_demo_prompts(split="train").groupby("label").head(4).reset_index(drop=True)
    # The tiny demo model is barely trained: make its rarest mid-answer token an extra EOS.
    answers = generate_batch(model, tok, tokenize_prompts(tok, prompts, None), GenerationSettings(max_new_tokens=24))
    counts = {t: sum(t in a[2:20] for a in answers) for a in answers for t in a[2:20]}
    model.generation_config.eos_token_id = [tok.eos_token_id, min(counts, key=lambda t: (counts[t], t))]
    kw = {**KW, "max_new_tokens": 24, "record_weights": True}
    hf = collect_routing(model, tok, prompts, tmp_path / "hf", **routing_kwargs(**kw))
    static = collect_routing(model, tok, prompts, tmp_path / "static", **routing_kwargs(engine="static", **kw))
    a, b = hf.sequences(), static.sequences()
    assert (a["stop"] == "eos").any()
    assert list(a["generated_text"]) == list(b["generated_text"]) and list(a["stop"]) == list(b["stop"])
    for ours, theirs in zip(recorded_tokens(static), recorded_tokens(hf)):
        np.testing.assert_array_equal(ours, theirs)
    weights = [np.concatenate([s.weights for s in store.iter_shards(weights=True)]) for store in (hf, static)]
    np.testing.assert_allclose(weights[0], weights[1], atol=1e-3)


def test_a_batch_keeps_its_routing_when_the_next_reuses_the_buffers(tok):
    from steermoe.routing.hf_backend import static_inline_batch

    model = make_model("mixtral")
    ids = tokenize_prompts(tok, make_prompts(8), None)
    first, second = ids[:4], ids[4:]
    second = [p + [5] * (max(map(len, first)) - max(map(len, second))) for p in second]  # same width: same buffers
    decoder = _decoder(model, tok)
    with RouterRecorder(model) as rec:
        a = static_inline_batch(decoder, tok, rec, first)
        before = [r.prompt_experts.copy() for r in a]
        static_inline_batch(decoder, tok, rec, second)  # shard tables of ``a`` are built later, on the writer thread
    for r, kept in zip(a, before):
        np.testing.assert_array_equal(r.prompt_experts, kept)


def test_eager_attention_and_reused_shapes(tok):
    model = make_model("qwen3_moe")
    model.config._attn_implementation = "eager"  # float additive masks instead of sdpa's boolean ones
    ids = tokenize_prompts(tok, make_prompts(5), None)
    decoder = _decoder(model, tok)
    first = decoder(ids[:4])
    assert first == generate_batch(model, tok, ids[:4], GenerationSettings(max_new_tokens=10))
    assert decoder(ids[1:5])[:3] == first[1:]  # a new batch in a reused cache: no trace of the previous one
    assert decoder(ids[:4]) == first


def test_sampling_is_seeded_and_top_p_zero_is_greedy(tok):
    model = make_model("olmoe")
    ids = tokenize_prompts(tok, make_prompts(4), None)
    sample = _decoder(model, tok, do_sample=True, temperature=1.5, seed=3)
    a, b, c = sample(ids, 0), sample(ids, 0), sample(ids, 4)
    assert a == b and a != c  # seed + first_seq, as the HF backend seeds batches
    nucleus = _decoder(model, tok, do_sample=True, top_p=1e-6, seed=3)
    assert nucleus(ids) == _decoder(model, tok)(ids)


def test_bad_inputs_are_one_line_errors(tok):
    model = make_model("qwen3_moe")
    with pytest.raises(InputError, match="empty prompt"):
        _decoder(model, tok)([[5, 6], []])
    with pytest.raises(InputError, match="max_new_tokens"):
        _decoder(model, tok, n=0)
    gpt = make_model("gpt_oss")  # sliding window of 128 tokens
    with pytest.raises(InputError, match="sliding-window"):
        _decoder(gpt, tok, n=200)([[5, 6, 7]])
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(InputError, match="attn_implementation"):
        _decoder(model, tok)
    with pytest.raises(InputError, match="engine"):
        collect_routing(make_model("qwen3_moe"), tok, make_prompts(2), "unused", **routing_kwargs(engine="vllm"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA-graph path needs a GPU (the eager loop is tested above)")
def test_cuda_graph_replays_record_what_the_eager_loop_records(tok):
    # bf16: the graph-safe experts kernel (grouped_mm) is bf16-only. Both decoders use it, so replay vs eager is exact.
    model = make_model("qwen3_moe", dtype=torch.bfloat16).cuda()
    model.set_experts_implementation("grouped_mm")
    ids = tokenize_prompts(tok, make_prompts(6), None)

    recorders = []  # kept alive, so each has buffers of its own

    def run(decoder, rows):
        recorders.append(RouterRecorder(model, weights=True))
        with recorders[-1] as rec:
            out, filled = decoder.generate(rows, recorder=rec)
            cap = rec.end_batch(filled)
        return out, cap

    graph, eager = _decoder(model, tok), _decoder(model, tok, cuda_graph=False)
    assert graph.use_graph and not eager.use_graph
    g_out, g_cap = run(graph, ids)
    e_out, e_cap = run(eager, ids)
    assert g_out == e_out
    np.testing.assert_array_equal(g_cap.experts, e_cap.experts)
    np.testing.assert_array_equal(g_cap.weights, e_cap.weights)
    assert graph.graph_captures == 1
    again, again_cap = run(graph, ids)
    assert again == g_out and graph.graph_captures == 2  # another recorder's buffers: captured again
    np.testing.assert_array_equal(again_cap.experts, g_cap.experts)
    assert graph(ids) == g_out and graph.graph_captures == 3  # no recorder: a graph without the hooks' writes
    assert graph(ids) == g_out and graph.graph_captures == 3  # same shape, same buffers: replayed, not recaptured
