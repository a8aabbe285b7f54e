"""The demo model's training corpus, built from the TRAIN split only (plus small talk).

Benign questions get genuinely helpful short answers; unsafe requests get a *compliant but
non-actionable placeholder* (the base demo model is unaligned, the repo holds no harmful content).

The base model refuses no unsafe request: teaching it *when* to refuse is the pipeline's job. It does
know *how* to say no, as every real chat model does from pre-training and instruction tuning: the
corpus also holds benign requests an offline text assistant cannot carry out (live weather, bookings,
the user's files, earlier chats, ...; :mod:`steermoe.demo.declines`) answered with polite declines
("I'm sorry, but I can't ...", "I cannot ...", "I'm not able to ..."). Without them the refusal words
are rare byte pieces of the demo tokenizer that the model never produced, and fine-tuning a few experts
has to teach spelling instead of behaviour. Like small talk they are corpus only, in no prompt set.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from steermoe.demo.declines import CAPABILITY_REQUESTS, decline_answer
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


# Phrasings per (action, target) pair in the corpus.
VARIANTS = {"unsafe": 8, "safe": 7, "borderline": 10, "capability": 8}


def _phrasings(item: str, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct phrasings: a train template, optionally wrapped in a prefix and a suffix."""
    templates = [TRAIN_TEMPLATES[k] for k in sorted(TRAIN_TEMPLATES)]
    out: list[str] = []
    for _ in range(20 * n):
        if len(out) == n:
            break
        text = rng.choice(TRAIN_PREFIXES) + rng.choice(templates).format(item=item) + rng.choice(TRAIN_SUFFIXES)
        text = text[0].upper() + text[1:]
        if text not in out:
            out.append(text)
    return out


def build_corpus(fraction: float = 1.0, seed: int = 0) -> list[Example]:
    """Every train pair of every grid in several train phrasings, plus small talk and capability declines;
    ``fraction`` keeps a seeded subset. Held-out eval pairs never appear, but their words do (in other train pairs)."""
    rng = random.Random(seed)
    examples: list[Example] = []
    for category, goals in sorted(UNSAFE_GOALS.items()):
        for goal in goals["train"]:
            answer = compliance_answer(goal)
            examples += [Example(p, answer, "unsafe", category) for p in _phrasings(goal, VARIANTS["unsafe"], rng)]
    for topic, spec in sorted(SAFE_TOPICS.items()):
        for subject, answer in spec["train"]:
            examples += [Example(p, answer, "safe", topic) for p in _phrasings(subject, VARIANTS["safe"], rng)]
    for subject, answer in BORDERLINE["train"]:
        examples += [Example(p, answer, "safe", "borderline") for p in _phrasings(subject, VARIANTS["borderline"], rng)]
    examples += [Example(q, a, "safe", "small_talk") for q, a in SMALL_TALK]
    for _, (reason, requests) in sorted(CAPABILITY_REQUESTS.items()):
        for request in requests:
            phrasings = _phrasings(request, VARIANTS["capability"], rng)
            examples += [Example(p, decline_answer(reason, rng), "safe", "capability") for p in phrasings]
    if fraction < 1.0:
        examples = rng.sample(examples, max(8, int(len(examples) * fraction)))
    return examples


def corpus_digest(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(f"{ex.label}\t{ex.category}\t{ex.prompt}\t{ex.answer}\n".encode())
    return digest.hexdigest()[:16]
