"""TraitTable: traits.json reading, addressing species and parts, the pair table, attribute views."""

from __future__ import annotations

import json

import pytest

from traitlens.data.synthetic import SynthConfig, make_taxonomy
from traitlens.data.traits import (
    PALETTE, PART_DISPLAY_COLOURS, PARTS, SMALL_GROUPS, TRAIT_GROUPS, TraitTable, colour_distance,
    colourise_parts, load_traits,
)
from traitlens.errors import UserError

SMALL_PART_IDS = {pid for g in SMALL_GROUPS for pid in TRAIT_GROUPS[g]}


@pytest.fixture(scope="module")
def table() -> TraitTable:
    return make_taxonomy(SynthConfig(species=12))


def test_part_ids_and_hosts_are_fixed(table):
    assert [(p.id, p.name) for p in table.parts] == [
        (0, "background"), (1, "body"), (2, "head"), (3, "left_wing"), (4, "right_wing"), (5, "tail"),
        (6, "wing_spot"), (7, "crest"), (8, "tail_band"), (9, "eye_ring"), (10, "beak")]
    assert table.host_of(6) == (3, 4)
    assert table.host_of("crest") == (2,)
    assert table.host_of("tail band") == (5,)
    assert table.host_of("eye_ring") == (2,)
    assert table.host_of("body") == () and table.host_of(10) == ()
    assert table.part_id("Wing spot") == 6 and table.part_name(8) == "tail_band"
    with pytest.raises(UserError, match="unknown part"):
        table.part_id("antenna")
    with pytest.raises(UserError, match="out of range"):
        table.part_id(11)


def test_species_addressing_and_folder_order(table):
    assert table.num_species == len(table) == 12
    assert table.class_names == sorted(table.class_names)            # ImageFolder order = index order
    assert len(set(table.names)) == 12
    for i in range(12):
        assert table.index(table.name(i)) == i
        assert table.index(table.folder(i)) == i
        assert table.folder(i).startswith(f"{i:02d}_")
        assert table.folder(i).endswith(table.name(i).replace(" ", "_"))
    with pytest.raises(UserError, match="unknown species"):
        table.index("Nonesuch vulgaris")
    with pytest.raises(UserError, match="out of range"):
        table.index(12)


def test_genera_and_siblings(table):
    assert len(table.genera) == 4
    assert table.genus_labels == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert table.siblings(4) == [3, 5]
    assert table.siblings(table.name(0)) == [1, 2]
    assert table.genus_of(7) == table.genera[2]
    assert all(table.name(i).split()[0] == table.genus_of(i) for i in range(12))
    with pytest.raises(UserError, match="unknown genus"):
        table.species_in("Nogenus")


def test_diagnostic_parts_pair_table(table):
    n = table.num_species
    for a in range(n):
        assert table.diagnostic_parts(a, a) == []
        for b in range(n):
            if a == b:
                continue
            parts = table.diagnostic_parts(a, b)
            assert parts == table.diagnostic_parts(b, a)                 # symmetric
            if b in table.siblings(a):
                assert 1 <= len(parts) <= 2 and set(parts) <= SMALL_PART_IDS
            else:
                assert len(parts) >= 3
    assert table.diagnostic_parts(table.name(0), table.folder(1)) == table.diagnostic_parts(0, 1)
    pairs = table.pair_table()
    assert len(pairs) == n * (n - 1) // 2
    assert all(p["a"] < p["b"] and p["parts"] == table.diagnostic_parts(p["a"], p["b"]) for p in pairs)


def test_sibling_pairs_use_different_diagnostic_parts(table):
    # With two varying parts per genus of 3, the three sibling pairs do not all share one answer.
    for genus in table.genera:
        a, b, c = table.species_in(genus)
        answers = {tuple(table.diagnostic_parts(x, y)) for x, y in ((a, b), (a, c), (b, c))}
        assert len(answers) == 3


def test_attributes_and_differences(table):
    attrs = table.attributes(0)
    assert set(table.attribute_names) == set(attrs)
    for g in SMALL_GROUPS:
        assert isinstance(attrs[f"{g}.present"], bool)
        if not attrs[f"{g}.present"]:
            assert attrs[f"{g}.colour"] is None and attrs[f"{g}.shape"] is None
    # differences between siblings name exactly the groups of their diagnostic parts
    for a in range(table.num_species):
        for b in table.siblings(a):
            groups = {k.split(".")[0] for k, _, _ in table.differences(a, b)}
            parts = sorted(pid for g in groups for pid in TRAIT_GROUPS[g])
            assert parts == table.diagnostic_parts(a, b)
            for key, va, vb in table.differences(a, b):
                assert table.attributes(a)[key] == va and table.attributes(b)[key] == vb


