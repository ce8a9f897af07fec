"""Scripted answerers: baselines and test doubles that never look at the images."""

from __future__ import annotations

import random

from traitlens.compbench.answerers.base import Query


class AlwaysLeft:
    """Always the first image (binary tasks) or the first listed option (choice tasks)."""

    name = "always-left"
    concurrency = 1

    def answer(self, query: Query) -> str:
        if query.record.kind == "choice":
            return (query.record.options or ["None"])[0]
        return query.spec.reply_for("Left")


class RandomAnswerer:
    """A uniformly random valid answer, seeded per record (so it does not depend on order or threads)."""

    concurrency = 1

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.name = f"random(seed={self.seed})"

    def answer(self, query: Query) -> str:
        rng = random.Random(f"{self.seed}:{query.record.id}")
        if query.record.kind == "choice":
            return rng.choice(query.spec.choice_options(query.record.options or []))
        sides = ["Left", "Right"] + (["Same"] if query.spec.same_allowed else [])
        return query.spec.reply_for(rng.choice(sides))


class Oracle:
    """The ground truth, worded as the task's prompt asks for it (an upper bound and a test double)."""

    name = "oracle"
    concurrency = 1

    def answer(self, query: Query) -> str:
        if query.record.kind == "choice":
            return query.record.answer
        return query.spec.reply_for(query.record.answer)
