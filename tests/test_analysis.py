from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from steermoe.analysis import (
    behaviour_filter,
    benjamini_hochberg,
    newcombe_interval,
    refusal_prefix_judge,
    risk_difference,
    two_proportion_pvalues,
    wilson_interval,
)
from steermoe.errors import InputError
from steermoe.routing.store import SEGMENTS, RoutingStoreWriter, tokens_table

LAYERS = [1, 3, 4]  # the model's own layer indices (e.g. dense layers in between)
E, K = 8, 2


def make_store(path, n_safe=23, n_unsafe=11, seed=0, shard_size=7, unused=(6, 7)):
    """A random store: unequal classes, single-token and prompt-only sequences, experts ``unused`` never chosen."""
    rng = np.random.default_rng(seed)
    writer = RoutingStoreWriter(path, {"model": {"layers": LAYERS, "num_experts": E, "top_k": K}})
    labels = rng.permutation(["safe"] * n_safe + ["unsafe"] * n_unsafe)
    usable = np.array([e for e in range(E) if e not in unused])
    for index, lo in enumerate(range(0, len(labels), shard_size)):
        rows, parts = [], []
        for s in range(lo, min(lo + shard_size, len(labels))):
            n_prompt = 1 if s % 5 == 0 else int(rng.integers(1, 5))
            n_gen = 0 if s % 7 == 0 else int(rng.integers(1, 5))
            text = "I'm sorry, I can't help with that." if s % 3 == 0 else "Sure, here is how. Step 1: [details withheld]"
            rows.append({"seq": s, "prompt_id": f"p{s}", "label": labels[s], "category": "c", "split": "train", "generated_text": text})
            weights = np.where(usable < 3, 3.0, 1.0) if labels[s] == "unsafe" else np.ones(len(usable))
            n = n_prompt + n_gen
            experts = np.array(
                [[rng.choice(usable, K, replace=False, p=weights / weights.sum()) for _ in LAYERS] for _ in range(n)]
            ).reshape(n, len(LAYERS), K)
            parts.append((np.full(n, s), np.r_[np.zeros(n_prompt), np.ones(n_gen)], experts))
        seq, segment, experts = (np.concatenate([p[i] for p in parts]) for i in range(3))
        writer.write_shard(index, pd.DataFrame(rows), tokens_table(seq, segment, np.arange(len(seq)), seq, experts))
    return writer.finish()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("routing") / "store")


