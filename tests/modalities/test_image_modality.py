import pytest
import torch

from kdlens.data import SyntheticShapes
from kdlens.modalities.units import foreground_units, grid_units, unit_foreground_share
from kdlens.errors import UnknownNameError, UsageError
from kdlens.modalities import MODALITIES, modality_of


def test_a_dataset_without_a_declared_kind_is_images():
    data = SyntheticShapes(split="test", num_samples=2, image_size=16, num_classes=2)
    assert modality_of(data).name == "image"
    assert "image" in MODALITIES


def test_image_units_are_the_grid_and_foreground_the_majority_rule():
    image = modality_of(object())
    units = image.units((3, 8, 8), grid=4)
    assert torch.equal(units, grid_units(8, 8, 4))
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # the top-left quarter: cells (0,0), (0,1), (1,0), (1,1)
    masks[1, 0, 0] = True  # one pixel of cell (0,0): a quarter of it
    labels = image.foreground(masks, units, rule=0.5)
    assert labels.shape == (2, 16)
    assert labels[0].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert not labels[1].any() and image.foreground(masks, units, rule=0.25)[1, 0]
    assert torch.equal(labels, foreground_units(unit_foreground_share(masks, units), 0.5))


def test_a_grid_that_does_not_fit_and_an_unknown_kind_are_one_line_errors():
    with pytest.raises(UsageError, match="grid = 9: expected 1 to 8 cells a side for 8x8 images"):
        modality_of(object()).units((3, 8, 8), grid=9)

    class Odd:
        modality = "smell"

    with pytest.raises(UnknownNameError, match="unknown modality 'smell'; expected one of image"):
        modality_of(Odd())
