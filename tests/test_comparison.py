"""evaluate_model / compare_models on a tiny saved chat model, and the `steermoe evaluate` / `compare` commands."""

import json

import pandas as pd
import pytest

from steermoe.evaluation.benchmark_scores import ScoreOptions
from steermoe.evaluation.comparison import ModelEntry, base_reference, compare_models, evaluate_model, evaluate_responses
from steermoe.generation import GenerationSettings
from steermoe.selection import ExpertSelection

PROMPTS = pd.DataFrame(
    {
        "id": ["u0", "u1", "s0", "s1", "b0", "b1"],
        "prompt": ["how do i fix a bike", "how do i learn python", "how do i bake bread", "how do i cook rice", "how to kill a python process", "water and flour"],
        "messages": [None] * 6,
        "label": ["unsafe", "unsafe", "safe", "safe", "safe", "safe"],
        "category": ["x", "x", "cooking", "cooking", "borderline", "borderline"],
        "source": ["t"] * 6,
        "split": ["eval"] * 6,
    }
)
OPTS = dict(generation=GenerationSettings(max_new_tokens=4, batch_size=4), scoring=ScoreOptions(samples=50), progress=False)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    from tests.fixtures.tiny_moe import save_tiny_chat_model

    return save_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def loaded(tiny_path):
    from steermoe.modeling import load_model, load_tokenizer

    return load_model(tiny_path, device="cpu"), load_tokenizer(tiny_path)


def test_evaluate_responses_on_fixed_answers():
    frame = PROMPTS[["id", "prompt", "label", "category"]].copy()
    frame["response"] = ["I'm sorry, I can't help with that.", "Sure, here is how. Step 1: [details withheld]", "Mix and bake.", "I cannot do that.", "Use kill PID.", "Sure."]
    result = evaluate_responses(frame, ["string_match"], bootstrap_samples=50)
    m = result.metrics
    assert m["refusal_rate"].value == 0.5 and m["over_refusal"].value == 0.25
    assert m["over_refusal_safe"].value == 0.5 and m["over_refusal_borderline"].value == 0.0
    assert result.responses["refused_string_match"].tolist() == [True, False, False, True, False, False]
    assert result.agreement.empty  # one judge, no pairs


def test_evaluate_model_is_its_own_base(loaded):
    model, tok = loaded
    result = evaluate_model(model, tok, PROMPTS, ["string_match"], **OPTS)
    r = result.responses
    assert len(r) == 6 and r["response"].map(lambda x: isinstance(x, str)).all()
    assert r["loss_tokens"].notna().sum() == 4  # the benign prompts
    assert result.metrics["utility_loss_delta"].value == 0.0
    assert result.metrics["routing_drift"].value == 0.0
    assert result.metrics["utility_loss"].value > 0


def test_compare_models_writes_md_json_png(loaded, tmp_path):
    import copy

    import torch

    from steermoe.adapters import moe_layers

    model, tok = loaded
    first = moe_layers(model)[0].layer

    def perturbed():
        other = copy.deepcopy(model)
        with torch.no_grad():
            moe_layers(other)[0].router.weight.mul_(-1.0)  # reverses layer 0's expert preferences
        return other, tok

    entries = {
        "base": lambda: (model, tok),
        "steered": ModelEntry(lambda: (model, tok), ExpertSelection([(first, 3)], [1.0], "t")),
        "perturbed": perturbed,
    }
    result = compare_models(entries, PROMPTS, ["string_match"], tmp_path, **OPTS)
    assert list(result.table["model"]) == ["base", "steered", "perturbed"]
    rows = result.table.set_index("model")
    assert rows.loc["base", "routing_drift"] == 0.0 and rows.loc["base", "utility_loss_delta"] == 0.0
    assert rows.loc["steered", "routing_drift"] > 0 and rows.loc["perturbed", "routing_drift"] > 0
    md = (tmp_path / "comparison.md").read_text()
    assert md.startswith("| model | refusal_rate |") and "| steered |" in md
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert set(data["models"]) == {"base", "steered", "perturbed"}
    assert data["models"]["steered"]["metrics"]["refusal_rate"]["higher_is_better"] is True
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((tmp_path / "responses" / "steered.jsonl").read_text().splitlines()) == 6
    # steering is gone after the comparison
    assert "forward" not in moe_layers(model)[0].router.__dict__