def test_trait_parts_contrast_with_hosts_and_siblings(table):
    host_group = {"wing_spot": "wings", "crest": "head", "tail_band": "tail", "eye_ring": "head"}
    for i in range(table.num_species):
        t = table.traits_of(i)
        for g in SMALL_GROUPS:
            if t[g]["present"]:
                assert colour_distance(t[g]["colour"], t[host_group[g]]["colour"]) >= 130
        for j in table.siblings(i):
            u = table.traits_of(j)
            for g in SMALL_GROUPS:
                if t[g]["present"] and u[g]["present"] and t[g]["colour"] != u[g]["colour"]:
                    assert colour_distance(t[g]["colour"], u[g]["colour"]) >= 140


def test_json_round_trip(table, tmp_path):
    text = table.to_json(tmp_path / "traits.json")
    data = json.loads(text)
    assert data["format"] == 1
    assert [p["hosts"] for p in data["parts"]][6:10] == [[3, 4], [2], [5], [2]]
    assert set(data["palette"]) == set(PALETTE)
    again = load_traits(tmp_path)                     # a folder works as well as the file
    assert again.fingerprint() == table.fingerprint()
    assert again.pair_table() == table.pair_table() == data["pairs"]
    assert again.class_names == table.class_names
    assert load_traits(again) is again
    assert repr(again) == "TraitTable(12 species, 4 genera)"
    assert len(PARTS) == 11


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="no traits table"):
        load_traits(tmp_path)
    (tmp_path / "traits.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        load_traits(tmp_path)
    (tmp_path / "traits.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(UserError, match="unsupported traits format"):
        load_traits(tmp_path)
    (tmp_path / "traits.json").write_text(json.dumps({"format": 1, "parts": []}))
    with pytest.raises(UserError, match="not a valid traits table"):
        load_traits(tmp_path / "traits.json")


@pytest.mark.parametrize("n", [2, 5, 7, 24])
def test_any_number_of_species(n):
    t = make_taxonomy(SynthConfig(species=n))
    sizes = sorted(len(t.species_in(g)) for g in t.genera)
    assert sum(sizes) == n and max(sizes) <= 3 and min(sizes) >= 2
    assert len(set(t.names)) == n and t.class_names == sorted(t.class_names)
    for a in range(n):
        for b in range(a + 1, n):
            k = len(t.diagnostic_parts(a, b))
            assert (1 <= k <= 2) if t.genus_of(a) == t.genus_of(b) else k >= 3


def test_taxonomy_depends_on_seed_only():
    a = make_taxonomy(SynthConfig(species=12, seed=0, size=32, domain="A", per_species=5))
    b = make_taxonomy(SynthConfig(species=12, seed=0, size=96, domain="B", blur=True))
    c = make_taxonomy(SynthConfig(species=12, seed=1))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_avoid_species_of_gives_disjoint_species(table, tmp_path):
    table.to_json(tmp_path / "traits.json")
    for avoid in (table, tmp_path):
        other = make_taxonomy(SynthConfig(species=12, avoid_species_of=avoid))
        assert not set(other.genera) & set(table.genera)
        assert not set(other.names) & set(table.names)
        for i in range(other.num_species):
            for j in range(table.num_species):
                ti, tj = other.traits_of(i), table.traits_of(j)
                differing = [g for g in TRAIT_GROUPS if (ti[g] if ti[g].get("present", True) else {})
                             != (tj[g] if tj[g].get("present", True) else {})]
                assert len([p for g in differing for p in TRAIT_GROUPS[g]]) >= 3


def test_colourise_parts():
    import numpy as np

    labels = np.array([[0, 1, 6], [10, 11, 255]], dtype=np.uint8)
    rgb = colourise_parts(labels)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 2].tolist() == list(PART_DISPLAY_COLOURS[6])
    assert rgb[1, 1].tolist() == [255, 255, 255]
    assert len(set(PART_DISPLAY_COLOURS)) == len(PARTS)            # every part has its own colour
    assert colourise_parts(np.zeros((4, 5, 6), dtype=np.uint8)).shape == (4, 5, 6, 3)
