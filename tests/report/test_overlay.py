"""overlay(): maps on the original photo at its resolution, a colour bar, and labels in a font that has α."""

import numpy as np
import torch
from PIL import Image

from traitlens.data.transforms import SpecimenTransform
from traitlens.report.overlay import colorbar_strip, label_font, overlay


def test_overlay_draws_on_the_photo_at_its_own_resolution(tmp_path):
    photo = np.full((120, 300, 3), 200, np.uint8)
    Image.fromarray(photo).save(tmp_path / "p.png")
    heat = torch.zeros(64, 64)
    heat[:, 32:] = 1.0
    for image in (photo, Image.fromarray(photo), tmp_path / "p.png"):
        out = overlay(image, heat, transform=SpecimenTransform(64))
        assert out.shape == (120, 300, 3) and out.dtype == np.uint8
    # outside the centre crop (x < 90 or x >= 210) the photo is dimmed, not coloured
    assert (out[:, :80] == int(0.45 * 200)).all()
    red, blue = out[60, 200], out[60, 100]  # hot and cold halves of the crop
    assert red[0] > red[2] and blue[2] > blue[0]
    # without a transform a map of another aspect is taken as the default centre crop: the same picture
    assert (overlay(photo, heat) == out).all()
    with_bar = overlay(photo, heat, colorbar=True)
    assert with_bar.shape[0] == 120 and with_bar.shape[1] > 300


def test_labels_use_a_font_with_alpha_and_the_colour_bar_runs_hot_to_cold():
    font = label_font()
    alpha = font.getmask("α").getbbox()
    assert alpha is not None and font.getlength("α") > 0
    assert font.getmask("α").getbbox() != font.getmask("\uffff").getbbox()  # a real glyph, not the missing box
    bar = colorbar_strip(100)
    top, bottom = bar[8, 4].astype(int), bar[91, 4].astype(int)
    assert top[0] > top[2] and bottom[2] > bottom[0]


def test_panel_captions_wrap_instead_of_being_cut():
    from traitlens.runs.explain_job import _wrap, panel_strip

    font = label_font()
    lines = _wrap("vs 00_Pseudavis_pallida_longer_than_a_panel (0.12), Chlorornis robusta (0.10)", 100, font)
    assert all(font.getlength(line) <= 100 for line in lines)
    assert "".join(lines).replace(" ", "") == "vs00_Pseudavis_pallida_longer_than_a_panel(0.12),Chlorornisrobusta(0.10)"
    assert not any("…" in line for line in lines)
    pic = np.zeros((64, 64, 3), np.uint8)
    strip = panel_strip([(pic, "a\nb"), (pic, "Finer-CAM α = 0.5\nvs x")], alert=[True])
    assert strip.shape[1] > 2 * 160  # two 160 px panels and the colour bar
