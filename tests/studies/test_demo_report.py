"""The demo report's reading aids: the trait table marks what tells siblings apart, heads name their part, the
progress lines say "step k of N" with an estimate from the last run."""

from __future__ import annotations

import torch

from traitlens.studies.demo import _Timings, trait_table
from traitlens.studies.demo.interpretable import head_part


def test_trait_table_marks_the_values_in_which_siblings_differ(tiny_traits):
    rows, marked = trait_table(tiny_traits)
    assert len(rows) == tiny_traits.num_species and marked
    for genus in tiny_traits.genera:
        members = tiny_traits.species_in(genus)
        for column in tiny_traits.attribute_names:
            values = {repr(rows[i][column]) for i in members}
            assert all(((i, column) in marked) == (len(values) > 1) for i in members), (genus, column)
    columns = list(rows[0])[2:]
    differing = {c for _, c in marked}
    assert set(columns[:len(differing)]) == differing  # the distinguishing traits come first
    # every sibling pair differs somewhere, and what differs between a and b is marked in both rows
    a, b = tiny_traits.species_in(tiny_traits.genera[0])[:2]
    for attribute, _, _ in tiny_traits.differences(a, b):
        assert (a, attribute) in marked and (b, attribute) in marked


def test_head_part_names_the_part_a_head_attends_to(tiny_traits):
    parts = torch.zeros(32, 32, dtype=torch.long)
    parts[4:28, 4:28] = 1
    spot = tiny_traits.parts[-1].id
    parts[10:14, 10:14] = spot
    head = torch.zeros(8, 8)
    head[2:4, 2:4] = 1.0  # the 4×4 block at (8..16): covers the spot's cells and some of part 1
    text = head_part(head, parts, tiny_traits)
    name = tiny_traits.part_name(spot).replace("_", " ")
    assert text.startswith(name), text
    assert text == f"{name} 25%, 16.0× its area"  # a quarter of the attention on 1/64 of the image
    assert head_part(torch.zeros(8, 8), parts, tiny_traits) == "no attention"
    only_background = torch.zeros(8, 8)
    only_background[0, 0] = 1.0
    assert head_part(only_background, parts, tiny_traits) == "background"


def test_timings_estimate_what_is_left_from_the_last_run(tmp_path):
    t = _Timings(tmp_path)
    assert "first run" in t.estimate(["explain"])  # nothing measured here yet
    t.record("prepare", 100.0)
    t.record("explain", 50.0)
    t2 = _Timings(tmp_path)  # read back from timings.json
    assert t2.estimate(["explain"]) == "about 2 min left, going by the last run"
    assert t2.estimate(["explain"], first=False) == "about 50 s left, going by the last run"
    assert t2.estimate(["explain", "segment"]) == ""  # a section not yet measured: no guess
