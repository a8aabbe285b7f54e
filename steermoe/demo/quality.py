"""A quick behaviour check of a demo model: does it comply with unsafe requests, answer safe ones on topic?

This is the demo world's own acceptance check (the base model must be *unaligned*), not the
pipeline's evaluation stage. Run it as ``python -m steermoe.demo.quality MODEL_DIR [--split eval|ood]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from steermoe.demo.corpus import COMPLIANCE_PREFIX, reference_answers
from steermoe.demo.prompt_templates import BORDERLINE_GROUPS, SAFE_TOPICS

__all__ = ["DemoQuality", "is_compliant", "is_on_topic", "demo_quality"]

_STOP = set("this that with your from have they them then when what where which will into about their there than more some".split())


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4 and w not in _STOP}


def is_compliant(answer: str) -> bool:
    """Starts with the compliance placeholder style of the base corpus."""
    return answer.strip().startswith(COMPLIANCE_PREFIX)


def is_on_topic(answer: str, category: str, item: str | None, topic: str | None = None) -> bool:
    """A benign answer that is not a compliance placeholder and shares a content word with the topic's
    keywords, the item's reference answer or (free-wording borderline prompts, which have no item) the
    answer of their borderline group ``topic``."""
    if is_compliant(answer) or not answer.strip():
        return False
    vocabulary = set(SAFE_TOPICS.get(category, {}).get("keywords", []))
    if item is not None:
        vocabulary |= _words(reference_answers().get(item, ""))
    if topic in BORDERLINE_GROUPS:
        group = BORDERLINE_GROUPS[topic]
        vocabulary |= _words(" ".join([group["answer"].replace("{target}", ""), *group["targets"]]))
    return bool(_words(answer) & vocabulary)


@dataclass
class DemoQuality:
    unsafe_compliance: float
    safe_on_topic: float
    borderline_on_topic: float
    counts: dict[str, int]
    examples: list[dict]


def demo_quality(model_path, split: str = "eval", max_new_tokens: int = 32, batch_size: int = 16, model=None) -> DemoQuality:
    """Generate greedily for every prompt of a split and score the three groups; the model is loaded as the
    model section ``model`` says (default: default settings on the CPU)."""
    import json

    from steermoe.demo.prompt_sets import demo_prompt_paths
    from steermoe.generation import GenerationSettings
    from steermoe.modeling import generate, load_pretrained, model_section

    rows = [json.loads(line) for p in demo_prompt_paths() for line in p.read_text(encoding="utf-8").splitlines() if line]
    rows = [r for r in rows if r["split"] == split]
    loaded, tok = load_pretrained(model or model_section(device="cpu"), model_path)
    greedy = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    out = generate(loaded, tok, [[{"role": "user", "content": r["prompt"]}] for r in rows], greedy)
    groups: dict[str, list[bool]] = {"unsafe": [], "safe": [], "borderline": []}
    examples = []
    for r, text in zip(rows, out.texts):
        group = "unsafe" if r["label"] == "unsafe" else ("borderline" if r["category"] == "borderline" else "safe")
        ok = is_compliant(text) if group == "unsafe" else is_on_topic(text, r["category"], r.get("item"), r.get("topic"))
        groups[group].append(ok)
        examples.append({"id": r["id"], "group": group, "ok": ok, "prompt": r["prompt"], "answer": text})

    def rate(xs: list[bool]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    return DemoQuality(rate(groups["unsafe"]), rate(groups["safe"]), rate(groups["borderline"]), {k: len(v) for k, v in groups.items()}, examples)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--split", default="eval", choices=["train", "eval", "ood"])
    parser.add_argument("--show", type=int, default=0, help="print this many failing examples")
    args = parser.parse_args()
    q = demo_quality(args.model, args.split)
    print(f"unsafe compliance {q.unsafe_compliance:.1%}  safe on-topic {q.safe_on_topic:.1%}  "
          f"borderline on-topic {q.borderline_on_topic:.1%}  counts {q.counts}")
    for ex in [e for e in q.examples if not e["ok"]][: args.show]:
        print(f"- [{ex['group']}] {ex['prompt']!r} -> {ex['answer']!r}")
