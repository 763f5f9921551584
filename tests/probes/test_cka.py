"""Linear CKA: hand-worked values, invariances, and the errors."""

from __future__ import annotations

import math

import pytest
import torch

from kdlens.probes import channel_split_cka, linear_cka


def test_identical_representations_give_one():
    x = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_one_feature_each_by_hand():
    # Centred: x = (-1, 0, 1), y = (-1, 1, 0). ||y'x||^2 = 1^2 = 1,
    # ||x'x|| = 2, ||y'y|| = 2 -> 1 / 4 (the squared Pearson correlation).
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [3.0], [2.0]])
    assert linear_cka(x, y) == pytest.approx(0.25, abs=1e-12)


def test_four_by_two_against_four_by_one_by_hand():
    # Both already centred. X'X = diag(2, 2): ||.||_F = 2*sqrt(2); Y'Y = [4];
    # Y'X = [2, 2]: ||.||_F^2 = 8 -> 8 / (2*sqrt(2) * 4) = 1/sqrt(2).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    y = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    assert linear_cka(x, y) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    assert linear_cka(y, x) == pytest.approx(1 / math.sqrt(2), abs=1e-12)


def test_invariant_to_orthogonal_transform_scaling_and_shift():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 6, generator=g), torch.randn(30, 4, generator=g)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base, rel=1e-6)
    assert linear_cka(3.7 * x, y) == pytest.approx(base, rel=1e-6)
    assert linear_cka(x + 5.0, 0.01 * y) == pytest.approx(base, rel=1e-6)


def test_gram_and_feature_forms_agree():
    # p > n takes the n x n Gram path; p < n the feature path.
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 50, generator=g), torch.randn(8, 3, 2, 2, generator=g)
    wide = linear_cka(x, y)
    xd, yd = x.double(), y.reshape(8, -1).double()
    xc, yc = xd - xd.mean(0), yd - yd.mean(0)
    direct = (torch.linalg.norm(yc.T @ xc) ** 2 / (torch.linalg.norm(xc.T @ xc) * torch.linalg.norm(yc.T @ yc))).item()
    assert wide == pytest.approx(direct, rel=1e-9)


def test_independent_random_data_is_near_zero():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(4000, 3, generator=g), torch.randn(4000, 3, generator=g)
    assert linear_cka(x, y) < 0.01


def test_channel_split_cka_selects_channels():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(16, 2, 3, 3, generator=g)
    features = torch.cat([a, 2 * a, torch.randn(16, 2, 3, 3, generator=g)], dim=1)  # (16, 6, 3, 3)
    assert channel_split_cka(features, torch.tensor([0, 1]), torch.tensor([2, 3])) == pytest.approx(1.0, abs=1e-9)
    expected = linear_cka(features[:, [0, 1]], features[:, [4, 5]])
    assert channel_split_cka(features, torch.tensor([0, 1]), torch.tensor([4, 5])) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.randn(4, 2), torch.randn(5, 2), "4 examples but y has 5"),
        (torch.randn(1, 2), torch.randn(1, 2), "n = 1"),
        (torch.ones(4, 2), torch.randn(4, 2), "x has zero variance"),
        (torch.randn(4, 2), torch.full((4, 3), 0.1), "y has zero variance"),
        (torch.tensor([[0.0], [float("nan")]]), torch.randn(2, 1), "NaN"),
    ],
)
def test_errors(x, y, message):
    with pytest.raises(ValueError, match=message):
        linear_cka(x, y)


@pytest.mark.parametrize(
    ("first", "message"),
    [
        (torch.tensor([0, 6]), r"indices \[6\]"),
        (torch.tensor([], dtype=torch.long), "non-empty"),
        (torch.tensor([0.0, 1.0]), "integer"),
        (torch.tensor([1, 1]), "repeats"),
    ],
)
def test_channel_split_errors(first, message):
    with pytest.raises(ValueError, match=message):
        channel_split_cka(torch.randn(4, 6), first, torch.tensor([2]))
