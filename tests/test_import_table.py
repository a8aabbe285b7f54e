import os
import pickle

import numpy as np
import pandas as pd
import pytest

from steermoe.analysis import risk_difference_from_counts
from steermoe.errors import InputError
from steermoe.import_table import from_steermoe_table, load_risk_table, restricted_load
from steermoe.selection import select_experts


@pytest.fixture(scope="module")
def steermoe_df():
    """A table shaped like SteerMoE's published ones (set 1 = behaviour/unsafe), with its extra string column."""
    rng = np.random.default_rng(7)
    layers, experts = 3, 6
    a1, a2 = rng.integers(0, 400, layers * experts), rng.integers(0, 300, layers * experts)
    df = pd.DataFrame({"layer": np.repeat(np.arange(layers), experts), "expert": np.tile(np.arange(experts), layers),
                       "a1": a1, "a2": a2, "d1": 1000 - a1, "d2": 900 - a2})  # fmt: skip
    df["a1_n"] = df["a1"] / (df["a1"] + df["d1"] + 1e-10)
    df["a2_n"] = df["a2"] / (df["a2"] + df["d2"] + 1e-10)
    df["risk_diff"] = df["a1_n"] - df["a2_n"]
    df["risk_diff_abs"] = df["risk_diff"].abs()
    df["Layer_Expert"] = [f"L{layer:02d}_E{e:02d}" for layer, e in zip(df["layer"], df["expert"])]
    return df.sort_values("risk_diff", ascending=False).reset_index(drop=True)


def test_import_gives_our_statistics(steermoe_df):
    table = from_steermoe_table(steermoe_df)
    d = steermoe_df
    ours = risk_difference_from_counts(d["layer"], d["expert"], d["a1"], d["a1"] + d["d1"], d["a2"], d["a2"] + d["d2"])
    pd.testing.assert_frame_equal(table.drop(columns="source_risk_diff"), ours)
    assert table["risk_diff"].to_numpy() == pytest.approx(table["source_risk_diff"].to_numpy(), abs=1e-9)
    assert select_experts(table, "threshold", threshold=0.0, top_k=3).experts == list(zip(d["layer"][:3], d["expert"][:3]))


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pkl", ".pkl.gz"])
def test_formats_load_the_same(steermoe_df, tmp_path, suffix):
    path = tmp_path / f"table{suffix}"
    {".csv": lambda p: steermoe_df.to_csv(p, index=False), ".parquet": steermoe_df.to_parquet}.get(suffix, steermoe_df.to_pickle)(path)
    table = load_risk_table(path)
    pd.testing.assert_frame_equal(table, from_steermoe_table(steermoe_df, source=str(path)), check_dtype=False)


def test_older_pandas_object_string_pickle_is_accepted(steermoe_df, tmp_path):
    df = steermoe_df.astype({"Layer_Expert": object}).set_index(["layer", "expert"], drop=False)
    assert restricted_load(pickle.dumps(df, protocol=2)).equals(df)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(InputError, match=r"refused to unpickle posix\.system|refused to unpickle nt\.system"):
        load_risk_table(evil)
    # pandas.eval would also run code; allow-listing whole modules would let it through.
    sneaky = pickle.dumps(pd.eval)  # references pandas.core.computation.eval.eval
    with pytest.raises(InputError, match="refused"):
        restricted_load(sneaky)
    assert not marker.exists()
    with pytest.raises(InputError, match="holds a list"):
        restricted_load(pickle.dumps([1, 2]))


def test_bad_tables_are_input_errors(steermoe_df, tmp_path):
    wrong = steermoe_df.assign(risk_diff=-steermoe_df["risk_diff"])
    with pytest.raises(InputError, match="is set 1 the behaviour"):
        from_steermoe_table(wrong)
    with pytest.raises(InputError, match="missing column"):
        from_steermoe_table(steermoe_df.drop(columns="d2"))
    with pytest.raises(InputError, match="appears more than once"):
        from_steermoe_table(pd.concat([steermoe_df, steermoe_df.head(1)]).assign(risk_diff=lambda d: d["a1_n"] - d["a2_n"]))
    with pytest.raises(InputError, match="no such file"):
        load_risk_table(tmp_path / "missing.csv")


def test_import_table_cli(steermoe_df, tmp_path, capsys):
    from steermoe.cli import run_app

    steermoe_df.to_pickle(tmp_path / "t.pkl")
    assert run_app(["import-table", str(tmp_path / "t.pkl"), "--out", str(tmp_path / "out" / "t.parquet")]) == 0
    assert pd.read_parquet(tmp_path / "out" / "t.parquet")["risk_diff"].to_numpy() == pytest.approx(steermoe_df["risk_diff"].to_numpy())
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_RunsCode(tmp_path / "marker")))
    assert run_app(["import-table", str(evil), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "refused to unpickle" in capsys.readouterr().err and not (tmp_path / "marker").exists()


def test_bracketed_names_in_printed_paths_survive(steermoe_df, tmp_path, capsys):
    """Rich markup must not read ``[safety]`` in a file name as a style tag (and drop it)."""
    from steermoe.cli import run_app

    name = "activations_[Qwen--Qwen3-30B-A3B]_[safety]"
    steermoe_df.to_pickle(tmp_path / f"{name}.pkl")
    out = tmp_path / f"{name}.parquet"
    assert run_app(["import-table", str(tmp_path / f"{name}.pkl"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.replace("\n", "")
    assert f"{name}.parquet" in printed and f"imported {name}.pkl" in printed
    assert run_app(["import-table", str(tmp_path / f"missing_{name}.pkl"), "--out", str(out)]) == 2
    assert f"missing_{name}.pkl" in capsys.readouterr().err.replace("\n", "")
