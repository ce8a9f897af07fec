"""The CUDA code paths, end to end on small inputs: each result on the GPU equals the CPU's.

Skipped where CUDA is not available (CI), so these run only on a GPU machine (``benchmarks/gpu_check.sh``).
``TRAITLENS_TEST_DEVICE=cpu`` runs them on the CPU against the CPU, which checks the tests themselves.
TF32 is turned off inside this module, so float32 on the GPU is compared with float32 on the CPU; the
tolerances leave room for other summation orders only (kernels differ, the arithmetic does not).
"""

from __future__ import annotations

import copy
import json
import os
import warnings

import numpy as np
import pytest
import timm
import torch

from traitlens.engine.config import TrainConfig
from traitlens.methods import evaluate_checkpoint, load_model, train

_FORCED = os.environ.get("TRAITLENS_TEST_DEVICE")
DEVICE = torch.device(_FORCED or "cuda")
CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and DEVICE.type == "cuda",
                                reason="needs a CUDA device (TRAITLENS_TEST_DEVICE=cpu checks the tests on the CPU)")


@pytest.fixture(scope="module", autouse=True)
def full_fp32():
    """float32 on the GPU without TF32 (cuDNN convolutions use TF32 by default)."""
    if DEVICE.type != "cuda":
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy flags are deprecated in recent torch, still honoured
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on(x, device):
    return x.to(device) if torch.is_tensor(x) else copy.deepcopy(x).to(device)


