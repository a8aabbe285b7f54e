"""The built-in prompt sets: counts, categories, validation, and the split rule."""

import json

import pytest

from steermoe.demo import load_demo_prompts
from steermoe.demo.corpus import build_corpus
from steermoe.demo.prompt_sets import demo_prompt_paths, render_prompt_sets
from steermoe.demo.prompt_templates import EVAL_TEMPLATES, TRAIN_TEMPLATES
from steermoe.prompts import PROMPT_COLUMNS


@pytest.fixture(scope="module")
def shipped():
    return [json.loads(line) for p in demo_prompt_paths() for line in p.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module")
def prompts():
    return load_demo_prompts()


def test_shipped_files_match_the_templates(shipped):
    rendered = [row for rows in render_prompt_sets().values() for row in rows]
    assert shipped == rendered, "run `python -m steermoe.demo.prompt_sets` to regenerate steermoe/demo/data"


def test_counts_and_categories_meet_the_minimums(prompts):
    unsafe = prompts[prompts.label == "unsafe"]
    safe = prompts[(prompts.label == "safe") & (prompts.category != "borderline")]
    borderline = prompts[prompts.category == "borderline"]
    assert len(unsafe) >= 300 and unsafe.category.nunique() >= 8
    assert len(safe) >= 300 and safe.category.nunique() >= 10
    assert len(borderline) >= 80 and set(borderline.label) == {"safe"}
    for frame in (unsafe, safe, borderline):
        assert set(frame.split) == {"train", "eval"}
    # every category has both splits, so eval covers each one
    assert (prompts.groupby("category").split.nunique() == 2).all()


def test_canonical_columns(prompts):
    assert list(prompts.columns) == PROMPT_COLUMNS
    assert prompts.prompt.notna().all() and prompts.messages.isna().all()
    assert load_demo_prompts("eval").split.eq("eval").all()


def test_splits_share_no_prompt_item_or_template(shipped):
    by_split = {s: [r for r in shipped if r["split"] == s] for s in ("train", "eval")}
    for field in ("prompt", "item", "template"):
        train = {r[field] for r in by_split["train"]}
        assert not train & {r[field] for r in by_split["eval"]}, field
    assert {r["template"] for r in by_split["train"]} <= set(TRAIN_TEMPLATES)
    assert {r["template"] for r in by_split["eval"]} <= set(EVAL_TEMPLATES)
    # no eval template's fixed wording shows up in any train prompt either
    for text in EVAL_TEMPLATES.values():
        stem = text.split("{item}")[0].strip()
        assert not any(r["prompt"].startswith(stem) for r in by_split["train"]), stem


def test_training_corpus_holds_no_eval_material(shipped):
    corpus = build_corpus()
    eval_items = {r["item"] for r in shipped if r["split"] == "eval"}
    eval_prompts = {r["prompt"] for r in shipped if r["split"] == "eval"}
    assert not any(ex.prompt in eval_prompts for ex in corpus)
    assert not any(item in ex.prompt for ex in corpus for item in eval_items)
    stems = [t.split("{item}")[0].strip() for t in EVAL_TEMPLATES.values()]
    assert not any(stem in ex.prompt for ex in corpus for stem in stems)
    assert not any(ex.answer.lower().startswith(("i can't", "i cannot", "sorry", "i won't")) for ex in corpus), "no refusals"
    unsafe = [ex for ex in corpus if ex.label == "unsafe"]
    assert unsafe and all("[details withheld]" in ex.answer for ex in unsafe)


def test_sets_pass_validation(prompts):
    from steermoe.validation import validate_prompts

    report = validate_prompts(prompts)
    assert report.success, report.errors[:5]
