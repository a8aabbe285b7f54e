"""Import the activation tables published with SteerMoE, and read risk tables from disk.

A SteerMoE table has columns ``layer, expert, a1, a2, d1, d2, a1_n, a2_n, risk_diff, risk_diff_abs``:
``a`` counts tokens whose top-k held the expert, ``d`` those whose did not, ``_n`` is ``a / (a + d)``, and
set 1 is the behaviour set (here: unsafe), so ``risk_diff = a1_n - a2_n``. Importing recomputes our
statistics from the counts (:func:`steermoe.analysis.risk_difference_from_counts`), so an imported table
selects exactly like one of ours; the published ``risk_diff`` is kept as ``source_risk_diff``.

Tables are read from CSV or Parquet, and from pandas pickles only through :class:`RestrictedUnpickler`,
which admits the named classes and functions pandas/numpy (and pyarrow, for Arrow string columns)
use to rebuild a DataFrame and refuses every other global, so a pickle cannot run code on load.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from steermoe.analysis import risk_difference_from_counts
from steermoe.errors import InputError

__all__ = [
    "STEERMOE_COLUMNS",
    "RISK_COLUMNS",
    "RestrictedUnpickler",
    "restricted_load",
    "read_table_file",
    "from_steermoe_table",
    "load_risk_table",
    "import_table",
]

STEERMOE_COLUMNS = ("layer", "expert", "a1", "a2", "d1", "d2")
RISK_COLUMNS = ("layer", "expert", "a_unsafe", "n_unsafe", "a_safe", "n_safe", "risk_diff", "ci_low", "ci_high", "q_value")

# Exactly what DataFrame pickles of pandas 1.x-3.x reference; whole modules are never admitted
# (pandas.eval or pandas.read_pickle reached through REDUCE would defeat the point).
_ALLOWED = {
    ("builtins", "slice"), ("builtins", "bytearray"), ("builtins", "complex"), ("builtins", "set"), ("builtins", "frozenset"),
    ("__builtin__", "slice"), ("__builtin__", "bytearray"), ("__builtin__", "complex"), ("__builtin__", "set"),
    ("__builtin__", "frozenset"), ("_codecs", "encode"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy._core.numeric", "_frombuffer"),
    ("pandas", "DataFrame"), ("pandas", "Index"), ("pandas", "RangeIndex"), ("pandas", "MultiIndex"),
    ("pandas", "Categorical"), ("pandas", "CategoricalDtype"), ("pandas", "StringDtype"),
    ("pandas.core.frame", "DataFrame"), ("pandas.core.indexes.base", "Index"), ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.range", "RangeIndex"), ("pandas.core.indexes.multi", "MultiIndex"),
    ("pandas.core.arrays.categorical", "Categorical"), ("pandas.core.dtypes.dtypes", "CategoricalDtype"),
    ("pandas.core.arrays.string_", "StringDtype"), ("pandas.core.arrays.string_", "StringArray"),
    ("pandas.core.arrays.string_arrow", "ArrowStringArray"), ("pandas.arrays", "ArrowStringArray"), ("pandas.arrays", "StringArray"),
    ("pandas._libs.internals", "_unpickle_block"), ("pandas.core.internals.managers", "BlockManager"),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
    ("pyarrow.lib", "_restore_array"), ("pyarrow.lib", "py_buffer"), ("pyarrow.lib", "type_for_alias"),
}  # fmt: skip


def _pandas_renames() -> dict:
    try:  # pandas' own map of classes that moved between versions (private, so optional)
        from pandas.compat.pickle_compat import _class_locations_map

        return dict(_class_locations_map)
    except ImportError:  # pragma: no cover
        return {}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed pandas/numpy/pyarrow reconstruction names."""

    _renames = _pandas_renames()

    def __init__(self, file, source: str = "pickle"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        module, name = self._renames.get((module, name), (module, name))
        if module == "numpy.core" or module.startswith("numpy.core."):  # numpy 1.x pickles
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in _ALLOWED:
            raise InputError(
                f"{self.source}: refused to unpickle {module}.{name} (only pandas/numpy table data is allowed); "
                "export the table as CSV or Parquet if you trust it"
            )
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise InputError(f"{self.source}: refused a pickle with persistent ids")


def restricted_load(data: bytes, source: str = "pickle") -> pd.DataFrame:
    """Unpickle ``data`` (plain, gzip, bz2 or xz) with :class:`RestrictedUnpickler`; must be a DataFrame."""
    for magic, opener in ((b"\x1f\x8b", gzip.decompress), (b"BZh", bz2.decompress), (b"\xfd7zXZ", lzma.decompress)):
        if data.startswith(magic):
            data = opener(data)
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), source).load()
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{source}: not a readable pandas pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, pd.DataFrame):
        raise InputError(f"{source}: the pickle holds a {type(obj).__name__}, not a DataFrame")
    return obj


