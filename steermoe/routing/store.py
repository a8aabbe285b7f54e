"""The routing store: sharded Parquet files of per-token expert choices, plus a manifest.

Layout of a store folder::

    manifest.json                  header (model, tokenizer, generation, prompts) + shard checksums
    shard-00000.tokens.parquet     one row per recorded token
    shard-00000.sequences.parquet  one row per sequence

Sequence rows: ``seq``, ``prompt_id``, ``label``, ``category``, ``split``, ``source``, ``prompt_token_ids``,
``generated_token_ids`` (up to and including EOS), ``generated_text``, ``prompt_tokens`` / ``generated_tokens``
(recorded counts), ``stop`` ("eos" or "length"). The generation segment holds the generated tokens before
EOS, each recorded where it was the model's input (see :mod:`steermoe.routing.records`).

The manifest's ``model`` section has the fingerprint, the MoE ``layers`` (the model's own decoder-layer
indices; dense layers such as DeepSeek-V3's ``first_k_dense_replace`` ones are listed in ``dense_layers`` and
have no routing), ``num_experts``, ``top_k`` and ``shared_experts`` (always active, never counted as routed).

Token rows: ``seq`` (global sequence number), ``segment`` (0 prompt, 1 generation), ``position``
(within its segment), ``token_id``, ``experts`` (``layers * top_k`` int16, layer major, in the router's order), optionally
``weights`` (fp16, same shape) and ``logits`` (fp16, ``layers * num_experts``); each of these per-token arrays is
one fixed-size binary cell of little-endian values (format 2; the fixed-size lists of format 1 still read). Each shard is written to a temporary name and renamed, and the manifest is
rewritten after every shard, so an interrupted run resumes with exactly the missing shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from steermoe.errors import InputError
from steermoe.files import file_sha256

__all__ = ["SEGMENTS", "PROMPT", "GENERATION", "RoutingShard", "RoutingStore", "RoutingStoreWriter", "tokens_table"]

FORMAT_VERSION = 2  # 2: per-token arrays as fixed-size binary cells (1: fixed-size lists; still read)
PROMPT, GENERATION = 0, 1
SEGMENTS = {"prompt": PROMPT, "generation": GENERATION}
# Header keys that must match for a resumed run to append to an existing store.
_RESUME_KEYS = ("model", "tokenizer", "generation", "prompts", "record")


def _atomic_write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd", write_statistics=False)
    os.replace(tmp, path)


def _atomic_write_json(data: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def tokens_table(
    seq: np.ndarray,
    segment: np.ndarray,
    position: np.ndarray,
    token_id: np.ndarray,
    experts: np.ndarray,
    weights: np.ndarray | None = None,
    logits: np.ndarray | None = None,
) -> pa.Table:
    """Build a shard's token table. ``experts`` is ``(tokens, layers, k)``; ``logits`` ``(tokens, layers, E)``."""
    n = len(seq)
    assert experts.ndim == 3 and experts.shape[0] == n, experts.shape

    def fixed(values: np.ndarray, dtype) -> pa.Array:
        # One fixed-size binary cell per token: its row of values, little-endian, C order. Parquet stores it without
        # the per-element repetition levels of a fixed-size list (format 1), which made writing a batch-256 shard of
        # Qwen3-30B-A3B routing ~4x and reading it ~10x slower; the reader takes both.
        flat = np.ascontiguousarray(values.reshape(n, -1), dtype=np.dtype(dtype).newbyteorder("<"))
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(flat.shape[1] * flat.itemsize), n, [None, pa.py_buffer(flat)])

    columns = {
        "seq": pa.array(np.asarray(seq, dtype=np.int32)),
        "segment": pa.array(np.asarray(segment, dtype=np.int8)),
        "position": pa.array(np.asarray(position, dtype=np.int32)),
        "token_id": pa.array(np.asarray(token_id, dtype=np.int32)),
        "experts": fixed(experts, np.int16),
    }
    if weights is not None:
        columns["weights"] = fixed(weights, np.float16)
    if logits is not None:
        columns["logits"] = fixed(logits, np.float16)
    return pa.table(columns)


