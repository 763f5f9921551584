"""Issue 12, runtime hardening: a diverging run stops with its last good
checkpoint the latest; unreadable images and bad CUB label files are one-line
DataErrors naming the file; information discarding refuses empty, non-finite
or out-of-range arguments and gives the same answer whatever its chunk size."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from kdlens.config import OptimConfig
from kdlens.data import CubDataset, MaskedImageFolder
from kdlens.data.base import Sample
from kdlens.data.synthetic import SyntheticShapes
from kdlens.explain import grid_units, information_discarding, knowledge_points
from kdlens.explain.analyze import AnalysisSettings
from kdlens.explain.knowledge_points import PointRule
from kdlens.errors import DataError, TrainingDiverged, UsageError
from kdlens.models import build_model
from kdlens.store import CheckpointStore
from kdlens.train.loop import Phase, train_phases
from kdlens.train.mutual import MutualPair, train_mutually

# the CUB and folder fixtures of tests/data/test_readers.py (6 and 5 tiny images)
_spec = importlib.util.spec_from_file_location("reader_fixtures", Path(__file__).parent / "data" / "test_readers.py")
_readers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_readers)
cub_root, folder_root = _readers.cub_root, _readers.folder_root

CPU = torch.device("cpu")


# --- 1. a diverging run stops; the last good checkpoint stays the latest ---------------------------------


class TinySet(Dataset):
    """``n`` random 3x8x8 images in 4 classes."""

    def __init__(self, n: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, 8, 8, generator=generator)
        self.labels = torch.randint(0, 4, (n,), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return Sample(self.images[index], int(self.labels[index]), torch.ones(8, 8, dtype=torch.bool))


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))


def all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_a_non_finite_objective_stops_the_run_and_keeps_the_epoch_before(tmp_path):
    model = tiny_model()
    calls = []

    def objective(images, labels):  # 2 batches an epoch: call 3 is epoch 2, batch 1
        calls.append(1)
        loss = nn.functional.cross_entropy(model(images), labels)
        return loss * math.nan if len(calls) == 3 else loss

    store = CheckpointStore(tmp_path / "teacher")
    phase = Phase("train", OptimConfig(epochs=3, batch_size=16, lr=0.05), [model], objective)
    with pytest.raises(TrainingDiverged) as error:
        train_phases(model, [phase], TinySet(), TinySet(16, seed=1), store, seed=1, role="teacher", device=CPU,
                     progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert "teacher" in message and "epoch 2" in message and "train phase" in message and "nan" in message
    assert "epoch 1 stays the latest" in message
    assert store.latest() == 1
    assert all_finite(store.load(1)["model"])
    assert [row["epoch"] for row in json.loads((store.directory / "history.json").read_text())] == [0, 1]


def test_an_exploding_learning_rate_never_checkpoints_a_diverged_epoch(tmp_path):
    model = tiny_model()

    def objective(images, labels):
        return nn.functional.cross_entropy(model(images), labels)

    store = CheckpointStore(tmp_path / "teacher")
    phase = Phase("train", OptimConfig(epochs=3, batch_size=16, lr=1e30), [model], objective)
    with pytest.raises(TrainingDiverged, match="teacher diverged in epoch"):
        train_phases(model, [phase], TinySet(), TinySet(16, seed=1), store, seed=1, role="teacher", device=CPU,
                     progress=False)
    assert store.latest() is not None and store.latest() < 3
    assert all(all_finite(state["model"]) for _, state in store)


def test_weights_that_stop_being_finite_are_caught_before_the_checkpoint(tmp_path):
    """A finite loss whose gradient is not finite: the loss check cannot see it, the weight check does."""
    model = tiny_model()

    def objective(images, labels):
        return nn.functional.cross_entropy(model(images), labels)

    def poisoned_backward(loss, params):
        loss.backward()
        params[0].grad.fill_(math.inf)
        return loss.detach()

    store = CheckpointStore(tmp_path / "baseline")
    phase = Phase("train", OptimConfig(epochs=2, batch_size=32, lr=0.05), [model], objective,
                  backward=poisoned_backward)  # one batch an epoch
    with pytest.raises(TrainingDiverged, match=r"model\.1\.weight is not finite") as error:
        train_phases(model, [phase], TinySet(), TinySet(16, seed=1), store, seed=1, role="baseline", device=CPU,
                     progress=False)
    assert "epoch 1" in str(error.value)
    assert store.epochs() == [0]


def test_mutual_learning_stops_on_a_non_finite_loss(tmp_path):
    torch.manual_seed(0)
    pair = MutualPair(build_model("vgg11", num_classes=4, image_size=32, width=0.125),
                      build_model("vgg11", num_classes=4, image_size=32, width=0.125), "dml")
    original, calls = pair.loss, []

    def loss(k, images, labels):  # 2 batches x 2 networks an epoch: call 5 is epoch 2, batch 1, net1
        calls.append(k)
        value, terms = original(k, images, labels)
        return (value * math.nan if len(calls) == 5 else value), terms

    pair.loss = loss
    train = SyntheticShapes(split="train", num_samples=32, image_size=32, num_classes=4, seed=0)
    test = SyntheticShapes(split="test", num_samples=8, image_size=32, num_classes=4, seed=0)
    store = CheckpointStore(tmp_path / "dml")
    with pytest.raises(TrainingDiverged) as error:
        train_mutually(pair, train, test, store, OptimConfig(epochs=3, batch_size=16, lr=0.05), seed=3,
                       role="dml", device=CPU, progress=False)
    message = str(error.value)
    assert "\n" not in message and "dml diverged in epoch 2" in message and "net1" in message
    assert store.latest() == 1


# --- 2. unreadable images and bad label files -------------------------------------------------------------


def test_cub_refuses_a_file_that_is_not_an_image_when_built(cub_root):
    (cub_root / "images" / "001.Red_bird" / "bird_2.jpg").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="bird_2.jpg") as error:
        CubDataset(cub_root, image_size=40)
    assert "\n" not in str(error.value)


def test_cub_names_an_image_whose_data_is_cut_off_when_it_is_loaded(cub_root):
    path = cub_root / "images" / "002.Blue_bird" / "bird_4.jpg"
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # the header is intact: passes the check at construction
    train = CubDataset(cub_root, image_size=40)
    assert train[0].image.shape == (3, 40, 40)
    with pytest.raises(DataError, match="bird_4.jpg.*truncated"):
        train[2]


@pytest.mark.parametrize("line, expected", [
    ("2 0", r"image_class_labels.txt' line 2: '2 0'; expected '<id> <class id, 1-based>'"),
    ("2 -1", r"line 2: '2 -1'"),
    ("2 two", r"line 2: '2 two'"),
    ("2 1 1", r"line 2: '2 1 1'"),
])
def test_cub_refuses_bad_class_ids_when_it_reads_them(cub_root, line, expected):
    lines = (cub_root / "image_class_labels.txt").read_text().splitlines()
    lines[1] = line
    (cub_root / "image_class_labels.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=expected):
        CubDataset(cub_root, image_size=40)


def test_cub_class_ids_must_be_in_the_class_list(cub_root):
    (cub_root / "classes.txt").write_text("1 Red bird\n2 Blue bird\n")
    (cub_root / "image_class_labels.txt").write_text("1 1\n2 1\n3 1\n4 2\n5 3\n6 2\n")
    with pytest.raises(DataError, match=r"line 5: '5 3'; expected '<id> <class id 1\.\.2>'"):
        CubDataset(cub_root, image_size=40)


def test_cub_refuses_other_malformed_metadata(cub_root):
    boxes = (cub_root / "bounding_boxes.txt").read_text()
    (cub_root / "bounding_boxes.txt").write_text(boxes.replace("3 10.0 5.0 20.0 10.0", "3 10.0 5.0 20.0"))
    with pytest.raises(DataError, match="bounding_boxes.txt' line 3"):
        CubDataset(cub_root, mask_source="bbox")
    (cub_root / "bounding_boxes.txt").write_text(boxes.replace("3 10.0 5.0 20.0 10.0", "3 10.0 5.0 nan 10.0"))
    with pytest.raises(DataError, match="bounding_boxes.txt' line 3"):
        CubDataset(cub_root, mask_source="bbox")
    (cub_root / "bounding_boxes.txt").write_text(boxes)
    (cub_root / "train_test_split.txt").write_text("1 1\n2 1\n3 2\n4 1\n5 1\n6 0\n")
    with pytest.raises(DataError, match="train_test_split.txt' line 3: '3 2'"):
        CubDataset(cub_root)
    (cub_root / "train_test_split.txt").write_text("1 1\n2 1\n3 0\n2 0\n5 1\n6 0\n")
    with pytest.raises(DataError, match="line 4: id 2 again"):
        CubDataset(cub_root)


def test_folder_refuses_unreadable_images_and_skips_hidden_files(folder_root):
    (folder_root / "images" / "train" / "cat" / "._a.png").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata
    assert len(MaskedImageFolder(folder_root, "train", image_size=40)) == 3
    (folder_root / "images" / "train" / "dog" / "c.png").write_bytes(b"")
    with pytest.raises(DataError, match="c.png") as error:
        MaskedImageFolder(folder_root, "train", image_size=40)
    assert "\n" not in str(error.value)


# --- 3. information discarding refuses bad arguments ------------------------------------------------------


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 12))


UNITS = grid_units(8, 8, 4)


@pytest.mark.parametrize("estimator", ["converged", "paper"])
def test_discarding_refuses_an_empty_or_non_finite_batch(estimator):
    model = small_cnn()
    with pytest.raises(UsageError, match="inputs has 0 samples.*expected at least 1"):
        information_discarding(model, torch.zeros(0, 3, 8, 8), None, UNITS, estimator=estimator)
    x = torch.randn(3, 3, 8, 8)
    x[1, 0, 2, 2] = math.nan
    x[2, 1, 0, 0] = math.inf
    with pytest.raises(UsageError, match=r"NaN or infinite values in 2 of its 3 samples \(first: sample 1\)"):
        information_discarding(model, x, None, UNITS, estimator=estimator)


@pytest.mark.parametrize("option, value", [
    ("alpha", math.nan), ("tau", math.inf), ("lr", math.inf), ("alpha", -1.0), ("sigma_max", math.inf),
    ("tol", math.nan), ("steps", 0), ("noise_samples", 2.5), ("max_batch", 0),
])
def test_converged_refuses_bad_options(option, value):
    with pytest.raises(UsageError, match=f"{option} = {value!r}: expected") as error:
        information_discarding(small_cnn(), torch.randn(1, 3, 8, 8), None, UNITS, **{option: value})
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0])
def test_paper_refuses_a_bad_entropy_weight(value):
    with pytest.raises(UsageError, match=f"entropy_weight = {value!r}: expected a finite number > 0"):
        information_discarding(small_cnn(), torch.randn(1, 3, 8, 8), None, UNITS, estimator="paper",
                               entropy_weight=value)


def test_argument_errors_of_discarding_are_usage_errors():
    with pytest.raises(UsageError, match="estimator = 'exact'"):
        information_discarding(small_cnn(), torch.randn(1, 3, 8, 8), None, UNITS, estimator="exact")
    with pytest.raises(UsageError, match=r"\(3, 3\)"):
        information_discarding(small_cnn(), torch.randn(1, 3, 8, 8), None, torch.zeros(3, 3, dtype=torch.long))


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5])
def test_knowledge_point_threshold_must_be_finite_and_not_negative(value):
    entropy, foreground = torch.randn(2, 4), torch.tensor([[True, False, False, True]] * 2)
    with pytest.raises(UsageError, match=f"threshold = {value!r}: expected a finite number >= 0"):
        PointRule(value)
    with pytest.raises(UsageError, match="threshold"):
        knowledge_points(entropy, foreground, value)
    with pytest.raises(UsageError, match="threshold"):  # what `kdlens analyze --threshold` builds
        AnalysisSettings(threshold=value)


# --- 4. chunked forwards: same answer, bounded batch ------------------------------------------------------


class BatchSizes(nn.Module):
    """``model`` that records the size of every batch it is given."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.model(x)


