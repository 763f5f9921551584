"""CUB-200-2011 reader (the paper's real dataset); never downloads.

Expected under ``root``: ``images/<class_dir>/<file>.jpg``, ``images.txt``,
``image_class_labels.txt``, ``train_test_split.txt``, ``bounding_boxes.txt``
(x, y, w, h in pixels, 0-based, needed for bbox masks and crops), optionally
``classes.txt`` and ``segmentations/<class_dir>/<file>.png`` (soft masks,
foreground where >= 128). Images are loaded lazily in ``__getitem__``; missing
files, files that are not images (see ``imageio.check_images``: about 1 s for
all of CUB's images) and malformed metadata lines are reported at construction, each as
one line naming the file (and line), so a run fails before it trains. A file
whose pixel data turns out to be corrupt when it is loaded is a
:class:`~kdlens.errors.DataError` naming it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from kdlens.data.base import Sample
from kdlens.data.catalog import DATASETS
from kdlens.data.imageio import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    box_mask,
    check_images,
    load_mask,
    load_rgb,
    require,
    scaled_box,
    to_tensors,
)
from kdlens.errors import DataError, UsageError

MASK_SOURCES = ("auto", "segmentation", "bbox")
SEGMENTATION_THRESHOLD = 128


def _integer(text: str) -> Optional[int]:
    return int(text) if text.isascii() and text.isdigit() else None


def _is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _read_table(
    path: Path,
    expected: str,
    *,
    fields: int = 1,
    text: bool = False,
    check: Callable[[list[str]], bool] = lambda fields: True,
) -> dict[int, list[str]]:
    """``<id> <fields...>`` lines -> {id: fields}. A line that is not an
    id followed by ``fields`` whitespace-separated fields passing ``check``, or
    an id listed twice, is a :class:`DataError` naming the file, the line and
    what was ``expected``. ``text``: one field, the rest of the line (a path or
    a name, which may hold spaces)."""
    try:
        content = require(path, expected).read_text()
    except UnicodeDecodeError as error:
        raise DataError(f"{str(path)!r} is not a text file ({error.reason}); expected {expected}") from None
    rows: dict[int, list[str]] = {}
    first_line: dict[int, int] = {}
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        key, *values = line.split(None, 1) if text else line.split()
        values = [v.strip() for v in values]
        image_id = _integer(key)
        if image_id is None or len(values) != fields or not check(values):
            raise DataError(f"{str(path)!r} line {number}: {line.strip()!r}; expected {expected}")
        if image_id in rows:
            raise DataError(f"{str(path)!r} line {number}: id {image_id} again (first on line "
                            f"{first_line[image_id]}); expected each id once")
        rows[image_id], first_line[image_id] = values, number
    return rows


def _row(table: dict[int, list[str]], image_id: int, path: Path) -> list[str]:
    try:
        return table[image_id]
    except KeyError:
        raise DataError(f"{str(path)!r} has no line for image id {image_id} (listed in images.txt)") from None


def _is_box(values: list[str]) -> bool:
    """x, y, w, h: finite numbers with w, h > 0."""
    return all(_is_finite_number(v) for v in values) and float(values[2]) > 0 and float(values[3]) > 0


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
            raise UsageError(f"split = {split!r}: expected 'train' or 'test'")
        if mask_source not in MASK_SOURCES:
            raise UsageError(f"mask_source = {mask_source!r}: expected one of {', '.join(MASK_SOURCES)}")
        if bbox_crop is not None and not (math.isfinite(bbox_crop) and bbox_crop > 0):
            raise UsageError(f"bbox_crop = {bbox_crop!r}: expected None or a finite number > 0")
        self.root = require(Path(root), "the CUB-200-2011 root (images/, images.txt, ...)")
        self.split, self.image_size, self.mask_source, self.bbox_crop = split, image_size, mask_source, bbox_crop

        names = self._class_table()
        if names:
            count = max(names)
            label_format = f"'<id> <class id 1..{count}>' lines (the ids of classes.txt)"
            is_class = lambda v: 1 <= (_integer(v[0]) or 0) <= count  # noqa: E731
        else:
            label_format = "'<id> <class id, 1-based>' lines"
            is_class = lambda v: (_integer(v[0]) or 0) >= 1  # noqa: E731
        paths = _read_table(self.root / "images.txt", "'<id> <relative path>' lines", text=True)
        if not paths:
            raise DataError(f"{str(self.root / 'images.txt')!r} lists no image; expected '<id> <relative path>' lines")
        labels = _read_table(self.root / "image_class_labels.txt", label_format, check=is_class)
        is_train = _read_table(self.root / "train_test_split.txt", "'<id> <1=train|0=test>' lines",
                               check=lambda v: v[0] in ("0", "1"))
        wanted = "1" if split == "train" else "0"
        self.ids = sorted(i for i in paths if _row(is_train, i, self.root / "train_test_split.txt")[0] == wanted)
        if not self.ids:
            raise DataError(f"{str(self.root / 'train_test_split.txt')!r} puts no image of images.txt in the {split} "
                            f"split; expected at least one '<id> {wanted}' line")
        self.image_paths = [self.root / "images" / paths[i][0] for i in self.ids]
        for path in self.image_paths:
            require(path, "an image listed in images.txt")

        self.boxes: dict[int, tuple[float, ...]] = {}
        if mask_source != "segmentation" or bbox_crop is not None:
            table = _read_table(self.root / "bounding_boxes.txt",
                                "'<id> <x> <y> <w> <h>' lines: finite numbers, w and h > 0", fields=4, check=_is_box)
            self.boxes = {i: tuple(float(v) for v in _row(table, i, self.root / "bounding_boxes.txt")) for i in self.ids}
        self.segmentations: list[Path | None] = []
        for i in self.ids:
            seg = (self.root / "segmentations" / paths[i][0]).with_suffix(".png")
            if mask_source == "segmentation":
                require(seg, "a segmentation mask (mask_source='segmentation')")
            self.segmentations.append(seg if mask_source != "bbox" and seg.exists() else None)
        check_images(self.image_paths, "an image listed in images.txt")
        check_images([seg for seg in self.segmentations if seg is not None], "a segmentation mask")

        self.labels = torch.tensor(
            [int(_row(labels, i, self.root / "image_class_labels.txt")[0]) - 1 for i in self.ids], dtype=torch.long
        )
        self.classes = self._class_names(names, paths, labels)

    def _class_table(self) -> dict[int, str]:
        """{class id: name} from classes.txt, or {} without it."""
        names_file = self.root / "classes.txt"
        if not names_file.exists():
            return {}
        table = _read_table(names_file, "'<id> <name>' lines with ids from 1", text=True)
        if 0 in table:
            raise DataError(f"{str(names_file)!r} has class id 0; expected '<id> <name>' lines with ids from 1")
        return {k: v[0] for k, v in table.items()}

    @staticmethod
    def _class_names(names: dict[int, str], paths: dict[int, list[str]], labels: dict[int, list[str]]) -> list[str]:
        """Names from classes.txt, else the class folder names ("001.Black_footed_Albatross")."""
        if not names:
            names = {int(labels[i][0]): Path(paths[i][0]).parent.name for i in paths if i in labels}
        count = max(max(names, default=0), max((int(v[0]) for v in labels.values()), default=0))
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