def close(a, b, rel=1e-4, atol=1e-6):
    """|a − b| ≤ rel·max|b| + atol, elementwise, both moved to the CPU."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float((a - b).abs().max()) if a.numel() else 0.0
    bound = rel * float(b.abs().max()) + atol if b.numel() else atol
    assert err <= bound, f"max |difference| {err:.3g} > {bound:.3g}"


# ---------------------------------------------------------------------------------------------
# engine: fit with AMP, checkpoints made on the GPU and read on the CPU, resume


def _config(data, out, **kw):
    base = dict(data=str(data), out=str(out), method="finetune", backbone="tiny-vit", image_size=32, epochs=2,
                batch_size=8, lr=3e-3, backbone_lr_scale=1.0, warmup_epochs=0, weight_decay=0.0, seed=0,
                device=str(DEVICE), amp="bf16")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def cuda_run(tiny_collection, tmp_path_factory):
    """A 2-epoch bf16-autocast fine-tuning run of tiny-vit on the GPU."""
    out = tmp_path_factory.mktemp("gpu-runs") / "bf16"
    return train(_config(tiny_collection, out), progress=False), out


def test_fit_with_bf16_autocast_on_the_gpu(cuda_run):
    result, out = cuda_run
    losses = [h["train_loss"] for h in result["history"]]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert result["best"] is not None and 0 <= result["best"]["metrics"]["val_top1"] <= 1
    meta = json.loads((out / "model.json").read_text())
    assert meta["complete"] is True and meta["config"]["device"] == str(DEVICE) and meta["config"]["amp"] == "bf16"
    state = json.loads((out / "last" / "state.json").read_text())
    assert state["scaler"] is None  # bf16 needs no loss scaling
    if DEVICE.type == "cuda":
        from safetensors.torch import load_file

        assert "rng.cuda.0" in load_file(str(out / "last" / "state.safetensors"))


def test_gpu_checkpoint_loads_on_the_cpu_with_the_same_logits(cuda_run):
    _, out = cuda_run
    on_cpu, meta = load_model(out, device="cpu")
    on_gpu, _ = load_model(out, device=DEVICE)
    assert next(on_cpu.parameters()).device == CPU and next(on_gpu.parameters()).device.type == DEVICE.type
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        close(on_gpu(x.to(DEVICE)), on_cpu(x), rel=1e-4, atol=1e-5)
    assert meta["class_names"] and meta["num_classes"] == len(meta["class_names"])


def test_evaluate_checkpoint_on_gpu_equals_cpu(cuda_run, tiny_collection):
    _, out = cuda_run
    gpu = evaluate_checkpoint(out, tiny_collection, split="test", device=str(DEVICE), show_progress=False,
                              return_logits=True)
    cpu = evaluate_checkpoint(out, tiny_collection, split="test", device="cpu", show_progress=False,
                              return_logits=True)
    assert gpu["n"] == cpu["n"] > 0
    close(gpu["logits"], cpu["logits"], rel=1e-4, atol=1e-5)
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-4, abs=1e-5)


@pytest.mark.skipif(DEVICE.type != "cuda", reason="fp16 autocast is GPU-only")
def test_fp16_autocast_uses_the_grad_scaler_and_saves_its_state(tiny_collection, tmp_path):
    result = train(_config(tiny_collection, tmp_path / "fp16", backbone="tiny-cnn", amp="fp16", grad_clip=1.0),
                 progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in result["history"])
    scaler = json.loads((tmp_path / "fp16" / "last" / "state.json").read_text())["scaler"]
    assert scaler is not None and scaler["scale"] > 0
    model, _ = load_model(tmp_path / "fp16", device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_on_the_gpu_matches_an_uninterrupted_run(tiny_collection, tmp_path):
    """The resume state is read on the CPU and must land on the GPU (optimizer tensors, CUDA RNG)."""
    from safetensors.torch import load_file

    kw = dict(backbone="tiny-cnn", amp="off", epochs=2, scheduler="none")  # the cosine schedule depends on epochs
    # cuDNN's default convolution backward sums with atomics: with AdamW, run-to-run differences reached 9e-3
    # in single weights on an H200. Deterministic kernels make the comparison one of resume, not of atomics.
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        full = train(_config(tiny_collection, tmp_path / "full", **kw), progress=False)
        train(_config(tiny_collection, tmp_path / "cut", **dict(kw, epochs=1)), progress=False)
        resumed = train(_config(tiny_collection, tmp_path / "cut", **kw), progress=False)  # epochs may change
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][-1]["train_loss"] == pytest.approx(full["history"][-1]["train_loss"], rel=1e-3)
    a = load_file(str(tmp_path / "full" / "last" / "state.safetensors"))
    b = load_file(str(tmp_path / "cut" / "last" / "state.safetensors"))
    for key in a:
        if key.startswith("model."):  # GPU kernels need not be bit-reproducible: close, not equal
            close(b[key], a[key], rel=1e-3, atol=1e-4)


@pytest.mark.parametrize("method,backbone,options", [
    ("prompt-cam", "tiny-vit", {}),
    ("intr", "tiny-cnn", {"d_model": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1,
                          "dim_feedforward": 64, "dropout": 0.0}),
])
def test_prompt_cam_and_intr_train_under_autocast(tiny_collection, tmp_path, method, backbone, options):
    cfg = _config(tiny_collection, tmp_path / method, method=method, backbone=backbone, image_size=None,
                  epochs=1, optimizer="sgd" if method == "prompt-cam" else "adamw", lr=1e-2,
                  method_options=options)
    result = train(cfg, progress=False)
    assert np.isfinite(result["history"][0]["train_loss"])
    model, meta = load_model(tmp_path / method, device="cpu")
    assert meta["method"] == method and model(torch.zeros(1, 3, 64, 64)).shape == (1, meta["num_classes"])


def test_traits_cli_on_the_gpu(tiny_collection, tmp_path):
    from traitlens.cli import main

    cfg = _config(tiny_collection, tmp_path / "run", method="prompt-cam", image_size=None, epochs=1,
                  optimizer="sgd", lr=1e-2)
    train(cfg, progress=False)
    folder = next(p for p in sorted((tiny_collection / "test").iterdir()) if p.is_dir())
    code = main(["traits", "--checkpoint", str(tmp_path / "run"), "--images", str(folder), "--class", "auto",
                 "--top-heads", "2", "--out", str(tmp_path / "traits"), "--device", str(DEVICE)])
    assert code == 0
    rows = [json.loads(line) for line in (tmp_path / "traits" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(list(folder.glob("*.png"))) and all(len(r["ranked_heads"]) == 4 for r in rows)


def test_explain_cli_on_the_gpu(cuda_run, tiny_collection, tmp_path):
    from traitlens.cli import main

    _, out = cuda_run
    folder = next(p for p in sorted((tiny_collection / "test").iterdir()) if p.is_dir())
    code = main(["explain", "--checkpoint", str(out), "--images", str(folder), "--alpha", "0,1",
                 "--out", str(tmp_path / "explain"), "--device", str(DEVICE), "--save-maps"])
    assert code == 0
    rows = (tmp_path / "explain" / "results.jsonl").read_text().splitlines()
    assert len(rows) == len(list(folder.glob("*.png")))


# ---------------------------------------------------------------------------------------------
# explain: Grad-CAM family and Finer-CAM maps on the GPU equal the CPU's


def _scaled(model, scale):
    head = model.get_classifier()
    with torch.no_grad():
        head.weight.mul_(scale)
        head.bias.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def cam_models():
    torch.manual_seed(0)
    resnet = _scaled(timm.create_model("resnet18", num_classes=10), 40.0)
    torch.manual_seed(1)
    vit = _scaled(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                                    num_heads=2, num_classes=10, reg_tokens=2, dynamic_img_size=True), 8.0)
    g = torch.Generator().manual_seed(2)
    return {"resnet": (resnet, torch.randn(4, 3, 64, 64, generator=g)),
            "vit": (vit, torch.randn(3, 3, 32, 48, generator=g))}


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.detach().cpu().flatten(1).double(),
                                                       b.detach().cpu().flatten(1).double()).min())


@pytest.mark.parametrize("which", ["resnet", "vit"])
@pytest.mark.parametrize("method", ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam", "scorecam"])
def test_cam_maps_on_gpu_equal_cpu(cam_models, which, method):
    from traitlens.explain import explain

    model, x = cam_models[which]
    if method == "scorecam":
        x = x[:2]
    cpu = explain(model, x, method=method, finer=True, alpha=[0.0, 1.0], score_channels=32)
    # the same targets and references (a near-tie could otherwise pick others on the GPU)
    gpu = explain(on(model, DEVICE), x.to(DEVICE), method=method, finer=True, alpha=[0.0, 1.0], score_channels=32,
                  target=cpu.target, references=cpu.references)
    assert gpu.maps.device.type == DEVICE.type and gpu.raw_maps.device.type == DEVICE.type
    close(gpu.logits, cpu.logits, rel=1e-4, atol=1e-5)
    assert _cos(gpu.raw_maps.flatten(0, 1), cpu.raw_maps.flatten(0, 1)) > 0.9999
    close(gpu.maps, cpu.maps, rel=0, atol=5e-3)
    close(gpu.scores, cpu.scores, rel=1e-4, atol=1e-5)


def test_finer_alpha_sweep_and_references_on_gpu(cam_models):
    from traitlens.explain import explain

    model, x = cam_models["resnet"]
    cpu = explain(model, x, alpha=[0.0, 0.5, 1.0, 2.0], references="top-predicted", k=3)
    gpu = explain(on(model, DEVICE), x.to(DEVICE), alpha=[0.0, 0.5, 1.0, 2.0], references="top-predicted", k=3)
    assert torch.equal(gpu.target.cpu(), cpu.target) and torch.equal(gpu.references.cpu(), cpu.references)
    assert gpu.maps.shape == (4, 4, 64, 64)
    close(gpu.maps, cpu.maps, rel=0, atol=5e-3)
    base = explain(on(model, DEVICE), x.to(DEVICE), finer=False)
    # α = 0 is the base CAM (bit for bit on the CPU; on the GPU the batched gradient sums in another order)
    close(gpu.raw_maps[0], base.raw_maps, rel=1e-4, atol=1e-6)


def test_grad_cam_package_agrees_on_gpu(cam_models):
    """traitlens' Grad-CAM equals the grad-cam package's on the GPU too (the package copies to numpy)."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from traitlens.explain import explain

    model, x = cam_models["resnet"]
    model, x = on(model, DEVICE), x.to(DEVICE)
    ours = explain(model, x, finer=False)
    with pgc.GradCAM(model, [model.layer4]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in ours.target])
    assert np.abs(ours.maps.cpu().numpy() - theirs).max() <= 1e-3


