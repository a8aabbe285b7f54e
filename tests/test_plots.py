import numpy as np
import pytest

from steermoe.analysis import risk_difference_from_counts
from steermoe.errors import InputError
from steermoe.plots import risk_heatmap, save_plots, top_experts_chart

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    layers, experts = [1, 3, 5, 7], 12
    n = len(layers) * experts
    return risk_difference_from_counts(np.repeat(layers, experts), np.tile(np.arange(experts), len(layers)),
                                       rng.integers(0, 100, n), 200, rng.integers(0, 100, n), 250)  # fmt: skip


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plots_write_pngs(table, tmp_path):
    paths = save_plots(table, tmp_path / "plots", top_n=10)
    assert set(paths) == {"heatmap", "top"}
    for path in paths.values():
        width, height = png_size(path)
        assert width > 300 and height > 200
    assert png_size(top_experts_chart(table, tmp_path / "top3.png", top_n=3))[1] < png_size(paths["top"])[1]


def test_plots_refuse_incomplete_tables(table, tmp_path):
    with pytest.raises(InputError, match="ci_low"):
        top_experts_chart(table.drop(columns="ci_low"), tmp_path / "x.png")
    with pytest.raises(InputError, match="empty"):
        risk_heatmap(table.iloc[:0], tmp_path / "y.png")
