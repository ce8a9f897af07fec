import re

import numpy as np

from traitlens.report import Section, bar_plot, confusion_matrix_plot, write_page


def test_page_is_self_contained_and_escaped(tmp_path):
    s = Section("Accuracy <test>", intro="a & b")
    s.table([{"split": "test", "top1": 0.96789}], caption="cap")
    s.figure(np.zeros((4, 5, 3), np.uint8), caption="zeros")
    s.figure(confusion_matrix_plot(np.eye(3) * 5, ["a", "b", "c"]))
    s.figure(bar_plot({"energy": {"gradcam": 0.2, "finer": 0.4}}))
    s.gallery([(np.full((3, 3), 200, np.uint8), "grey")], columns=2)
    path = write_page("demo", [s], tmp_path / "out" / "index.html")
    text = path.read_text()
    assert "Accuracy &lt;test&gt;" in text and "a &amp; b" in text
    assert "0.968" in text
    assert len(re.findall(r'src="data:image/png;base64,', text)) == 4
    # Nothing to fetch: no external URLs.
    assert "http://" not in text and "https://" not in text


def test_empty_table_is_noted():
    s = Section("t")
    s.table([], caption="nothing")
    assert "no rows" in s.render("a")