# ---------------------------------------------------------------------------------------------
# models: Prompt-CAM and INTR forward, class attention and head blurring on the GPU


def _tiny_vit(seed=0, **kw):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=3,
                             num_heads=4, num_classes=0, **kw)


@pytest.mark.parametrize("mode", ["deep", "shallow"])
def test_prompt_cam_on_gpu_equals_cpu(mode):
    from traitlens.models import PromptCAM

    torch.manual_seed(1)
    model = PromptCAM(_tiny_vit(reg_tokens=2, init_values=0.1, qk_norm=True), num_classes=5, mode=mode).eval()
    with torch.no_grad():
        model.prompts.tokens.normal_(0, 0.5)  # make prompts matter
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    classes = torch.tensor([0, 4, 2])
    gm = on(model, DEVICE)
    with torch.no_grad():
        close(gm(x.to(DEVICE)), model(x), rel=1e-4, atol=1e-5)
        maps = gm.class_attention(x.to(DEVICE), classes.to(DEVICE))
        assert maps.device.type == DEVICE.type and maps.shape == (3, 4, 4, 4)
        close(maps, model.class_attention(x, classes), rel=1e-4, atol=1e-6)
        found_cpu = model.identify_traits(x, classes, top_k=2, stop_on_misclassification=False)
        found_gpu = gm.identify_traits(x.to(DEVICE), classes.to(DEVICE), top_k=2, stop_on_misclassification=False)
    assert torch.equal(found_gpu.ranked_heads.cpu(), found_cpu.ranked_heads)
    close(found_gpu.target_prob, found_cpu.target_prob, rel=1e-4, atol=1e-5)
    close(found_gpu.aggregate(), found_cpu.aggregate(), rel=1e-4, atol=1e-6)


