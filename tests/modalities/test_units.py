import pytest
import torch

from kdlens.modalities.units import (
    check_units,
    element_units,
    foreground_units,
    grid_units,
    num_units,
    point_units,
    token_units,
    unit_foreground_share,
)


def test_grid_even_split():
    u = grid_units(4, 4, 2)
    assert u.dtype == torch.long
    assert u.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert num_units(u) == 4


def test_grid_uneven_split_is_as_even_as_possible():
    u = grid_units(10, 7, 3)
    rows = torch.bincount(u[:, 0] // 3).tolist()
    cols = torch.bincount(u[0] % 3).tolist()
    assert rows == [4, 3, 3] and cols == [3, 2, 2]
    assert num_units(u) == 9


def test_grid_with_channels_shares_ids_across_channels():
    u = grid_units(32, 32, 16, channels=3)
    assert u.shape == (3, 32, 32)
    assert torch.equal(u[0], u[2])
    assert torch.bincount(u.reshape(-1)).tolist() == [12] * 256  # 2x2 pixels x 3 channels


def test_grid_too_fine_names_the_values():
    with pytest.raises(ValueError, match=r"grid 16 .*8x32"):
        grid_units(8, 32, 16)


def test_element_token_point_units():
    assert element_units((2, 3)).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert token_units(3, 2).tolist() == [[0, 0], [1, 1], [2, 2]]
    assert point_units(2, 3).tolist() == [[0, 0, 0], [1, 1, 1]]
    assert point_units(2, 3, channels_first=True).tolist() == [[0, 1], [0, 1], [0, 1]]


def test_check_units_broadcasts_and_rejects_misfits():
    assert check_units(grid_units(4, 4, 2), (3, 4, 4)).shape == (3, 4, 4)
    assert check_units(grid_units(4, 4, 2).unsqueeze(0), (4, 4)).shape == (4, 4)
    with pytest.raises(ValueError, match=r"\(5, 5\).*\(3, 4, 4\)"):
        check_units(torch.zeros(5, 5, dtype=torch.long), (3, 4, 4))
    with pytest.raises(ValueError, match="every id"):
        check_units(torch.tensor([0, 2]), (2,))
    with pytest.raises(TypeError):
        check_units(torch.zeros(2), (2,))


def test_foreground_share_images():
    units = grid_units(4, 4, 2, channels=3)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True  # cell 0 fully foreground
    mask[0, 0, 2] = True  # a quarter of cell 1
    mask[1, 1:3, 1:3] = True  # a quarter of every cell
    share = unit_foreground_share(mask, units)
    assert share.shape == (2, 4)
    assert share[0].tolist() == [1.0, 0.25, 0.0, 0.0]
    assert share[1].tolist() == [0.25] * 4
    # the (H, W) map gives the same spatial shares as the (C, H, W) one
    assert torch.equal(unit_foreground_share(mask, grid_units(4, 4, 2)), share)
    assert foreground_units(share).tolist() == [[True, False, False, False], [False] * 4]
    assert foreground_units(share, rule=0.25).tolist() == [[True, True, False, False], [True] * 4]


def test_foreground_share_tokens_and_points():
    mask = torch.tensor([[True, False, True]])
    assert unit_foreground_share(mask, token_units(3, 5)).tolist() == [[1.0, 0.0, 1.0]]
    assert unit_foreground_share(mask, point_units(3, 3, channels_first=True)).tolist() == [[1.0, 0.0, 1.0]]
    with pytest.raises(ValueError, match=r"\(1, 4\).*\(3, 5\)"):
        unit_foreground_share(torch.ones(1, 4, dtype=torch.bool), token_units(3, 5))
    with pytest.raises(ValueError):
        foreground_units(torch.zeros(1, 3), rule=0.0)
