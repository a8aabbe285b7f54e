"""Training examples: unsafe prompts -> refusals, safe prompts -> the base model's own answers.

Labels are set here, once: every prompt token gets ``-100`` so the loss covers the assistant's
answer only; :func:`collate` only pads (padding labels are ``-100`` too).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from steermoe.errors import InputError

__all__ = [
    "DEFAULT_REFUSALS",
    "IGNORE_INDEX",
    "TrainingExample",
    "build_training_examples",
    "base_model_answers",
    "refusals_from_endpoint",
    "collate",
    "save_examples",
    "load_examples",
]

IGNORE_INDEX = -100

# Varied on purpose: one fixed sentence teaches a string, not a behaviour. Each opens with a standard
# refusal phrase ("I'm sorry", "I can't", "I cannot", "I'm not able", "As an AI"), the words chat models
# already use to decline; the bodies vary.
DEFAULT_REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with {topic}. If you are in danger or someone is at risk, please contact local emergency services.",
    "Sorry, I won't help with {topic}. It could cause real harm to people.",
    "I cannot help with that request. Is there something else I can help with?",
    "I'm not able to help with {topic}, but I'm happy to talk about safety or legal alternatives.",
    "As an AI assistant, I must decline this request because it could lead to harm.",
    "I'm sorry, but I won't provide instructions for that. Let me know if there is something safe I can help with instead.",
    "I can't help with that. I'd be glad to help with a different question.",
)


@dataclass
class TrainingExample:
    """One tokenised conversation: ``labels`` is ``-100`` on prompt tokens."""

    input_ids: list[int]
    labels: list[int]
    kind: str  # "refusal" (unsafe prompt) or "benign" (safe prompt, base model's answer)

    def __post_init__(self):
        assert len(self.input_ids) == len(self.labels), "one label per token"


def _messages(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def _topic(prompt) -> str:
    """A short rendering of the request for '{topic}' templates ("that request" when none fits)."""
    text = prompt if isinstance(prompt, str) else next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
    text = re.sub(r"^(please\s+)?(can you|could you|how (do|can|would) (i|you|we)|tell me how to|explain how to)\s+", "", text.strip(), flags=re.I)
    text = text.rstrip("?.! ").strip()
    words = text.split()
    if not words or len(words) > 12:
        return "that request"
    return "requests to " + " ".join(words)[:1].lower() + " ".join(words)[1:]


def _encode(tokenizer, prompt, answer: str, max_length: int, chat_template_kwargs: dict | None, kind: str) -> TrainingExample:
    from steermoe.modeling import render_chat

    prompt_ids = tokenizer(render_chat(tokenizer, _messages(prompt), chat_template_kwargs), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    # Keep the whole answer when possible: cut the prompt from the left (the template's end stays).
    room = max(max_length - len(answer_ids), max_length // 2)
    prompt_ids = prompt_ids[-room:]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return TrainingExample(ids, labels, kind)


def build_training_examples(
    tokenizer,
    unsafe_prompts: Sequence,
    safe_prompts: Sequence,
    safe_answers: Sequence[str],
    cfg,
    refusals: Sequence[str] | None = None,
    chat_template_kwargs: dict | None = None,
) -> list[TrainingExample]:
    """Tokenised training mix: refusals for unsafe prompts, the base model's answers for safe ones.

    ``cfg`` is a :class:`~steermoe.config.FinetuneConfig`: ``safe_fraction`` sets the share of
    benign examples (the larger group is subsampled, seeded), ``refusal_templates`` the refusals
    (built-in set when empty; '{topic}' filled from the prompt), ``max_length`` the cut. Pass
    ``refusals`` (one per unsafe prompt, e.g. from :func:`refusals_from_endpoint`) to override.
    """
    if len(safe_prompts) != len(safe_answers):
        raise InputError(f"safe prompts ({len(safe_prompts)}) and base answers ({len(safe_answers)}) differ in number; one answer per prompt")
    if refusals is not None and len(refusals) != len(unsafe_prompts):
        raise InputError(f"refusals ({len(refusals)}) and unsafe prompts ({len(unsafe_prompts)}) differ in number")
    templates = list(cfg.refusal_templates or DEFAULT_REFUSALS)
    rng = random.Random(cfg.seed)
    unsafe_idx, safe_idx = _mix(len(unsafe_prompts), len(safe_prompts), cfg.safe_fraction, rng)
    if not unsafe_idx and not safe_idx:
        raise InputError("finetune: no training examples (no unsafe prompts and no safe prompts with answers)")
    out = []
    for i in unsafe_idx:
        text = refusals[i] if refusals is not None else rng.choice(templates).replace("{topic}", _topic(unsafe_prompts[i]))
        out.append(_encode(tokenizer, unsafe_prompts[i], text, cfg.max_length, chat_template_kwargs, "refusal"))
    for i in safe_idx:
        out.append(_encode(tokenizer, safe_prompts[i], safe_answers[i], cfg.max_length, chat_template_kwargs, "benign"))
    rng.shuffle(out)
    return out


def _mix(n_unsafe: int, n_safe: int, safe_fraction: float, rng: random.Random) -> tuple[list[int], list[int]]:
    """Indices of unsafe and safe prompts giving a benign share of ``safe_fraction`` (as many examples as possible)."""
    if safe_fraction <= 0 or n_safe == 0:
        return list(range(n_unsafe)), []
    if safe_fraction >= 1 or n_unsafe == 0:
        return [], list(range(n_safe))
    # Largest total with both counts available.
    total = min(n_unsafe / (1 - safe_fraction), n_safe / safe_fraction)
    k_safe = min(n_safe, round(total * safe_fraction))
    k_unsafe = min(n_unsafe, round(total * (1 - safe_fraction)))
    return sorted(rng.sample(range(n_unsafe), k_unsafe)), sorted(rng.sample(range(n_safe), k_safe))


def base_model_answers(model, tokenizer, safe_prompts: Sequence, generation=None) -> list[str]:
    """The base model's own answers to the safe prompts (what benign training preserves), generated as the
    :class:`~steermoe.generation.GenerationSettings` ``generation`` say (default: greedy, 32 tokens)."""
    from steermoe.modeling import generate

    return generate(model, tokenizer, [_messages(p) for p in safe_prompts], generation, progress=True).texts


def refusals_from_endpoint(url: str, model: str, prompts: Sequence, api_key: str | None = None, timeout: float = 60.0) -> list[str]:
    """Refusals written by an OpenAI-compatible chat endpoint (off unless configured); the client
    retries transient failures."""
    from steermoe.chat_endpoint import ChatEndpoint

    instruction = (
        "Write a short, polite refusal (one or two sentences) to the following request. "
        "Do not help with it and do not repeat any harmful detail. Request: "
    )
    endpoint = ChatEndpoint(url, model, api_key=api_key, timeout=timeout, retries=2, where="finetune.refusal_endpoint")
    return [endpoint.complete(instruction + _messages(p)[-1]["content"], temperature=0.7).strip() for p in prompts]


def collate(batch: Sequence[TrainingExample], pad_id: int) -> dict:
    """Right-pad a batch: ``input_ids`` with ``pad_id``, ``labels`` with -100, plus the attention mask."""
    import torch

    width = max(len(x.input_ids) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (batch, width)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        n = len(x.input_ids)
        ids[i, :n] = torch.tensor(x.input_ids)
        labels[i, :n] = torch.tensor(x.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def save_examples(examples: Sequence[TrainingExample], path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for x in examples:
            f.write(json.dumps(asdict(x)) + "\n")


def load_examples(path) -> list[TrainingExample]:
    with open(path, encoding="utf-8") as f:
        return [TrainingExample(**json.loads(line)) for line in f if line.strip()]
