"""The pages `evaluate-explanations` and `calibrate` write, read as HTML: counts, directions, panels, headings."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np

from traitlens.cli import main


class _Page(HTMLParser):
    """The text, the table headers and the number of embedded images of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.text, self.headers, self.images, self._in_th = [], [], 0, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self._in_th = tag == "th"
        if tag == "img" and dict(attrs).get("src", "").startswith("data:image/png;base64,"):
            self.images += 1

    def handle_endtag(self, tag):
        self._in_th = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_th:
            self.headers.append(data)


def test_evaluate_explanations_page_says_what_was_scored_and_which_way_is_better(collection, checkpoint, tmp_path,
                                                                                  capsys):
    out = tmp_path / "eval"
    assert main(["evaluate-explanations", "--checkpoint", str(checkpoint), "--data", str(collection),
                 "--methods", "gradcam,finer-gradcam", "--steps", "4", "--out", str(out), "--no-only-correct"]) == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "table.json").read_text())
    n = table["counts"]["images"]
    assert f"{table['counts']['scored']} of {n} images were scored" in printed
    assert str(out / "index.html") in printed  # says where it wrote
    page = _Page((out / "index.html").read_text())
    text = " ".join(page.text)
    assert f"{table['counts']['scored']} of {n} images were scored" in text
    assert "deletion ↓" in page.headers and "insertion ↑" in page.headers and "drop ↑" in page.headers
    assert page.images == 1 and "lower" in text  # the panels and the legend
    assert "RISE" in text  # every metric explained


def test_metric_panels_give_each_metric_its_own_axis():
    from traitlens.report.plots import metric_panels

    fig = metric_panels({"drop": {"a": 0.07, "b": 0.05}, "deletion": {"a": 0.3, "b": 0.4},
                         "lift": {"a": 6.0, "b": 2.0}}, {"drop": True, "deletion": False})
    axes = fig.axes
    assert len(axes) == 3
    assert axes[0].get_title() == "drop ↑ higher is better" and axes[1].get_title() == "deletion ↓ lower is better"
    assert axes[2].get_title() == "lift"  # no direction known: no arrow
    # a 0.07 metric is not squashed by a 6.0 one: each panel's y range fits its own values
    assert axes[0].get_ylim()[1] < 0.1 and axes[2].get_ylim()[1] > 6


def test_calibrate_writes_an_aligned_table_and_a_page(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n, c = 300, 6
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 3 * np.eye(c)[labels]
    seen = np.arange(c) < 4
    logits[:, ~seen] -= 2.0  # the absent classes are suppressed, as after fine-tuning
    npz = tmp_path / "logits.npz"
    train = labels < 4
    np.savez(npz, logits=logits, labels=labels, seen=seen, train_logits=logits[train], train_labels=labels[train])
    out = tmp_path / "cal"
    assert main(["calibrate", "--logits", str(npz), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = next(line for line in printed if line.startswith("model"))
    rows = [line for line in printed if line.startswith(("fine-tuned ", "alg ", "pre-trained "))]
    assert len(rows) >= 2
    for heading in ("y/y", "s/y", "u/y", "u/u"):  # every value ends right under the end of its heading
        end = header.index(heading) + len(heading)
        for row in rows:
            assert row[end - 1] != " " and (len(row) == end or row[end] == " "), (heading, row)
    assert any(line.strip().startswith("u/y  accuracy on the classes absent") for line in printed)
    page = _Page((out / "index.html").read_text())
    text = " ".join(page.text)
    assert "u/y" in page.headers and "absent from fine-tuning" in text and page.images == 1
    assert any(str(out / "index.html") in line for line in printed)


def test_wide_tables_scroll_inside_their_section_and_cells_hold_swatches(tmp_path):
    from traitlens.report import Section, swatch, write_page

    s = Section("wide")
    s.table([{f"column {i}": 0.5 for i in range(30)} | {"part": swatch((255, 0, 0), "wing spot <b>")}],
            highlight=[(0, "column 3")])
    text = write_page("t", [s], tmp_path / "p.html").read_text()
    assert '<div class="scroll"><table>' in text and ".scroll{overflow-x:auto" in text
    assert 'class="swatch" style="background:rgb(255,0,0)"' in text and "wing spot &lt;b&gt;" in text  # escaped
    assert text.count('<td class="differs">') == 1
