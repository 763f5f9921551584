"""Crop+flip augmentation of training batches: hand-checked placements, the
padding's value, independence per image, seeds, and the training loop (the
batch is augmented once before every update, evaluation never, and a resumed
run ends with the weights of an uninterrupted one)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlens.config import OptimConfig, parse_config
from kdlens.data.augment import CropFlip, augmentation, black, crop_flip
from kdlens.errors import UsageError
from kdlens.store import CheckpointStore
from kdlens.train.loop import Phase, Update, train_phases
from tiny_training import TinySet, two_layers

CPU = torch.device("cpu")
FILL = (-1.0, -2.0, -3.0)


def marked(batch: int = 1, size: int = 4, at: tuple[int, int] = (1, 2)) -> torch.Tensor:
    """``batch`` images of 3 x size x size, zero but 5 in every channel at ``at`` (row, column)."""
    images = torch.zeros(batch, 3, size, size)
    images[:, :, at[0], at[1]] = 5.0
    return images


def where(image: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the marker in channel 0."""
    found = (image[0] == 5.0).nonzero().tolist()
    assert len(found) == 1, found
    return tuple(found[0])


def run_crop(images, dy, dx, flip, padding=1):
    offsets = torch.tensor([[dy, dx]] * len(images))
    return crop_flip(images, offsets, torch.tensor([flip] * len(images)), padding, FILL)


def test_the_marker_moves_by_the_offset_and_a_flip_mirrors_it():
    # padding 1: the marker at image (1, 2) sits at padded (2, 3); the crop at (dy, dx) shows padded
    # (dy + i, dx + j) at (i, j), so the marker lands at (2 - dy, 3 - dx).
    assert where(run_crop(marked(), 0, 0, False)[0]) == (2, 3)
    assert where(run_crop(marked(), 1, 1, False)[0]) == (1, 2)  # the centre crop: the image itself
    assert torch.equal(run_crop(marked(), 1, 1, False), marked())
    assert where(run_crop(marked(), 2, 0, False)[0]) == (0, 3)
    assert where(run_crop(marked(), 0, 2, False)[0]) == (2, 1)
    # flipped: column j shows padded column dx + (3 - j); centre crop -> column 3 - 2 = 1
    assert where(run_crop(marked(), 1, 1, True)[0]) == (1, 1)
    assert torch.equal(run_crop(marked(), 1, 1, True), marked().flip(-1))
    assert where(run_crop(marked(), 2, 0, True)[0]) == (0, 0)  # padded column 3 at j = 0 + 3 - 3