def reference(store, segment, weighting, keep=None, batch_size=4):
    """Plain loops from the definition: no bincount, no vectorisation."""
    seqs = store.sequences()
    tokens = defaultdict(list)
    for shard in store.iter_shards():
        for i in range(len(shard.seq)):
            if segment == "all" or shard.segment[i] == SEGMENTS[segment]:
                tokens[int(shard.seq[i])].append(shard.experts[i])
    kept = set(seqs["seq"]) if keep is None else set(seqs["seq"][keep])
    members = {c: sorted(s for s, lab in zip(seqs["seq"], seqs["label"]) if lab == c and s in kept) for c in ("safe", "unsafe")}
    if weighting == "batch":
        size = {"safe": batch_size // 2, "unsafe": batch_size - batch_size // 2}
        n_b = min(len(members[c]) // size[c] for c in size)
        batches = [{c: members[c][b * size[c] : (b + 1) * size[c]] for c in size} for b in range(n_b)]
    out = {}
    for li, layer in enumerate(store.layers):
        for e in range(store.num_experts):
            row = {}
            for c in ("safe", "unsafe"):
                if weighting == "token":
                    toks = [t for s in members[c] for t in tokens[s]]
                    row[c] = (sum(1 for t in toks if e in t[li]), len(toks))
                elif weighting == "sequence":
                    fractions = [sum(1 for t in tokens[s] if e in t[li]) / len(tokens[s]) for s in members[c] if tokens[s]]
                    row[c] = (sum(fractions), len(fractions))
                else:
                    row[c] = []
            if weighting == "batch":
                ps, ns = {"safe": [], "unsafe": []}, {"safe": 0, "unsafe": 0}
                for b in batches:
                    toks = {c: [t for s in b[c] for t in tokens[s]] for c in b}
                    if not all(toks.values()):
                        continue
                    for c in toks:
                        ps[c].append(sum(1 for t in toks[c] if e in t[li]) / len(toks[c]))
                        ns[c] += len(toks[c])
                row = {c: (np.mean(ps[c]) * ns[c], ns[c]) for c in ps}
            out[(layer, e)] = row
    return out


@pytest.mark.parametrize("weighting", ["token", "sequence", "batch"])
@pytest.mark.parametrize("segment", ["prompt", "generation", "all"])
def test_vectorised_equals_reference_loop(store, segment, weighting):
    table = risk_difference(store, segment=segment, weighting=weighting, batch_size=4, progress=False)
    ref = reference(store, segment, weighting, batch_size=4)
    assert len(table) == len(LAYERS) * E and sorted(table["layer"].unique()) == LAYERS
    got = table.set_index(["layer", "expert"])
    for key, row in ref.items():
        (a_s, n_s), (a_u, n_u) = row["safe"], row["unsafe"]
        assert got.loc[key, ["a_safe", "n_safe", "a_unsafe", "n_unsafe"]].tolist() == pytest.approx([a_s, n_s, a_u, n_u])
        assert got.loc[key, "risk_diff"] == pytest.approx(a_u / n_u - a_s / n_s)
    never = got.loc[[(layer, e) for layer in LAYERS for e in (6, 7)]]
    assert (never[["a_safe", "a_unsafe", "risk_diff"]] == 0).all().all() and (never["p_value"] == 1).all()
    assert table["risk_diff"].is_monotonic_decreasing


def test_behaviour_filter_and_pluggable_judge(store):
    seqs = store.sequences()
    keep = ~refusal_prefix_judge(seqs["generated_text"])
    assert 0 < keep.sum() < len(keep)
    table = risk_difference(store, weighting="sequence", sequence_filter="behaviour", progress=False)
    ref = reference(store, "all", "sequence", keep=keep)
    got = table.set_index(["layer", "expert"])
    assert all(got.loc[k, "a_unsafe"] == pytest.approx(v["unsafe"][0]) for k, v in ref.items())
    assert table.attrs["sequences_kept"] == int(keep.sum())

    calls = []

    def judge(responses, prompts):  # e.g. an evaluation judge: refuse nothing
        calls.append(len(responses))
        return [False] * len(responses)

    everything = risk_difference(store, sequence_filter=behaviour_filter(judge), progress=False)
    assert calls == [len(seqs)]
    pd.testing.assert_frame_equal(everything, risk_difference(store, progress=False))
    class LengthJudge:  # shaped like an evaluation judge: judge_batch(prompts, responses) -> verdicts
        def judge_batch(self, prompts, responses):
            return [type("Verdict", (), {"refused": len(r) < 40})() for r in responses]

    by_object = risk_difference(store, sequence_filter=behaviour_filter(LengthJudge()), progress=False)
    assert by_object.attrs["sequences_kept"] == (seqs["generated_text"].str.len() >= 40).sum()
    odd = risk_difference(store, sequence_filter=lambda s: s["seq"].to_numpy() % 2 == 1, progress=False)
    assert odd.attrs["sequences_kept"] == (seqs["seq"] % 2 == 1).sum()


def test_errors_are_input_errors(store):
    with pytest.raises(InputError, match="unknown segment"):
        risk_difference(store, segment="answer")
    with pytest.raises(InputError, match="no unsafe tokens"):
        risk_difference(store, sequence_filter=lambda s: (s["label"] == "safe").to_numpy(), progress=False)
    with pytest.raises(InputError, match="lower batch_size"):
        risk_difference(store, weighting="batch", batch_size=40, progress=False)


def test_wilson_matches_scipy_and_textbook():
    for k, n in [(0, 20), (1, 29), (15, 148), (81, 263), (50, 50), (7, 9)]:
        ci = scipy.stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
    # Newcombe (1998a) Table I, method 3 (score without continuity correction).
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)


def test_newcombe_hybrid_score_matches_published_examples():
    # Newcombe (1998b) Stat Med 17:873, Table II, method 10, examples (a)-(h).
    cases = [
        ((56, 70, 48, 80), (0.0524, 0.3339)), ((9, 10, 3, 10), (0.1705, 0.8090)), ((6, 7, 2, 7), (0.0582, 0.8062)),
        ((5, 56, 0, 29), (-0.0381, 0.1926)), ((0, 10, 0, 20), (-0.1611, 0.2775)), ((0, 10, 0, 10), (-0.2775, 0.2775)),
        ((10, 10, 0, 20), (0.6791, 1.0000)), ((10, 10, 0, 10), (0.6075, 1.0000)),
    ]  # fmt: skip
    for (a1, n1, a2, n2), expected in cases:
        assert newcombe_interval(a1, n1, a2, n2) == pytest.approx(expected, abs=1e-4)


def test_pvalues_match_scipy():
    a1, n1, a2, n2 = np.array([300, 40, 2, 0, 9]), np.array([1000, 100, 50, 30, 10]), np.array([250, 55, 6, 0, 3]), np.array([900, 120, 40, 20, 10])
    p, test = two_proportion_pvalues(a1, n1, a2, n2)
    assert test.tolist() == ["z", "z", "fisher", "fisher", "fisher"]
    for i in range(len(a1)):
        cells = [[a1[i], n1[i] - a1[i]], [a2[i], n2[i] - a2[i]]]
        if test[i] == "z":
            expected = scipy.stats.chi2_contingency(cells, correction=False).pvalue  # pooled z^2 == chi^2
        else:
            expected = scipy.stats.fisher_exact(cells).pvalue
        assert p[i] == pytest.approx(expected, rel=1e-9)


def test_benjamini_hochberg_matches_scipy():
    p = np.random.default_rng(1).random(200) ** 3
    assert benjamini_hochberg(p) == pytest.approx(scipy.stats.false_discovery_control(p, method="bh"))
    q = benjamini_hochberg([0.01, np.nan, 0.04])
    assert np.isnan(q[1]) and q[[0, 2]] == pytest.approx([0.02, 0.04])


def test_analyze_cli_writes_table_and_plots(store, tmp_path, capsys):
    from steermoe.cli import run_app

    args = ["analyze", "--store", str(store.path), "--out", str(tmp_path / "t.parquet"), "--weighting", "sequence",
            "--segment", "generation", "--plots", str(tmp_path / "plots")]  # fmt: skip
    assert run_app(args) == 0
    assert "wrote 24 rows" in capsys.readouterr().out
    table = pd.read_parquet(tmp_path / "t.parquet")
    expected = risk_difference(store, segment="generation", weighting="sequence", progress=False)
    pd.testing.assert_frame_equal(table, expected, check_dtype=False)
    assert table.attrs["weighting"] == "sequence"  # run facts survive Parquet
    assert (tmp_path / "plots" / "risk_heatmap.png").stat().st_size > 1000

    assert run_app(["analyze", "--store", str(tmp_path), "--out", str(tmp_path / "x.parquet")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a routing store" in err
