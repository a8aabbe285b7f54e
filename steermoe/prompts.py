"""Prompt sets: the record schema, loaders for JSONL, CSV, Parquet and Hugging Face datasets, and
a content fingerprint.

A prompt set is a ``pandas.DataFrame`` with the canonical columns ``PROMPT_COLUMNS``. Each row is a
user request: either ``prompt`` (the user's text) or ``messages`` (a chat ending with a user turn).
Loading never judges the content; that is what :mod:`steermoe.validation` is for. Text that is not
valid UTF-8 is kept (as surrogate escapes) so validation can name the row instead of the loader
failing on the whole file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from steermoe.errors import InputError

__all__ = [
    "PROMPT_COLUMNS",
    "LABELS",
    "PromptSource",
    "load_prompts",
    "load_prompt_sources",
    "fingerprint",
    "user_text",
    "to_messages",
    "select_split",
    "SPLITS",
]

PROMPT_COLUMNS = ["id", "prompt", "messages", "label", "category", "source", "split"]
# train: routing + fine-tuning; eval: held-out evaluation; ood: held-out evaluation in other wording
# (out of distribution), never trained on; dev: free-wording prompts for tuning demo settings, never trained on.
SPLITS = ("train", "eval", "ood", "dev")
LABELS = ("safe", "unsafe")
FORMATS = ("jsonl", "csv", "parquet", "hf")


@dataclass(frozen=True)
class PromptSource:
    """Where one prompt file comes from and how its columns map onto ours.

    ``columns`` maps *our* field name to the file's column name (``{"prompt": "goal"}``).
    ``label``/``category``/``split`` fill a column the file lacks (AdvBench has no label column).
    """

    path: str
    format: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    label: str | None = None
    category: str | None = None
    split: str | None = None
    hf_split: str | None = None
    benchmark: str | None = None  # a published benchmark's file: see steermoe.evaluation.benchmarks


def _format_of(path: Path, declared: str | None) -> str:
    if declared:
        if declared not in FORMATS:
            raise InputError(f"{path}: unknown format {declared!r}; use one of {', '.join(FORMATS)}")
        return declared
    suffix = path.suffix.lower()
    by_suffix = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if path.is_dir():
        return "hf"
    raise InputError(f"{path}: cannot tell the format from the suffix {suffix!r}; name it with format=jsonl|csv|parquet|hf")


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8", errors="surrogateescape")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    return pd.DataFrame(rows, dtype=object)


def _read_csv(path: Path) -> pd.DataFrame:
    text = _read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path}: the file is empty; a CSV needs a header row") from None
    except csv.Error as e:
        raise InputError(f"{path}:1: unreadable CSV ({e})") from None
    rows = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise InputError(
                    f"{path}:{reader.line_num}: {len(row)} fields where the header has {len(header)}"
                )
            rows.append({k: (v if v != "" else None) for k, v in zip(header, row)})
    except csv.Error as e:
        raise InputError(f"{path}:{reader.line_num}: unreadable CSV ({e})") from None
    return pd.DataFrame(rows, columns=header, dtype=object)


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: unreadable Parquet ({str(e).splitlines()[0]})") from None


def _read_hf(path: str, hf_split: str | None, config_name: str | None = None) -> pd.DataFrame:
    import datasets

    local = Path(path)
    try:
        if local.is_dir() and ((local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(local))
        else:
            ds = datasets.load_dataset(path, config_name, split=hf_split)
    except Exception as e:  # datasets raises many unrelated types; the message is what matters
        raise InputError(f"{path}: cannot load as a Hugging Face dataset ({str(e).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if hf_split is None:
            if len(ds) != 1:
                raise InputError(f"{path}: has splits {sorted(ds)}; choose one with hf_split")
            hf_split = next(iter(ds))
        if hf_split not in ds:
            raise InputError(f"{path}: no split {hf_split!r}; available: {sorted(ds)}")
        ds = ds[hf_split]
    return ds.to_pandas()


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return False


def _normalise(frame: pd.DataFrame, source: PromptSource, origin: str) -> pd.DataFrame:
    mapping = {ours: theirs for ours, theirs in source.columns.items()}
    unknown = set(mapping) - set(PROMPT_COLUMNS)
    if unknown:
        raise InputError(f"{origin}: column mapping names unknown fields {sorted(unknown)}; ours are {PROMPT_COLUMNS}")
    missing = [theirs for theirs in mapping.values() if theirs not in frame.columns]
    if missing:
        raise InputError(f"{origin}: mapped columns {missing} not in the file; it has {list(frame.columns)}")
    if frame.empty:
        raise InputError(f"{origin}: the file has no rows; give a prompt file with at least one record")
    if not any(mapping.get(c, c) in frame.columns for c in ("prompt", "messages")):
        shown = [str(c)[:40] for c in list(frame.columns)[:6]]
        raise InputError(
            f"{origin}: no 'prompt' or 'messages' column (columns: {shown}); add a header row, or map yours with "
            "columns: {prompt: <your column>}"
        )
    # Object columns throughout: pandas 3 would turn text into Arrow strings, which cannot hold the
    # surrogate escapes that mark invalid UTF-8 for the validator.
    cols: dict[str, list] = {}
    for col in PROMPT_COLUMNS:
        theirs = mapping.get(col, col)
        cols[col] = frame[theirs].tolist() if theirs in frame.columns else [None] * len(frame)
    for col in ("label", "category", "split"):
        fill = getattr(source, col)
        if fill is not None:
            cols[col] = [fill if _is_missing(v) else v for v in cols[col]]
    if all(_is_missing(v) for v in cols["source"]):
        cols["source"] = [Path(source.path).name] * len(frame)
    if len(frame) and all(_is_missing(v) for v in cols["id"]):
        # Files without ids (AdvBench, most CSVs) get stable ones from their position.
        cols["id"] = [f"{Path(source.path).stem}-{i}" for i in range(len(frame))]
    cols["id"] = [None if _is_missing(v) else str(v) for v in cols["id"]]
    cols["messages"] = [_parse_messages(v, origin, i) for i, v in enumerate(cols["messages"])]
    for col in ("prompt", "label", "category", "source", "split"):
        cols[col] = [None if _is_missing(v) else v for v in cols[col]]
    out = pd.DataFrame({col: pd.Series(values, dtype=object) for col, values in cols.items()})
    return out


def _parse_messages(value: Any, origin: str, row: int) -> list[dict] | None:
    if _is_missing(value):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f"{origin}: row {row + 1}: 'messages' is not a JSON list of {{role, content}}") from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list):
        raise InputError(f"{origin}: row {row + 1}: 'messages' must be a list of {{role, content}}")
    return [dict(m) for m in value]


def load_prompts(source: PromptSource | str | Path) -> pd.DataFrame:
    """Load one prompt file (or local/hub HF dataset) into the canonical columns; a source naming a
    ``benchmark`` is read with that benchmark's adapter (its own columns, labels, categories)."""
    if not isinstance(source, PromptSource):
        source = PromptSource(path=str(source))
    if source.benchmark is not None:
        from steermoe.evaluation.benchmarks import load_benchmark  # adapters build on this loader

        return load_benchmark(source.benchmark, source.path, split=source.split or "eval", hf_split=source.hf_split, label=source.label, format=source.format)
    path = Path(source.path)
    fmt = _format_of(path, source.format) if path.exists() or source.format else None
    if fmt is None:
        if "/" in source.path and not source.path.startswith((".", "/")) and path.suffix == "":
            fmt = "hf"  # looks like a hub name: org/dataset
        else:
            raise InputError(f"{path}: no such file")
    if fmt != "hf":
        if path.is_dir():
            raise InputError(f"{path}: is a directory, expected a {fmt} file (or format=hf for a saved dataset)")
        if not path.exists():
            raise InputError(f"{path}: no such file")
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}.get(fmt)
    frame = _read_hf(source.path, source.hf_split) if reader is None else reader(path)
    return _normalise(frame, source, str(path))