def test_prompt_cam_under_bf16_autocast_on_gpu():
    from traitlens.models import PromptCAM

    torch.manual_seed(1)
    model = on(PromptCAM(_tiny_vit(), num_classes=7).eval(), DEVICE)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    classes = torch.tensor([1, 6], device=DEVICE)
    with torch.no_grad():
        ref, ref_maps = model(x), model.class_attention(x, classes)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            logits = model(x)
            maps = model.class_attention(x, classes)
    assert torch.isfinite(logits).all() and torch.isfinite(maps).all()
    close(logits, ref, rel=0.05, atol=0.05)
    close(maps, ref_maps, rel=0.05, atol=2e-3)


def _tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=0, layers=(1, 1, 1, 1), channels=(8, 16, 24, 32),
                             stem_width=8, output_stride=8)


@pytest.mark.parametrize("which", ["cnn", "vit"])
def test_intr_on_gpu_equals_cpu(which):
    from traitlens.models import INTR

    backbone = _tiny_cnn() if which == "cnn" else _tiny_vit(reg_tokens=1)
    torch.manual_seed(0)
    model = INTR(backbone, 5, d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                 dim_feedforward=64, dropout=0.0).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    gm = on(model, DEVICE)
    with torch.no_grad():
        close(gm(x.to(DEVICE)), model(x), rel=1e-4, atol=1e-5)
        classes = torch.tensor([1, 4])
        close(gm.class_attention(x.to(DEVICE), classes.to(DEVICE)), model.class_attention(x, classes),
              rel=1e-4, atol=1e-6)
        lg, maps, grid = gm.attention_maps(x.to(DEVICE))
        assert maps.device.type == DEVICE.type and grid == (4, 4)
        assert torch.allclose(maps.sum(-1), torch.ones_like(maps.sum(-1)), atol=1e-5)
        top, tmaps = gm.top_class_attention(x.to(DEVICE), q=3)
        assert torch.equal(top, lg.topk(3, 1).indices)
        found_cpu = model.identify_traits(x, classes, top_k=2, stop_on_misclassification=False)
        found_gpu = gm.identify_traits(x.to(DEVICE), classes.to(DEVICE), top_k=2, stop_on_misclassification=False)
    assert torch.equal(found_gpu.ranked_heads.cpu(), found_cpu.ranked_heads)
    close(found_gpu.target_prob, found_cpu.target_prob, rel=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# segment: label propagation and SAM 2 on the GPU


def blob_scene(h=48, w=48, shift=(0, 0), seed=0):
    """Three coloured rectangles (traits 1-3) on a noisy grey background, and the label map (as tests/segment)."""
    rng = np.random.default_rng(seed)
    img = 0.45 + 0.05 * rng.standard_normal((h, w, 3))
    labels = np.zeros((h, w), dtype=np.int64)
    dy, dx = shift
    for k, (y0, x0, y1, x1, colour) in enumerate([(8, 8, 20, 22, (0.9, 0.1, 0.1)), (24, 10, 36, 18, (0.1, 0.8, 0.2)),
                                                   (22, 26, 40, 40, (0.1, 0.2, 0.9))], start=1):
        img[y0 + dy:y1 + dy, x0 + dx:x1 + dx] = colour
        labels[y0 + dy:y1 + dy, x0 + dx:x1 + dx] = k
    return torch.from_numpy(np.clip(img, 0, 1)).permute(2, 0, 1).float(), torch.from_numpy(labels)


def _agree(a, b):
    return float((a.argmax(0).cpu() == b.argmax(0).cpu()).float().mean())


def _run_labelprop(features, device, align):
    from traitlens.segment.labelprop import LabelPropagation, LabelPropOptions
    from traitlens.segment.tracking import track

    img, lab = blob_scene()
    queries = [("a", blob_scene(shift=(5, 3), seed=1)[0]), ("b", blob_scene(shift=(-2, 4), seed=2)[0]),
               ("c", torch.nn.functional.interpolate(blob_scene(shift=(2, 2), seed=3)[0][None], size=(40, 56),
                                                     mode="bilinear", align_corners=False)[0])]
    prop = LabelPropagation(features, LabelPropOptions(work_size=(48, 48), align=align), device=device)
    return dict(track(prop, [(img, lab)], queries, order="chain", batch_size=2))


@pytest.mark.parametrize("align", [False, True])
def test_label_propagation_on_gpu_equals_cpu(align):
    from traitlens.segment.features import ColourPositionFeatures

    cpu = _run_labelprop(ColourPositionFeatures(), CPU, align)
    gpu = _run_labelprop(ColourPositionFeatures(), DEVICE, align)
    assert gpu.keys() == cpu.keys()
    for q in cpu:
        assert gpu[q].shape == cpu[q].shape
        assert torch.allclose(gpu[q].sum(0).cpu(), torch.ones(cpu[q].shape[1:]), atol=1e-4)
        # top-k and registration pick among near-equal candidates: compare the labels, and the soft maps loosely
        assert _agree(gpu[q], cpu[q]) >= 0.99, q
        assert float((gpu[q].cpu() - cpu[q]).abs().mean()) < 1e-2, q


def test_backbone_features_and_label_propagation_on_gpu():
    from traitlens.segment.features import BackboneFeatures

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            num_classes=0, dynamic_img_size=True).eval()
    x = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    f_cpu = BackboneFeatures(vit, input_size=(64, 64))
    f_gpu = BackboneFeatures(on(vit, DEVICE), input_size=(64, 64))
    a, b = f_gpu(x.to(DEVICE)), f_cpu(x)
    assert a.device.type == DEVICE.type and a.shape == b.shape == (2, 32, 8, 8)
    close(a, b, rel=1e-4, atol=1e-5)
    cpu = _run_labelprop(f_cpu, CPU, False)
    gpu = _run_labelprop(f_gpu, DEVICE, False)
    for q in cpu:
        assert _agree(gpu[q], cpu[q]) >= 0.98, q


