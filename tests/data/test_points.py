"""Point-cloud data: the paper's background construction, the synthetic
"point_shapes" dataset and the ModelNet40 reader (on tiny hdf5 and .off
fixtures written here)."""

import h5py
import numpy as np
import pytest
import torch

from kdlens.data import DATASETS, ModelNet40, PointShapes, Sample, fraction_subset
from kdlens.data.modelnet import read_off
from kdlens.data.point_background import (
    GeneratedPool,
    IndexedPool,
    attach_background,
    draw_indices,
    merge_background,
    to_unit_sphere,
)
from kdlens.data.point_shapes import FAMILY_NAMES, shape_cloud
from kdlens.errors import DataError, MissingFileError, UsageError

# --- background construction ----------------------------------------------


def tagged_pool(labels, size=200):
    """An IndexedPool whose cloud i has every x coordinate equal to 10 + its class,
    so a background point's class can be read off the point itself."""
    labels = torch.tensor(labels)

    def cloud(i):
        points = torch.rand(size, 3, generator=torch.Generator().manual_seed(i))
        points[:, 0] = 10 + int(labels[i])
        return points

    return IndexedPool(labels, cloud, int(labels.max()) + 1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("label", [0, 1, 3])
def test_background_counts_mask_and_never_the_own_class(label):
    pool = tagged_pool([0, 0, 1, 1, 2, 2, 3, 3, 3])
    obj = torch.rand(300, 3)
    out = attach_background(obj, label, pool, gen())
    assert out.points.shape == (800, 3) and out.points.dtype == torch.float32
    assert out.mask.shape == (800,) and out.mask.dtype == torch.bool and int(out.mask.sum()) == 300
    assert len(out.classes) == 5 and label not in out.classes
    tags = out.points[~out.mask, 0] - 10
    assert set(tags.long().tolist()) <= set(out.classes)  # every background point is from a drawn cloud
    assert torch.equal(out.point_classes(label)[~out.mask], tags.long())
    # the object's points are all there, unchanged, in the mask's rows
    assert torch.equal(torch.sort(out.points[out.mask], dim=0).values, torch.sort(obj, dim=0).values)


def test_background_is_deterministic_from_the_generator():
    pool = tagged_pool([0, 1, 1, 2, 2, 2, 3])
    obj = torch.rand(50, 3)
    first, again = attach_background(obj, 1, pool, gen(7)), attach_background(obj, 1, pool, gen(7))
    other = attach_background(obj, 1, pool, gen(8))
    assert torch.equal(first.points, again.points) and torch.equal(first.mask, again.mask)
    assert first.classes == again.classes
    assert not torch.equal(first.points, other.points)


def test_unshuffled_background_follows_the_object_and_distinct_pool_members():
    pool = tagged_pool([0, 1, 2, 3, 4, 5, 6])  # one cloud per class: five distinct clouds means five classes
    obj = torch.rand(20, 3)
    out = attach_background(obj, 0, pool, gen(), num_points=30, shuffle=False)
    assert torch.equal(out.points[:20], obj) and out.mask[:20].all() and not out.mask[20:].any()
    assert len(set(out.classes)) == 5 and 0 not in out.classes


def test_small_unions_use_every_point_before_repeating_and_zero_disables():
    assert sorted(draw_indices(4, 10, gen())[:8].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    obj = torch.rand(10, 3)
    out = merge_background(obj, [(torch.rand(3, 3), 1), (torch.rand(4, 3), 2)], gen(), num_points=14)
    assert out.points.shape == (24, 3) and int(out.mask.sum()) == 10
    assert torch.bincount(out.source[~out.mask], minlength=2).tolist() == [6, 8]  # each of 7 points twice
    none = attach_background(obj, 0, tagged_pool([0, 1]), gen(), num_points=0)
    assert none.points.shape == (10, 3) and none.mask.all() and none.classes == ()


def test_generated_pool_draws_other_classes_with_replacement():
    made = []
    pool = GeneratedPool(3, lambda c, g: made.append(c) or torch.full((100, 3), float(c)))
    out = attach_background(torch.rand(8, 3), 2, pool, gen())
    assert set(out.classes) <= {0, 1} and made == list(out.classes)


@pytest.mark.parametrize("call, message", [
    (lambda: attach_background(torch.rand(5, 3), 0, tagged_pool([0, 0]), gen()), "no class other than label 0"),
    (lambda: attach_background(torch.rand(5, 2), 0, tagged_pool([0, 1]), gen()), "expected (N, 3)"),
    (lambda: attach_background(torch.rand(5, 3), 4, tagged_pool([0, 1]), gen()), "label = 4"),
    (lambda: attach_background(torch.rand(5, 3), 0, tagged_pool([0, 1]), gen(), num_points=-1), "num_points = -1"),
    (lambda: attach_background(torch.rand(5, 3), 0, IndexedPool(torch.tensor([0, 0]), None, 3), gen()),
     "none of classes [1, 2]"),
])
def test_background_refuses_bad_arguments_in_one_line(call, message):
    with pytest.raises(UsageError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_unit_sphere():
    cloud = to_unit_sphere(torch.randn(100, 3) * 5 + 3)
    assert torch.allclose(cloud.mean(0), torch.zeros(3), atol=1e-5)
    assert abs(float(cloud.norm(dim=1).max()) - 1) < 1e-5


# --- the synthetic dataset ------------------------------------------------


def shapes(**kwargs) -> PointShapes:
    return PointShapes(**{"num_samples": 20, "num_points": 128, "num_classes": 5, **kwargs})


def test_point_shapes_samples_and_attributes():
    data = shapes()
    assert len(data) == 20 and data.classes == list(FAMILY_NAMES[:5]) and data.modality == "points"
    assert data.mean == (0.0, 0.0, 0.0) and data.std == (1.0, 1.0, 1.0)
    sample = data[7]
    assert isinstance(sample, Sample) and sample.label == 7 % 5
    assert sample.image.shape == (628, 3) and sample.image.dtype == torch.float32
    assert sample.mask.shape == (628,) and sample.mask.dtype == torch.bool
    assert data.masks.sum(1).eq(128).all() and data.labels.tolist() == [i % 5 for i in range(20)]
    assert torch.isfinite(data.points).all() and float(data.points.norm(dim=2).max()) <= 1 + 1e-5
    object_points = data.points[data.masks].view(20, 128, 3)  # each object cloud is in the unit sphere
    assert torch.allclose(object_points.norm(dim=2).amax(1), torch.ones(20), atol=1e-5)
    assert isinstance(DATASETS.build("point_shapes", split="test", num_samples=3, num_points=16), PointShapes)


def test_point_shapes_is_deterministic_and_split_dependent():
    a, b = shapes(seed=3), shapes(seed=3)
    assert torch.equal(a.points, b.points) and torch.equal(a.masks, b.masks)
    info = a.generate(11)
    assert torch.equal(info.points, a.points[11]) and torch.equal(info.mask, a.masks[11])
    assert not torch.equal(a.points, shapes(seed=4).points)
    assert not torch.equal(a.points, shapes(seed=3, split="test").points)


def test_cue_object_labels_the_object_and_background_is_other_classes():
    data = shapes(num_samples=30)
    assert torch.equal(data.object_families, data.labels)
    assert data.background_families.shape == (30, 5)
    assert (data.background_families != data.labels[:, None]).all()
    assert (data.background_families < 5).all()


def test_cue_background_ties_the_background_to_the_label_and_not_the_object():
    data = shapes(num_samples=40, cue="background")
    assert (data.background_families == data.labels[:, None]).all()
    assert not torch.equal(data.object_families, data.labels)
    for label in range(5):  # the object's family varies within a label
        assert len(set(data.object_families[data.labels == label].tolist())) > 1
    assert data.masks.sum(1).eq(128).all()


def test_background_can_be_disabled_and_every_family_is_a_cloud():
    data = shapes(num_samples=12, num_classes=12, background_points=0)
    assert data.points.shape == (12, 128, 3) and data.masks.all() and data.background_families.shape == (12, 0)
    rng = np.random.default_rng(0)
    clouds = [shape_cloud(f, 200, rng) for f in range(len(FAMILY_NAMES))]
    assert all(c.shape == (200, 3) and torch.isfinite(c).all() for c in clouds)


def test_up_rotation_keeps_shapes_upright():
    cube = FAMILY_NAMES.index("cube")

    def top_face_share(rotation):
        cloud = shape_cloud(cube, 600, np.random.default_rng(1), noise=0.0, rotation=rotation)
        return float((cloud[:, 2] > cloud[:, 2].max() - 1e-5).float().mean())

    assert 0.1 < top_face_share("up") < 0.25  # one face of six stays horizontal
    assert top_face_share("free") < 0.01
    assert shapes(num_samples=2, rotation="free").rotation == "free"


def test_point_shapes_work_with_the_student_fraction():
    data = shapes()
    subset = fraction_subset(data, 0.1, seed=0)
    assert len(subset) == 2 and subset[0].image.shape == (628, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": 1}, "num_classes = 1"),
    ({"num_classes": 13}, "num_classes = 13"),
    ({"num_points": 0}, "num_points = 0"),
    ({"background_points": -1}, "background_points = -1"),
    ({"background_clouds": 0}, "background_clouds = 0"),
    ({"noise": float("nan")}, "noise = nan"),
    ({"cue": "colour"}, "cue = 'colour'"),
    ({"split": "val"}, "split = 'val'"),
    ({"rotation": "tilt"}, "rotation = 'tilt'"),
    ({"cue": "background", "background_points": 0}, "background_points = 0"),
])
def test_point_shapes_refuses_bad_arguments_in_one_line(kwargs, message):
    with pytest.raises(UsageError) as error:
        shapes(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


# --- ModelNet40: hdf5 layout ------------------------------------------------

NAMES = ["airplane", "bathtub", "bed"]


def nearest(points, reference):
    """Distance from each point to its nearest reference point (exact, not cdist's fast matmul form)."""
    return (points[:, None, :] - reference[None]).norm(dim=2).amin(1)


def write_h5(path, data, labels):
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.asarray(data, dtype=np.float32))
        f.create_dataset("label", data=np.asarray(labels, dtype=np.uint8))


@pytest.fixture
def h5_root(tmp_path):
    """3 classes; train: files 0 (6 shapes) and 1 (3 shapes), test: 3 shapes; 64 points a shape."""
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    folder.mkdir()
    (folder / "shape_names.txt").write_text("\n".join(NAMES) + "\n")
    rng = np.random.default_rng(0)
    write_h5(folder / "ply_data_train0.h5", rng.normal(size=(6, 64, 3)) * 3 + 2, [[0], [1], [2], [0], [1], [2]])
    write_h5(folder / "ply_data_train1.h5", rng.normal(size=(3, 64, 3)), [[2], [2], [0]])
    write_h5(folder / "ply_data_test0.h5", rng.normal(size=(3, 64, 3)), [0, 1, 2])  # (S,) labels work too
    return tmp_path


def test_modelnet_hdf5_reads_both_splits_with_background(h5_root):
    train = ModelNet40(h5_root, "train", num_points=32, background_points=40, background_clouds=2)
    test = DATASETS.build("modelnet40", root=h5_root, split="test", num_points=32)
    assert train.layout == "hdf5" and train.classes == NAMES and train.modality == "points"
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2, 2, 2, 0] and test.labels.tolist() == [0, 1, 2]
    clouds = torch.stack([train.object_cloud(i) for i in range(len(train))])
    assert clouds.shape == (9, 32, 3)
    assert float(clouds.norm(dim=2).max()) <= 1 + 1e-5  # the whole shape was normalised, then subsampled
    for index in range(len(train)):
        points, label, mask = train[index]
        assert points.shape == (72, 3) and points.dtype == torch.float32 and int(mask.sum()) == 32
        others = torch.cat([clouds[j] for j in range(9) if train.labels[j] != label])
        # every background point is a point of a shape of another class
        assert (nearest(points[~mask], others) < 1e-6).all()
        assert torch.equal(torch.sort(points[mask], 0).values, torch.sort(clouds[index], 0).values)
    assert test[2].image.shape == (532, 3)  # defaults: 500 background points, drawn cyclically here
    again = ModelNet40(h5_root, "train", num_points=32, background_points=40, background_clouds=2)
    assert all(torch.equal(again[i].image, train[i].image) for i in range(9))
    half = fraction_subset(train, 0.5, seed=0)
    assert len(half) == 4 and half[0].image.shape == (72, 3)  # round(4.5) == 4


def test_modelnet_hdf5_subsamples_real_points(h5_root):
    data = ModelNet40(h5_root, "test", num_points=16)
    with h5py.File(h5_root / "modelnet40_ply_hdf5_2048" / "ply_data_test0.h5") as f:
        full = to_unit_sphere(torch.from_numpy(f["data"][1]))
    assert (nearest(data.object_cloud(1), full) < 1e-5).all()


@pytest.mark.parametrize("breakage, error, message", [
    (lambda f: write_h5(f / "ply_data_train0.h5", np.zeros((2, 8, 2)), [0, 1]), DataError, "'data' has shape (2, 8, 2)"),
    (lambda f: write_h5(f / "ply_data_train0.h5", np.zeros((2, 8, 3)), [0, 3]), DataError, "label 3 of shape 1"),
    (lambda f: write_h5(f / "ply_data_train0.h5", np.zeros((2, 8, 3)), [0, 1, 1]), DataError, "'label' has shape (3,)"),
    (lambda f: write_h5(f / "ply_data_train0.h5", np.full((2, 8, 3), np.nan), [0, 1]), DataError, "non-finite"),
    (lambda f: (f / "ply_data_train0.h5").write_text("not hdf5"), DataError, "cannot be read as HDF5"),
    (lambda f: (f / "shape_names.txt").unlink(), MissingFileError, "shape_names.txt"),
    (lambda f: [p.unlink() for p in f.glob("ply_data_train*")], DataError, "no ply_data_train*.h5"),
])
def test_modelnet_hdf5_refuses_bad_files_in_one_line(h5_root, breakage, error, message):
    folder = h5_root / "modelnet40_ply_hdf5_2048"
    breakage(folder)
    with pytest.raises(error) as caught:
        ModelNet40(h5_root, "train", num_points=8)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_modelnet_needs_two_classes_for_background(h5_root):
    write_h5(h5_root / "modelnet40_ply_hdf5_2048" / "ply_data_test0.h5", np.ones((2, 8, 3)), [1, 1])
    with pytest.raises(DataError, match="one class only"):
        ModelNet40(h5_root, "test", num_points=8)
    assert ModelNet40(h5_root, "test", num_points=8, background_points=0)[1].mask.all()


def test_modelnet_hdf5_missing_key_and_too_many_points(h5_root):
    path = h5_root / "modelnet40_ply_hdf5_2048" / "ply_data_train1.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((2, 8, 3), dtype=np.float32))
    with pytest.raises(DataError, match="has no dataset 'label'"):
        ModelNet40(h5_root, "train", num_points=8)
    with pytest.raises(UsageError, match="num_points = 65"):
        ModelNet40(h5_root, "test", num_points=65)


# --- ModelNet40: .off layout ------------------------------------------------

CUBE_QUADS = """OFF
# a unit cube with square faces
8 6 0
-1 -1 -1
1 -1 -1
1 1 -1
-1 1 -1
-1 -1 1
1 -1 1
1 1 1
-1 1 1
4 0 3 2 1
4 4 5 6 7
4 0 1 5 4
4 2 3 7 6
4 1 2 6 5
4 0 4 7 3
"""
TETRA_GLUED = "OFF4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 2 1\n3 0 1 3\n3 0 3 2\n3 1 2 3\n"


@pytest.fixture
def off_root(tmp_path):
    """ModelNet40/{cube,tetra}/{train,test}: train has 2 cubes and 2 tetrahedra, test one of each."""
    for name, text in [("cube", CUBE_QUADS), ("tetra", TETRA_GLUED)]:
        for split, count in [("train", 2), ("test", 1)]:
            folder = tmp_path / "ModelNet40" / name / split
            folder.mkdir(parents=True)
            for k in range(count):
                (folder / f"{name}_{k:04d}.off").write_text(text)
    return tmp_path


def test_modelnet_off_samples_surfaces(off_root):
    train = ModelNet40(off_root, "train", num_points=50, background_points=30, background_clouds=2)
    assert train.layout == "off" and train.classes == ["cube", "tetra"] and train.labels.tolist() == [0, 0, 1, 1]
    points, label, mask = train[3]
    assert points.shape == (80, 3) and int(mask.sum()) == 50 and label == 1
    cube = train.object_cloud(0)  # a centred cube sample: points on its faces, |coordinate| max per point equal-ish
    assert abs(float(cube.norm(dim=1).max()) - 1) < 1e-5
    side = cube.abs().amax(1)
    assert float(side.max() - side.min()) < 0.3  # all near one face distance (the centroid is only near 0)
    tetra = torch.cat([train.object_cloud(2), train.object_cloud(3)])
    # background of a tetrahedron sample: cube points only
    assert (nearest(points[~mask], tetra) > 1e-4).all()
    again = ModelNet40(off_root, "train", num_points=50, background_points=30, background_clouds=2)
    assert torch.equal(again[3].image, points) and not torch.equal(train.object_cloud(0), train.object_cloud(1))
    assert len(ModelNet40(off_root / "ModelNet40", "test", num_points=10)) == 2


def test_read_off_triangulates_polygons_and_reads_glued_headers(off_root):
    vertices, triangles = read_off(off_root / "ModelNet40" / "cube" / "train" / "cube_0000.off")
    assert vertices.shape == (8, 3) and triangles.shape == (12, 3)
    vertices, triangles = read_off(off_root / "ModelNet40" / "tetra" / "test" / "tetra_0000.off")
    assert vertices.shape == (4, 3) and triangles.shape == (4, 3)


def test_auto_layout_prefers_hdf5_and_layout_can_be_forced(h5_root, off_root):
    # both fixtures live in pytest's one tmp_path
    assert ModelNet40(h5_root, "test", num_points=8).layout == "hdf5"
    assert ModelNet40(h5_root, "test", num_points=8, layout="off").layout == "off"


@pytest.mark.parametrize("text, message", [
    ("PLY\n", "does not start with 'OFF'"),
    ("OFF\n4 1 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 9\n", "face indices outside 0..3"),
    ("OFF\n4 2 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n", "expected at least 3 vertices, 1 face and a line for each"),
    ("OFF\n3 1 0\n0 0 0\n1 0 0\n2 0 0\n3 0 1 2\n", "no surface area"),
    ("OFF\nx y z\n", "OFF header 'x y z'"),
])
def test_modelnet_off_refuses_bad_meshes_in_one_line(off_root, text, message):
    (off_root / "ModelNet40" / "tetra" / "train" / "tetra_0001.off").write_text(text)
    with pytest.raises(DataError) as caught:
        data = ModelNet40(off_root, "train", num_points=10)
        data.object_cloud(3)
    assert message in str(caught.value) and "tetra_0001.off" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_modelnet_refuses_bad_roots_in_one_line(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        ModelNet40(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as caught:
        ModelNet40(tmp_path / "empty")
    assert "holds no ModelNet40 files" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UsageError, match="layout = 'ply'"):
        ModelNet40(tmp_path / "empty", layout="ply")
    with pytest.raises(UsageError, match="split = 'val'"):
        ModelNet40(tmp_path / "empty", split="val")


def test_families_sample_their_own_surfaces():
    rng, n = np.random.default_rng(0), 2000
    from kdlens.data.point_shapes import FAMILIES

    def radial(p):
        return np.hypot(p[:, 0], p[:, 1])

    sphere, cube, cylinder = FAMILIES["sphere"](n, rng), FAMILIES["cube"](n, rng), FAMILIES["cylinder"](n, rng)
    torus, octahedron = FAMILIES["torus"](n, rng), FAMILIES["octahedron"](n, rng)
    assert np.allclose(np.linalg.norm(sphere, axis=1), 1)
    assert np.allclose(np.abs(cube).max(1), 1)
    on_side, on_cap = np.isclose(radial(cylinder), 1), np.isclose(np.abs(cylinder[:, 2]), 1)
    assert (on_side | on_cap).all() and abs(on_cap.mean() - 1 / 3) < 0.05  # caps hold 2 pi of 6 pi of area
    assert np.allclose((radial(torus) - 1) ** 2 + torus[:, 2] ** 2, 0.35**2)
    assert abs((radial(torus) > 1).mean() - (0.5 + 0.35 / np.pi)) < 0.05  # the outer half has more area
    assert np.allclose(np.abs(octahedron).sum(1), 1)
