"""The data side of training and evaluation: splits of an ImageFolder tree, transforms, the collate.

Shared by :mod:`traitlens.engine.train` and :mod:`traitlens.engine.evaluate` (neither imports the other for
these), and by every caller that scores a checkpoint on a split the way the engine does.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from torch import nn
from torch.utils.data import Dataset

from traitlens.engine.config import TrainConfig
from traitlens.errors import UserError



class SplitView(Dataset):
    """A dataset restricted to the samples at ``indices`` (labels and sample indices unchanged).

    Trains on a subset of the classes in the full label space. ``set_epoch`` is passed through, so
    augmentation stays seeded by the underlying dataset's (seed, epoch, index).
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)
        self.classes = list(dataset.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)


def split_classes(root: Path, split: str) -> List[str]:
    """The class names of split ``split`` of ``--data root``: the class folders of ``root/split``, sorted, or
    the classes of its split definition (a CUB root, ``split.json``, an unsplit tree:
    :func:`traitlens.data.folders.collection_classes`)."""
    from traitlens.data.folders import collection_classes

    return collection_classes(root, split)


def has_split(root: Path, split: str) -> bool:
    """Whether ``--data root`` has split ``split`` (a folder, or a non-empty split of its definition)."""
    from traitlens.data.folders import has_split as _has

    return _has(root, split)


def open_split(root: Path, split: str, transform, seed: int, class_names: Optional[Sequence[str]] = None,
               keep: Optional[Sequence[str]] = None) -> Dataset:
    """Split ``split`` of ``--data root`` as an ImageFolderDataset, labels in ``class_names`` order, restricted
    to ``keep``; any layout :func:`traitlens.data.folders.open_collection_split` reads (split folders are read
    as ``ImageFolderDataset(root, split=split)``).

    Without ``class_names`` the split's own (sorted) classes are the label space. A class of the
    split that ``class_names`` lacks is a :class:`UserError` (the model has no output for it).
    """
    from traitlens.data.folders import open_collection_split

    own = split_classes(root, split)
    names = list(class_names) if class_names is not None else own
    missing = [c for c in own if c not in names]
    if missing:
        raise UserError(f"{Path(root) / split} has class(es) the model does not know: {', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}")
    dataset = open_collection_split(root, split, transform=transform, classes=names, masks=None, seed=seed)
    if keep is None:
        return dataset
    unknown = [c for c in keep if c not in names]
    if unknown:
        raise UserError(f"classes {', '.join(unknown)} are not classes of {Path(root) / split}")
    allowed = {names.index(c) for c in keep}
    indices = [i for i, y in enumerate(dataset.targets) if y in allowed]
    if not indices:
        raise UserError(f"no images of classes {', '.join(keep)} in {Path(root) / split}")
    return SplitView(dataset, indices)


def data_config(model: nn.Module, config: TrainConfig) -> dict:
    """The backbone's data config (input size, mean, std), with ``config.image_size`` when it is set."""
    from traitlens import backbones

    dc = dict(backbones.data_config(model))
    if config.image_size is not None:
        dc["input_size"] = (3, int(config.image_size), int(config.image_size))
    return dc


def eval_transform(model: nn.Module, config: TrainConfig):
    """The evaluation transform (resize, centre crop, normalise) of ``model``'s data config."""
    from traitlens.data.transforms import from_data_config

    return from_data_config(data_config(model, config), train=False)


def train_transform(model: nn.Module, config: TrainConfig):
    """The training transform: ``config.augment`` augmentation, seeded per (seed, epoch, index)."""
    from traitlens.data.transforms import from_data_config

    return from_data_config(data_config(model, config), train=config.augment, seed=config.seed)


def collate_fn():
    """The collate of sample dicts (``image`` B×3×H×W, ``label`` B, ``index`` B, ``path``, ``skipped``)."""
    from traitlens.data.folders import collate

    return collate
