import math

import pytest
import torch

from kdlens.explain import (
    d_mean_var,
    distance_to_peak,
    foreground_ratio,
    knowledge_points,
    peak_epoch,
    stability,
    summarize_points,
    weight_distances,
)

T, F = True, False


def example_points(valid=None):
    entropy = torch.tensor([
        [1.0, 2.0, 3.0, 3.1],  # bg {2,3}: H_bar 3.05, points 0 (fg), 1 (fg)
        [2.0, 2.9, 2.5, 3.5],  # bg {1,2,3}: H_bar 2.9667, points 0 (fg), 2 (bg)
        [1.0, 1.0, 1.0, 1.0],  # no background unit: undefined
        [1.0, 1.0, 1.0, 1.0],  # H_bar 1.0, no point
    ])
    fg = torch.tensor([[T, T, F, F], [T, F, F, F], [T, T, T, T], [T, F, F, F]])
    return knowledge_points(entropy, fg, b=0.2, valid=valid)


def test_relative_threshold_by_hand_and_scale_free():
    # bg {2, 3} = [0, 2]: H_bar 1, population std 1; fg 0.5 and -0.5
    entropy = torch.tensor([[0.5, -0.5, 0.0, 2.0]])
    fg = torch.tensor([[T, T, F, F]])
    relative = knowledge_points(entropy, fg, b=1.0, relative=True)
    assert relative.threshold.tolist() == [1.0]
    assert relative.is_point.tolist() == [[F, T, F, F]]  # gaps 0.5, 1.5, 1.0 (not > 1), -1
    absolute = knowledge_points(entropy, fg, b=0.2)
    assert absolute.is_point.tolist() == [[T, T, T, F]]
    # spread three times wider: the relative rule finds the same points, the absolute one more
    assert torch.equal(knowledge_points(3 * entropy + 7, fg, b=1.0, relative=True).is_point, relative.is_point)
    assert knowledge_points(3 * entropy + 7, fg, b=0.5).is_point.sum() > knowledge_points(entropy, fg, b=0.5).is_point.sum()


def test_dataset_baseline_is_the_mean_of_the_sample_baselines():
    entropy = torch.tensor([[0.0, 1.0, 1.0], [0.0, 3.0, 3.0], [5.0, 5.0, 5.0]])
    fg = torch.tensor([[T, F, F], [T, F, F], [T, T, T]])  # the third has no background: left out
    kp = knowledge_points(entropy, fg, b=0.2, baseline="dataset")
    assert kp.h_bar[:2].tolist() == [2.0, 2.0] and kp.h_bar[2] == -math.inf
    assert kp.is_point.tolist() == [[T, T, T], [T, F, F], [F, F, F]]
    with pytest.raises(ValueError, match="'image'"):
        knowledge_points(entropy, fg, baseline="image")


def test_knowledge_points_by_hand():
    kp = example_points()
    assert kp.defined.tolist() == [T, T, F, T]
    assert kp.reason[2].startswith("no background unit") and kp.reason[0] is None
    assert torch.allclose(kp.h_bar[[0, 1, 3]], torch.tensor([3.05, 8.9 / 3, 1.0]))
    assert kp.h_bar[2] == -math.inf
    assert kp.is_point.tolist() == [[T, T, F, F], [T, F, T, F], [F] * 4, [F] * 4]
    assert kp.n_fg.tolist() == [2, 1, 0, 0] and kp.n_bg.tolist() == [0, 1, 0, 0]
    assert kp.fg_points.tolist() == [[T, T, F, F], [T, F, F, F], [F] * 4, [F] * 4]


def test_invalid_sample_is_undefined():
    kp = example_points(valid=torch.tensor([T, F, T, T]))
    assert kp.defined.tolist() == [T, F, F, T]
    assert "invalid" in kp.reason[1]
    assert kp.n_fg[1] == 0 and kp.n_bg[1] == 0 and not kp.is_point[1].any()
    assert not torch.isnan(kp.h_bar).any()


def test_foreground_ratio_and_summary():
    kp = example_points()
    value, excluded = foreground_ratio(kp.n_fg, kp.n_bg)
    assert value == pytest.approx((1.0 + 0.5) / 2) and excluded == 2  # samples 2 and 3 have no point
    assert foreground_ratio(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)) == (None, 3)
    s = summarize_points(kp)
    assert s.n_fg_mean == pytest.approx(1.0) and s.n_bg_mean == pytest.approx(1 / 3)
    assert s.foreground_ratio == pytest.approx(0.75)
    assert (s.n_defined, s.n_undefined, s.n_without_points) == (3, 1, 1)


