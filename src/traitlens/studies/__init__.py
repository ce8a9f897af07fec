"""Studies: what traitlens runs *with* its methods, kept apart from the methods themselves.

A study is a recipe (a frozen dataclass at ``tiny``, ``standard`` or ``broad`` scale) and the code that
carries it out and caches its result: the embedded pretraining (:mod:`traitlens.studies.embedded`), the
claims experiments (calibration, Prompt-CAM and INTR) and the demo's sections (:mod:`traitlens.studies.demo`).
Method packages never import this package; it imports them.
"""
