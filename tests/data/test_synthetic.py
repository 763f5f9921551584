import numpy as np
import pytest
import torch

from kdlens.data import DATASETS, Sample, SyntheticShapes, denormalize
from kdlens.data.synthetic import FAMILIES, FAMILY_NAMES, class_colours


def small(**kwargs) -> SyntheticShapes:
    return SyntheticShapes(**{"num_samples": 40, "num_classes": 10, "distractors": 3, **kwargs})


@pytest.mark.parametrize("image_size", [32, 64])
def test_mask_is_exactly_the_pixels_the_object_changes(image_size):
    data = small(image_size=image_size)
    side = image_size * image_size
    for index in range(len(data)):
        with_object, mask = data.render(index)
        without, mask_again = data.render(index, include_object=False)
        assert np.array_equal(mask, mask_again)
        assert np.array_equal((with_object != without).any(axis=0), mask)
        assert 0 < mask.sum() < side
        assert torch.equal(data.masks[index], torch.from_numpy(mask))
        assert torch.equal(data.images[index], torch.from_numpy((with_object * 255 + 0.5).astype(np.uint8)))


def test_every_family_is_drawn_inside_the_image_and_distinct():
    data = small(num_samples=14 * 3, image_size=48, num_classes=14, distractors=0)
    for index in range(len(data)):
        mask = data.masks[index]
        assert 0.1 < mask.float().mean() < np.pi * 0.95**2 / 4  # the bounding circle at the largest size
        assert inside_share(data, data.params(index).object) == 1.0
    masks = [data._shape_mask(data.params(i).object) for i in range(14)]  # one of each family
    assert len({m.tobytes() for m in masks}) == 14


def test_samples_are_normalised_images_with_bool_masks():
    data = small(num_samples=5)
    image, label, mask = data[3]
    assert isinstance(data[3], Sample) and label == 3
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.bool and mask.shape == (32, 32)
    restored = denormalize(image, data.mean, data.std)
    assert torch.allclose(restored, data.images[3].float() / 255, atol=1e-6)


