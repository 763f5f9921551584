import pytest
import torch

from kdlens.errors import UsageError
from kdlens.modalities import modality_of


class Clouds:
    modality = "points"


def test_each_point_is_a_unit_and_its_mask_value_its_label():
    points = modality_of(Clouds())
    units = points.units((5, 3), grid=16)
    assert units.shape == (5, 3) and units[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert (units == units[:, :1]).all()  # the three coordinates of a point share its unit
    masks = torch.tensor([[True, True, False, False, True], [False] * 5])
    assert torch.equal(points.foreground(masks, units, rule=0.5), masks)


def test_a_sample_that_is_not_a_cloud_is_refused():
    with pytest.raises(UsageError, match=r"shape \(3, 32, 32\); expected \(N, 3\)"):
        modality_of(Clouds()).units((3, 32, 32), grid=16)
