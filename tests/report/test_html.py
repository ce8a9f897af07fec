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


def test_images_are_drawn_at_their_own_size_never_stretched(tmp_path):
    """A 3×5 image in a six-column gallery keeps its 5×3 px (pixelated when enlarged); a big one may shrink to
    its cell (max-width) but is resampled smoothly; ``scale`` and ``width`` enlarge on purpose."""
    from traitlens.report.html import image_tag

    s = Section("g")
    s.gallery([(np.zeros((3, 5, 3), np.uint8), "tiny"), (np.zeros((300, 400, 3), np.uint8), "big")], columns=6)
    s.gallery([(np.zeros((3, 5, 3), np.uint8), "tiny x4")], scale=4)
    s.figure(np.zeros((10, 20, 3), np.uint8), caption="wide", width=200)
    page = write_page("p", [s], tmp_path / "index.html").read_text()
    tags = re.findall(r'<img src="data:image/png;base64,[^"]+" width="(\d+)" height="(\d+)"([^>]*)>', page)
    assert [(w, h) for w, h, _ in tags] == [("5", "3"), ("400", "300"), ("20", "12"), ("20", "10")]
    assert [('class="px"' in rest) for _, _, rest in tags] == [True, False, True, True]
    assert 'style="width:200px;max-width:100%;height:auto' in tags[3][2] and 'style="max-width' in tags[0][2]
    # the sizing is inline, for panels without the page's style sheet (the app's Atlas tab)
    assert all("max-width:100%;height:auto" in rest for _, _, rest in tags)
    css = page[page.index("<style>"):page.index("</style>")]
    assert "width:100%" not in css.replace("max-width:100%", "")  # nothing stretches an image to its cell
    assert "figure img{max-width:100%;height:auto" in css
    assert 'class="px"' not in image_tag(np.zeros((300, 400, 3), np.uint8), width=200)  # shrunk: smooth