@pytest.fixture(scope="module")
def sam2_model():
    pytest.importorskip("transformers")
    from transformers import Sam2VideoModel

    from traitlens.segment.sam2 import tiny_config

    torch.manual_seed(0)
    return Sam2VideoModel(tiny_config(64)).eval()


def _run_sam2(model, device, order):
    from traitlens.segment.sam2 import Sam2Propagator
    from traitlens.segment.tracking import track

    img, lab = blob_scene()
    queries = [(f"q{i}", blob_scene(shift=(i, 2 * i), seed=i + 1)[0]) for i in range(3)]
    prop = Sam2Propagator(model, device=device)
    out = dict(track(prop, [(img, lab)], queries, order=order, num_labels=4))
    return out, prop


@pytest.mark.parametrize("order", ["pairwise", "chain"])
def test_sam2_random_weights_on_gpu(sam2_model, order):
    cpu, _ = _run_sam2(copy.deepcopy(sam2_model), CPU, order)
    gpu, prop = _run_sam2(copy.deepcopy(sam2_model), DEVICE, order)
    assert next(prop.model.parameters()).device.type == DEVICE.type
    assert prop.session.obj_ids == [1, 2, 3]
    for q in cpu:
        assert gpu[q].shape == cpu[q].shape == (4, 48, 48)
        assert torch.isfinite(gpu[q]).all()
        assert torch.allclose(gpu[q].sum(0).cpu(), torch.ones(48, 48), atol=1e-4)
        # random weights: mask logits near 0 may binarise either way into memory; agree on almost every pixel
        assert _agree(gpu[q], cpu[q]) >= 0.95, q
        assert float((gpu[q].cpu() - cpu[q]).abs().mean()) < 0.02, q