def load_prompt_sources(sources: Iterable[PromptSource | str | Path]) -> pd.DataFrame:
    """Load and concatenate several sources (e.g. a safe file and an unsafe file)."""
    frames = [load_prompts(s) for s in sources]
    if not frames:
        raise InputError("no prompt sources given")
    return pd.concat(frames, ignore_index=True)


def select_split(prompts: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split (``"all"``: every row). Rows without a split belong to every split."""
    if split == "all":
        return prompts
    return prompts[prompts["split"].isna() | (prompts["split"] == split)].reset_index(drop=True)


def user_text(row: Mapping[str, Any]) -> str | None:
    """The text of the (last) user turn, whichever of ``prompt``/``messages`` the row uses."""
    if not _is_missing(row.get("prompt")):
        return row["prompt"]
    messages = row.get("messages")
    if messages:
        for m in reversed(messages):
            if m.get("role") == "user":
                return m.get("content")
    return None


def to_messages(row: Mapping[str, Any]) -> list[dict]:
    """The conversation to send to a chat template."""
    if row.get("messages"):
        return [dict(m) for m in row["messages"]]
    return [{"role": "user", "content": row["prompt"]}]


def _canonical(row: Mapping[str, Any]) -> str:
    messages = row.get("messages")
    body = {
        "id": row.get("id"),
        "prompt": row.get("prompt"),
        "messages": [{"role": m.get("role"), "content": m.get("content")} for m in messages] if messages else None,
        "label": row.get("label"),
        "category": row.get("category"),
        "split": row.get("split"),
    }
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def fingerprint(prompts: pd.DataFrame | Sequence[Mapping[str, Any]]) -> str:
    """A content hash of a prompt set: the same for any file format and row order, different after
    any change of id, text, label, category or split. ``source`` (the file name) is left out on purpose."""
    records = prompts.to_dict("records") if isinstance(prompts, pd.DataFrame) else list(prompts)
    lines = sorted(_canonical(r) for r in records)
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8", errors="surrogateescape"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]
