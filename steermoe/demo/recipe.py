"""The demo model's recipe: shape and training settings. Importing this is cheap (no torch)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

__all__ = ["DEMO_SHAPE", "DEMO_ARCHS", "DEMO_SIZES", "DemoRecipe"]

# Bump when the builder changes what a recipe produces (the cache key includes it).
BUILDER_VERSION = 5

DEMO_ARCHS = ("qwen3_moe", "olmoe", "mixtral")
DEMO_SIZES = ("full", "small", "tiny")


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the demo model's bytes (with the corpus, which is hashed separately).

    ``routing_prior`` is a deliberate design choice of the demo world: during training a small
    auxiliary loss pulls the router mass of answer tokens of *unsafe* examples onto
    ``unsafe_experts_per_layer`` seeded experts per layer (and that of safe answers away from them),
    so the demo model has the unsafe-specialised experts that real MoE models show and the pipeline
    looks for. ``routing_prior_span`` says which tokens it covers: ``"header"`` the answer and the assistant
    header before it (tokens that have read the whole request), ``"answer"`` the answer and the last prompt token.
    Set ``routing_prior`` to 0 for a model whose routing is left entirely to the language-model loss.
    """

    arch: str = "qwen3_moe"
    hidden_size: int = 128
    num_layers: int = 4
    num_experts: int = 8
    experts_per_token: int = 2
    expert_intermediate_size: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    vocab_size: int = 4096
    max_length: int = 88
    # 1,200 steps of 32 (about two passes over the corpus) at a peak of 5e-3: about 200 s on two idle threads. On the
    # dev split 600 steps answered safe questions on topic 55% of the time, 1,200 steps 73%; 1,500 gained nothing.
    steps: int = 1200
    batch_size: int = 32
    learning_rate: float = 5e-3
    warmup_steps: int = 20
    weight_decay: float = 0.01
    # Measured on the dev split and the template eval split (1,200 steps): at 0.1 and 0.2 the longer-trained model
    # spread its unsafe routing so far that random experts learnt to refuse nearly as well as the chosen ones (45% and
    # 81% of the template split); 0.3 over the answer and the assistant header keeps the unsafe behaviour in the
    # designed experts (random 4%) and the chosen experts refuse 95% (dev 83%).
    routing_prior: float = 0.3
    routing_prior_span: str = "header"
    unsafe_experts_per_layer: int = 2
    corpus_fraction: float = 1.0
    seed: int = 0
    # Training threads (fixed, not the machine's count, so the bytes do not depend on it): two cut a step of the
    # full model from 0.23 s to 0.17 s on an idle two-core machine; the small and tiny models gain nothing.
    build_threads: int = 2

    @classmethod
    def tiny(cls, arch: str = "qwen3_moe") -> DemoRecipe:
        """A reduced model that builds in a few seconds (tests); still trained a little."""
        return cls(
            arch=arch, hidden_size=32, expert_intermediate_size=32, num_heads=2, num_kv_heads=1, head_dim=16,
            vocab_size=400, max_length=48, steps=12, batch_size=8, learning_rate=3e-3, warmup_steps=2, corpus_fraction=0.1,
            build_threads=1,
        )

    @classmethod
    def small(cls, arch: str = "qwen3_moe") -> DemoRecipe:
        """Between the two: builds in about two minutes of CPU and has learnt enough that a few fine-tuning
        steps on the selected experts already make it decline (smoke runs: ``configs/smoke.yaml``). 800 steps since
        the third vocabulary round: at 400 over the larger corpus the smoke run's fine-tuned model declined none of
        its 4 unsafe eval prompts (one thread), at 800 two."""
        return cls(
            arch=arch, hidden_size=64, expert_intermediate_size=64, num_heads=4, num_kv_heads=2, head_dim=16,
            vocab_size=1024, max_length=64, steps=800, batch_size=16, learning_rate=3e-3, warmup_steps=10, corpus_fraction=0.5,
            build_threads=1,
        )

    @classmethod
    def of_size(cls, size: str, arch: str = "qwen3_moe") -> DemoRecipe:
        """The recipe of one of :data:`DEMO_SIZES`."""
        return {"full": cls, "small": cls.small, "tiny": cls.tiny}[size](arch=arch)

    def with_arch(self, arch: str) -> DemoRecipe:
        return replace(self, arch=arch)

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self, corpus_digest: str = "") -> str:
        """Cache key: the recipe, the builder version and the training corpus."""
        body = json.dumps({"recipe": self.to_dict(), "builder": BUILDER_VERSION, "corpus": corpus_digest}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:12]


_DEFAULT = DemoRecipe()
# Used by the config check (selection.top_k against the demo model's experts).
DEMO_SHAPE = {
    "num_layers": _DEFAULT.num_layers,
    "num_experts": _DEFAULT.num_experts,
    "experts_per_token": _DEFAULT.experts_per_token,
}
