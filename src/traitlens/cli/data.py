"""``traitlens data``: make the synthetic specimen collection and describe collections on disk."""

from __future__ import annotations

import time
from pathlib import Path

from traitlens.cli.common import add_common, add_group, write_json


def register(sub) -> None:
    data = add_group(sub, "data", "make and inspect data collections")

    synth = data.add_parser(
        "synth", help="write the trait-annotated synthetic specimen collection",
        description="Write the trait-annotated synthetic specimen collection (images, part masks, traits.json). "
                    "Cached: rerunning with the same options returns at once.")
    add_common(synth, device=False, json_out=True)
    synth.add_argument("--species", type=int, default=12, help="number of species (default 12, genera of 3)")
    synth.add_argument("--per-species", type=int, default=60, help="images per species (default 60)")
    synth.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    synth.add_argument("--domain", default="A", choices=["A", "B"],
                       help="rendering style: A (default) or the held-out style B")
    synth.add_argument("--blur", action="store_true", help="blur every image slightly")
    synth.add_argument("--noise", type=float, default=0.03, help="pixel noise std in [0, 0.5] (default 0.03)")
    synth.add_argument("--split", type=float, nargs=3, default=(0.6, 0.2, 0.2), metavar=("TRAIN", "VAL", "TEST"),
                       help="split fractions (default 0.6 0.2 0.2)")
    synth.add_argument("--body-plan", default="bird", choices=["bird", "butterfly", "beetle"],
                       help="kind of specimen: bird (default), butterfly (wing patterns) or beetle")
    synth.add_argument("--rotation", type=float, default=35.0, metavar="DEG",
                       help="largest in-plane rotation in degrees, uniform in ±DEG (default 35; 180: any orientation)")
    synth.add_argument("--mirror", type=float, default=0.0, metavar="P",
                       help="share of mirror-image specimens, 0 to 1 (default 0)")
    synth.add_argument("--scale", type=float, nargs=2, default=(0.8, 1.1), metavar=("LOW", "HIGH"),
                       help="range of the pose scale (default 0.8 1.1)")
    synth.add_argument("--avoid-species-of", type=Path, default=None, metavar="DIR",
                       help="make species that differ from every species of this collection (for pretraining)")
    synth.set_defaults(func=_synth)

    info = data.add_parser("info", help="describe a collection folder",
                           description="Species, genera, images per split and parts of a collection folder.")
    info.add_argument("path", type=Path, help="collection folder")
    info.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the summary as JSON")
    info.set_defaults(func=_info)


def _synth(args) -> int:
    from traitlens.data.synthetic import SynthConfig, generate_collection, collection_info

    cfg = SynthConfig(species=args.species, per_species=args.per_species, size=args.size, seed=args.seed,
                      split=tuple(args.split), domain=args.domain, blur=args.blur, noise=args.noise,
                      avoid_species_of=args.avoid_species_of, body_plan=args.body_plan, rotation=args.rotation,
                      mirror=args.mirror, scale=tuple(args.scale))
    start = time.perf_counter()
    out = generate_collection(args.out, cfg, progress=True)
    seconds = time.perf_counter() - start
    info = collection_info(out)
    total = sum(info["images"].values())
    print(out)
    print(f"{info['species']} species in {len(info['genera'])} genera, {total} images "
          f"({', '.join(f'{k} {v}' for k, v in info['images'].items())}), {cfg.size} px, domain {cfg.domain}, "
          f"{cfg.body_plan} plan, "
          f"{seconds:.1f} s")
    write_json(args.json, {**info, "seconds": round(seconds, 3)})
    return 0


def _info(args) -> int:
    from traitlens.data.synthetic import collection_info

    info = collection_info(args.path)
    print(f"{info['path']}: {info['species']} species"
          + (f" in {len(info['genera'])} genera" if "genera" in info else ""))
    print("images: " + ", ".join(f"{k} {v}" for k, v in info["images"].items()))
    cfg = info.get("config")
    if cfg:
        print(f"made with: size {cfg['size']}, seed {cfg['seed']}, domain {cfg['domain']}, "
              f"{cfg['per_species']} per species, blur {cfg['blur']}, noise {cfg['noise']}")
    for genus, members in info.get("genera", {}).items():
        print(f"  {genus}: {', '.join(members)}")
    if "parts" in info:
        print("parts: " + ", ".join(f"{k} {v}" for k, v in info["parts"].items()))
    write_json(args.json, info)
    return 0
