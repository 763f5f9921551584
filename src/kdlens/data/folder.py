"""MaskedImageFolder: any image classification data with foreground masks.

Layout: ``root/images/<split>/<class>/<file>`` (jpg, jpeg, png, bmp, tif, webp) and a mask
for each image at ``root/masks/<split>/<class>/<stem>.png`` (nonzero =
foreground). Classes are the sorted subfolders of ``images/train`` so that both
splits share one label numbering. Hidden files (names starting with ".", such
as macOS's ``._a.jpg``) are skipped. Every listed image and mask is checked
to be a readable image when the dataset is built (``imageio.check_images``);
one whose pixel data is corrupt is a :class:`~kdlens.errors.DataError` naming
it when it is loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from kdlens.data.base import Sample
from kdlens.data.catalog import DATASETS
from kdlens.data.imageio import (
    IMAGE_SUFFIXES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_images,
    load_mask,
    load_rgb,
    require,
    to_tensors,
)
from kdlens.errors import DataError, MissingFileError


def _subfolders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


@DATASETS.register("folder")
class MaskedImageFolder(Dataset):
    """Images and masks from parallel class folders, resized to ``image_size`` squared."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 224) -> None:
        self.root = require(Path(root), "the dataset root (images/<split>/<class>/, masks/<split>/<class>/)")
        self.split, self.image_size = split, image_size
        self.classes = _subfolders(require(self.root / "images" / "train", "one folder per class"))
        split_dir = require(self.root / "images" / split, "one folder per class")
        unknown = sorted(set(_subfolders(split_dir)) - set(self.classes))
        if unknown:
            raise DataError(f"classes {unknown} in {str(split_dir)!r} are missing from images/train; "
                            "expected the same class folders in every split")

        self.image_paths: list[Path] = []
        self.mask_paths: list[Path] = []
        labels = []
        for label, name in enumerate(self.classes):
            class_dir = split_dir / name
            listed = class_dir.iterdir() if class_dir.is_dir() else ()
            files = sorted(p for p in listed if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            for path in files:
                mask = self.root / "masks" / split / name / f"{path.stem}.png"
                self.mask_paths.append(require(mask, f"the mask of {str(path)!r}"))
                self.image_paths.append(path)
                labels.append(label)
        if not labels:
            raise MissingFileError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(split_dir)!r}/<class>/")
        check_images(self.image_paths, "an image")
        check_images(self.mask_paths, "a mask image")
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> Sample:
        image = load_rgb(self.image_paths[index])
        mask = load_mask(self.mask_paths[index], size=image.size)
        pixels, mask = to_tensors(image, mask, self.image_size, self.mean, self.std)
        return Sample(pixels, int(self.labels[index]), mask)
