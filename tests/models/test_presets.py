"""The packaged Prompt-CAM and INTR presets load, mirror the reference recipes and agree with the in-code ones."""

import pytest

from traitlens.engine.config import load_config, presets
from traitlens.models import intr, prompt_cam


def test_presets_are_packaged():
    assert {"prompt-cam-dinov2", "intr-detr"} <= set(presets())


def test_prompt_cam_dinov2_preset():
    cfg = load_config("prompt-cam-dinov2", data="d", out="o")
    assert (cfg.method, cfg.backbone, cfg.pretrained, cfg.optimizer) == ("prompt-cam", "dinov2-vitb14", True, "sgd")
    assert (cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.image_size) == (0.9, 1e-3, 16, 224)
    assert (cfg.lr, cfg.epochs, cfg.warmup_epochs, cfg.scheduler) == (1e-3, 130, 20, "cosine")
    assert cfg.lr * cfg.min_lr_ratio == pytest.approx(1e-6)
    assert prompt_cam.method_options(cfg) == {"mode": "deep", "prompt_dropout": 0.0, "normalization": "inception"}
    in_code = load_config(None, **prompt_cam.TRAINING_PRESETS["dinov2"], data="d", out="o")
    assert in_code.to_dict() == {**cfg.to_dict(), "amp": in_code.amp}


def test_prompt_cam_dino_preset():
    cfg = load_config("prompt-cam-dino", data="d", out="o")
    assert (cfg.backbone, cfg.lr, cfg.epochs, cfg.warmup_epochs) == ("dino-vitb16", 5e-3, 130, 20)
    assert cfg.lr * cfg.min_lr_ratio == pytest.approx(1e-6)
    assert prompt_cam.method_options(cfg)["prompt_dropout"] == 0.1
    in_code = load_config(None, **prompt_cam.TRAINING_PRESETS["dino"], data="d", out="o")
    assert in_code.to_dict() == {**cfg.to_dict(), "amp": in_code.amp}


def test_intr_detr_preset():
    cfg = load_config("intr-detr", data="d", out="o", overrides=["method_options.detr=detr-r50.pth"])
    assert (cfg.method, cfg.backbone, cfg.optimizer, cfg.scheduler) == ("intr", "resnet50", "adamw", "step")
    assert cfg.lr == 5e-5 and cfg.lr * cfg.backbone_lr_scale == pytest.approx(1e-5)  # Imageomics/INTR main.py
    assert (cfg.weight_decay, cfg.grad_clip, cfg.epochs, cfg.step_size, cfg.gamma) == (1e-6, 0.1, 140, 80, 0.1)
    assert cfg.warmup_epochs == 0 and cfg.batch_size == 12
    opts = intr.method_options(cfg)
    assert opts["detr"] == "detr-r50.pth" and opts["freeze_batchnorm"] and opts["query_noise"] == 0.1
    assert {k: opts[k] for k in ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers",
                                 "dim_feedforward", "dropout")} == dict(
        d_model=256, num_heads=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048, dropout=0.1)
    in_code = load_config(None, **intr.TRAINING_PRESETS["detr-r50"], data="d", out="o")
    for key in ("lr", "backbone_lr_scale", "weight_decay", "grad_clip", "epochs", "step_size", "batch_size",
                "image_size", "scheduler"):
        assert getattr(in_code, key) == getattr(cfg, key), key
