import json

import pandas as pd
import pytest

from steermoe import stages
from steermoe.config import PromptsConfig, SelectionConfig
from steermoe.errors import ValidationFailed
from steermoe.prompts import fingerprint
from tests.conftest import make_prompts


def prompts_cfg(tmp_path, rows, **validation):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return PromptsConfig(sources=[{"path": str(path)}], validation=validation)


def test_validate_stage_writes_report_and_a_snapshot_with_the_same_fingerprint(tmp_path):
    rows = make_prompts()
    rows[0]["split"] = "eval"
    cfg = prompts_cfg(tmp_path, rows)
    record = stages.validate_prompts_stage(cfg, tmp_path / "out")
    assert record["fingerprint"] == fingerprint(pd.DataFrame(rows)) == stages.prompt_set_fingerprint(cfg)
    assert record["counts"] == {"safe": 12, "unsafe": 12}
    assert json.loads((tmp_path / "out" / "validation_report.json").read_text())["success"] is True
    snapshot = stages.read_prompt_snapshot(record["prompts_path"])
    assert fingerprint(snapshot) == record["fingerprint"]
    assert list(stages.read_prompt_snapshot(record["prompts_path"], "eval")["id"]) == ["s0"]
    assert len(stages.read_prompt_snapshot(record["prompts_path"], "train")) == 23


def test_validate_stage_fails_on_bad_rows_and_writes_no_snapshot(tmp_path):
    rows = make_prompts()
    rows[2]["label"] = "maybe"
    with pytest.raises(ValidationFailed, match="label_in_set") as err:
        stages.validate_prompts_stage(prompts_cfg(tmp_path, rows), tmp_path / "out")
    assert err.value.report.errors[0].id == "s2"
    assert json.loads((tmp_path / "out" / "validation_report.json").read_text())["success"] is False
    assert not (tmp_path / "out" / "prompts.jsonl").exists()


def test_select_stage_writes_the_selection(tmp_path):
    table = pd.DataFrame({"layer": [0, 0, 1, 1], "expert": [0, 1, 0, 1], "risk_diff": [0.3, -0.1, 0.2, 0.01]})
    table.to_parquet(tmp_path / "t.parquet")
    record = stages.select_experts_stage(SelectionConfig(threshold=0.05, top_k=4), str(tmp_path / "t.parquet"), tmp_path / "sel")
    assert record["experts"] == [[0, 0], [1, 0]] and record["n_experts"] == 2
    from steermoe.selection import ExpertSelection

    assert ExpertSelection.from_json(record["selection_path"]).experts == [(0, 0), (1, 0)]


def test_prepare_model_stage_fingerprints_the_weights(tiny_demo_model):
    from steermoe.config import ModelConfig
    from steermoe.modeling import model_fingerprint

    record = stages.prepare_model_stage(ModelConfig(source=str(tiny_demo_model)))
    assert record["fingerprint"] == model_fingerprint(tiny_demo_model)
    assert record["model_type"] == "qwen3_moe"


def test_fine_tuning_reuses_the_routing_answers_only_where_they_are_the_greedy_ones(tiny_demo_model, tmp_path):
    """The base answers benign training preserves are greedy; a routing store answered by sampling (same token
    budget) holds other answers, so they are generated again rather than reused."""
    from steermoe.config import RunConfig
    from steermoe.demo import load_demo_prompts
    from steermoe.generation import GenerationSettings
    from steermoe.modeling import generate, load_pretrained
    from steermoe.prompts import to_messages
    from steermoe.routing import collect_routing

    demo = load_demo_prompts()
    safe = demo[(demo["label"] == "safe") & (demo["split"] == "train")].head(6).reset_index(drop=True)
    cfg = RunConfig.model_validate({"model": {"source": str(tiny_demo_model), "device": "cpu"}, "finetune": {"answer_max_new_tokens": 6}})
    model, tok = load_pretrained(cfg.model, tiny_demo_model)
    greedy = GenerationSettings(max_new_tokens=6, chat_template_kwargs=cfg.generation.chat_template_kwargs)
    want = generate(model, tok, [to_messages(r) for r in safe.to_dict("records")], greedy, progress=False).texts
    sampled = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=50.0, seed=1, chat_template_kwargs=greedy.chat_template_kwargs)
    stores = {}
    for name, settings in (("greedy", greedy), ("sampled", sampled)):
        stores[name] = collect_routing(model, tok, safe, tmp_path / name, generation=settings, progress=False)
    assert stores["sampled"].sequences()["generated_text"].tolist() != want  # else the test proves nothing
    assert stages._base_answers(cfg, "/no/model/here", safe, str(stores["greedy"].path)) == want  # reused: nothing loaded
    assert stages._base_answers(cfg, str(tiny_demo_model), safe, str(stores["sampled"].path)) == want  # generated again
