"""ModelNet40 reader ("modelnet40") with the knowledge-points paper's background points; never downloads.

Sample schema: :class:`~kdlens.data.base.Sample` with ``image`` the cloud,
float32 (num_points + background_points, 3), ``mask`` bool of the same length,
True on the object's points, and ``label`` the shape's class.

Two layouts are read, found under ``root`` (or one folder below it, under
the name each is distributed with):

* ``hdf5``: ``modelnet40_ply_hdf5_2048/`` with ``ply_data_train*.h5`` and
  ``ply_data_test*.h5`` (datasets ``data``, (S, P, 3) points, P = 2048 in the
  distributed files, and ``label``, (S,) or (S, 1) integer class ids counted
  from 0) and ``shape_names.txt`` (one class name a line, in class-id order).
  Files are read in the order of the number in their name.
* ``off``: ``ModelNet40/<class>/<train|test>/<name>.off`` meshes. Classes are
  the class folders in sorted order (the order of ``shape_names.txt``); each
  mesh's surface is sampled area-weighted with trimesh, ``num_points`` points
  from the seed ``(seed, split, index)``, the first time the shape is needed,
  and kept in memory. The header may be glued to the counts
  (``OFF490 518 0``), as in some ModelNet40 files.

``layout="auto"`` takes hdf5 when both are present (it is the faster). Each
cloud is put in the unit sphere (:func:`~kdlens.data.point_background.to_unit_sphere`)
and, for hdf5, ``num_points`` of its points are kept, a random subset drawn
from ``(seed, split, index)``. Background: as in the paper,
``background_points`` points from the union of ``background_clouds`` other
shapes of the same split, of classes other than the sample's, overlaid on
the object (see :mod:`kdlens.data.point_background`); the draw is seeded by
``(seed, split, index)``, so a sample's background is the same every epoch.

Checked when the dataset is built, each a one-line error naming the file: the
root (:class:`~kdlens.errors.MissingFileError`), a root with neither layout,
hdf5 keys, shapes, label dtype and range, non-finite points, and that every
.off file starts with an OFF header (:class:`~kdlens.errors.DataError`). The
body of an .off file is parsed when it is first sampled; a malformed one is a
DataError naming it then.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdlens.data.base import Sample
from kdlens.data.catalog import DATASETS
from kdlens.data.imageio import require
from kdlens.data.point_background import (
    BACKGROUND_CLOUDS,
    BACKGROUND_POINTS,
    IndexedPool,
    attach_background,
    unit_sphere,
)
from kdlens.errors import DataError, UsageError
from kdlens.seeding import derive_seed

LAYOUTS = ("auto", "hdf5", "off")
SPLITS = ("train", "test")
HDF5_FOLDER = "modelnet40_ply_hdf5_2048"
OFF_FOLDER = "ModelNet40"
EXPECTED_ROOT = (f"a ModelNet40 root holding either {HDF5_FOLDER}/ (ply_data_train*.h5, ply_data_test*.h5, "
                 f"shape_names.txt) or {OFF_FOLDER}/<class>/<train|test>/*.off")


def _number_in_name(path: Path) -> tuple[int, str]:
    """Sort key: ply_data_train2.h5 before ply_data_train10.h5."""
    digits = re.findall(r"\d+", path.stem)
    return (int(digits[-1]) if digits else -1, path.name)


def _hdf5_folder(root: Path) -> Path | None:
    for folder in (root, root / HDF5_FOLDER):
        if folder.is_dir() and any(folder.glob("ply_data_*.h5")):
            return folder
    return None


def _off_folder(root: Path) -> Path | None:
    for folder in (root, root / OFF_FOLDER):
        if folder.is_dir() and any(any(folder.glob(f"*/{split}/*.off")) for split in SPLITS):
            return folder
    return None


def read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (V, 3) float64, triangles (F, 3) int64) of an .off mesh;
    polygons are split into triangle fans. A one-line DataError for anything else."""
    try:
        lines = [line.split("#", 1)[0].strip() for line in path.read_text(errors="strict").splitlines()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{str(path)!r} cannot be read as text ({error}); expected an OFF mesh") from None
    lines = [line for line in lines if line]
    if not lines or not lines[0].startswith("OFF"):
        raise DataError(f"{str(path)!r} does not start with 'OFF'; expected an OFF mesh")
    header, body = lines[0][3:].split(), lines[1:]
    if not header:  # the usual layout: the counts on the next line
        header, body = (body[0].split() if body else []), body[1:]
    try:
        n_vertices, n_faces = int(header[0]), int(header[1])
    except (IndexError, ValueError):
        raise DataError(f"{str(path)!r}: OFF header {' '.join(header)!r}; expected '<vertices> <faces> <edges>'") from None
    if n_vertices < 3 or n_faces < 1 or len(body) < n_vertices + n_faces:
        raise DataError(f"{str(path)!r}: header says {n_vertices} vertices and {n_faces} faces, file has "
                        f"{len(body)} data lines; expected at least 3 vertices, 1 face and a line for each")
    try:
        vertices = _vertices(body[:n_vertices])
        triangles = _triangles(body[n_vertices:n_vertices + n_faces])
    except ValueError:
        raise DataError(f"{str(path)!r}: a vertex or face line is not numbers; expected 'x y z' vertex lines "
                        "and 'k i1 .. ik' face lines") from None
    if vertices.shape != (n_vertices, 3) or not np.isfinite(vertices).all():
        raise DataError(f"{str(path)!r}: vertex lines are not 3 finite numbers each; expected 'x y z'")
    if len(triangles) == 0 or triangles.min() < 0 or triangles.max() >= n_vertices:
        raise DataError(f"{str(path)!r}: face indices outside 0..{n_vertices - 1}; expected indices of listed vertices")
    return vertices, triangles


def _vertices(vertex_lines: list[str]) -> np.ndarray:
    """Vertex lines -> (V, 3); one numpy conversion when every line is 'x y z' (extra values are ignored)."""
    tokens = " ".join(vertex_lines).split()
    if len(tokens) == 3 * len(vertex_lines):
        return np.array(tokens, dtype=np.float64).reshape(-1, 3)
    return np.array([line.split()[:3] for line in vertex_lines], dtype=np.float64)


def _triangles(face_lines: list[str]) -> np.ndarray:
    """Face lines -> (F, 3) triangles; a fast path for the all-triangle files of ModelNet40."""
    tokens = " ".join(face_lines).split()
    if len(tokens) == 4 * len(face_lines):
        table = np.array(tokens, dtype=np.int64).reshape(-1, 4)
        if (table[:, 0] == 3).all():
            return table[:, 1:]
    result = []
    for line in face_lines:
        values = [int(v) for v in line.split()]
        count, corners = values[0], values[1:values[0] + 1]
        if count < 3 or len(corners) != count:
            raise ValueError(line)
        result.extend([corners[0], corners[k], corners[k + 1]] for k in range(1, count - 1))
    return np.array(result, dtype=np.int64).reshape(-1, 3)


@DATASETS.register("modelnet40")
class ModelNet40(Dataset):
    """ModelNet40 point clouds with attached background points (see the module docstring).

    Attributes: ``classes``, ``labels`` (long tensor), ``layout`` ("hdf5" or
    "off"), ``files`` (what was read), ``mean``/``std`` (identity, for the
    :class:`~kdlens.data.base.MaskedDataset` interface: points are not
    standardised per coordinate), ``modality`` ("points")."""

    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
    modality = "points"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_points: int = 1024,
        seed: int = 0,
        background_points: int = BACKGROUND_POINTS,
        background_clouds: int = BACKGROUND_CLOUDS,
        layout: str = "auto",
        shuffle: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise UsageError(f"split = {split!r}: expected 'train' or 'test'")
        if layout not in LAYOUTS:
            raise UsageError(f"layout = {layout!r}: expected one of {', '.join(LAYOUTS)}")
        for name, value, low in [("num_points", num_points, 1), ("background_points", background_points, 0),
                                 ("background_clouds", background_clouds, 1)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{name} = {value!r}: expected an integer >= {low}")
        self.root = require(Path(root), EXPECTED_ROOT)
        if not self.root.is_dir():
            raise DataError(f"{str(self.root)!r} is not a directory; expected {EXPECTED_ROOT}")
        self.split, self.num_points, self.seed, self.shuffle = split, num_points, seed, shuffle
        self.background_points, self.background_clouds = background_points, background_clouds

        hdf5 = _hdf5_folder(self.root) if layout in ("auto", "hdf5") else None
        off = _off_folder(self.root) if layout in ("auto", "off") and hdf5 is None else None
        if hdf5 is not None:
            self.layout = "hdf5"
            self._read_hdf5(hdf5)
        elif off is not None:
            self.layout = "off"
            self._list_off(off)
        else:
            wanted = EXPECTED_ROOT if layout == "auto" else f"the {layout} layout of {EXPECTED_ROOT}"
            raise DataError(f"{str(self.root)!r} holds no ModelNet40 files; expected {wanted}")
        if background_points > 0 and len(torch.unique(self.labels)) < 2:
            raise DataError(f"{str(self.files[0].parent)!r}: the {split} split holds shapes of one class only; "
                            "expected at least two classes to draw background clouds from (or background_points=0)")
        self._pool = IndexedPool(self.labels, self.object_cloud, len(self.classes))

    # --- hdf5 ---------------------------------------------------------------

    def _read_hdf5(self, folder: Path) -> None:
        import h5py

        names_file = require(folder / "shape_names.txt", "the class names, one a line, in class-id order")
        self.classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
        if not self.classes:
            raise DataError(f"{str(names_file)!r} lists no class; expected one class name a line")
        self.files = sorted(folder.glob(f"ply_data_{self.split}*.h5"), key=_number_in_name)
        if not self.files:
            raise DataError(f"{str(folder)!r} has no ply_data_{self.split}*.h5; expected the {self.split} files "
                            f"of {HDF5_FOLDER}")
        clouds, labels = [], []
        for path in self.files:  # every file checked before any points are read
            try:
                with h5py.File(path, "r") as f:
                    labels.append(self._check_hdf5(path, f))
            except OSError as error:
                raise DataError(f"{str(path)!r} cannot be read as HDF5 ({str(error).splitlines()[0]}); "
                                "expected an h5 file with datasets 'data' and 'label'") from None
        for path in self.files:
            with h5py.File(path, "r") as f:
                points = np.asarray(f["data"][:], dtype=np.float32)
            if not np.isfinite(points).all():
                bad = int(np.nonzero(~np.isfinite(points).all(axis=(1, 2)))[0][0])
                raise DataError(f"{str(path)!r}: shape {bad} of 'data' has non-finite coordinates; expected finite points")
            clouds.append(self._subsample(unit_sphere(points), sum(len(c) for c in clouds)))
        self.labels = torch.from_numpy(np.concatenate(labels)).long()
        self._clouds: list[Tensor | None] = list(torch.from_numpy(np.concatenate(clouds)))

    def _check_hdf5(self, path: Path, f) -> np.ndarray:
        """The labels of one file, after checking its keys and shapes; one-line DataErrors."""
        import h5py

        for key in ("data", "label"):
            if key not in f or not isinstance(f[key], h5py.Dataset):
                raise DataError(f"{str(path)!r} has no dataset {key!r}; expected datasets 'data' (S, P, 3) "
                                "and 'label' (S,) or (S, 1)")
        data, label = f["data"], f["label"]
        if data.ndim != 3 or data.shape[2] != 3 or data.shape[0] < 1 or data.shape[1] < 1:
            raise DataError(f"{str(path)!r}: 'data' has shape {data.shape}; expected (S, P, 3) with S, P >= 1")
        if data.dtype.kind not in "fiu":
            raise DataError(f"{str(path)!r}: 'data' has dtype {data.dtype}; expected numbers")
        if label.shape not in ((data.shape[0],), (data.shape[0], 1)):
            raise DataError(f"{str(path)!r}: 'label' has shape {label.shape}; expected ({data.shape[0]},) or "
                            f"({data.shape[0]}, 1), one label per shape of 'data'")
        if label.dtype.kind not in "iu":
            raise DataError(f"{str(path)!r}: 'label' has dtype {label.dtype}; expected integer class ids")
        if self.num_points > data.shape[1]:
            raise UsageError(f"num_points = {self.num_points}: {str(path)!r} has {data.shape[1]} points a shape; "
                             f"expected num_points <= {data.shape[1]}")
        values = np.asarray(label[:]).reshape(-1).astype(np.int64)
        bad = (values < 0) | (values >= len(self.classes))
        if bad.any():
            raise DataError(f"{str(path)!r}: label {int(values[bad][0])} of shape {int(np.argmax(bad))}; expected "
                            f"class ids in 0..{len(self.classes) - 1} (the lines of shape_names.txt)")
        return values

    def _subsample(self, clouds: np.ndarray, first_index: int) -> np.ndarray:
        """``num_points`` points of each cloud, a random subset seeded by the shape's index."""
        kept = np.empty((len(clouds), self.num_points, 3), dtype=np.float32)
        for k, cloud in enumerate(clouds):
            generator = torch.Generator().manual_seed(self._seed("subsample", first_index + k))
            kept[k] = cloud[torch.randperm(len(cloud), generator=generator)[: self.num_points].numpy()]
        return kept

    # --- off ----------------------------------------------------------------

    def _list_off(self, folder: Path) -> None:
        self.classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and any((d / s).is_dir() for s in SPLITS))
        self.files, labels = [], []
        for label, name in enumerate(self.classes):
            paths = sorted((folder / name / self.split).glob("*.off"))
            self.files += paths
            labels += [label] * len(paths)
        if not self.files:
            raise DataError(f"{str(folder)!r} has no <class>/{self.split}/*.off; expected the {self.split} "
                            f"meshes of {OFF_FOLDER}")
        for path in self.files:
            with open(path, "rb") as handle:
                head = handle.read(3)
            if head != b"OFF":
                raise DataError(f"{str(path)!r} does not start with 'OFF'; expected an OFF mesh")
        self.labels = torch.tensor(labels, dtype=torch.long)
        self._clouds = [None] * len(self.files)

    def _sample_mesh(self, index: int) -> Tensor:
        import trimesh

        path = self.files[index]
        vertices, triangles = read_off(path)
        mesh = trimesh.Trimesh(vertices=vertices, faces=triangles, process=False)
        if not math.isfinite(mesh.area) or mesh.area <= 0:
            raise DataError(f"{str(path)!r}: the mesh has no surface area; expected faces that are not degenerate")
        rng = np.random.default_rng(self._seed("surface", index))
        points, _ = trimesh.sample.sample_surface(mesh, self.num_points, seed=rng)
        return torch.from_numpy(unit_sphere(np.asarray(points, dtype=np.float64)).astype(np.float32))

    # --- samples ------------------------------------------------------------

    def _seed(self, purpose: str, index: int) -> int:
        return derive_seed(self.seed, "modelnet40", self.split, purpose, index)

    def object_cloud(self, index: int) -> Tensor:
        """Shape ``index`` alone: float32 (num_points, 3) in the unit sphere."""
        cloud = self._clouds[index]
        if cloud is None:
            cloud = self._clouds[index] = self._sample_mesh(index)
        return cloud

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]  # an IndexError past the end, and one seed per sample
        label = int(self.labels[index])
        generator = torch.Generator().manual_seed(self._seed("background", index))
        result = attach_background(self.object_cloud(index), label, self._pool, generator,
                                   self.background_points, self.background_clouds, self.shuffle)
        return Sample(result.points, label, result.mask)
