"""The plots as drawn: what their text says, and where their legends sit."""

import re
from pathlib import Path

import matplotlib
import pytest

from lsq.metrics import EpochMetrics, QuantizerHealth
from lsq.plot import Curve, experiment_figure, quantizer_health


def epoch(number: int, top1: float = 50, quantizers: list | None = None) -> EpochMetrics:
    return EpochMetrics(epoch=number, train_loss=1, train_top1=50, test_loss=1, test_top1=top1,
                        test_top5=90, lr=0.1, seconds=1, images_per_second=100,
                        quantizers=quantizers)  # fmt: skip


def health(layer: str, kind: str, step: float) -> QuantizerHealth:
    return QuantizerHealth(layer=layer, kind=kind, step=step, zero=0.3, levels=[0, 1],
                           shares=[0.3, 0.7])  # fmt: skip


def svg_texts(path: Path) -> list[str]:
    """Each text of an SVG written with its text as text (not paths), tags removed."""
    svg = path.read_text()
    found = re.findall(r"<text\b[^>]*>(.*?)</text>", svg, re.S)
    return ["".join(re.sub(r"<[^>]+>", "", t).split()) for t in found]


def test_log_ticks_read_as_powers_of_ten_and_a_dollar_in_a_name_as_a_dollar(
    tmp_path: Path,
) -> None:
    layer = "conv$1$"
    quantizers = [[health(layer, "weight", 0.5 / n), health(layer, "activation", 2.0 * n)]
                  for n in (1, 2, 3)]  # fmt: skip
    epochs = [epoch(n, quantizers=q) for n, q in enumerate(quantizers, start=1)]
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        quantizer_health(epochs, [tmp_path / "quantizers.svg"], title="job $x$ on $y$")
    texts = svg_texts(tmp_path / "quantizers.svg")
    assert "100" in texts  # 10^0: a 10 and a raised 0
    assert not [t for t in texts if "mathdefault" in t or "\\" in t], texts
    assert "conv$1$" in texts and "job$x$on$y$" in texts  # as written (spaces removed)


@pytest.mark.parametrize("rows", [1, 4, 20])
def test_the_experiment_legend_hides_no_line(rows: int) -> None:
    curves = [Curve("FP: full precision (baseline)", [[epoch(1, 60), epoch(2, 90)]], True)]
    for row in range(1, rows):
        label = f"{row}: W[-1,0,1] A[0,1,2,3], first/last float" + ", lr=0.01" * (rows // 4)
        curves.append(Curve(label, [[epoch(1, 60 + row), epoch(2, 66 + row)]], start=2))
    fig = experiment_figure(curves, "an experiment")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,), (legend,) = fig.axes, fig.legends
    box = legend.get_window_extent(renderer)
    assert len(legend.get_texts()) == rows
    assert not box.overlaps(ax.get_window_extent(renderer))
    assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1)
