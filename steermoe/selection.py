"""Expert selection: which (layer, expert) pairs to fine-tune or steer.

Every strategy returns an :class:`ExpertSelection`, so downstream stages never care how it was made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["ExpertSelection"]


@dataclass
class ExpertSelection:
    """An ordered list of (layer, expert) pairs, their scores, and what chose them.

    ``negative`` is only used by signed selections for steering (experts to deactivate).
    Layers are the model's own decoder-layer indices.
    """

    experts: list[tuple[int, int]]
    scores: list[float]
    strategy: str
    params: dict = field(default_factory=dict)
    negative: list[tuple[int, int]] = field(default_factory=list)
    negative_scores: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.experts = [(int(layer), int(e)) for layer, e in self.experts]
        self.negative = [(int(layer), int(e)) for layer, e in self.negative]
        self.scores = [float(s) for s in self.scores]
        self.negative_scores = [float(s) for s in self.negative_scores]
        assert len(self.scores) == len(self.experts), "one score per expert"

    def __len__(self) -> int:
        return len(self.experts)

    def by_layer(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for layer, expert in self.experts:
            out.setdefault(layer, []).append(expert)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["experts"] = [list(x) for x in self.experts]
        d["negative"] = [list(x) for x in self.negative]
        return d

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, d: dict) -> ExpertSelection:
        return cls(
            experts=[tuple(x) for x in d["experts"]],
            scores=d["scores"],
            strategy=d["strategy"],
            params=d.get("params", {}),
            negative=[tuple(x) for x in d.get("negative", [])],
            negative_scores=d.get("negative_scores", []),
        )

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> ExpertSelection:
        p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
        text = p.read_text(encoding="utf-8") if p is not None else str(path_or_text)
        return cls.from_dict(json.loads(text))
