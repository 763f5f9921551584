"""CIFAR-10/100 readers on tiny fixtures written here in the official layout.

The official files are Python 2 cPickle dumps at protocol 2: a dict whose
strings are Python 2 ``str`` (``SHORT_BINSTRING`` / ``BINSTRING``, bytes under
``encoding="bytes"``), lists of ints, and the images as a numpy uint8 array
(``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``).
``py2_pickle`` writes exactly those opcodes; one test also reads copies that
Python 3 wrote again at protocols 2 and 5.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlens.builders import build_datasets
from kdlens.config import ConfigError, parse_config
from kdlens.data import DATASETS, Cifar10, Cifar100, denormalize
from kdlens.errors import DataError, MissingFileError, UsageError

NAMES10 = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def py2_pickle(obj) -> bytes:
    """``obj`` as Python 2's cPickle writes it at protocol 2 (bytes stand for Python 2 str)."""
    out = bytearray(b"\x80\x02")

    def integer(v: int) -> None:
        if 0 <= v < 256:
            out.extend(b"K" + bytes([v]))
        elif 0 <= v < 65536:
            out.extend(b"M" + struct.pack("<H", v))
        else:
            out.extend(b"J" + struct.pack("<i", v))

    def string(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<I", len(b)))
        out.extend(b)

    def put(o) -> None:
        if isinstance(o, bytes):
            string(o)
        elif isinstance(o, int):
            integer(o)
        elif isinstance(o, list):
            out.extend(b"]")
            if o:
                out.extend(b"(")
                for v in o:
                    put(v)
                out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                put(k)
                put(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray) and o.dtype == np.uint8:
            # _reconstruct(ndarray, (0,), 'b'), then BUILD with (1, shape, dtype('u1'), False, raw bytes)
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01(")
            for size in o.shape:
                integer(size)
            out.extend(b"tcnumpy\ndtype\nU\x02u1K\x00K\x01\x87R")  # dtype('u1', 0, 1), then its state:
            out.extend(b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89")
            string(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(o)

    put(obj)
    return bytes(out + b".")


def image_row(red=(), green=()) -> np.ndarray:
    """One CIFAR row (3072 uint8): black, 255 in the red plane at each (y, x) of ``red``, green likewise.
    Red (y, x) is value y * 32 + x of the row; green 1024 + y * 32 + x."""
    row = np.zeros(3072, dtype=np.uint8)
    for y, x in red:
        row[y * 32 + x] = 255
    for y, x in green:
        row[1024 + y * 32 + x] = 255
    return row


def write(path: Path, content: dict, style: str = "py2") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(py2_pickle(content) if style == "py2" else pickle.dumps(content, protocol=int(style)))


def batch(labels: list[int], rows: list[np.ndarray], label_key: bytes = b"labels", more: dict | None = None) -> dict:
    return {b"batch_label": b"a batch", label_key: labels, b"data": np.stack(rows),
            b"filenames": [b"img_%d.png" % k for k in range(len(labels))], **(more or {})}


def cifar10(root: Path, style: str = "py2") -> Path:
    """cifar-10-batches-py/ under ``root``: 5 train batches of 2 images (labels 2k, 2k + 1 in batch k + 1;
    image 0 of batch 1 has a red pixel at row 3, column 7 and a green one at row 30, column 1) and a test
    batch of 3 images (labels 9, 0, 4)."""
    folder = root / "cifar-10-batches-py"
    write(folder / "batches.meta", {b"num_cases_per_batch": 2, b"label_names": NAMES10, b"num_vis": 3072}, style)
    for k in range(5):
        first = image_row(red=[(3, 7)], green=[(30, 1)]) if k == 0 else image_row()
        write(folder / f"data_batch_{k + 1}", batch([2 * k, 2 * k + 1], [first, image_row()]), style)
    write(folder / "test_batch", batch([9, 0, 4], [image_row(), image_row(), image_row(green=[(0, 31)])]), style)
    return root


def cifar100(root: Path) -> Path:
    """cifar-100-python/ under ``root``: 5 fine classes in 2 coarse ones; train 4 images, test 2."""
    folder = root / "cifar-100-python"
    write(folder / "meta", {b"fine_label_names": [b"apple", b"bee", b"cloud", b"dolphin", b"elephant"],
                            b"coarse_label_names": [b"fruit", b"animal"]})
    for name, fine, coarse in [("train", [0, 1, 3, 4], [0, 1, 1, 1]), ("test", [2, 0], [1, 0])]:
        rows = [image_row(red=[(k, k)]) for k in range(len(fine))]
        write(folder / name, batch(fine, rows, label_key=b"fine_labels", more={b"coarse_labels": coarse}))
    return root


def test_the_fixture_holds_the_official_pickle_types(tmp_path):
    """The writer's output is what Python 2 wrote: the stock loader reads it, with only numpy's globals."""
    path = cifar10(tmp_path) / "cifar-10-batches-py" / "data_batch_1"
    blob = path.read_bytes()
    globals_ = [arg for op, arg, _ in pickletools.genops(blob) if op.name == "GLOBAL"]
    assert globals_ == ["numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"]
    assert {op.name for op, _, _ in pickletools.genops(blob)} >= {"PROTO", "SHORT_BINSTRING", "BINSTRING"}
    official = pickle.loads(blob, encoding="bytes")
    assert official[b"labels"] == [0, 1] and official[b"data"].dtype == np.uint8
    assert official[b"data"].shape == (2, 3072) and official[b"data"][0, 3 * 32 + 7] == 255


def test_cifar10_pixel_order_labels_names_and_splits(tmp_path):
    train, test = Cifar10(cifar10(tmp_path)), Cifar10(tmp_path, "test")
    assert len(train) == 10 and len(test) == 3
    assert train.labels.tolist() == list(range(10)) and test.labels.tolist() == [9, 0, 4]
    assert train.classes == [n.decode() for n in NAMES10]
    sample = train[0]
    assert sample.image.shape == (3, 32, 32) and sample.image.dtype == torch.float32 and sample.label == 0
    # red 255 at (3, 7): (1 - 0.4914) / 0.2470 = 2.0591; black in red: -0.4914 / 0.2470 = -1.9895
    assert sample.image[0, 3, 7].item() == pytest.approx(2.0591, abs=1e-4)
    assert sample.image[0, 7, 3].item() == pytest.approx(-1.9895, abs=1e-4)
    pixels = denormalize(sample.image, train.mean, train.std)
    expected = torch.zeros(3, 32, 32)
    expected[0, 3, 7] = 1.0  # the red pixel: channel 0, row 3, column 7
    expected[1, 30, 1] = 1.0  # the green one: channel 1, row 30, column 1
    assert torch.allclose(pixels, expected, atol=1e-5)
    assert denormalize(test[2].image, test.mean, test.std)[1, 0, 31].item() == pytest.approx(1.0, abs=1e-5)


def test_cifar_has_no_masks_and_says_so(tmp_path):
    dataset = Cifar10(cifar10(tmp_path))
    assert dataset.has_foreground_masks is False and Cifar100.has_foreground_masks is False
    mask = dataset[0].mask
    assert mask.shape == (32, 32) and mask.dtype == torch.bool and bool(mask.all())


def test_both_layouts_of_the_path(tmp_path):
    cifar10(tmp_path)
    parent, folder = Cifar10(tmp_path), Cifar10(tmp_path / "cifar-10-batches-py")
    assert torch.equal(parent.images, folder.images) and torch.equal(parent.labels, folder.labels)


def test_copies_written_again_by_python3_load_the_same(tmp_path):
    """Protocol 2 from Python 3 writes bytes through ``_codecs.encode``; protocol 5 arrays through ``_frombuffer``."""
    reference = Cifar10(cifar10(tmp_path / "py2"))
    for protocol in ("2", "5"):
        again = Cifar10(cifar10(tmp_path / protocol, style=protocol))
        assert torch.equal(again.images, reference.images) and again.classes == reference.classes


def test_image_size_resizes_bilinearly(tmp_path):
    root = tmp_path / "grey"
    cifar10(root)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    content = pickle.loads(path.read_bytes(), encoding="bytes")
    content[b"data"][:] = 51  # a flat grey stays flat under a bilinear resize: 51 / 255 = 0.2
    write(path, content)
    sample = Cifar10(root, image_size=48)[0]
    assert sample.image.shape == (3, 48, 48) and sample.mask.shape == (48, 48)
    # (0.2 - 0.4914) / 0.2470 = -1.1798 in the red channel everywhere
    assert torch.allclose(sample.image[0], torch.full((48, 48), -1.1798), atol=1e-4)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    cifar100(tmp_path)
    fine, coarse = Cifar100(tmp_path), Cifar100(tmp_path / "cifar-100-python", label_kind="coarse")
    assert fine.classes == ["apple", "bee", "cloud", "dolphin", "elephant"] and fine.labels.tolist() == [0, 1, 3, 4]
    assert coarse.classes == ["fruit", "animal"] and coarse.labels.tolist() == [0, 1, 1, 1]
    test = Cifar100(tmp_path, "test", label_kind="coarse")
    assert len(test) == 2 and test.labels.tolist() == [1, 0]
    # CIFAR-100's statistics (RepDistiller): red 255 at (1, 1) -> (1 - 0.5071) / 0.2675 = 1.8426
    assert fine[1].image[0, 1, 1].item() == pytest.approx(1.8426, abs=1e-4)
    with pytest.raises(UsageError, match="label_kind = 'medium'"):
        Cifar100(tmp_path, label_kind="medium")


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("file", ["batches.meta", "data_batch_3"])
def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path, file):
    root = cifar10(tmp_path / "data")
    marker = tmp_path / "ran"
    path = root / "cifar-10-batches-py" / file
    path.write_bytes(pickle.dumps({b"data": RunsCode(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(UsageError) as refused:
        Cifar10(root)
    message = str(refused.value)
    assert str(path) in message and "system" in message and "refused" in message and "\n" not in message
    assert not marker.exists()


def test_an_object_array_is_refused(tmp_path):
    """An array of dtype object would unpickle its items as anything: not a CIFAR array."""
    root = cifar10(tmp_path)
    path = root / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps({b"data": np.array([1, "x"], dtype=object), b"labels": [0]}, protocol=2))
    with pytest.raises(UsageError, match="would call numpy dtype 'O"):
        Cifar10(root, "test")


def test_missing_files_wrong_shapes_and_bad_labels_are_one_line_errors(tmp_path):
    root = cifar10(tmp_path)
    folder = root / "cifar-10-batches-py"
    (folder / "data_batch_4").unlink()
    with pytest.raises(MissingFileError, match="data_batch_4.*does not exist; expected a train batch"):
        Cifar10(root)
    Cifar10(root, "test")  # the test split needs only test_batch and the meta file

    write(folder / "data_batch_4", batch([0, 1], [np.zeros(3000, np.uint8)] * 2))
    with pytest.raises(DataError, match=r"data_batch_4.*uint8 array \(2, 3000\); expected a uint8 array \(N, 3072\)"):
        Cifar10(root)
    write(folder / "data_batch_4", batch([0, 10], [image_row()] * 2))
    with pytest.raises(DataError, match=r"data_batch_4.*'labels'\[1\] = 10; expected labels in 0\.\.9"):
        Cifar10(root)
    write(folder / "data_batch_4", batch([0], [image_row()] * 2))
    with pytest.raises(DataError, match="'labels' has 1 entries; expected a list of 2 integer labels"):
        Cifar10(root)
    (folder / "data_batch_4").write_bytes(py2_pickle(batch([0, 1], [image_row()] * 2))[:500])
    with pytest.raises(DataError, match="data_batch_4.*cannot be read as a pickle"):
        Cifar10(root)
    write(folder / "batches.meta", {b"names": NAMES10})
    with pytest.raises(DataError, match="batches.meta' has no 'label_names' entry"):
        Cifar10(root, "test")
    with pytest.raises(MissingFileError, match="batches.meta"):
        Cifar10(tmp_path / "elsewhere")


def test_the_config_section_validates_and_build_datasets_builds_it(tmp_path):
    cifar10(tmp_path / "ten")
    cifar100(tmp_path / "hundred")
    config = parse_config({"data": {"name": "cifar10", "path": str(tmp_path / "ten")}})
    assert config.data.image_size == 32 and config.data.augment == "none" and config.data.crop_padding == 4
    train, test = build_datasets(config)
    assert isinstance(train, Cifar10) and (len(train), len(test)) == (10, 3)
    config = parse_config({"data": {"name": "cifar100", "path": str(tmp_path / "hundred"), "label_kind": "coarse",
                                    "augment": "crop_flip"}})
    train, test = build_datasets(config)
    assert train.classes == ["fruit", "animal"] and test.labels.tolist() == [1, 0]
    assert set(DATASETS.names()) >= {"cifar10", "cifar100"}
    with pytest.raises(ConfigError, match="data.label_kind = 'medium'"):
        parse_config({"data": {"name": "cifar100", "path": str(tmp_path / "hundred"), "label_kind": "medium"}})
    with pytest.raises(ConfigError, match="unknown key 'data.label_kind'"):
        parse_config({"data": {"name": "cifar10", "path": str(tmp_path / "ten"), "label_kind": "fine"}})
    with pytest.raises(ConfigError, match="data.path"):
        parse_config({"data": {"name": "cifar10", "path": str(tmp_path / "nowhere")}})
