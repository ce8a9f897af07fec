"""``traitlens demo``: the main job on the embedded default, ending in one HTML report.

The demo makes (or reuses from the cache) the synthetic specimen collection and the tiny pretrained
backbones, trains the demo's classifiers, then runs one section per method. Each method area adds a
``demo_section(ctx)`` in ``traitlens/studies/demo/<area>.py``; a section that fails is shown as failed
in the report and makes the command exit non-zero, but never stops the other sections.
"""

from __future__ import annotations

import importlib
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from traitlens.cache import cache_dir
from traitlens.progress import log
from traitlens.report import Section, write_page
from traitlens.studies.memo import TRAINING, memo_json, memo_path
from traitlens.studies.recipes import DEMO_CLASSIFIER, DEMO_COLLECTION, Collection

# Method sections in report order: (name, module). Missing modules are skipped.
SECTIONS = [
    ("explain", "traitlens.studies.demo.explain"),
    ("models", "traitlens.studies.demo.interpretable"),
    ("segment", "traitlens.studies.demo.segment"),
    ("atlas", "traitlens.studies.demo.atlas"),
    ("calibrate", "traitlens.studies.demo.calibrate"),
    ("compbench", "traitlens.studies.demo.compbench"),
]

@dataclass
class DemoContext:
    """What every demo section gets: see docs/ARCHITECTURE.md, "Reports and the demo"."""

    out: Path
    cache: Path
    data: Path
    traits: object
    device: str = "cpu"
    seed: int = 0
    checkpoints: Dict[str, Path] = field(default_factory=dict)

    def log(self, message: str) -> None:
        log(message)

    def for_area(self, area: str) -> "DemoContext":
        sub = cache_dir(*self.cache.relative_to(cache_dir()).parts, area) if _within(self.cache, cache_dir()) \
            else self.cache / area
        sub.mkdir(parents=True, exist_ok=True)
        return DemoContext(self.out, sub, self.data, self.traits, self.device, self.seed, dict(self.checkpoints))


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def prepare(device: str = "cpu", seed: int = 0, cache: Optional[Path] = None) -> DemoContext:
    """Make or reuse the collection, the embedded backbones and the demo classifiers."""
    from traitlens.data.traits import load_traits
    from traitlens.studies.embedded import embedded_backbone

    root = Path(cache) if cache else cache_dir("demo")
    root.mkdir(parents=True, exist_ok=True)
    data = collection(DEMO_COLLECTION)
    traits = load_traits(data)
    checkpoints: Dict[str, Path] = {}
    for kind in ("vit", "cnn"):
        checkpoints[f"backbone-{kind}"] = embedded_backbone(kind)
        checkpoints[kind] = train_demo_classifier(kind, data, checkpoints[f"backbone-{kind}"], root, device, seed)
    return DemoContext(out=Path("."), cache=root, data=data, traits=traits, device=device, seed=seed,
                       checkpoints=checkpoints)


def collection_path(recipe: Collection) -> Path:
    """Where :func:`collection` renders ``recipe`` (keyed by the training code: models trained on it are too)."""
    return memo_path(cache_dir("datasets"), "synth", recipe, code=TRAINING)


def collection(recipe: Collection, progress: bool = True) -> Path:
    """The synthetic collection of ``recipe``, rendered once into the cache (``datasets/``)."""
    from traitlens.data.synthetic import SynthConfig, generate_collection

    return generate_collection(collection_path(recipe), SynthConfig(**recipe.as_dict()),
                               progress=progress)


def test_split(data: Path, model, meta: dict):
    """The test split of collection ``data`` as checkpoint ``(model, meta)`` sees it: its eval transform, its
    classes, the part masks when present."""
    from traitlens.data.folders import ImageFolderDataset
    from traitlens.engine.checkpoint import config_from_meta
    from traitlens.engine.train import eval_transform

    return ImageFolderDataset(data, split="test", transform=eval_transform(model, config_from_meta(meta)),
                              classes=meta["class_names"], masks="auto")


def train_demo_classifier(kind: str, data: Path, backbone: Path, root: Path, device: str, seed: int) -> Path:
    """Fine-tune the embedded backbone on the demo collection (cached by recipe)."""
    from traitlens.engine.config import TrainConfig
    from traitlens.methods import train

    recipe = dict(training=DEMO_CLASSIFIER, kind=kind, data=str(data), backbone=str(backbone), seed=seed)
    run_dir = memo_path(root / "runs", f"classifier-{kind}", recipe, code=TRAINING)
    config = TrainConfig(data=str(data), out=str(run_dir), backbone=f"tiny-{kind}",
                         weights=str(backbone), seed=seed, device=str(device), **DEMO_CLASSIFIER.config())
    # train() returns at once for a finished run and resumes an interrupted one.
    train(config)
    return run_dir


