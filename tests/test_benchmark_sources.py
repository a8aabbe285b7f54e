"""Benchmarks as prompt sources: config entries ``{benchmark: NAME, path: ...}`` and ``steermoe evaluate
--benchmark NAME=PATH``, validated like any prompt set, with one-line errors for files that are not
what they claim to be."""

import json
from pathlib import Path

import pytest
import yaml

from steermoe import stages
from steermoe.cli import run_app
from steermoe.config import load_config
from steermoe.errors import ConfigError, InputError
from tests.conftest import make_prompts

DATA = Path(__file__).parent / "fixtures" / "benchmarks"


def sources_config(*sources, extra=()):
    return load_config(None, [f"prompts.sources={json.dumps(list(sources))}", "prompts.validation.min_per_label=5", *extra])


@pytest.fixture
def own_prompts(tmp_path):
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_prompts(8, 8)))
    return path


def test_config_sources_map_benchmarks_with_their_labels_categories_and_eval_split(own_prompts):
    cfg = sources_config(
        {"path": str(own_prompts)},
        {"benchmark": "xstest", "path": str(DATA / "xstest_prompts.csv")},
        {"benchmark": "harmbench", "path": str(DATA / "harmbench_behaviors_text_all.csv"), "split": "train"},
    )
    prompts = stages.load_prompt_set(cfg.prompts)
    xstest = prompts[prompts["source"] == "xstest"]
    assert xstest["label"].tolist() == ["safe", "safe", "unsafe", "safe", "unsafe"]
    assert xstest["category"].tolist()[2:3] == ["contrast_homonyms"] and set(xstest["split"]) == {"eval"}
    harmbench = prompts[prompts["source"] == "harmbench"]
    assert set(harmbench["split"]) == {"train"} and harmbench["category"].tolist()[0] == "cybercrime_intrusion"
    assert set(prompts.loc[prompts["source"] == "own.jsonl", "split"]) == {"train"}


def test_demo_sets_plus_a_benchmark():
    cfg = load_config(None, [f"prompts.sources=[demo, {{benchmark: xstest, path: {DATA / 'xstest_prompts.csv'}}}]"])
    prompts = stages.load_prompt_set(cfg.prompts)
    demo = stages.load_prompt_set(load_config(None, []).prompts)
    assert len(prompts) == len(demo) + 5 and prompts["id"].tolist()[-5:] == [f"xstest-{i}" for i in range(1, 6)]


def test_union_errors_name_the_key_not_pydantic_branches():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["prompts.sources=[demo, {path: x.csv, labl: safe}]"])
    assert str(err.value) == "config: prompts.sources.1.labl: unknown key"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["prompts.sources=demox"])
    assert str(err.value) == "config: prompts.sources: Input should be a valid list (and 1 more)"


def test_benchmark_sources_pass_through_validation_into_the_snapshot(own_prompts, tmp_path):
    cfg = sources_config({"path": str(own_prompts)}, {"benchmark": "advbench", "path": str(DATA / "harmful_behaviors.csv")})
    record = stages.validate_prompts_stage(cfg.prompts, tmp_path / "v")
    snapshot = stages.read_prompt_snapshot(record["prompts_path"], "eval")
    assert snapshot["id"].tolist() == ["advbench-0", "advbench-1", "advbench-2"] and set(snapshot["source"]) == {"advbench"}
    assert record["counts"] == {"safe": 8, "unsafe": 11}


def test_duplicate_benchmark_rows_fail_validation_like_any_set(own_prompts, tmp_path):
    twice = {"benchmark": "advbench", "path": str(DATA / "harmful_behaviors.csv")}
    cfg = sources_config({"path": str(own_prompts)}, twice, {**twice, "split": "train"})
    with pytest.raises(Exception, match="failures unique_id: 6, unique_text: 6"):
        stages.validate_prompts_stage(cfg.prompts, tmp_path / "v")
    assert not (tmp_path / "v" / "prompts.jsonl").exists()


def test_saved_hf_dataset_as_a_config_source(tmp_path, own_prompts):
    import datasets
    import pandas as pd

    frame = pd.read_csv(DATA / "benign-behaviors.csv", dtype=str)
    datasets.DatasetDict({"benign": datasets.Dataset.from_pandas(frame)}).save_to_disk(str(tmp_path / "jbb"))
    cfg = sources_config({"benchmark": "jailbreakbench", "path": str(tmp_path / "jbb"), "hf_split": "benign"})
    prompts = stages.load_prompt_set(cfg.prompts)
    assert prompts["id"].tolist() == ["jailbreakbench-benign-1", "jailbreakbench-benign-2"] and set(prompts["label"]) == {"safe"}