def read_table_file(path: str | Path) -> pd.DataFrame:
    """Read a table from CSV/TSV, Parquet or a (restricted) pandas pickle, by suffix or content."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a table file (CSV, Parquet or pickle)")
    head = path.read_bytes()[:4] if path.stat().st_size else b""
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if head == b"PAR1" or ".parquet" in suffixes or ".pq" in suffixes:
            return pd.read_parquet(path)
        if head[:1] == b"\x80" or any(s in (".pkl", ".pickle", ".pk") for s in suffixes):
            return restricted_load(path.read_bytes(), str(path))
        if ".csv" in suffixes or ".tsv" in suffixes or ".txt" in suffixes:
            return pd.read_csv(path, sep="\t" if ".tsv" in suffixes else ",")
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: cannot read table ({type(e).__name__}: {e})") from None
    raise InputError(f"{path}: unknown table format; use .csv, .tsv, .parquet or .pkl")


def _numeric(df: pd.DataFrame, columns, source: str) -> dict[str, np.ndarray]:
    out = {}
    for c in columns:
        values = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float)
        if not np.isfinite(values).all() or (values < 0).any():
            raise InputError(f"{source}: column {c!r} must hold finite non-negative numbers")
        out[c] = values
    return out


def _check_keys(df: pd.DataFrame, source: str) -> None:
    dup = df.duplicated(["layer", "expert"])
    if dup.any():
        row = df[dup].iloc[0]
        raise InputError(f"{source}: (layer, expert) = ({row['layer']}, {row['expert']}) appears more than once")


def from_steermoe_table(df: pd.DataFrame, confidence: float = 0.95, source: str = "table") -> pd.DataFrame:
    """Our risk table (with statistics) from a SteerMoE activation table; set 1 = unsafe."""
    missing = [c for c in STEERMOE_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{source}: not a SteerMoE table, missing column(s) {missing}")
    v = _numeric(df, STEERMOE_COLUMNS, source)
    if (v["layer"] % 1 != 0).any() or (v["expert"] % 1 != 0).any():
        raise InputError(f"{source}: layer and expert must be whole numbers")
    _check_keys(df, source)
    n1, n2 = v["a1"] + v["d1"], v["a2"] + v["d2"]
    if "risk_diff" in df.columns:
        ours = np.divide(v["a1"], n1, out=np.zeros_like(n1), where=n1 > 0) - np.divide(v["a2"], n2, out=np.zeros_like(n2), where=n2 > 0)
        theirs = pd.to_numeric(df["risk_diff"], errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isclose(ours, theirs, rtol=0, atol=1e-6))
        if bad.size:
            i = bad[0]
            raise InputError(
                f"{source}: risk_diff differs from a1/(a1+d1) - a2/(a2+d2) in {bad.size} rows (first: layer {int(v['layer'][i])}, "
                f"expert {int(v['expert'][i])}: {theirs[i]:.6g} vs {ours[i]:.6g}); is set 1 the behaviour (unsafe) set?"
            )
    extra = {"source_risk_diff": pd.to_numeric(df["risk_diff"]).to_numpy(dtype=float)} if "risk_diff" in df.columns else None
    table = risk_difference_from_counts(v["layer"], v["expert"], v["a1"], n1, v["a2"], n2, confidence, extra=extra)
    table.attrs |= {"weighting": "token", "imported_from": "steermoe", "source": source}
    return table


def load_risk_table(path: str | Path, confidence: float = 0.95) -> pd.DataFrame:
    """A risk table from disk: ours as written by ``steermoe analyze``, or a SteerMoE table (converted)."""
    df = read_table_file(path)
    if all(c in df.columns for c in RISK_COLUMNS):
        _check_keys(df, str(path))
        return df
    if all(c in df.columns for c in STEERMOE_COLUMNS):
        return from_steermoe_table(df, confidence, source=str(path))
    raise InputError(
        f"{path}: not a risk table; expected our columns {list(RISK_COLUMNS)} "
        f"or SteerMoE's {list(STEERMOE_COLUMNS)}, found {list(df.columns)[:12]}"
    )


def import_table(path: str | Path, out: str | Path, confidence: float = 0.95) -> pd.DataFrame:
    """Read a SteerMoE table (CSV, Parquet or pickle) and write our risk table as Parquet."""
    df = read_table_file(path)
    table = from_steermoe_table(df, confidence, source=str(path))
    from steermoe.files import atomic_path

    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    return table
