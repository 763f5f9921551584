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


def test_the_modality_draws_its_own_unit_maps():
    """The report's maps come from the modality: clouds get 3-D scatters, images the grid maps."""
    from kdlens.modalities import MODALITIES
    generator = torch.Generator().manual_seed(0)
    roles = {role: {"entropy": torch.rand(2, 8, generator=generator), "points": torch.rand(2, 8) > 0.5,
                    "foreground": torch.arange(8).expand(2, 8) < 5} for role in ("teacher", "student")}
    clouds = {"clouds": torch.randn(2, 8, 3, generator=generator), "masks": torch.arange(8).expand(2, 8) < 5, **roles}
    png, caption = modality_of(Clouds()).unit_maps("fc1", clouds, "converged")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and "point clouds at fc1 (converged" in caption
    grid_roles = {role: {key: value.reshape(2, 2, 4)[:, :, :2] for key, value in maps.items()}
                  for role, maps in roles.items()}
    images = {"images": torch.rand(2, 3, 8, 8, generator=generator), "masks": torch.rand(2, 8, 8) > 0.5, **grid_roles}
    png, caption = MODALITIES.build("image").unit_maps("fc1", images, "paper")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and "Fig. 3 / 6" in caption and "point clouds" not in caption
