"""Figures draw users' names as written: a species or part name with ``$`` is text, not mathtext."""

from __future__ import annotations

import numpy as np

from traitlens.report.html import image_tag
from traitlens.report.plots import bar_plot, confusion_matrix_plot


def test_names_with_dollar_signs_are_drawn_as_written():
    names = ["spot $\\alpha^$", "band $x$", "plain"]  # the first is not valid mathtext: it used to end the figure
    fig = confusion_matrix_plot(np.eye(3), names)
    tag = image_tag(fig)
    assert tag.startswith("<img") and 'width="' in tag
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == names and not any(t.get_parse_math() for t in fig.axes[0].get_xticklabels())
    image_tag(bar_plot({name: {"model": 0.5} for name in names}, title="$ per $", ylabel="accuracy"))
