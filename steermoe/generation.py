"""How answers are generated: one frozen settings object for every engine and stage.

Built once from the config (:meth:`GenerationSettings.from_config` for routing and fine-tuning,
:meth:`GenerationSettings.for_evaluation` for evaluation) and handed as it is to the Hugging Face
backend, the static-cache decoder, vLLM and evaluation, which read the fields they use. The same
fields feed the routing store's header and the stage cache keys (through the config keys the stage
specs name), so one object cannot disagree with what the keys say.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from steermoe.errors import InputError

__all__ = ["GenerationSettings"]


@dataclass(frozen=True)
class GenerationSettings:
    """Token budget, batch size, decoding and the chat template's options (fields as ``generation.*``)."""

    max_new_tokens: int = 32  # tokens generated per prompt
    batch_size: int = 16  # prompts per generation batch (halved on out-of-memory where the engine can)
    do_sample: bool = False  # sample instead of greedy decoding
    temperature: float = 1.0  # sampling temperature (do_sample only)
    top_p: float = 1.0  # nucleus sampling mass (do_sample only)
    seed: int = 0  # sampling seed; batch b of a run samples with seed + its first sequence's index
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the tokenizer's chat template

    def __post_init__(self):
        # Checked here too, for settings made in code (tests, tools) rather than from a validated config.
        problems = [
            f"max_new_tokens must be at least 1, not {self.max_new_tokens}" if self.max_new_tokens < 1 else "",
            f"batch_size must be at least 1, not {self.batch_size}" if self.batch_size < 1 else "",
            f"temperature must be above 0, not {self.temperature}" if not self.temperature > 0 else "",
            f"top_p must be in (0, 1], not {self.top_p}" if not 0 < self.top_p <= 1 else "",
        ]
        if any(problems):
            raise InputError(f"generation settings: {'; '.join(p for p in problems if p)}")
        # A private copy: the caller's dict can change later, these settings cannot.
        object.__setattr__(self, "chat_template_kwargs", dict(self.chat_template_kwargs or {}))

    @classmethod
    def from_config(cls, generation_cfg) -> GenerationSettings:
        """The settings of a ``generation`` config section (routing collection, fine-tuning answers)."""
        return cls(**generation_cfg.model_dump())

    @classmethod
    def for_evaluation(cls, evaluation_cfg, generation_cfg) -> GenerationSettings:
        """Evaluation answers: greedy, with the evaluation section's budget and batch size and the
        generation section's chat-template options (the keys the evaluate stage is keyed on)."""
        return cls(
            max_new_tokens=evaluation_cfg.max_new_tokens, batch_size=evaluation_cfg.batch_size,
            chat_template_kwargs=generation_cfg.chat_template_kwargs,
        )

    def replace(self, **changes: Any) -> GenerationSettings:
        return replace(self, **changes)

    def for_batch(self, first_seq: int) -> GenerationSettings:
        """These settings for the batch whose first sequence is ``first_seq`` (its sampling seed)."""
        return replace(self, seed=self.seed + first_seq)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (store headers, records)."""
        return asdict(self)
