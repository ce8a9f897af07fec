"""Answerers: the models CompBench asks. ``make_answerer("openai:gpt-4o")`` and friends."""

from __future__ import annotations

from typing import Optional

from traitlens.compbench.answerers.base import Answerer, AnswererError, Query
from traitlens.compbench.answerers.scripted import AlwaysLeft, Oracle, RandomAnswerer
from traitlens.errors import UserError

__all__ = ["Answerer", "AnswererError", "Query", "AlwaysLeft", "Oracle", "RandomAnswerer", "make_answerer"]


def make_answerer(spec: str, base_url: Optional[str] = None, concurrency: int = 4, device: str = "cpu",
                  merged: bool = False, seed: int = 0, **kwargs) -> Answerer:
    """An answerer from a ``--model`` string: ``openai:NAME``, ``hf:PATH``, ``scripted:left``,
    ``scripted:random[:SEED]`` or ``scripted:oracle``."""
    kind, _, rest = spec.partition(":")
    if kind == "openai":
        from traitlens.compbench.answerers.openai_http import OpenAIChatAnswerer

        return OpenAIChatAnswerer(rest, base_url=base_url, concurrency=concurrency, merged=merged, **kwargs)
    if kind == "hf":
        from traitlens.compbench.answerers.hf_vlm import HFVisionAnswerer

        if not rest:
            raise UserError("no model given: name one as hf:PATH (a local model folder)", option="model")
        return HFVisionAnswerer(rest, device=device, merged=merged)
    if kind == "scripted":
        name, _, arg = rest.partition(":")
        if name == "left":
            return AlwaysLeft()
        if name == "random":
            return RandomAnswerer(int(arg) if arg else seed)
        if name == "oracle":
            return Oracle()
    raise UserError(f"unknown model {spec!r}; use openai:NAME, hf:PATH, scripted:left, scripted:random "
                    f"or scripted:oracle")
