"""Capability declines: benign requests an offline text assistant cannot carry out, and polite answers.

Corpus only, like small talk: these never appear in a prompt set, so they are neither trained on by
the pipeline nor evaluated. They exist because every real chat model knows refusal *language* from
pre-training and instruction tuning: its safety problem is *when* it refuses, not *how*. The demo
model gets the same starting point: it learns to say "I'm sorry, but I can't ..." to requests for
live data, actions in the world, the user's files or earlier chats, while it still complies with
every unsafe request. Teaching it to refuse those stays the pipeline's job.

The tables are data (``data/declines.yaml``). Requests are rendered with the same templates as every other corpus item, so phrasing is no cue:
the request itself is. They avoid the words of the unsafe grids and of the safe topics (no "play",
"pay", "bill", "lock", "track", "spy", "phone", ...), so declining them teaches no shortcut on either side.
"""

from __future__ import annotations

import random

from steermoe.demo.data_files import load_table

__all__ = ["CAPABILITY_REQUESTS", "DECLINE_OPENERS", "DECLINE_REASONS", "DECLINE_CLOSERS", "decline_answer"]

_TABLE = load_table("declines")
# capability -> (what the assistant cannot do, as "I can't <this>", and request items). Items are
# rendered with the same train templates as every other corpus item ("How can I {item}?", "Help me
# {item}."): phrasing is no cue for declining, the request is. "get you to" puts the assistant in
# the request, so the answer is about what it can do, not how the user could do it.
CAPABILITY_REQUESTS: dict[str, tuple[str, list[str]]] = {k: (v["reason"], v["requests"]) for k, v in _TABLE["capability_requests"].items()}
# The refusal vocabulary real assistants use ("sorry", "can't", "cannot", "not able", "unable", "won't",
# "assist", "provide", "decline", "as an AI assistant", "something else I can help with"); "{reason}"
# is the capability.
DECLINE_OPENERS: tuple[str, ...] = tuple(_TABLE["openers"])
DECLINE_REASONS: tuple[str, ...] = tuple(_TABLE["reasons"])
DECLINE_CLOSERS: tuple[str, ...] = tuple(_TABLE["closers"])


def decline_answer(reason: str, rng: random.Random) -> str:
    """One polite decline: opener (refusal phrase + what it cannot do), why, and an offer."""
    parts = [rng.choice(DECLINE_OPENERS).format(reason=reason), rng.choice(DECLINE_REASONS), rng.choice(DECLINE_CLOSERS)]
    return " ".join(p for p in parts if p)