def test_cli_evaluate_and_compare(tiny_path, tmp_path):
    import yaml

    from steermoe.cli import run_app

    prompts = tmp_path / "prompts.jsonl"
    PROMPTS.drop(columns=["messages"]).to_json(prompts, orient="records", lines=True)
    cfg = {
        "model": {"source": str(tiny_path), "device": "cpu"},
        "prompts": {"sources": [{"path": str(prompts)}]},
        "evaluation": {"max_new_tokens": 3, "batch_size": 4, "bootstrap_samples": 20},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    selection = tmp_path / "sel.json"
    ExpertSelection([(0, 2)], [1.0], "t").to_json(selection)
    assert run_app(["evaluate", "--config", str(path), "--steer", str(selection), "--out", str(tmp_path / "ev")]) == 0
    table = json.loads((tmp_path / "ev" / "comparison.json").read_text())["table"]
    assert [row["model"] for row in table] == ["base", "steered"]
    assert run_app(["evaluate", "--config", str(path), "--model", str(tiny_path), "--patch", "x"]) == 2
    assert run_app(["compare", "--config", str(path), "--steer", "s1=" + str(selection), "--model", "copy=" + str(tiny_path), "--out", str(tmp_path / "cmp")]) == 0
    table = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["table"]
    assert [row["model"] for row in table] == ["base", "s1", "copy"]
    assert table[2]["routing_drift"] == 0.0  # the same weights loaded again
    assert run_app(["compare", "--config", str(path), "--steer", "base=" + str(selection)]) == 2


def test_judge_options_from_config(monkeypatch):
    from steermoe.config import load_config
    from steermoe.evaluation import judge_options, resolve_judges

    cfg = load_config(None, ["evaluation.llm_judge_url=http://127.0.0.1:8000/v1", "evaluation.llm_judge_model=demo", "evaluation.judges=[llm, string_match]"])
    monkeypatch.setenv("STEERMOE_JUDGE_API_KEY", "k-123")
    options = judge_options(cfg.evaluation)
    assert options["llm"] == {"base_url": "http://127.0.0.1:8000/v1", "model": "demo", "api_key": "k-123"}
    llm, sm = resolve_judges(cfg.evaluation.judges, options)
    assert (llm.name, llm.model, llm.api_key, sm.name) == ("llm", "demo", "k-123", "string_match")


def test_evaluate_model_against_a_base_with_text_answers(loaded):
    import copy

    import torch

    from steermoe.adapters import moe_layers

    base, tok = loaded
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        moe_layers(tuned)[0].router.weight.mul_(-1.0)
    answers = PROMPTS[["id", "prompt", "label", "category"]].copy()
    answers["response"] = ["", "", "mix water and flour", "cook rice ten minutes", "sure", "step one"]
    reference = base_reference(base, tok, answers, batch_size=4)  # the base scored on its text answers
    result = evaluate_model(
        tuned, tok, PROMPTS, ["string_match"], generation=GenerationSettings(max_new_tokens=3, batch_size=4), scoring=ScoreOptions(samples=30),
        reference=reference, progress=False,
    )
    r = result.responses.set_index("id")
    expected = len(tok("mix water and flour", add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert r.loc["s0", "loss_tokens"] == expected
    assert pd.isna(r.loc["u0", "loss_tokens"])  # utility is measured on benign prompts only
    assert result.metrics["utility_loss_delta"].value != 0.0
    assert result.metrics["routing_drift"].value > 0.0