def test_the_padded_border_holds_the_fill_and_black_is_normalised_black():
    out = run_crop(marked(), 0, 0, False)[0]  # the top row and the left column come from the padding
    for channel, value in enumerate(FILL):
        assert torch.equal(out[channel, 0, :], torch.full((4,), value))
        assert torch.equal(out[channel, :, 0], torch.full((4,), value))
    assert torch.equal(out[:, 1:, 1:], marked()[0, :, :3, :3])  # out (i, j) = image (i - 1, j - 1)
    # black = (0 - mean) / std: synthetic (mean = std = 0.5) -> -1; CIFAR-10 0.4914 / 0.2470 = 1.98947,
    # 0.4822 / 0.2435 = 1.98029, 0.4465 / 0.2616 = 1.70680
    assert black((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) == (-1.0, -1.0, -1.0)
    assert black((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)) == pytest.approx((-1.98947, -1.98029, -1.70680),
                                                                                       abs=1e-5)


def test_the_config_picks_the_augmentation_and_its_black(tmp_path):
    assert augmentation(parse_config({}).data) is None
    crop = augmentation(parse_config({"data": {"augment": "crop_flip", "crop_padding": 2}}).data)
    assert isinstance(crop, CropFlip) and crop.padding == 2 and crop.fill == (-1.0, -1.0, -1.0)
    assert augmentation(parse_config({"data": {"augment": "crop_flip"}}).data).padding == 4  # He et al.'s 4
    cub = augmentation(parse_config({"data": {"name": "folder", "path": str(tmp_path), "augment": "crop_flip"}}).data)
    assert cub.fill == pytest.approx((-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225))  # ImageNet's statistics


def test_shapes_dtype_and_bad_input():
    images = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    out = CropFlip(4, FILL)(images)
    assert out.shape == images.shape and out.dtype == images.dtype and out.is_contiguous()
    flipped_or_not = CropFlip(0, FILL)(images[:1])  # no padding: the image, or its mirror
    assert torch.equal(flipped_or_not, images[:1]) or torch.equal(flipped_or_not, images[:1].flip(-1))
    with pytest.raises(UsageError, match="crop_padding = -1"):
        CropFlip(-1, FILL)
    with pytest.raises(UsageError, match="fill has 3 values: expected one per channel \\(1\\)"):
        CropFlip(1, FILL)(torch.zeros(2, 1, 4, 4))
    with pytest.raises(UsageError, match="expected a batch"):
        CropFlip(1, FILL)(torch.zeros(3, 4, 4))


def test_each_image_draws_its_own_crop_and_flip_from_the_global_seed():
    images = marked(batch=64, size=8, at=(2, 5))
    images[:, :, 2, 4] = 7.0  # left of the marker; right of it in a mirrored image
    torch.manual_seed(3)
    out = CropFlip(2, FILL)(images)
    places = [where(image) for image in out]
    flipped = [c < 7 and bool(image[0, r, c + 1] == 7.0) for image, (r, c) in zip(out, places)]
    for (r, c), flip in zip(places, flipped):
        # padding 2: rows 2 - 2 .. 2 + 2 = 0..4; columns 5 - 2 .. 5 + 2 = 3..7, or mirrored 7 - that = 0..4
        assert 0 <= r <= 4 and (0 <= c <= 4 if flip else 3 <= c <= 7)
    assert len(set(places)) > 15  # 64 draws over 5 x 5 x 2 placements
    assert 16 < sum(flipped) < 48  # about half of the 64 mirrored, each image drawing its own
    torch.manual_seed(3)
    assert torch.equal(CropFlip(2, FILL)(images), out)
    torch.manual_seed(4)
    assert not torch.equal(CropFlip(2, FILL)(images), out)


class Counting(CropFlip):
    def __init__(self) -> None:
        super().__init__(1, FILL)
        self.images = 0

    def __call__(self, images):
        self.images += len(images)
        return super().__call__(images)


def test_the_loop_augments_each_training_batch_once_before_every_update_and_never_the_evaluation(tmp_path):
    model, seen, augment = two_layers(), [], Counting()

    def objective(images, labels):
        seen.append(images.clone())
        return F.cross_entropy(model(images), labels)

    phase = Phase("both", OptimConfig(epochs=2, batch_size=12), [model],
                  updates=[Update([model[1]], objective), Update([model[3]], objective)])
    train_phases(model, [phase], TinySet(), TinySet(6, seed=1), CheckpointStore(tmp_path / "run"), seed=0,
                 role="net", device=CPU, progress=False, augment=augment)
    assert augment.images == 2 * 24  # 2 epochs of the 24 training images; the evaluations of 3 rows add none
    assert len(seen) == 2 * 2 * 2  # 2 updates x 2 batches x 2 epochs
    for first, second in zip(seen[::2], seen[1::2]):
        assert torch.equal(first, second)  # both updates of a batch see the same augmented images
    originals = TinySet().images
    assert not any(torch.equal(batch, originals[:12]) or torch.equal(batch, originals[12:]) for batch in seen)


class Stop(Exception):
    pass


def test_an_interrupted_run_with_augmentation_resumes_to_the_same_weights(tmp_path):
    optim = OptimConfig(epochs=3, batch_size=8, lr=0.05)

    def run(directory, augment, on_epoch_end=None):
        model = two_layers()
        phase = Phase("train", optim, [model], lambda images, labels: F.cross_entropy(model(images), labels))
        train_phases(model, [phase], TinySet(), TinySet(seed=1), CheckpointStore(tmp_path / directory), seed=0,
                     role="net", device=CPU, progress=False, on_epoch_end=on_epoch_end, augment=augment)
        return model

    whole = run("whole", CropFlip(1, FILL))

    def stop_after_1(epoch):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        run("cut", CropFlip(1, FILL), stop_after_1)
    resumed = run("cut", CropFlip(1, FILL))
    plain = run("plain", None)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(whole.state_dict().values(), plain.state_dict().values()))


def test_the_protocols_take_the_augmentation_from_the_data_config(tmp_path):
    from kdlens.train import train_roles

    raw = {"device": "cpu", "train": ["teacher"],
           "data": {"image_size": 16, "num_classes": 3, "train_size": 12, "test_size": 6},
           "model": {"arch": "vgg11", "width": 0.125}, "teacher": {"epochs": 1, "batch_size": 6}}
    weights = {}
    for augment in ("none", "crop_flip"):
        config = parse_config({**raw, "data": {**raw["data"], "augment": augment}})
        run = train_roles(config, tmp_path / augment, progress=False)
        weights[augment] = run.role("teacher").load(1)["model"]
    assert any(not torch.equal(weights["none"][k], weights["crop_flip"][k]) for k in weights["none"])
