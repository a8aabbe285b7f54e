"""The built-in demo world: prompt sets and a small MoE chat model trained offline.

Importing this package is cheap; torch and transformers load only when a model is built.
"""

from steermoe.demo.prompt_sets import demo_prompt_paths, load_demo_prompts
from steermoe.demo.recipe import DEMO_ARCHS, DEMO_SHAPE, DemoRecipe


def build_demo_model(*args, **kwargs):
    """See :func:`steermoe.demo.model.build_demo_model`."""
    from steermoe.demo.model import build_demo_model as build

    return build(*args, **kwargs)


def ensure_demo_model(*args, **kwargs):
    """See :func:`steermoe.demo.model.ensure_demo_model`."""
    from steermoe.demo.model import ensure_demo_model as ensure

    return ensure(*args, **kwargs)


__all__ = [
    "DEMO_ARCHS",
    "DEMO_SHAPE",
    "DemoRecipe",
    "build_demo_model",
    "demo_prompt_paths",
    "ensure_demo_model",
    "load_demo_prompts",
]