def states():
    # w = concat(a, b): w0 = (3, 4), |w0| = 5; steps of norm 5 and 2.5
    long = torch.tensor(7)  # an integer buffer: never part of w
    return [
        {"a": torch.tensor([3.0]), "b": torch.tensor([4.0]), "rm": torch.tensor([0.0]), "n": long},
        {"a": torch.tensor([6.0]), "b": torch.tensor([8.0]), "rm": torch.tensor([0.0]), "n": long},
        {"a": torch.tensor([6.0]), "b": torch.tensor([10.5]), "rm": torch.tensor([5.0]), "n": long},
    ]


def test_weight_distances_by_hand():
    d = weight_distances(states(), names=["a", "b"])
    assert d.dtype == torch.float64
    assert torch.allclose(d, torch.tensor([0.0, 1.0, 1.5], dtype=torch.float64))
    # names=None takes every float tensor, the buffer "rm" included: step 2 is |(0, 2.5, 5)| / 5
    d_all = weight_distances(states())
    assert torch.allclose(d_all, torch.tensor([0.0, 1.0, 1.0 + math.sqrt(31.25) / 5], dtype=torch.float64))
    with pytest.raises(KeyError):
        weight_distances(states(), names=["a", "missing"])


N_FG = torch.tensor([
    [9, 0, 0],  # epoch 0, the initialisation: not a candidate with first_epoch=1
    [1, 2, 0],
    [3, 2, 0],
    [3, 1, 0],
])
DIST = torch.tensor([0.0, 1.0, 1.5, 2.5])


def test_distance_to_peak_by_hand():
    # sample 0 peaks at epochs 2 and 3 -> the first, 2; sample 1 at 1 and 2 -> 1; sample 2 never has a point -> 1
    assert peak_epoch(N_FG).tolist() == [2, 1, 1]
    assert distance_to_peak(N_FG, DIST).tolist() == [1.5, 1.0, 1.0]
    assert distance_to_peak(N_FG, DIST, first_epoch=0).tolist() == [0.0, 1.0, 0.0]
    mean, var = d_mean_var(N_FG, DIST)
    assert mean == pytest.approx(3.5 / 3) and var == pytest.approx(1 / 18)  # population variance
    mean, var = d_mean_var(N_FG, DIST, mask=torch.tensor([T, T, F]))
    assert (mean, var) == pytest.approx((1.25, 0.0625))
    with pytest.raises(ValueError):
        distance_to_peak(N_FG, DIST[:3])


def test_stability_by_hand():
    # rows: epoch 0 (init, ignored), epochs 1..3 = M; 3 samples x 4 units
    pts = torch.zeros(4, 3, 4, dtype=torch.bool)
    pts[0, 0, 3] = True  # at initialisation only: not in the union
    pts[1, 0, [0, 1]] = True  # sample 0: S1 = {0,1}, S2 = S3 = {1,2}: union {0,1,2}, rho = 2/3
    pts[2, 0, [1, 2]] = True
    pts[3, 0, [1, 2]] = True
    pts[2, 1, 3] = True  # sample 1: S2 = {3}, S3 = {}: rho = 0/1
    # sample 2: no foreground point at any epoch: undefined
    s = stability(pts)
    assert s.defined.tolist() == [T, T, F]
    assert torch.allclose(s.rho, torch.tensor([2 / 3, 0.0, 0.0], dtype=torch.float64))
    assert s.mean == pytest.approx(1 / 3)
    assert stability(pts, first_epoch=0).rho[0] == pytest.approx(0.5)  # union {0,1,2,3}
    assert stability(torch.zeros(3, 2, 4, dtype=torch.bool)).mean is None


def test_units_a_sample_lacks_are_neither_foreground_nor_background():
    """Sentences of 4 and 3 words: the second's fourth unit does not exist (NaN entropy)."""
    nan = math.nan
    entropy = torch.tensor([[1.0, 2.0, 3.0, 3.1], [1.0, 3.0, 3.2, nan]])
    fg = torch.tensor([[T, T, F, F], [T, F, F, T]])  # a stray True on the missing unit is ignored
    present = torch.tensor([[T, T, T, T], [T, T, T, F]])
    kp = knowledge_points(entropy, fg, b=0.2, present=present)
    assert kp.defined.tolist() == [T, T]
    assert torch.allclose(kp.h_bar, torch.tensor([3.05, 3.1]))  # bg of the second: {1, 2} only
    assert kp.is_point.tolist() == [[T, T, F, F], [T, F, F, F]]
    assert kp.n_fg.tolist() == [2, 1] and kp.n_bg.tolist() == [0, 0]
    assert kp.foreground.tolist() == [[T, T, F, F], [T, F, F, F]]
    without = knowledge_points(entropy, fg, b=0.2)  # without `present` the NaN makes the sample undefined
    assert without.defined.tolist() == [T, F]