def test_equal_seeds_give_identical_data_and_different_seeds_or_splits_do_not():
    a, b = small(seed=3), small(seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and torch.equal(a.labels, b.labels)
    other = small(seed=4)
    test = small(seed=3, split="test")
    for different in (other, test):
        assert not torch.equal(a.images, different.images)
        assert not torch.equal(a.masks, different.masks)


def test_any_index_renders_alone_the_same():
    prefix, longer = small(num_samples=10), small(num_samples=40)
    assert torch.equal(prefix.images, longer.images[:10]) and torch.equal(prefix.masks, longer.masks[:10])


def test_labels_are_balanced():
    data = SyntheticShapes(num_samples=100, num_classes=10, image_size=16)
    assert data.labels.dtype == torch.long
    assert torch.bincount(data.labels).tolist() == [10] * 10
    assert data.classes == list(FAMILIES)[:10] and data.num_classes == 10
    counts = torch.bincount(SyntheticShapes(num_samples=100, num_classes=3, image_size=16).labels)
    assert counts.max() - counts.min() <= 1


def test_distractors_are_never_class_families_and_bounded_in_number():
    for num_classes in (3, 13):
        data = SyntheticShapes(num_samples=60, num_classes=num_classes, distractors=4, image_size=16)
        assert data.distractor_families == tuple(range(num_classes, len(FAMILIES)))
        counts, seen = [], set()
        for index in range(len(data)):
            params = data.params(index)
            assert params.object.family == params.label == int(data.labels[index])
            assert all(num_classes <= f < len(FAMILIES) for f in params.distractor_families)
            assert all(FAMILY_NAMES[f] not in data.classes for f in params.distractor_families)
            counts.append(len(params.distractor_families))
            seen.update(params.distractor_families)
        assert min(counts) >= 0 and max(counts) <= 4 and len(set(counts)) > 1
        assert seen == set(data.distractor_families)  # every free family is used
    assert all(not small(distractors=0).params(i).distractors for i in range(10))
    assert all(not SyntheticShapes(num_samples=10).params(i).distractors for i in range(10))  # the default


def test_spurious_background_predicts_the_label_in_train_only():
    def backgrounds(split: str, strength: float) -> dict[int, set]:
        data = SyntheticShapes(split, num_samples=50, num_classes=5, image_size=16, spurious_strength=strength)
        by_label: dict[int, set] = {}
        for index in range(len(data)):
            params = data.params(index)
            by_label.setdefault(params.label, set()).add(params.background.tobytes())
        return by_label

    assert all(len(colours) == 1 for colours in backgrounds("train", 1.0).values())
    assert len(set().union(*backgrounds("train", 1.0).values())) == 5  # one colour per class
    assert all(len(colours) == 10 for colours in backgrounds("test", 1.0).values())
    assert all(len(colours) == 10 for colours in backgrounds("train", 0.0).values())
    half = SyntheticShapes(num_samples=200, num_classes=5, image_size=16, spurious_strength=0.5)
    assert 60 < sum(half.params(i).spurious for i in range(200)) < 140


def test_spurious_strength_changes_only_the_background():
    plain = small(num_samples=10)
    spurious = small(num_samples=10, spurious_strength=1.0)
    assert torch.equal(plain.masks, spurious.masks)


def inside_share(data: SyntheticShapes, shape) -> float:
    """Share of the shape's area (on a canvas three image sides wide) that lies inside the image."""
    side = data.image_size
    centres = np.arange(-side, 2 * side, dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    cos, sin = np.cos(shape.angle), np.sin(shape.angle)
    dx, dy = xs - shape.center[0], ys - shape.center[1]
    drawn = FAMILIES[FAMILY_NAMES[shape.family]]((dx * cos + dy * sin) / shape.radius, (dy * cos - dx * sin) / shape.radius)
    return drawn[side:2 * side, side:2 * side].sum() / drawn.sum()


def test_object_size_sets_the_share_and_the_object_stays_inside():
    shares = []
    for size in [(0.3, 0.4), (0.5, 0.6), (0.7, 0.95), (1.0, 1.0)]:
        data = SyntheticShapes(num_samples=30, object_size=size, distractors=2)
        assert data.object_size == size
        for index in range(len(data)):
            obj = data.params(index).object
            assert size[0] * 16 <= obj.radius <= size[1] * 16
            assert obj.radius <= obj.center[0] <= 32 - obj.radius and obj.radius <= obj.center[1] <= 32 - obj.radius
            assert inside_share(data, obj) == 1.0
        shares.append(data.object_share())
        assert data.object_share() == pytest.approx(float(data.masks.float().mean()))
    assert shares == sorted(shares) and shares[0] * 3 < shares[-1]
    assert SyntheticShapes(num_samples=2).object_size == (0.7, 0.95)  # the default
    assert SyntheticShapes(num_samples=2, object_size=[0.5, 0.5]).object_size == (0.5, 0.5)  # a list from a config


def test_background_cue_puts_the_label_in_the_background_only():
    colours = class_colours(5)
    for split in ("train", "test"):
        data = SyntheticShapes(split, num_samples=200, num_classes=5, image_size=16, cue="background", distractors=2)
        families: dict[int, set] = {}
        for index in range(len(data)):
            params = data.params(index)
            assert params.label == int(data.labels[index]) and not params.spurious
            jitter = params.background - colours[params.label]
            assert np.abs(jitter).max() <= 0.05 + 1e-6
            nearest = np.abs(params.background[None] - colours).max(axis=1).argmin()
            assert nearest == params.label  # the background colour names the label
            assert np.abs(params.object.colour - params.background).max() >= 0.5  # the contrast rule
            # ... kept against every class's background, so the object's colour does not name the label
            assert (np.abs(colours - params.object.colour).max(axis=1) >= 0.55 - 1e-6).all()
            assert all(5 <= f < len(FAMILIES) for f in params.distractor_families)
            families.setdefault(params.label, set()).add(params.object.family)
        # The object's family is drawn from the classes, whatever the label.
        assert all(len(seen) >= 4 and seen <= set(range(5)) for seen in families.values())
        assert len({data.params(i).background.tobytes() for i in range(0, 200, 5)}) > 1  # jittered


def test_background_cue_object_colour_is_independent_of_the_label():
    data = SyntheticShapes("train", num_samples=2000, num_classes=4, image_size=16, cue="background")
    colours = np.array([data.params(i).object.colour for i in range(len(data))])
    labels = np.arange(len(data)) % 4
    means = np.array([colours[labels == k].mean(0) for k in range(4)])
    # per-label means of a colour with std ~0.38 over 500 samples each: within ~4 standard errors
    assert np.abs(means - colours.mean(0)).max() < 0.07


def test_background_cue_keeps_the_geometry_and_exact_masks():
    plain = small(num_samples=20)
    cued = small(num_samples=20, cue="background")
    for index in range(len(cued)):
        a, b = plain.params(index).object, cued.params(index).object
        assert a.center == b.center and a.radius == b.radius and a.angle == b.angle
        with_object, mask = cued.render(index)
        without, _ = cued.render(index, include_object=False)
        assert np.array_equal((with_object != without).any(axis=0), mask)
        assert torch.equal(cued.masks[index], torch.from_numpy(mask))
    again = small(num_samples=20, cue="background")
    assert torch.equal(cued.images, again.images) and torch.equal(cued.masks, again.masks)
    assert torch.equal(cued.images[:5], small(num_samples=5, cue="background").images)
    assert cued.render(7)[0].tobytes() == cued.render(7)[0].tobytes()


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"num_classes": 1}, "num_classes = 1"),
        ({"num_classes": 15}, "num_classes = 15"),
        ({"image_size": 8}, "image_size = 8"),
        ({"split": "val"}, "split = 'val'"),
        ({"spurious_strength": 1.5}, "spurious_strength"),
        ({"num_classes": 14, "distractors": 2}, "distractors = 2"),
        ({"object_size": (0.9, 0.5)}, "object_size = (0.9, 0.5)"),
        ({"object_size": (0.0, 0.5)}, "object_size = (0.0, 0.5)"),
        ({"object_size": (0.5, 1.2)}, "object_size = (0.5, 1.2)"),
        ({"object_size": (0.5,)}, "object_size = (0.5,)"),
        ({"object_size": 0.5}, "object_size = 0.5"),
        ({"cue": "texture"}, "cue = 'texture'"),
        ({"cue": "background", "spurious_strength": 0.5}, "spurious_strength = 0.5"),
    ],
)
def test_bad_arguments_raise_one_line_errors(kwargs, word):
    with pytest.raises(ValueError) as error:
        SyntheticShapes(num_samples=2, **kwargs)
    assert word in str(error.value) and "\n" not in str(error.value)


def test_registered_under_synthetic(capsys):
    data = DATASETS.build("synthetic", split="test", num_samples=4, image_size=16, num_classes=2)
    assert isinstance(data, SyntheticShapes) and data.split == "test" and len(data) == 4
    assert "synthetic" in DATASETS
    assert capsys.readouterr() == ("", "")
