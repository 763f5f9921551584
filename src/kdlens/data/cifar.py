"""CIFAR-10 and CIFAR-100 readers (the python version of the files); never downloads.

Krizhevsky, A., *Learning Multiple Layers of Features from Tiny Images*,
technical report, University of Toronto, 2009. 32x32 colour images: CIFAR-10
has 10 classes, 50,000 training and 10,000 test images; CIFAR-100 the same
counts in 100 fine classes grouped into 20 coarse ones.

Layout, under ``root`` (``root`` may also be that folder itself):

- ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5`` (train),
  ``test_batch``, ``batches.meta`` (``label_names``); labels under ``labels``.
- ``cifar-100-python/``: ``train``, ``test``, ``meta`` (``fine_label_names``,
  ``coarse_label_names``); labels under ``fine_labels`` / ``coarse_labels``
  (``label_kind``).

Each file is a pickled dict (Python 2's cPickle, protocol 2: its strings come
back as bytes with ``encoding="bytes"``, as the official loader reads them)
whose ``data`` is a uint8 array (N, 3072): per image 1024 red, 1024 green and
1024 blue values, each plane row-major, so ``row.reshape(3, 32, 32)[c, y, x]``
is channel c at row y, column x. All of a split is loaded once into a uint8
tensor (N, 3, 32, 32); ``__getitem__`` returns

    x = (p / 255 - mean_c) / std_c

with the standard per-channel statistics of the training images:
CIFAR-10 mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616)
(torchdistill's CIFAR-10 configs, github.com/yoshitomo-matsubara/torchdistill, to 4 digits);
CIFAR-100 mean (0.5071, 0.4867, 0.4408), std (0.2675, 0.2565, 0.2761)
(RepDistiller's ``dataset/cifar100.py``). ``image_size`` other than 32 resizes
each image bilinearly (``F.interpolate``, ``align_corners=False``,
antialiased when shrinking) before normalising.

CIFAR has no object masks: every sample's mask is all True and the datasets
say ``has_foreground_masks = False``, so an analysis can report that the
foreground/background split is unknown.

A pickle can run code when it is loaded; these files are data. They are read
with an unpickler that accepts only what the official files hold: dicts,
lists, strings, bytes, ints and numpy arrays of numbers (numpy's
``_reconstruct``, ``ndarray`` and ``dtype``; for copies written again by
Python 3, ``_codecs.encode`` with latin-1, its bytes at protocol 2, and
numpy's ``_frombuffer``, its arrays at protocol 5). Anything else it
would call is refused with a one-line :class:`~kdlens.errors.UsageError`
naming the file, before it runs. Missing files, arrays of another shape and
labels out of range are one-line errors naming the file and what was expected.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from kdlens.data.base import Sample
from kdlens.data.catalog import DATASETS
from kdlens.errors import DataError, MissingFileError, UsageError

SIDE = 32
PIXELS = 3 * SIDE * SIDE  # 3072 values a row
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
LABEL_KINDS = ("fine", "coarse")

_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's own _reconstruct, whatever module holds it


class _Refused(Exception):
    """A pickle asked for something a CIFAR file never holds."""


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise _Refused(f"numpy _reconstruct of {subtype!r}")
    return _NUMPY_RECONSTRUCT(subtype, shape, typecode)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """A numeric numpy dtype only (no object arrays, whose items would be unpickled as anything)."""
    name = spec.decode("ascii", "replace") if isinstance(spec, bytes) else spec
    if not isinstance(name, str):
        raise _Refused(f"numpy dtype {spec!r}")
    try:
        dtype = np.dtype(name, bool(align), bool(copy))
    except TypeError:
        raise _Refused(f"numpy dtype {name!r}") from None
    if dtype.kind not in "biuf":
        raise _Refused(f"numpy dtype {name!r}")
    return dtype


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's ``_frombuffer`` (its arrays at protocol 5), for a bytes buffer of a numeric dtype."""
    order = order.decode("ascii", "replace") if isinstance(order, bytes) else order
    if not (isinstance(buffer, (bytes, bytearray)) and isinstance(dtype, np.dtype) and dtype.kind in "biuf"
            and order in ("C", "F")):
        raise _Refused(f"numpy _frombuffer of {type(buffer).__name__}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _latin1(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 uses it for bytes at protocol 2, latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode with {encoding!r}")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    **{(module, "_reconstruct"): _reconstruct
       for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _frombuffer for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None


def load_pickle(path: Path, expected: str) -> dict[str, Any]:
    """The dict a CIFAR file holds, its keys as str, read without running code."""
    if not path.is_file():
        raise MissingFileError(f"{str(path)!r} does not exist; expected {expected}")
    try:
        with path.open("rb") as handle:
            content = _CifarUnpickler(handle, encoding="bytes").load()
    except _Refused as refused:
        raise UsageError(f"{str(path)!r} would call {refused} when unpickled; refused: a CIFAR file holds only "
                         "dicts, lists, strings, ints and numpy arrays of numbers") from None
    except Exception as error:  # truncated or not a pickle: whatever the unpickler met
        raise DataError(f"{str(path)!r} cannot be read as a pickle ({type(error).__name__}); expected {expected}") \
            from None
    if not isinstance(content, dict):
        raise DataError(f"{str(path)!r} holds a {type(content).__name__}; expected a dict, {expected}")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in content.items()}


