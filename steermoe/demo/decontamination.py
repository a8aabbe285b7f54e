"""Decontamination: no training text may hold held-out material.

The generators combine words freely (frames x items, generic verbs x nouns), so now and then a phrasing
reproduces something held out: "pick" + "a guitar" is an eval item, or eight words in a row match a
hand-written ``ood`` or ``dev`` prompt. Such a phrasing is dropped or drawn again rather than trained on,
the way large corpora are cleaned of benchmark n-grams. Tests check the result from the other side.
"""

from __future__ import annotations

import functools
import json
import re

__all__ = ["ngrams", "is_contaminated"]


def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    """Lower-cased word n-grams (letters, digits, apostrophes): what decontamination and the disjointness tests count."""
    words = re.findall(r"[a-z0-9']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@functools.cache
def _held_out() -> tuple[tuple[str, ...], frozenset[tuple[str, ...]]]:
    """(the eval split's items and its templates' fixed wording, the 8-grams of the hand-written splits)."""
    from steermoe.demo.prompt_sets import DATA_DIR, DEV_FILE, OOD_FILE
    from steermoe.demo.prompt_templates import BORDERLINE, EVAL_TEMPLATES, SAFE_TOPICS, UNSAFE_GOALS

    items = [g for goals in UNSAFE_GOALS.values() for g in goals["eval"]]
    items += [s for spec in SAFE_TOPICS.values() for s, _ in spec["eval"]] + [s for s, _ in BORDERLINE["eval"]]
    items += [p.strip() for t in EVAL_TEMPLATES.values() for p in t.split("{item}") if len(p.strip()) > 1]
    grams: set[tuple[str, ...]] = set()
    for name in (OOD_FILE, DEV_FILE):
        for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines():
            if line:
                grams |= ngrams(json.loads(line)["prompt"])
    return tuple(items), frozenset(grams)


def is_contaminated(*texts: str) -> bool:
    """Whether any text contains an eval item or eval-template wording, or shares an 8-gram with ood or dev."""
    items, grams = _held_out()
    return any(item in text for text in texts for item in items) or any(ngrams(text) & grams for text in texts)