@pytest.mark.parametrize(
    "source,message",
    [
        ({"benchmark": "nope", "path": "x.csv"}, "unknown benchmark 'nope'; available: advbench, harmbench, jailbreakbench, strongreject, xstest"),
        ({"benchmark": "advbench", "path": "x.csv", "columns": {"prompt": "goal"}}, "maps its own columns and categories; remove columns/category"),
        ({"benchmark": "jailbreakbench", "path": "x.csv", "label": "maybe"}, "label: Input should be 'safe' or 'unsafe'"),
    ],
)
def test_bad_benchmark_entries_are_one_line_config_errors(source, message):
    with pytest.raises(ConfigError, match=r"^config: prompts\.sources\.0[.:]") as err:
        sources_config(source)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_file_of_another_benchmark_or_with_an_unknown_label_fails_in_one_line(tmp_path):
    cfg = sources_config({"benchmark": "harmbench", "path": str(DATA / "harmful_behaviors.csv")})
    with pytest.raises(InputError, match=r"not a harmbench file: missing columns \['Behavior', 'SemanticCategory'\] \(it has \['goal', 'target'\]\)"):
        stages.validate_prompts_stage(cfg.prompts, tmp_path / "v")
    bad = tmp_path / "xstest_prompts.csv"
    bad.write_text((DATA / "xstest_prompts.csv").read_text().replace(",unsafe,kill,", ",harmful,kill,"))
    with pytest.raises(InputError, match=r"XSTest: label values \['harmful'\] are not safe/unsafe"):
        stages.load_prompt_set(sources_config({"benchmark": "xstest", "path": str(bad)}).prompts)


@pytest.mark.parametrize(
    "argument,code,message",
    [
        ("harmbench=" + str(DATA / "harmful_behaviors.csv"), 2, "not a harmbench file: missing columns ['Behavior', 'SemanticCategory']"),
        ("nope=" + str(DATA / "harmful_behaviors.csv"), 2, "unknown benchmark 'nope'; available: advbench,"),
        ("xstest", 2, "--benchmark 'xstest': expected NAME=PATH"),
        ("advbench=" + str(DATA / "missing.csv"), 2, "missing.csv: no such file"),
    ],
)
def test_cli_benchmark_errors_are_one_line(argument, code, message, capsys):
    assert run_app(["evaluate", "--benchmark", argument]) == code
    err = capsys.readouterr().err.strip()
    assert message in " ".join(err.split()) and "Traceback" not in err


def test_cli_benchmark_rows_are_validated(tmp_path, capsys):
    dup = tmp_path / "harmful_behaviors.csv"
    dup.write_text("goal,target\nPLACEHOLDER same goal,x\nPLACEHOLDER same goal,y\n")
    assert run_app(["evaluate", "--benchmark", f"advbench={dup}"]) == 1
    assert "failures unique_text: 2; first: unique_text at id advbench-0" in " ".join(capsys.readouterr().err.split())


def test_cli_evaluate_with_benchmarks_prints_and_writes_their_tables(tiny_demo_model, own_prompts, tmp_path, capsys):
    cfg = {
        "model": {"source": str(tiny_demo_model), "device": "cpu"},
        "prompts": {"sources": [{"path": str(own_prompts)}]},
        "evaluation": {"max_new_tokens": 3, "batch_size": 8, "bootstrap_samples": 20, "split": "all", "routing_drift": False},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    args = ["evaluate", "-c", str(path), "--out", str(tmp_path / "ev"), "--benchmark", f"xstest={DATA / 'xstest_prompts.csv'}",
            "--benchmark", f"jailbreakbench={DATA / 'harmful-behaviors.csv'}"]
    assert run_app(args) == 0
    out = capsys.readouterr().out
    assert "xstest (5 prompts)" in out and "jailbreakbench (2 prompts)" in out
    payload = json.loads((tmp_path / "ev" / "comparison.json").read_text())
    assert sorted(payload["benchmarks"]) == ["jailbreakbench", "xstest"]
    metrics = payload["models"]["base"]["metrics"]
    assert {"xstest/full_refusal_safe", "xstest/full_compliance_unsafe", "jailbreakbench/asr", "jailbreakbench/asr/privacy"} <= set(metrics)
    assert (tmp_path / "ev" / "comparison-xstest.png").is_file()
    responses = [json.loads(line) for line in (tmp_path / "ev" / "responses" / "base.jsonl").read_text().splitlines()]
    assert {r["source"] for r in responses} == {"own.jsonl", "xstest", "jailbreakbench"}
