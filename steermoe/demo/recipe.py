"""The demo model's recipe: shape and training settings. Importing this is cheap (no torch)."""

from __future__ import annotations

__all__ = ["DEMO_SHAPE"]

# Qwen3-MoE shaped, small enough to train in minutes on two CPU cores.
DEMO_SHAPE = {
    "num_layers": 4,
    "num_experts": 8,
    "experts_per_token": 2,
}
