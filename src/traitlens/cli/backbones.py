"""``traitlens backbone``: the embedded tiny backbones traitlens pretrains itself (no download needed), and
``backbone identify`` for telling which published format a downloaded weights file is."""

from __future__ import annotations

import json
from pathlib import Path

from traitlens.cli.common import add_group, write_json


def register(sub) -> None:
    group = add_group(sub, "backbone", "pretrain the embedded tiny backbones (the offline stand-ins for DINO/CLIP); "
                                       "identify a downloaded weights file")
    emb = group.add_parser(
        "embedded", help="pretrain (once, then cached) an embedded tiny backbone and print its weights file",
        description="Pretrain the tiny ViT or CNN preset on a synthetic collection whose species differ from the "
                    "demo's, cache it under $TRAITLENS_CACHE/backbones and print the run folder and its "
                    "model.safetensors (for --weights). Cached: rerunning returns at once; an interrupted "
                    "pretraining resumes.")
    emb.add_argument("--kind", default="vit", choices=["vit", "cnn"], help="tiny-vit or tiny-cnn (default vit)")
    emb.add_argument("--breadth", default="standard", choices=["standard", "broad", "tiny"],
                     help="standard: 18 species, ~2 min on 2 CPU cores (the demo's); broad: 200 species, 30 "
                          "epochs, ~25 min on 2 CPU cores, the one to freeze under Prompt-CAM; tiny: seconds, checks the machinery")
    emb.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                     help="where to pretrain (default cpu: the cached recipe is the CPU's)")
    emb.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                     help="where backbones are cached (default $TRAITLENS_CACHE/backbones)")
    emb.add_argument("--force", action="store_true", help="pretrain again even if a cached copy exists")
    emb.add_argument("--no-progress", action="store_true", help="no progress bars")
    emb.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="also write the record (embedded.json, naming the cached weights) to DIR")
    emb.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the record as JSON to FILE")
    emb.set_defaults(func=_embedded)

    ide = group.add_parser(
        "identify", help="say which published checkpoint format a file is and which preset it fits",
        description="Read a weights file without unpickling objects (safetensors, .pth/.pt/.bin, TorchScript) and "
                    "print its format (DINO, DINOv2 with or without registers, open_clip/BioCLIP, OpenAI CLIP, "
                    "transformers CLIP, timm, Prompt-CAM, INTR, DETR, SAM 2), the presets it loads into, and with "
                    "--backbone whether it loads there with every tensor accounted for.")
    ide.add_argument("file", type=Path, metavar="FILE")
    ide.add_argument("--backbone", default=None, metavar="NAME", help="also try loading it into this preset")
    ide.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the record as JSON to FILE")
    ide.set_defaults(func=_identify)


def _embedded(args) -> int:
    from traitlens.studies.embedded import RECORD, embedded_backbone
    from traitlens.engine.checkpoint import WEIGHTS

    from traitlens.engine.distributed import resolve_device

    device = str(resolve_device(args.device))
    run = embedded_backbone(args.kind, cache_dir=args.cache_dir, force=args.force, device=device,
                            progress=not args.no_progress, breadth=args.breadth)
    record = json.loads((run / RECORD).read_text())
    print(f"{run}: tiny-{args.kind} ({args.breadth}), test top-1 {record['test_top1']:.3f} on its "
          f"{record['recipe']['collection']['species']} pretraining species; weights {run / WEIGHTS}")
    payload = dict(record, run=str(run), weights=str(run / WEIGHTS))
    write_json(args.json, payload)
    if args.out is not None:
        write_json(Path(args.out) / RECORD, payload)
    return 0


def _identify(args) -> int:
    from traitlens.backbones import create, identify, read_checkpoint
    from traitlens.backbones.weights import resolve_weights_path

    ck = read_checkpoint(resolve_weights_path(args.file))
    fmt = identify(ck)
    record = {"file": str(args.file), "format": fmt.name, "label": fmt.label, "presets": list(fmt.presets),
              "role": fmt.role, "tensors": len(ck.state), "hint": fmt.hint}
    line = f"{args.file}: {fmt.label}, {len(ck.state)} tensors"
    line += f"; fits {', '.join(fmt.presets)}" if fmt.presets else (f"; {fmt.hint}" if fmt.hint else "")
    print(line)
    if args.backbone:
        model = create(args.backbone, weights=args.file)
        record["load"] = model.traitlens_weights.as_dict()
        print(str(model.traitlens_weights))
    write_json(args.json, record)
    return 0
