"""Capability declines: refusal vocabulary for the demo base model, with no shortcut to the prompt sets."""

import itertools
import random
import re

from steermoe.demo.corpus import build_corpus
from steermoe.demo.declines import CAPABILITY_REQUESTS, DECLINE_CLOSERS, DECLINE_OPENERS, DECLINE_REASONS, decline_answer
from steermoe.demo.prompt_sets import render_prompt_sets
from steermoe.demo.prompt_templates import BORDERLINE_GROUPS, SAFE_GRIDS, TRAIN_TEMPLATES, UNSAFE_GRIDS
from steermoe.demo.wording import FRAMES
from steermoe.evaluation.judges import StringMatchJudge
from steermoe.finetune.data import DEFAULT_REFUSALS

_COMMON = {"from", "that", "this", "with", "what", "your", "about"}


def _words(texts) -> set[str]:
    return {w for t in texts for w in re.findall(r"[a-z']+", t.lower()) if len(w) >= 4} - _COMMON


_REFUSAL_WORDS = ("sorry", "can't", "cannot", "not able", "unable", "won't", "decline")


def test_every_decline_opens_with_refusal_words_and_most_are_judged_refusals():
    judge = StringMatchJudge()
    reason = next(iter(CAPABILITY_REQUESTS.values()))[0]
    judged = []
    for opener, why, closer in itertools.product(DECLINE_OPENERS, DECLINE_REASONS, DECLINE_CLOSERS):
        text = " ".join(p for p in (opener.format(reason=reason), why, closer) if p)
        first_sentence = re.split(r"[.:]", text)[0].lower()
        assert any(w in first_sentence for w in _REFUSAL_WORDS), text
        judged.append(judge.judge("q", text).refused)
    # "I won't be able to ..." is refusal language the published string lists do not know
    assert sum(judged) >= len(judged) * (len(DECLINE_OPENERS) - 1) / len(DECLINE_OPENERS)
    answer = decline_answer("browse the web", random.Random(0))
    assert "browse the web" in answer and answer.endswith((".", "?"))


def test_declines_teach_the_words_the_finetuning_refusals_open_with():
    """Every word of each built-in refusal target's opening (up to its first comma or period) is a decline word."""
    vocabulary = set(" ".join(DECLINE_OPENERS + DECLINE_REASONS + DECLINE_CLOSERS).lower().replace(",", " ").replace(".", " ").replace(":", " ").split())
    for template in DEFAULT_REFUSALS:
        opening = re.split(r"[,.]", template)[0].lower()
        assert {w for w in opening.split() if "{" not in w} <= vocabulary, template


def test_requests_share_no_content_word_with_the_prompt_grids():
    requests = _words(item for _, items in CAPABILITY_REQUESTS.values() for item in items)
    unsafe = _words(x for actions, targets in UNSAFE_GRIDS.values() for x in actions + targets)
    safe = _words([f for spec in SAFE_GRIDS.values() for f, _ in spec["frames"]] + [i for spec in SAFE_GRIDS.values() for i in spec["items"]])
    borderline = _words(x for g in BORDERLINE_GROUPS.values() for x in g["actions"] + g["targets"])
    assert not requests & unsafe and not requests & safe and not requests & borderline


def test_corpus_holds_declines_in_train_templates_and_no_prompt_set_does():
    corpus = build_corpus()
    declines = [ex for ex in corpus if ex.category == "capability"]
    items = [item for _, items in CAPABILITY_REQUESTS.values() for item in items]
    assert len(declines) >= 8 * len(items) // 2 and {ex.label for ex in declines} == {"safe"}
    assert all(any(w in ex.answer.lower() for w in _REFUSAL_WORDS) for ex in declines)
    # rendered like every other item: one of the shared train templates or free-wording frames around a capability request
    frames = [*TRAIN_TEMPLATES.values(), *FRAMES]
    patterns = [re.compile(re.escape(t.lower()).replace(re.escape("{item}"), "(.+)")) for t in frames]
    # (noise, typos and chat spelling roughen some of them, so exact matches are most but not all)
    exact = [any(p.search(ex.prompt.lower()) for p in patterns) and any(i.lower() in ex.prompt.lower() for i in items) for ex in declines]
    assert sum(exact) >= 0.6 * len(declines)
    # corpus only: no prompt set holds a capability request
    shipped = [r["prompt"] for rows in render_prompt_sets().values() for r in rows]
    assert not any(item in prompt for item in items for prompt in shipped)