@pytest.mark.skipif(DEVICE.type != "cuda", reason="bf16 SAM 2 is the GPU configuration")
def test_sam2_bf16_on_gpu(sam2_model):
    model = copy.deepcopy(sam2_model).to(DEVICE).to(torch.bfloat16)
    out, prop = _run_sam2(model, DEVICE, "chain")
    assert prop.dtype == torch.bfloat16
    for soft in out.values():
        assert soft.dtype == torch.float32 and torch.isfinite(soft).all()
        assert torch.allclose(soft.sum(0).cpu(), torch.ones(48, 48), atol=1e-3)


def test_sam2_cycle_loss_backward_on_gpu(sam2_model):
    from traitlens.segment.finetune import cycle_loss
    from traitlens.segment.sam2 import Sam2Propagator, freeze_image_encoder
    from traitlens.segment.tracking import cycle_predict

    model = copy.deepcopy(sam2_model)
    freeze_image_encoder(model)
    img, lab = blob_scene()
    query, _ = blob_scene(shift=(3, 2), seed=3)
    prop = Sam2Propagator(model, device=DEVICE, differentiable=True)
    _, back = cycle_predict(prop, (img, lab), query, num_labels=4)
    loss = cycle_loss(back, lab.to(back.device))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.vision_encoder.parameters())
    touched = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"mask_decoder", "memory_attention", "memory_encoder"} <= touched


# ---------------------------------------------------------------------------------------------
# calibrate: the seen-unseen curve, AUSUC and γ from logits on the GPU


def _logits(seed, n=3000, c=40, integer=False):
    rng = np.random.default_rng(seed)
    if integer:  # heavy ties inside the seen and unseen groups: argmax must keep the lowest id on the GPU too
        z = rng.integers(-3, 4, size=(n, c)).astype(np.float32)
    else:
        z = rng.normal(size=(n, c)).astype(np.float32)
        z[:, : c // 2] += 1.0
    y = rng.integers(0, c, n)
    if not integer:
        z[np.arange(n), y] += 1.5
    return z, y


@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("seen", [list(range(20)), list(range(0, 40, 2))], ids=["contiguous", "interleaved"])
def test_calibration_on_gpu_equals_cpu(integer, seen):
    from traitlens.calibrate import (accuracy_table, alg_gamma, apply_gamma, ausuc, expected_calibration_error,
                                     oracle_gamma, seen_unseen_curve, switch_stats)

    z, y = _logits(0, integer=integer)
    zg, yg = torch.from_numpy(z).to(DEVICE), torch.from_numpy(y).to(DEVICE)
    st_cpu, st_gpu = switch_stats(z, y, seen), switch_stats(zg, yg, seen)
    for name in ("breakpoint", "seen_correct", "unseen_correct", "is_seen"):
        assert torch.equal(getattr(st_gpu, name).cpu(), getattr(st_cpu, name)), name
    assert ausuc(zg, yg, seen) == ausuc(z, y, seen)
    g_cpu, s_cpu, u_cpu = seen_unseen_curve(z, y, seen)
    g_gpu, s_gpu, u_gpu = seen_unseen_curve(zg, yg, seen)
    assert torch.is_tensor(g_gpu)
    assert np.array_equal(g_gpu.cpu().numpy(), g_cpu) and np.array_equal(s_gpu.cpu().numpy(), s_cpu)
    assert np.array_equal(u_gpu.cpu().numpy(), u_cpu)
    assert oracle_gamma(zg, yg, seen) == oracle_gamma(z, y, seen)
    train = np.isin(y, seen)  # ALG reads the fine-tuning training logits: labels all seen
    assert alg_gamma(zg[torch.from_numpy(train).to(DEVICE)], yg[torch.from_numpy(train).to(DEVICE)], seen) == \
        pytest.approx(alg_gamma(z[train], y[train], seen), rel=1e-5, abs=1e-6)
    shifted = apply_gamma(zg, seen, 0.7)
    assert torch.is_tensor(shifted) and shifted.device.type == DEVICE.type
    assert np.allclose(shifted.cpu().numpy(), apply_gamma(z, seen, 0.7))
    t_gpu, t_cpu = accuracy_table(zg, yg, seen, gamma=0.3), accuracy_table(z, y, seen, gamma=0.3)
    assert t_gpu.keys() == t_cpu.keys()
    for key in t_cpu:
        assert t_gpu[key] == pytest.approx(t_cpu[key], abs=1e-9), key
    assert expected_calibration_error(zg, yg) == pytest.approx(expected_calibration_error(z, y), abs=1e-5)