def _fixed_values(column: pa.Array, dtype: str) -> np.ndarray:
    """The flat values of a per-token column: fixed-size binary cells (format 2) or a fixed-size list (format 1)."""
    if pa.types.is_fixed_size_binary(column.type):
        width = column.type.byte_width
        return np.frombuffer(column.buffers()[1], dtype=dtype, count=len(column) * width // np.dtype(dtype).itemsize,
                             offset=column.offset * width)
    return column.flatten().to_numpy()


@dataclass
class RoutingShard:
    """One shard in memory: its sequences and the routing of each of their tokens."""

    sequences: pd.DataFrame
    seq: np.ndarray  # (tokens,) int32, global sequence number
    segment: np.ndarray  # (tokens,) int8, PROMPT or GENERATION
    position: np.ndarray  # (tokens,) int32
    token_id: np.ndarray  # (tokens,) int32
    experts: np.ndarray  # (tokens, layers, k) int16
    weights: np.ndarray | None = None  # (tokens, layers, k) float16
    logits: np.ndarray | None = None  # (tokens, layers, experts) float16


class RoutingStore:
    """Read side of a store: the manifest, and shards streamed one at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.exists():
            raise InputError(f"{self.path}: not a routing store (no manifest.json); run `steermoe collect` first")
        self.manifest = json.loads(manifest.read_text(encoding="utf-8"))

    @property
    def layers(self) -> list[int]:
        return list(self.manifest["model"]["layers"])

    @property
    def num_experts(self) -> int:
        return int(self.manifest["model"]["num_experts"])

    @property
    def top_k(self) -> int:
        return int(self.manifest["model"]["top_k"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def shard_names(self) -> list[str]:
        return sorted(self.manifest.get("shards", {}))

    def verify(self) -> None:
        """Check every shard file against the manifest's checksums."""
        for name, info in self.manifest.get("shards", {}).items():
            for kind in ("tokens", "sequences"):
                path = self.path / f"{name}.{kind}.parquet"
                if not path.exists() or file_sha256(path) != info[f"{kind}_sha256"]:
                    raise InputError(f"{path}: missing or does not match the manifest checksum; re-run collection to rebuild it")

    def _read(self, name: str, kind: str) -> pq.ParquetFile:
        """One shard file, checked against the manifest's checksum in the same read (bytes read once)."""
        path = self.path / f"{name}.{kind}.parquet"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"{path}: shard file missing; re-run collection (`steermoe collect` or `steermoe run`) to rebuild it") from None
        expected = self.manifest["shards"][name].get(f"{kind}_sha256")
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise InputError(
                f"{path}: does not match the manifest checksum (truncated or modified); delete it and re-run collection, "
                "which rebuilds only the missing shards"
            )
        return pq.ParquetFile(pa.BufferReader(data))

    def require_complete(self) -> None:
        """Readers of a whole store refuse one that an interrupted collection left half-written."""
        if not self.complete:
            done = len(self.manifest.get("shards", {}))
            raise InputError(
                f"{self.path}: routing store is incomplete ({done} shards written; collection was interrupted); "
                "re-run the same collection to finish it"
            )

    def sequences(self) -> pd.DataFrame:
        """All sequence rows (small: no per-token data)."""
        frames = [self._read(n, "sequences").read().to_pandas() for n in self.shard_names()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def iter_shards(self, logits: bool = False, weights: bool = False) -> Iterator[RoutingShard]:
        """Yield shards one at a time, so memory is bounded by the largest shard."""
        layers, k = len(self.layers), self.top_k
        for name in self.shard_names():
            seqs = self._read(name, "sequences").read().to_pandas()
            tokens = self._read(name, "tokens")
            columns = ["seq", "segment", "position", "token_id", "experts"]
            if weights and "weights" in tokens.schema_arrow.names:
                columns.append("weights")
            if logits and "logits" in tokens.schema_arrow.names:
                columns.append("logits")
            table = tokens.read(columns=columns)
            n = table.num_rows

            def values(col: str, width: int, dtype: str, table=table, n=n) -> np.ndarray:
                return _fixed_values(table.column(col).combine_chunks(), dtype).reshape(n, layers, width)

            yield RoutingShard(
                sequences=seqs,
                seq=table.column("seq").to_numpy(),
                segment=table.column("segment").to_numpy(),
                position=table.column("position").to_numpy(),
                token_id=table.column("token_id").to_numpy(),
                experts=values("experts", k, "<i2"),
                weights=values("weights", k, "<f2") if "weights" in columns else None,
                logits=values("logits", self.num_experts, "<f2") if "logits" in columns else None,
            )


class RoutingStoreWriter:
    """Write side: create or resume a store, add shards atomically, mark it complete."""

    def __init__(self, path: str | Path, header: dict):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        manifest_path = self.path / "manifest.json"
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
            for key in _RESUME_KEYS:
                if old.get(key) != header.get(key):
                    raise InputError(
                        f"{self.path}: existing store was made with a different {key}; "
                        "delete it or choose another output folder"
                    )
            self.manifest = old
        else:
            self.manifest = {"format_version": FORMAT_VERSION, **header, "shards": {}, "complete": False}
            _atomic_write_json(self.manifest, manifest_path)
        self._drop_unlisted()
        self._intact: set[int] | None = None  # shards verified by checksum or written by this writer

    def _drop_unlisted(self) -> None:
        # Leftovers of a killed run: temp files, or a shard written but not yet in the manifest.
        listed = set(self.manifest["shards"])
        for p in self.path.iterdir():
            if p.name.startswith(".") and ".tmp-" in p.name:
                p.unlink()
            elif p.name.endswith(".parquet") and p.name.split(".")[0] not in listed:
                p.unlink()

    @staticmethod
    def shard_name(index: int) -> str:
        return f"shard-{index:05d}"

    def done_shards(self) -> set[int]:
        """Indices of shards already written and intact (checksums match)."""
        done = set()
        for name, info in self.manifest["shards"].items():
            ok = all(
                (self.path / f"{name}.{kind}.parquet").exists()
                and file_sha256(self.path / f"{name}.{kind}.parquet") == info[f"{kind}_sha256"]
                for kind in ("tokens", "sequences")
            )
            if ok:
                done.add(int(name.split("-")[1]))
        self._intact = set(done)
        return done

    def write_shard(self, index: int, sequences: pd.DataFrame | pa.Table, tokens: pa.Table) -> None:
        name = self.shard_name(index)
        seq_path = self.path / f"{name}.sequences.parquet"
        tok_path = self.path / f"{name}.tokens.parquet"
        if isinstance(sequences, pd.DataFrame):
            sequences = pa.Table.from_pandas(sequences, preserve_index=False)
        _atomic_write_parquet(sequences, seq_path)
        _atomic_write_parquet(tokens, tok_path)
        segment = tokens.column("segment").to_numpy()
        self.manifest["shards"][name] = {
            "sequences": len(sequences),
            "prompt_tokens": int((segment == PROMPT).sum()),
            "generated_tokens": int((segment == GENERATION).sum()),
            "sequences_sha256": file_sha256(seq_path),
            "tokens_sha256": file_sha256(tok_path),
        }
        _atomic_write_json(self.manifest, self.path / "manifest.json")
        if self._intact is not None:
            self._intact.add(index)

    def finish(self, expected_shards: Sequence[int] | None = None, **summary) -> RoutingStore:
        if expected_shards is not None:
            # Shards checked at start or written since need no second read of every file.
            intact = self._intact if self._intact is not None else self.done_shards()
            missing = set(expected_shards) - intact
            assert not missing, f"shards {sorted(missing)} were not written"
        shards = self.manifest["shards"].values()
        self.manifest["counts"] = {
            "sequences": sum(s["sequences"] for s in shards),
            "prompt_tokens": sum(s["prompt_tokens"] for s in shards),
            "generated_tokens": sum(s["generated_tokens"] for s in shards),
        }
        self.manifest["summary"] = summary
        self.manifest["complete"] = True
        _atomic_write_json(self.manifest, self.path / "manifest.json")
        return RoutingStore(self.path)
