"""benchmarks/demo_world_sweep.py: its command line and its summary table (the builds themselves run
steermoe.demo's own builder and quality code, tested in tests/test_demo_*.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.demo_world_sweep import parse_seeds, parse_variant, summarise

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_world_sweep.py"


def test_a_variant_is_a_name_recipe_overrides_or_a_wording_file():
    assert parse_variant("base") == ("base", {}, None)
    assert parse_variant('long={"steps": 1400, "seed": 2}') == ("long", {"steps": 1400, "seed": 2}, None)
    assert parse_variant("old=@/tmp/wording.yaml") == ("old", {}, "/tmp/wording.yaml")


def test_overrides_that_are_not_json_say_how_to_write_them():
    with pytest.raises(SystemExit, match=r"--variant 'long=\{steps: 1400\}': the overrides are not JSON .*e\.g\."):
        parse_variant("long={steps: 1400}")


def test_seeds_are_one_number_or_a_range():
    assert parse_seeds("3") == [3]
    assert parse_seeds("0-3") == [0, 1, 2, 3]


def test_the_summary_is_the_mean_over_seeds_per_variant(tmp_path, capsys):
    rows = [("a", 0, 0.80, 0.90), ("a", 1, 0.90, 0.70), ("b", 0, 0.50, 0.60)]
    path = tmp_path / "sweep.jsonl"
    path.write_text("".join(json.dumps({"variant": v, "seed": s, "dev": {"unsafe_placeholder": p, "safe_on_topic": t, "borderline_on_topic": 0.5,
                                                                          "over_refusal": 0.0}}) + "\n" for v, s, p, t in rows))
    summarise(str(path))
    table = capsys.readouterr().out.strip().splitlines()
    assert table[-2:] == ["| a | 2 | 85.0% | 80.0% | 50.0% |", "| b | 1 | 50.0% | 60.0% | 50.0% |"]


def test_no_variant_is_a_usage_error():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "give at least one --variant" in proc.stderr.splitlines()[-1]


def test_a_missing_wording_file_is_a_usage_error(tmp_path):
    missing = tmp_path / "nowhere.yaml"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--variant", f"old=@{missing}"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f"--variant old: {missing} is not a file" in proc.stderr.splitlines()[-1]
