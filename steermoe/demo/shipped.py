"""The demo model the package ships: the default recipe's build, so a first ``make demo`` does not train it.

Training the full demo model takes 3 to 10 minutes on two cores, most of a cold first run. The package therefore
carries that build in ``steermoe/demo/shipped/<arch>-<recipe hash>/`` (about 16 MB) with a ``SHA256SUMS`` file.
:func:`steermoe.demo.model.ensure_demo_model` copies it into the cache when the requested recipe's folder name
matches and every checksum holds; any other recipe (or ``steermoe demo-model --no-shipped``, or ``--out``) is
trained as before. A folder that does not match its checksums is an error, never a silent rebuild or a partial copy.

Maintainers refresh it after a change to the demo tables, the recipe or ``BUILDER_VERSION`` (a test fails until
they do, as the cache key changes)::

    python -m steermoe.demo.shipped refresh    # train the default recipe from scratch and ship that build
    python -m steermoe.demo.shipped check      # train it again and compare with the shipped bytes
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from steermoe.errors import InputError
from steermoe.files import atomic_dir, file_sha256

__all__ = ["SHIPPED_DIR", "CHECKSUMS", "shipped_model", "install_shipped", "write_shipped", "file_digests"]

SHIPPED_DIR = Path(__file__).parent / "shipped"
CHECKSUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` reads it too
BUILD_INFO = "build.json"  # where and with what the shipped build was made (not copied into the cache)
# What a rebuild must reproduce; steermoe_demo.json also records the training's wall seconds, which vary.
REPRODUCED = ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json")


def file_digests(folder: Path) -> dict[str, str]:
    """name -> sha256 of every file of a model folder (not recursive)."""
    return {p.name: file_sha256(p) for p in sorted(Path(folder).iterdir()) if p.is_file()}


def _read_checksums(folder: Path) -> dict[str, str]:
    entries = {}
    for line in (folder / CHECKSUMS).read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        if not name or len(digest) != 64 or "/" in name:
            raise InputError(f"{folder / CHECKSUMS}: line {line!r} is not '<sha256>  <file name>'; reinstall steermoe")
        entries[name] = digest
    return entries


def shipped_model(name: str, root: Path = SHIPPED_DIR) -> Path | None:
    """The shipped folder of this demo model (``<arch>-<recipe hash>``), or None when the package has none."""
    folder = Path(root) / name
    return folder if (folder / CHECKSUMS).is_file() else None


def install_shipped(source: Path, target: Path) -> Path:
    """Copy a shipped model folder to ``target`` (must not exist) after checking every file against its checksum:
    into a temp folder beside ``target``, renamed into place, so a failure leaves nothing behind."""
    source, target = Path(source), Path(target)
    expected = _read_checksums(source)
    with atomic_dir(target) as tmp:
        for name, want in expected.items():
            if not (source / name).is_file():
                raise InputError(f"{source / name}: missing from the shipped demo model; reinstall steermoe, or train it with `steermoe demo-model --no-shipped`")
            shutil.copyfile(source / name, tmp / name)
            got = file_sha256(tmp / name)  # the copy is what gets used, so the copy is what is checked
            if got != want:
                raise InputError(
                    f"{source / name}: sha256 {got[:12]}... but {CHECKSUMS} says {want[:12]}...: the shipped demo model is "
                    "damaged; reinstall steermoe, or train it with `steermoe demo-model --no-shipped`"
                )
    return target


def write_shipped(model_dir: Path, root: Path = SHIPPED_DIR, build_seconds: float | None = None) -> Path:
    """Ship a built demo model folder: copy it to ``root/<folder name>`` with its checksums and build facts, and
    remove any other shipped model (one world at a time; git keeps the old ones)."""
    import torch
    import transformers

    model_dir, root = Path(model_dir), Path(root)
    if not (model_dir / "model.safetensors").is_file():
        raise InputError(f"{model_dir}: no model.safetensors; pass a folder `steermoe demo-model` wrote")
    dest = root / model_dir.name
    with atomic_dir(dest) as tmp:
        for path in sorted(model_dir.iterdir()):
            if path.is_file():
                shutil.copyfile(path, tmp / path.name)
        digests = file_digests(tmp)
        (tmp / CHECKSUMS).write_text("".join(f"{d}  {n}\n" for n, d in digests.items()), encoding="utf-8")
        info = {
            "machine": _cpu_name(),
            "avx512": "avx512f" in _cpu_flags(),  # float kernels, so the bytes, can differ between ISAs
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "build_seconds": None if build_seconds is None else round(build_seconds, 1),
        }
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for old in root.iterdir():  # the same name included: the new folder is renamed into its place
            if old.is_dir() and not old.name.startswith("."):
                shutil.rmtree(old)
    return dest


def _cpuinfo(field: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def _build_default(out: Path) -> tuple[Path, float]:
    import time

    from steermoe.demo.model import build_demo_model, demo_model_dir

    started = time.perf_counter()
    folder = out / demo_model_dir(out).name
    build_demo_model(folder)
    return folder, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["refresh"], ["check"]):
        print("usage: python -m steermoe.demo.shipped refresh|check", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="steermoe-shipped-") as work:
        folder, seconds = _build_default(Path(work))
        if args == ["refresh"]:
            print(write_shipped(folder, build_seconds=seconds))
            return 0
        shipped = shipped_model(folder.name)
        if shipped is None:
            print(f"no shipped model for {folder.name}: the demo tables or recipe changed; run `python -m steermoe.demo.shipped refresh`")
            return 1
        ours, theirs = file_digests(folder), _read_checksums(shipped)
        differ = [n for n in REPRODUCED if ours.get(n) != theirs.get(n)]
        for name in REPRODUCED:
            print(f"{name:24} {'same' if name not in differ else 'DIFFERENT'}")
        if differ:
            print("this machine's build differs from the shipped one (other float kernels give other bytes); the shipped build stays the reference")
        return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
