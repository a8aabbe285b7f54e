"""Expert patches: only the trained expert slices, plus a manifest tying them to one base model.

A patch folder holds ``experts.safetensors`` (one tensor per fused expert tensor touched, shape
``(n_selected_in_layer, ...)``, rows in the order of ``experts`` in the manifest) and
``manifest.json`` (base fingerprint, architecture, selection, tensor names and rows). Applying it
to the base writes those rows and nothing else, so it reproduces the fine-tuned weights bit-exactly.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from steermoe.errors import InputError

__all__ = [
    "PATCH_FORMAT",
    "patch_tensors",
    "save_patch",
    "read_manifest",
    "apply_patch",
    "load_patched_model",
    "save_merged",
    "atomic_dir",
]

PATCH_FORMAT = "steermoe-expert-patch/1"
WEIGHTS = "experts.safetensors"
MANIFEST = "manifest.json"


@contextmanager
def atomic_dir(final: str | Path):
    """Yield a temporary sibling folder; on success it replaces ``final``, on failure it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def patch_tensors(plan) -> tuple[dict, list[dict]]:
    """The trained tensors of a :class:`~steermoe.finetune.experts.SelectivePlan` and their manifest entries."""
    tensors, entries = {}, []
    for s in plan.slices:
        if s.attr:  # fused: the trained rows
            tensors[s.name] = s.module.rows.detach().cpu().contiguous()
            entries.append({"name": s.name, "layer": s.layer, "experts": list(s.experts), "rows": True})
        else:  # per-module expert: its whole parameters
            for pname, p in s.module.named_parameters():
                name = f"{s.name}.{pname}"
                tensors[name] = p.detach().cpu().contiguous()
                entries.append({"name": name, "layer": s.layer, "experts": list(s.experts), "rows": False})
    for e in entries:
        t = tensors[e["name"]]
        e.update(shape=list(t.shape), dtype=str(t.dtype).removeprefix("torch."))
    return tensors, entries


def save_patch(out_dir: str | Path, plan, base_fingerprint: str, selection, extra: dict | None = None) -> Path:
    """Write the patch folder atomically and return it."""
    from safetensors.torch import save_file

    tensors, entries = patch_tensors(plan)
    manifest = {
        "format": PATCH_FORMAT,
        "base_fingerprint": base_fingerprint,
        "arch": plan.arch,
        "layout": plan.layout,
        "selection": selection.to_dict(),
        "tensors": entries,
        **(extra or {}),
    }
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": PATCH_FORMAT, "base_fingerprint": base_fingerprint})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return Path(out_dir)


def read_manifest(patch_path: str | Path) -> dict:
    path = Path(patch_path)
    if not (path / MANIFEST).exists() or not (path / WEIGHTS).exists():
        raise InputError(f"{path}: not an expert patch (needs {MANIFEST} and {WEIGHTS}); give the 'patch' folder a fine-tuning run wrote")
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != PATCH_FORMAT:
        raise InputError(f"{path}: patch format {manifest.get('format')!r} is not {PATCH_FORMAT!r}")
    return manifest


def _model_fingerprint_of(model) -> str:
    from steermoe.modeling import model_fingerprint

    source = Path(getattr(model.config, "_name_or_path", "") or "")
    if not (source / "config.json").exists():
        raise InputError("apply_patch: cannot tell which weights this model was loaded from; pass fingerprint=model_fingerprint(base_path)")
    return model_fingerprint(source)


def apply_patch(model, patch_path: str | Path, fingerprint: str | None = None):
    """Write a patch's expert slices into ``model`` (in place) after checking it was made for this base."""
    import torch
    from safetensors.torch import load_file

    manifest = read_manifest(patch_path)
    fingerprint = fingerprint or _model_fingerprint_of(model)
    if fingerprint != manifest["base_fingerprint"]:
        raise InputError(
            f"{patch_path}: patch was made for base model {manifest['base_fingerprint']}, "
            f"but this model is {fingerprint}; load the base model the patch was trained on"
        )
    if model.config.model_type != manifest["arch"]:
        raise InputError(f"{patch_path}: patch is for {manifest['arch']}, model is {model.config.model_type}")
    try:
        tensors = load_file(str(Path(patch_path) / WEIGHTS))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a bad file
        if type(e).__name__ != "SafetensorError" and not isinstance(e, OSError):
            raise
        raise InputError(f"{Path(patch_path) / WEIGHTS}: truncated or corrupt patch file ({e}); re-run the fine-tuning stage that wrote it") from None
    missing = [t["name"] for t in manifest["tensors"] if t["name"] not in tensors]
    if missing:
        raise InputError(f"{Path(patch_path) / WEIGHTS}: lacks tensors {missing[:3]} its manifest lists; re-run the fine-tuning stage that wrote it")
    with torch.no_grad():
        for entry in manifest["tensors"]:
            param = model.get_parameter(entry["name"])
            value = tensors[entry["name"]].to(device=param.device, dtype=param.dtype)
            if entry["rows"]:
                index = torch.tensor(entry["experts"], dtype=torch.long, device=param.device)
                if tuple(param.shape[1:]) != tuple(value.shape[1:]):
                    raise InputError(f"{patch_path}: {entry['name']} rows have shape {tuple(value.shape)}, model has {tuple(param.shape)}")
                param.index_copy_(0, index, value)
            else:
                param.copy_(value)
    return model


def load_patched_model(base_path: str | Path, patch_path: str | Path, dtype: str = "float32", device: str = "auto", model=None):
    """Load the base model and apply the patch: the fine-tuned model (``model``: the model section,
    whose dtype and device the arguments override)."""
    from steermoe.modeling import load_pretrained, model_section

    section = (model or model_section()).model_copy(update={"dtype": dtype, "device": device})
    return load_pretrained(section, base_path, patch=patch_path, tokenizer=False).model


def save_merged(model, tokenizer, out_dir: str | Path) -> Path:
    """A complete Hugging Face model folder (weights, config, tokenizer), written atomically."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)