def foundation_section(ctx: DemoContext) -> Section:
    """The collection (specimens, part masks, taxonomy) and the classifiers' accuracy."""
    from PIL import Image

    from traitlens.data.traits import colourise_parts
    from traitlens.report import confusion_matrix_plot, swatch

    traits = ctx.traits
    s = Section(
        "The synthetic specimen collection",
        intro=(
            f"{len(traits.class_names)} species in {len(traits.genera)} genera. Sibling species differ in one or two "
            "small traits; species of different genera in several. Every image comes with its part-label map, "
            "so every explanation and segmentation below is scored against ground truth."
        ),
    )
    items = []
    for name in traits.class_names:
        folder = ctx.data / "test" / name
        first = sorted(folder.glob("*.png"))[0]
        mask = np.asarray(Image.open(ctx.data / "masks" / "test" / name / first.name))
        items.append((np.asarray(Image.open(first).convert("RGB")), name))
        items.append((colourise_parts(mask), "parts"))
    s.gallery(items, columns=8, scale=2)
    s.table([{"id": p.id, "part": swatch(colourise_parts(np.array([[p.id]]))[0, 0], p.name),
              "painted on": ", ".join(traits.part_name(h) for h in p.hosts)} for p in traits.parts],
            caption="Part ids of the label maps, with the colour each part has in the maps above")
    rows, marked = trait_table(traits)
    s.table(rows, highlight=marked, caption="Species, genera and trait values (traits.json). Highlighted: the trait "
                                            "values in which the species of a genus differ (what tells siblings "
                                            "apart).")
    for kind in ("vit", "cnn"):
        result = memo_json(ctx.cache, f"eval-{kind}", dict(run=ctx.checkpoints[kind].name, split="test"),
                           lambda: _evaluation(ctx.checkpoints[kind], ctx.data, ctx.device))
        s.text(f"Tiny {kind.upper()} fine-tuned from the embedded backbone: top-1 {result['top1']:.3f}, "
               f"top-5 {result['top5']:.3f} on {result['n']} test images.")
        s.figure(confusion_matrix_plot(np.array(result["confusion"]), traits.names,
                                       title=f"Tiny {kind.upper()}: test confusion"), width=640)
    return s


def trait_table(traits):
    """The species × trait rows of ``traits`` and the (row, column) cells in which the species of a genus differ;
    the traits that differ within some genus come first, so what tells siblings apart is in view."""
    values = [traits.attributes(i) for i in range(traits.num_species)]
    marked = []
    for genus in traits.genera:
        members = traits.species_in(genus)
        for column in traits.attribute_names:
            if len({repr(values[i].get(column)) for i in members}) > 1:
                marked += [(i, column) for i in members]
    differing = {c for _, c in marked}
    order = sorted(traits.attribute_names, key=lambda c: c not in differing)  # stable: the file's order otherwise
    rows = [{"species": traits.name(i), "genus": traits.genus_of(i), **{c: values[i][c] for c in order}}
            for i in range(traits.num_species)]
    return rows, marked


def _evaluation(run: Path, data: Path, device) -> dict:
    """The test-split figures of a classifier run that the report shows (JSON-able)."""
    from traitlens.methods import evaluate_checkpoint

    result = evaluate_checkpoint(run, data, split="test", device=str(device))
    keep = {k: v for k, v in result.items() if k in ("top1", "top5", "n", "confusion", "per_class")}
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in keep.items()}


def run_demo(out: Path, device: str = "cpu", seed: int = 0, sections: Optional[List[str]] = None,
             cache: Optional[Path] = None) -> Dict[str, object]:
    """Run the demo and write ``out/index.html``. Returns the page path and the failed sections."""
    start = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [(n, m) for n, m in SECTIONS if not sections or n in sections]
    steps = len(names) + 1  # the preparation, then each section
    timings = _Timings(Path(cache) if cache else cache_dir("demo"))
    left = timings.estimate(names_of(names))
    log(f"demo step 1 of {steps}: collection, embedded backbones and classifiers{' (' + left + ')' if left else ''}")
    t0 = time.time()
    ctx = prepare(device=device, seed=seed, cache=cache)
    timings.record("prepare", time.time() - t0)
    ctx.out = out
    page: List[Section] = [foundation_section(ctx)]
    failed: List[str] = []
    for k, (name, module_name) in enumerate(names, start=2):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        t0 = time.time()
        left = timings.estimate(names_of(names[k - 2:]), first=False)
        log(f"demo step {k} of {steps}: {name} ({time.time() - start:.0f} s so far{'; ' + left if left else ''})")
        try:
            page.append(module.demo_section(ctx.for_area(name)))
            timings.record(name, time.time() - t0)
            log(f"demo section {name} took {time.time() - t0:.0f}s")
        except Exception as exc:  # noqa: BLE001 - one failed section must not hide the others
            failed.append(name)
            broken = Section(f"{name}: this section failed")
            broken.text(f"{type(exc).__name__}: {exc}")
            broken.html(f"<pre>{_escape(traceback.format_exc())}</pre>")
            page.append(broken)
    index = write_page("traitlens demo", page, out / "index.html")
    return {"index": index, "failed": failed, "seconds": time.time() - start}


class _Timings:
    """How long each demo step took the last time it ran here (``timings.json`` in the demo cache): the
    estimate of what is left. A cached rerun records its own (short) times, so the estimate follows."""

    def __init__(self, root: Path):
        self.path = Path(root) / "timings.json"
        try:
            self.seconds = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.seconds = {}

    def estimate(self, steps: List[str], first: bool = True) -> str:
        """"about 2 min left, going by the last run" for ``steps`` (with ``first``, the preparation too); "" when
        some step has not run here yet (on a first run: what the first run takes)."""
        steps = (["prepare"] if first else []) + list(steps)
        known = [self.seconds[s] for s in steps if isinstance(self.seconds.get(s), (int, float))]
        if len(known) < len(steps):
            return "" if self.seconds else "a first run takes up to 10 min on 2 CPU cores; reruns are cached"
        return f"about {_duration(sum(known))} left, going by the last run"

    def record(self, step: str, seconds: float) -> None:
        self.seconds[step] = round(seconds, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.seconds, indent=1) + "\n")
        tmp.replace(self.path)


def names_of(sections) -> List[str]:
    return [name for name, _ in sections]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _escape(text: str) -> str:
    import html

    return html.escape(text)