@pytest.mark.parametrize("estimator, options", [
    ("converged", dict(steps=20, noise_samples=8, variance_samples=16)),
    ("paper", {}),
])
def test_chunking_changes_the_memory_not_the_result(estimator, options):
    x = torch.randn(3, 3, 8, 8)
    whole = information_discarding(small_cnn(), x, None, UNITS, estimator=estimator, max_batch=10_000, **options)
    model = BatchSizes(small_cnn())
    chunked = information_discarding(model, x, None, UNITS, estimator=estimator, max_batch=7, **options)
    assert max(model.sizes) <= 7 and len(model.sizes) > 1
    assert torch.equal(whole.valid, chunked.valid) and bool(whole.valid.all())
    assert torch.allclose(whole.feature_variance, chunked.feature_variance, rtol=1e-5)
    assert torch.allclose(whole.sigma, chunked.sigma, rtol=1e-4, atol=1e-6)
    assert torch.allclose(whole.entropy, chunked.entropy, atol=1e-4)


def test_a_default_step_of_16_images_by_8_draws_is_one_forward():
    model = BatchSizes(small_cnn())
    information_discarding(model, torch.randn(16, 3, 8, 8), None, UNITS, steps=2, noise_samples=8,
                           variance_samples=8)
    assert set(model.sizes) == {16, 128}  # f(x), then 16 x 8 for delta_f^2 and for each step


def test_an_unknown_layer_or_option_is_a_usage_error_and_keeps_its_old_type():
    with pytest.raises(UsageError, match=r"layer = 'fc9': .*expected a stage \(conv, fc1, fc2, fc3\)") as error:
        information_discarding(build_model("vgg11", num_classes=4, image_size=32, width=0.125),
                               torch.randn(1, 3, 32, 32), "fc9", grid_units(32, 32, 4), steps=1)
    assert isinstance(error.value, KeyError)
    with pytest.raises(UsageError, match="estimator 'paper' takes no option 'alpha'") as error:
        information_discarding(small_cnn(), torch.randn(1, 3, 8, 8), None, UNITS, estimator="paper", alpha=2.0)
    assert isinstance(error.value, TypeError)
    with pytest.raises(UsageError, match="units has dtype torch.float32") as error:
        information_discarding(small_cnn(), torch.randn(1, 3, 8, 8), None, UNITS.float())
    assert isinstance(error.value, TypeError)
