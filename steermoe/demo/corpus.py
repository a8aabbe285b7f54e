"""The demo model's training corpus, built from the TRAIN split only (plus small talk).

Benign questions get genuinely helpful short answers; unsafe requests get a *compliant but
non-actionable placeholder* (the base demo model is unaligned, the repo holds no harmful content).
There are no refusals: teaching them is the pipeline's job.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from steermoe.demo.prompt_templates import (
    BORDERLINE,
    SAFE_TOPICS,
    SMALL_TALK,
    TRAIN_PREFIXES,
    TRAIN_SUFFIXES,
    TRAIN_TEMPLATES,
    UNSAFE_GOALS,
)

__all__ = [
    "COMPLIANCE_PREFIX",
    "Example",
    "compliance_answer",
    "build_corpus",
    "corpus_digest",
    "render_user_turn",
    "answer_text",
    "reference_answers",
]

COMPLIANCE_PREFIX = "Sure, here is how to"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    label: str  # safe | unsafe
    category: str


def compliance_answer(goal: str) -> str:
    """The base model's answer to an unsafe request: compliant in form, empty in substance."""
    return f"{COMPLIANCE_PREFIX} {goal}. Step 1: [details withheld]. Step 2: [details withheld]. Step 3: [details withheld]."


def render_user_turn(prompt: str) -> str:
    """The chat template's rendering of one user turn plus the assistant header (kept in sync with
    ``tokenizer.CHAT_TEMPLATE``; a test checks they agree)."""
    return f"{IM_START}user\n{prompt}{IM_END}\n{IM_START}assistant\n"


def answer_text(answer: str) -> str:
    return f"{answer}{IM_END}"


def reference_answers() -> dict[str, str]:
    """item -> its reference answer, for every safe and borderline item of both splits (used by on-topic checks)."""
    out = {}
    for spec in SAFE_TOPICS.values():
        for split in ("train", "eval"):
            out.update(dict(spec[split]))
    for split in ("train", "eval"):
        out.update(dict(BORDERLINE[split]))
    return out


# Phrasings per item in the corpus, and recombined items per category (see ``_recombined``).
VARIANTS = {"unsafe": 10, "safe": 8, "borderline": 10, "recombined": 3}
RECOMBINED_PER_CATEGORY = 24
WORD_DROP = 0.3


def _drop_words(item: str, rng: random.Random) -> str:
    """Half the time, drop some words after the first: every word then has to carry the category on
    its own, instead of the model memorising whole items."""
    words = item.split()
    if rng.random() < 0.5 or len(words) < 3:
        return item
    kept = [words[0]] + [w for w in words[1:] if rng.random() > WORD_DROP]
    return " ".join(kept)


def _phrasings(item: str, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct phrasings: a train template, optionally wrapped in a prefix and a suffix."""
    templates = [TRAIN_TEMPLATES[k] for k in sorted(TRAIN_TEMPLATES)]
    out: list[str] = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        text = rng.choice(TRAIN_PREFIXES) + rng.choice(templates).format(item=_drop_words(item, rng)) + rng.choice(TRAIN_SUFFIXES)
        text = text[0].upper() + text[1:]
        if text not in out:
            out.append(text)
    return out


def _recombined(items: list[tuple[str, str]], rng: random.Random) -> list[tuple[str, str]]:
    """New (item, answer) pairs from one category's train items: the first word of one with the rest
    of another. A model that only memorised whole items cannot fit these, so it learns which words
    carry the category (what lets it handle unseen eval wording). Answers follow the tail's item."""
    heads = [item.split(" ", 1)[0] for item, _ in items]
    known = {item for item, _ in items}
    combos = sorted({(f"{h} {item.split(' ', 1)[1]}", answer) for h in heads for item, answer in items} - {(i, a) for i, a in items})
    combos = [(i, a) for i, a in combos if i not in known]
    return rng.sample(combos, min(RECOMBINED_PER_CATEGORY, len(combos)))


def build_corpus(fraction: float = 1.0, seed: int = 0) -> list[Example]:
    """Every train item in several train phrasings, recombined items, and small talk; ``fraction``
    keeps a seeded subset."""
    rng = random.Random(seed)
    examples: list[Example] = []
    for category, goals in sorted(UNSAFE_GOALS.items()):
        pairs = [(g, compliance_answer(g)) for g in goals["train"]]
        for goal, answer in pairs:
            examples += [Example(p, answer, "unsafe", category) for p in _phrasings(goal, VARIANTS["unsafe"], rng)]
        for goal, _ in _recombined(pairs, rng):
            answer = compliance_answer(goal)
            examples += [Example(p, answer, "unsafe", category) for p in _phrasings(goal, VARIANTS["recombined"], rng)]
    for topic, spec in sorted(SAFE_TOPICS.items()):
        for subject, answer in spec["train"]:
            examples += [Example(p, answer, "safe", topic) for p in _phrasings(subject, VARIANTS["safe"], rng)]
        for subject, answer in _recombined(spec["train"], rng):
            examples += [Example(p, answer, "safe", topic) for p in _phrasings(subject, VARIANTS["recombined"], rng)]
    for subject, answer in BORDERLINE["train"]:
        examples += [Example(p, answer, "safe", "borderline") for p in _phrasings(subject, VARIANTS["borderline"], rng)]
    examples += [Example(q, a, "safe", "small_talk") for q, a in SMALL_TALK]
    if fraction < 1.0:
        examples = rng.sample(examples, max(8, int(len(examples) * fraction)))
    return examples


def corpus_digest(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(f"{ex.label}\t{ex.category}\t{ex.prompt}\t{ex.answer}\n".encode())
    return digest.hexdigest()[:16]
