"""Checks that run before any model loads: every path a run was given, and the settings that depend on
the model (expert counts, layers named in a selection), read from the model's ``config.json`` alone.

A run that would fail after minutes of generation on a bad ``--patch`` folder or an impossible
``selection.top_k`` fails here instead, in about a second, with the key and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from steermoe.errors import ConfigError, InputError

__all__ = ["ModelShape", "model_shape", "shape_of_folder", "shape_of_config", "check_model_settings", "check_selection", "check_experts", "check_patch", "check_model_folder"]


@dataclass(frozen=True)
class ModelShape:
    """The routed-expert layout of a model: which decoder layers are MoE, experts per layer, top-k."""

    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int

    @property
    def total(self) -> int:
        return len(self.moe_layers) * self.num_experts


def shape_of_folder(model_cfg, path: str | Path) -> ModelShape:
    """The shape of a Hugging Face folder from its config, on the meta device (no weights read)."""
    from steermoe.modeling import load_hf_config

    return shape_of_config(load_hf_config(model_cfg, path), model_cfg.trust_remote_code)


def shape_of_config(config, trust_remote_code: bool = False) -> ModelShape:
    """The shape of a transformers config, from a skeleton on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    from steermoe.adapters import adapter_for, moe_layers

    adapter = adapter_for(config)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    layers = tuple(m.layer for m in moe_layers(skeleton, adapter))
    return ModelShape(layers, adapter.num_experts(config), adapter.top_k(config))


def model_shape(model_cfg) -> ModelShape | None:
    """The shape of the model a section names, without loading (or building) it; None when its source
    cannot tell before it is built."""
    from steermoe.modeling import parse_model_source

    source, argument = parse_model_source(model_cfg.source)
    if source is not None:
        return source.shape(model_cfg, argument) if source.shape else None
    return shape_of_folder(model_cfg, check_model_folder(model_cfg.source, "model.source"))


def check_model_folder(path: str | Path, where: str) -> Path:
    """A local Hugging Face model folder: exists and has a config.json."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{where}: {path} does not exist; give a local Hugging Face model folder (no hub access here)")
    if not (path / "config.json").is_file():
        raise InputError(f"{where}: {path} has no config.json; is it a Hugging Face model folder?")
    return path


def check_patch(path: str | Path, where: str) -> Path:
    """An expert patch folder (manifest + weights) a fine-tuning run wrote."""
    from steermoe.finetune.patch import read_manifest

    path = Path(path)
    if not path.exists():
        raise InputError(f"{where}: {path} does not exist; give the 'patch' folder a fine-tuning run wrote")
    try:
        read_manifest(path)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    return path


def check_selection(path: str | Path, shape: ModelShape | None, where: str):
    """An expert selection JSON that names only experts this model has."""
    from steermoe.selection import ExpertSelection

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{where}: {path} does not exist; write one with `steermoe select` (or the pipeline's select_experts stage)")
    try:
        selection = ExpertSelection.from_json(path)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{where}: {path} is not an expert selection JSON ({type(e).__name__}: {e})") from None
    if shape is not None:
        _check_experts(selection.experts + selection.negative, shape, f"{where} {path}")
    return selection


def _check_experts(experts: Iterable[tuple[int, int]], shape: ModelShape, where: str) -> None:
    by_layer: dict[int, list[int]] = {}
    for layer, expert in experts:
        by_layer.setdefault(int(layer), []).append(int(expert))
    check_experts(by_layer, shape.moe_layers, shape.num_experts, where)


def check_experts(by_layer: dict[int, list[int]], moe_layers: Iterable[int], num_experts: int, where: str = "selection") -> None:
    """Every (layer, experts) names an MoE layer of the model and experts it has (one check, used
    before loading from config.json and after loading by the fine-tuning masks)."""
    layers = sorted(moe_layers)
    for layer, experts in sorted(by_layer.items()):
        if layer not in layers:
            raise InputError(f"{where}: layer {layer} is not an MoE layer of this model (MoE layers: {layers}); was the selection made for another model?")
        bad = [e for e in experts if not 0 <= e < num_experts]
        if bad:
            raise InputError(f"{where}: layer {layer} names experts {bad} outside 0..{num_experts - 1}")


def check_model_settings(config) -> ModelShape | None:
    """Reject settings impossible for the configured model, and a steering selection naming experts
    it lacks; returns the shape (None where the source cannot tell before it is built)."""
    shape = model_shape(config.model)
    if shape is None:
        return None
    if config.selection.top_k > shape.total:
        raise ConfigError(
            f"selection.top_k: {config.selection.top_k} exceeds the model's {shape.total} experts "
            f"({len(shape.moe_layers)} MoE layers x {shape.num_experts}); lower it"
        )
    if config.selection.per_layer_cap > shape.num_experts:
        raise ConfigError(f"selection.per_layer_cap: {config.selection.per_layer_cap} exceeds {shape.num_experts} experts per layer")
    if config.evaluation.steering and config.evaluation.steering_selection:
        check_selection(config.evaluation.steering_selection, shape, "evaluation.steering_selection")
    return shape
