"""Reports: self-contained HTML pages and plots. The report draws; it never computes.

>>> from traitlens.report import Section, write_page
>>> s = Section("Accuracy", intro="...")
>>> s.table([{"split": "test", "top1": 0.97}])
>>> write_page("traitlens demo", [s], "report/index.html")
"""

from traitlens.report.html import Markup, Section, png_data_uri, swatch, write_page
from traitlens.report.plots import bar_plot, confusion_matrix_plot, line_plot

__all__ = ["Section", "write_page", "png_data_uri", "Markup", "swatch", "bar_plot", "confusion_matrix_plot", "line_plot"]
