"""The Atlas tab reads a `traitlens atlas` folder back: pairs to choose, each pair's card, a clear line otherwise."""

from __future__ import annotations

import pytest

from traitlens.cli import main
from traitlens.errors import UserError


@pytest.fixture(scope="module")
def atlas_folder(checkpoint, collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("app-atlas") / "atlas"
    assert main(["atlas", "--checkpoint", str(checkpoint), "--data", str(collection), "--split", "train",
                 "--pairs", "all", "--bootstrap", "30", "--out", str(out), "--device", "cpu"]) == 0
    return out


def test_the_atlas_view_lists_pairs_and_draws_their_cards(atlas_folder):
    from traitlens.app.atlas_view import AtlasView
    from traitlens.atlas import load_atlas

    view = AtlasView(atlas_folder)
    atlas = load_atlas(atlas_folder)
    choices = view.choices()
    assert sorted(key for _, key in choices) == sorted(p.key for p in atlas.pairs)
    first = atlas.pairs[0]
    card = view.card(first.key)
    assert first.a_name in card and "data:image/png;base64," in card  # the ranked-parts chart at least
    assert all(first.a_name.split()[0].lower() in label.lower() or first.b_name.split()[0].lower() in label.lower()
               for label, _ in view.choices(first.a_name.split()[0]))
    assert view.choices("no such species") == []
    assert f"{len(atlas.pairs)} pairs" in view.summary()
    with pytest.raises(UserError, match="has no pair"):
        view.card("nope")


def test_the_app_takes_an_atlas_folder_or_says_what_is_missing(checkpoint, collection, atlas_folder, tmp_path):
    pytest.importorskip("gradio")
    from traitlens.app import build_app, create_session

    session = create_session(checkpoint, collection / "test", project=tmp_path / "p", work=tmp_path / "w",
                             atlas=atlas_folder)
    blocks = build_app(checkpoint, collection / "test", session=session)
    labels = [getattr(b, "label", None) for b in blocks.blocks.values()]
    assert "species pair" in labels  # the Atlas tab's picker
    with pytest.raises(UserError, match="no atlas"):
        create_session(checkpoint, collection / "test", project=tmp_path / "p", work=tmp_path / "w",
                       atlas=tmp_path / "empty")