def _entry(content: dict[str, Any], key: str, path: Path) -> Any:
    try:
        return content[key]
    except KeyError:
        raise DataError(f"{str(path)!r} has no {key!r} entry (it has {', '.join(sorted(content)) or 'none'}); "
                        f"expected {key!r}") from None


def _names(content: dict[str, Any], key: str, path: Path) -> list[str]:
    names = _entry(content, key, path)
    if not isinstance(names, list) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{str(path)!r}: {key!r} is not a list of names; expected a non-empty list of strings")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def _images(content: dict[str, Any], path: Path) -> np.ndarray:
    data = _entry(content, "data", path)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == PIXELS):
        shown = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{str(path)!r}: 'data' is a {shown}; expected a uint8 array (N, {PIXELS}), "
                        "one 3x32x32 image a row")
    return data


def _labels(content: dict[str, Any], key: str, path: Path, count: int, classes: int) -> np.ndarray:
    raw = _entry(content, key, path)
    integer = isinstance(raw, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
    integer = integer or (isinstance(raw, np.ndarray) and raw.ndim == 1 and raw.dtype.kind in "iu")
    if not integer or len(raw) != count:
        size = len(raw) if isinstance(raw, (list, np.ndarray)) else type(raw).__name__
        raise DataError(f"{str(path)!r}: {key!r} has {size} entries; expected a list of {count} integer labels, "
                        "one per row of 'data'")
    labels = np.asarray(raw, dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        raise DataError(f"{str(path)!r}: {key!r}[{int(bad[0])}] = {int(labels[bad[0]])}; expected labels in "
                        f"0..{classes - 1} ({classes} classes in the meta file)")
    return labels


class _Cifar(Dataset):
    """One split of a CIFAR dataset, held in memory as uint8 (N, 3, 32, 32)."""

    folder: str
    train_files: Sequence[str]
    test_files: Sequence[str]
    meta_file: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    has_foreground_masks = False

    def __init__(self, root: str | Path, split: str = "train", image_size: int = SIDE, *,
                 label_key: str, names_key: str) -> None:
        if split not in ("train", "test"):
            raise UsageError(f"split = {split!r}: expected 'train' or 'test'")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise UsageError(f"image_size = {image_size!r}: expected an integer >= 1 (CIFAR's own size is 32)")
        given = Path(root)
        self.root = given / self.folder if (given / self.folder).is_dir() else given
        self.split, self.image_size = split, image_size
        where = f"{self.folder}/ under {str(given)!r} or {str(given)!r} being that folder"
        meta_path = self.root / self.meta_file
        self.classes = _names(load_pickle(meta_path, f"the class names ({where})"), names_key, meta_path)
        images, labels = [], []
        for name in self.train_files if split == "train" else self.test_files:
            path = self.root / name
            content = load_pickle(path, f"a {split} batch ({where})")
            data = _images(content, path)
            images.append(data)
            labels.append(_labels(content, label_key, path, len(data), len(self.classes)))
        self.images = torch.from_numpy(np.concatenate(images).reshape(-1, 3, SIDE, SIDE))
        self.labels = torch.from_numpy(np.concatenate(labels))
        self._mean = torch.tensor(self.mean).view(3, 1, 1)
        self._std = torch.tensor(self.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        image = self.images[index].float() / 255.0
        if self.image_size != SIDE:
            image = F.interpolate(image[None], size=(self.image_size, self.image_size), mode="bilinear",
                                  align_corners=False, antialias=self.image_size < SIDE)[0]
        image = (image - self._mean) / self._std
        mask = torch.ones(self.image_size, self.image_size, dtype=torch.bool)  # CIFAR has no object masks
        return Sample(image, int(self.labels[index]), mask)


@DATASETS.register("cifar10")
class Cifar10(_Cifar):
    """CIFAR-10 from ``root`` (``cifar-10-batches-py/`` under it, or that folder)."""

    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{k}" for k in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    mean, std = CIFAR10_MEAN, CIFAR10_STD

    def __init__(self, root: str | Path, split: str = "train", image_size: int = SIDE) -> None:
        super().__init__(root, split, image_size, label_key="labels", names_key="label_names")


@DATASETS.register("cifar100")
class Cifar100(_Cifar):
    """CIFAR-100 from ``root`` (``cifar-100-python/`` under it, or that folder);
    ``label_kind`` "fine" (100 classes) or "coarse" (20 superclasses)."""

    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    mean, std = CIFAR100_MEAN, CIFAR100_STD

    def __init__(self, root: str | Path, split: str = "train", image_size: int = SIDE,
                 label_kind: str = "fine") -> None:
        if label_kind not in LABEL_KINDS:
            raise UsageError(f"label_kind = {label_kind!r}: expected one of {', '.join(LABEL_KINDS)}")
        self.label_kind = label_kind
        super().__init__(root, split, image_size, label_key=f"{label_kind}_labels",
                         names_key=f"{label_kind}_label_names")
