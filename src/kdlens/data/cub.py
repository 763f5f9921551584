"""CUB-200-2011 reader (the paper's real dataset); never downloads.

Expected under ``root``: ``images/<class_dir>/<file>.jpg``, ``images.txt``,
``image_class_labels.txt``, ``train_test_split.txt``, ``bounding_boxes.txt``
(x, y, w, h in pixels, 0-based, needed for bbox masks and crops), optionally
``classes.txt`` and ``segmentations/<class_dir>/<file>.png`` (soft masks,
foreground where >= 128). Images are loaded lazily in ``__getitem__``; missing
files are reported at construction so a run fails before it trains.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from kdlens.data.base import Sample
from kdlens.data.catalog import DATASETS
from kdlens.data.imageio import IMAGENET_MEAN, IMAGENET_STD, box_mask, load_mask, load_rgb, require, scaled_box, to_tensors

MASK_SOURCES = ("auto", "segmentation", "bbox")
SEGMENTATION_THRESHOLD = 128


def _read_table(path: Path, expected: str) -> dict[int, list[str]]:
    """``<id> <fields...>`` lines -> {id: fields}."""
    rows = {}
    for number, line in enumerate(require(path, expected).read_text().splitlines(), 1):
        if line.strip():
            key, *fields = line.split()
            if not key.isdigit() or not fields:
                raise ValueError(f"{str(path)!r} line {number}: {line.strip()!r}; expected {expected}")
            rows[int(key)] = fields
    return rows


def _row(table: dict[int, list[str]], image_id: int, path: Path) -> list[str]:
    try:
        return table[image_id]
    except KeyError:
        raise ValueError(f"{str(path)!r} has no line for image id {image_id} (listed in images.txt)") from None


@DATASETS.register("cub")
class CubDataset(Dataset):
    """CUB-200-2011 with foreground masks from the segmentations or the boxes.

    ``mask_source``: "segmentation" (required for every image), "bbox" (the box
    interior), or "auto" (the segmentation where its file exists, else the box).
    ``bbox_crop``: None keeps the whole image; s crops to the box scaled by s
    about its centre, clamped to the image. Then both are resized to
    ``image_size`` x ``image_size``."""

    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 224,
        mask_source: str = "auto",
        bbox_crop: float | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split = {split!r}: expected 'train' or 'test'")
        if mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source = {mask_source!r}: expected one of {', '.join(MASK_SOURCES)}")
        if bbox_crop is not None and bbox_crop <= 0:
            raise ValueError(f"bbox_crop = {bbox_crop!r}: expected None or a number > 0")
        self.root = require(Path(root), "the CUB-200-2011 root (images/, images.txt, ...)")
        self.split, self.image_size, self.mask_source, self.bbox_crop = split, image_size, mask_source, bbox_crop

        paths = _read_table(self.root / "images.txt", "'<id> <relative path>' lines")
        labels = _read_table(self.root / "image_class_labels.txt", "'<id> <class 1-based>' lines")
        is_train = _read_table(self.root / "train_test_split.txt", "'<id> <1=train|0=test>' lines")
        wanted = "1" if split == "train" else "0"
        self.ids = sorted(i for i in paths if _row(is_train, i, self.root / "train_test_split.txt")[0] == wanted)
        self.image_paths = [self.root / "images" / paths[i][0] for i in self.ids]
        for path in self.image_paths:
            require(path, "an image listed in images.txt")

        self.boxes: dict[int, tuple[float, ...]] = {}
        if mask_source != "segmentation" or bbox_crop is not None:
            table = _read_table(self.root / "bounding_boxes.txt", "'<id> <x> <y> <w> <h>' lines")
            self.boxes = {i: tuple(float(v) for v in _row(table, i, self.root / "bounding_boxes.txt")) for i in self.ids}
        self.segmentations: list[Path | None] = []
        for i in self.ids:
            seg = (self.root / "segmentations" / paths[i][0]).with_suffix(".png")
            if mask_source == "segmentation":
                require(seg, "a segmentation mask (mask_source='segmentation')")
            self.segmentations.append(seg if mask_source != "bbox" and seg.exists() else None)

        self.labels = torch.tensor(
            [int(_row(labels, i, self.root / "image_class_labels.txt")[0]) - 1 for i in self.ids], dtype=torch.long
        )
        self.classes = self._class_names(paths, labels)

    def _class_names(self, paths: dict[int, list[str]], labels: dict[int, list[str]]) -> list[str]:
        """Names from classes.txt, else the class folder names ("001.Black_footed_Albatross")."""
        names_file = self.root / "classes.txt"
        if names_file.exists():
            table = _read_table(names_file, "'<id> <name>' lines")
            names = {k: " ".join(v) for k, v in table.items()}
        else:
            names = {int(labels[i][0]): Path(paths[i][0]).parent.name for i in paths}
        count = max(max(names), max(int(v[0]) for v in labels.values()))
        return [names.get(k, f"class_{k:03d}") for k in range(1, count + 1)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image = load_rgb(self.image_paths[index])
        box = self.boxes.get(self.ids[index])
        seg = self.segmentations[index]
        if seg is not None:
            mask = load_mask(seg, SEGMENTATION_THRESHOLD, size=image.size)
        else:
            mask = box_mask(box, image.width, image.height)
        crop = None if self.bbox_crop is None else scaled_box(box, self.bbox_crop, image.width, image.height)
        pixels, mask = to_tensors(image, mask, self.image_size, self.mean, self.std, crop)
        return Sample(pixels, int(self.labels[index]), mask)
