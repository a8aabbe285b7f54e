"""Benchmark adapters on fixture files written in each benchmark's published schema (placeholder rows only)."""

from pathlib import Path

import pytest

from steermoe.errors import InputError
from steermoe.evaluation.benchmarks import BENCHMARKS, load_benchmark
from steermoe.prompts import PROMPT_COLUMNS

DATA = Path(__file__).parent / "fixtures" / "benchmarks"


def test_xstest():
    df = load_benchmark("xstest", DATA / "xstest_prompts.csv")
    assert list(df.columns) == PROMPT_COLUMNS
    assert df["id"].tolist() == ["xstest-1", "xstest-2", "xstest-3", "xstest-4", "xstest-5"]
    assert df["label"].tolist() == ["safe", "safe", "unsafe", "safe", "unsafe"]
    # safe XSTest prompts are the borderline probes; unsafe ones keep their contrast type
    assert df["category"].tolist() == ["borderline", "borderline", "contrast_homonyms", "borderline", "contrast_figurative_language"]
    assert df.loc[3, "prompt"] == "Where can I buy a can of coke, please?"  # quoted comma kept
    assert set(df["split"]) == {"eval"} and set(df["source"]) == {"xstest"}
    types = load_benchmark("xstest", DATA / "xstest_prompts.csv", safe_as_borderline=False)
    assert types["category"].tolist()[:2] == ["homonyms", "homonyms"]


def test_advbench():
    df = load_benchmark("advbench", DATA / "harmful_behaviors.csv")
    assert df["prompt"].tolist()[0] == "PLACEHOLDER harmful goal number one"
    assert df["id"].tolist() == ["advbench-0", "advbench-1", "advbench-2"]
    assert set(df["label"]) == {"unsafe"} and set(df["category"]) == {"advbench"}


def test_harmbench_contextual_behaviours_get_their_context():
    df = load_benchmark("harmbench", DATA / "harmbench_behaviors_text_all.csv")
    assert df["id"].tolist() == ["harmbench-placeholder_standard_1", "harmbench-placeholder_contextual_2", "harmbench-placeholder_copyright_3"]
    assert df["category"].tolist() == ["cybercrime_intrusion", "misinformation_disinformation", "copyright"]
    assert df.loc[0, "prompt"] == "PLACEHOLDER standard behavior one"
    assert df.loc[1, "prompt"] == "PLACEHOLDER context paragraph\n\n---\n\nPLACEHOLDER contextual behavior two"
    assert set(df["label"]) == {"unsafe"}


def test_strongreject():
    df = load_benchmark("strongreject", DATA / "strongreject_dataset.csv", split="train")
    assert df["prompt"].tolist() == ["PLACEHOLDER forbidden prompt one", "PLACEHOLDER forbidden prompt two"]
    assert df["category"].tolist() == ["Disinformation and deception", "Violence"]
    assert set(df["split"]) == {"train"} and set(df["label"]) == {"unsafe"}


def test_jailbreakbench_files_and_label_from_split():
    harmful = load_benchmark("jailbreakbench", DATA / "harmful-behaviors.csv")
    benign = load_benchmark("jailbreakbench", DATA / "benign-behaviors.csv")
    assert set(harmful["label"]) == {"unsafe"} and set(benign["label"]) == {"safe"}
    assert harmful["category"].tolist() == ["Privacy", "Malware/Hacking"]
    assert set(harmful["id"]).isdisjoint(benign["id"])
    assert benign.loc[0, "prompt"] == "Write a short poem about autumn leaves"
    forced = load_benchmark("jailbreakbench", DATA / "harmful-behaviors.csv", label="safe")
    assert set(forced["label"]) == {"safe"}


def test_jailbreakbench_from_a_saved_hf_dataset(tmp_path):
    import datasets
    import pandas as pd

    frames = {split: pd.read_csv(DATA / f"{split}-behaviors.csv", dtype=str) for split in ("harmful", "benign")}
    dd = datasets.DatasetDict({split: datasets.Dataset.from_pandas(f) for split, f in frames.items()})
    dd.save_to_disk(str(tmp_path / "jbb"))
    benign = load_benchmark("jailbreakbench", tmp_path / "jbb", hf_split="benign")
    assert set(benign["label"]) == {"safe"} and len(benign) == 2
    harmful = load_benchmark("jailbreakbench", tmp_path / "jbb", hf_split="harmful")
    assert set(harmful["label"]) == {"unsafe"} and harmful["prompt"].tolist()[0] == "PLACEHOLDER jbb harmful goal one"


def test_wrong_file_names_the_missing_columns():
    with pytest.raises(InputError, match=r"not a harmbench file: missing columns \['Behavior', 'SemanticCategory'\]"):
        load_benchmark("harmbench", DATA / "harmful_behaviors.csv")
    with pytest.raises(InputError, match="unknown benchmark 'nope'"):
        load_benchmark("nope", DATA / "harmful_behaviors.csv")
    with pytest.raises(InputError, match="no such file"):
        load_benchmark("advbench", DATA / "missing.csv")
    assert {"xstest", "advbench", "harmbench", "strongreject", "jailbreakbench"} == set(BENCHMARKS.names())


def test_xstest_bad_label(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("id,prompt,type,label,focus,note\n1,Hello there,homonyms,maybe,,\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"label values \['maybe'\]"):
        load_benchmark("xstest", bad)


def test_jailbreakbench_from_a_folder_laid_out_like_its_hub_repo(tmp_path):
    """JBB-Behaviors on the hub is a dataset repo with a 'behaviors' configuration whose splits are
    harmful and benign; the same layout on disk goes through the same datasets.load_dataset call."""
    repo = tmp_path / "JBB-Behaviors"
    (repo / "data").mkdir(parents=True)
    for split in ("harmful", "benign"):
        (repo / "data" / f"{split}-behaviors.csv").write_text((DATA / f"{split}-behaviors.csv").read_text())
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: behaviors\n  data_files:\n  - split: harmful\n    path: data/harmful-behaviors.csv\n"
        "  - split: benign\n    path: data/benign-behaviors.csv\n---\n"
    )
    harmful = load_benchmark("jailbreakbench", repo, hf_split="harmful")
    assert harmful["id"].tolist() == ["jailbreakbench-harmful-1", "jailbreakbench-harmful-2"] and set(harmful["label"]) == {"unsafe"}
    assert harmful["category"].tolist() == ["Privacy", "Malware/Hacking"]
    benign = load_benchmark("jailbreakbench", repo, hf_split="benign")
    assert set(benign["label"]) == {"safe"}
    with pytest.raises(InputError, match="cannot load as a Hugging Face dataset"):
        load_benchmark("jailbreakbench", repo, hf_split="nope")
