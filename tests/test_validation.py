import json

import pandas as pd
import pytest

from steermoe.prompts import load_prompts
from steermoe.validation import RULES, validate_prompts
from tests.conftest import make_prompts


def frame(rows):
    base = {"id": None, "prompt": None, "messages": None, "label": None, "category": None, "source": None, "split": None}
    return pd.DataFrame([{**base, **r} for r in rows], dtype=object)


def failing(report, rule):
    return {f.id for f in report.failures if f.rule == rule}


@pytest.fixture(scope="module")
def clean_report():
    return validate_prompts(frame(make_prompts()))


def test_clean_set_passes(clean_report):
    assert clean_report.success, clean_report.to_frame()
    assert clean_report.counts == {"safe": 12, "unsafe": 12}


def broken(mutate):
    rows = make_prompts()
    mutate(rows)
    return validate_prompts(frame(rows))


def test_every_row_rule_names_the_failing_ids():
    def mutate(rows):
        rows[0]["label"] = "maybe"  # label_in_set
        rows[1]["id"] = rows[2]["id"]  # unique_id
        rows[3]["prompt"] = rows[4]["prompt"]  # unique_text
        rows[5]["prompt"] = "hi"  # length_bounds
        rows[6]["prompt"] = "Tell me\x07 a joke please"  # no_control_chars
        rows[7]["prompt"] = None  # not_null
        rows[8]["split"] = "test"  # split_in_set
        rows[9]["prompt"] = "caf\udce9 opening hours please"  # valid_utf8 (an undecodable byte)
        rows[10]["prompt"] = rows[15]["prompt"]  # label_conflict: same text, safe and unsafe
        rows[11]["prompt"], rows[11]["messages"] = None, [{"role": "assistant", "content": "hello there"}]  # messages_shape

    report = broken(mutate)
    assert not report.success
    assert failing(report, "label_in_set") == {"s0"}
    assert failing(report, "unique_id") == {"s2"}
    assert failing(report, "unique_text") >= {"s3", "s4"}
    assert failing(report, "length_bounds") == {"s5"}
    assert failing(report, "no_control_chars") == {"s6"}
    assert "s7" in failing(report, "not_null")
    assert failing(report, "split_in_set") == {"s8"}
    assert failing(report, "valid_utf8") == {"s9"}
    assert failing(report, "label_conflict") == {"s10", "u3"}
    assert failing(report, "messages_shape") == {"s11"}


def test_null_id_and_label():
    def mutate(rows):
        rows[0]["id"] = None
        rows[1]["label"] = None

    report = broken(mutate)
    rows = {(f.rule, f.row) for f in report.failures}
    assert ("not_null", 0) in rows and ("not_null", 1) in rows


def test_min_per_label_and_imbalance():
    report = validate_prompts(frame(make_prompts(n_safe=50, n_unsafe=5)), min_per_label=10)
    assert not report.success
    assert [f.detail for f in report.failures if f.rule == "min_per_label"] == ["unsafe: 5 rows, need at least 10"]
    assert [f.severity for f in report.failures if f.rule == "label_imbalance"] == ["warning"]


def test_imbalance_alone_is_only_a_warning():
    report = validate_prompts(frame(make_prompts(n_safe=60, n_unsafe=12)))
    assert report.success
    assert report.warnings and report.warnings[0].rule == "label_imbalance"


def test_missing_columns():
    report = validate_prompts(pd.DataFrame({"prompt": ["hello there"] * 3}))
    assert not report.success
    assert {f.rule for f in report.failures} == {"required_columns"}


def test_report_json_round_trip(tmp_path):
    report = broken(lambda rows: rows[0].update(label="maybe"))
    report.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["success"] is False
    assert {"rule": "label_in_set", "id": "s0"}.items() <= data["failures"][0].items() or any(
        f["rule"] == "label_in_set" and f["id"] == "s0" for f in data["failures"]
    )


def test_rules_are_documented():
    assert {"not_null", "label_in_set", "unique_id", "unique_text", "label_conflict", "valid_utf8", "length_bounds", "min_per_label"} <= set(RULES)


def test_validation_of_a_loaded_file_with_bad_bytes(tmp_path):
    rows = make_prompts()
    lines = [json.dumps(r).encode() for r in rows]
    lines[0] = lines[0].replace(b"bread", b"br\xffead")
    (tmp_path / "p.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    report = validate_prompts(load_prompts(tmp_path / "p.jsonl"))
    assert failing(report, "valid_utf8") == {"s0"}
