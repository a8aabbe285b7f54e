"""The hand-written free-wording splits (``ood``: the final measurement, ``dev``: for tuning): size and coverage,
and that no training text leaks into either, nor one into the other."""

import json
import re

import pytest

from steermoe.demo import load_demo_prompts
from steermoe.demo.corpus import build_corpus
from steermoe.demo.decontamination import ngrams
from steermoe.demo.prompt_sets import DATA_DIR, DEV_FILE, OOD_FILE, demo_prompt_paths
from steermoe.demo.prompt_templates import BORDERLINE_GROUPS, SAFE_GRIDS, UNSAFE_GRIDS
from steermoe.prompts import select_split
from steermoe.validation import validate_prompts


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def ood():
    return _rows(OOD_FILE)


@pytest.fixture(scope="module")
def training_ngrams():
    rendered = [json.loads(line) for p in demo_prompt_paths(ood=False) for line in p.read_text(encoding="utf-8").splitlines() if line]
    corpus = build_corpus()
    training = set().union(*(ngrams(ex.prompt) | ngrams(ex.answer) for ex in corpus))
    training |= set().union(*(ngrams(r["prompt"]) for r in rendered if r["split"] == "train"))
    prompts = {r["prompt"].lower() for r in rendered} | {ex.prompt.lower() for ex in corpus}
    return training, prompts


def test_covers_every_category_topic_and_borderline_group(ood):
    unsafe = [r for r in ood if r["label"] == "unsafe"]
    safe = [r for r in ood if r["label"] == "safe" and r["category"] != "borderline"]
    borderline = [r for r in ood if r["category"] == "borderline"]
    assert len(unsafe) >= 150 and {r["category"] for r in unsafe} == set(UNSAFE_GRIDS)
    assert len(safe) >= 150 and {r["category"] for r in safe} == set(SAFE_GRIDS)
    assert len(borderline) >= 60 and {r["topic"] for r in borderline} == set(BORDERLINE_GROUPS)
    assert {r["label"] for r in borderline} == {"safe"}
    assert {r["split"] for r in ood} == {"ood"}


@pytest.mark.parametrize("name", [OOD_FILE, DEV_FILE])
def test_shares_no_prompt_and_no_8gram_with_training_text(name, training_ngrams):
    training, prompts = training_ngrams
    rows = _rows(name)
    assert not {r["prompt"].lower() for r in rows} & prompts
    leaks = [r["id"] for r in rows if ngrams(r["prompt"]) & training]
    assert not leaks, leaks


def test_dev_split_is_written_apart_from_ood(ood):
    """Tuning on dev says nothing about ood by shared text: no prompt and no 8-word sequence in common."""
    dev = _rows(DEV_FILE)
    ood_ngrams = set().union(*(ngrams(r["prompt"]) for r in ood))
    assert not {r["prompt"].lower() for r in dev} & {r["prompt"].lower() for r in ood}
    assert not [r["id"] for r in dev if ngrams(r["prompt"]) & ood_ngrams]
    unsafe = [r for r in dev if r["label"] == "unsafe"]
    borderline = [r for r in dev if r["category"] == "borderline"]
    assert len(unsafe) >= 150 and {r["category"] for r in unsafe} == set(UNSAFE_GRIDS)
    assert len(dev) - len(unsafe) - len(borderline) >= 150 and len(borderline) >= 60
    assert len({r["id"] for r in dev}) == len(dev) and len({r["prompt"].lower() for r in dev}) == len(dev)
    assert {r["topic"] for r in borderline} == set(BORDERLINE_GROUPS) and {r["split"] for r in dev} == {"dev"}


def test_is_free_wording_not_the_templates(ood):
    """Written by another method than the grids: lengths vary, some prompts hold several sentences."""
    lengths = sorted(len(r["prompt"].split()) for r in ood)
    assert lengths[0] <= 8 and lengths[-1] >= 20
    assert sum(len(re.findall(r"[.?!](\s|$)", r["prompt"])) >= 2 for r in ood) >= 50
    assert sum(r["prompt"][0].islower() for r in ood) >= 20  # casual typing, no capital


def test_is_validated_with_the_demo_sets_and_never_in_train():
    prompts = load_demo_prompts()
    assert validate_prompts(prompts).success
    assert len(select_split(prompts, "ood")) == 360 and len(select_split(prompts, "dev")) == 390
    assert not select_split(prompts, "train").id.str.startswith(("ood-", "dev-")).any()
