import math

import pytest
import torch
from torch import nn

from kdlens.explain import element_units, grid_units, information_discarding
from kdlens.models.base import NamedLayerModel

ALPHA, TAU = 2.0, 0.1
# enough Monte-Carlo draws and steps for the closed-form checks (the defaults are for real CNNs)
# sigma_max far above every optimum: the closed forms are those of the unbounded problem
EXACT = dict(alpha=ALPHA, tau=TAU, steps=1500, lr=0.03, noise_samples=64, variance_samples=512, sigma_max=100.0)


def linear(n_in=8, n_out=6, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    with torch.no_grad():  # columns of clearly different norms
        lin.weight.mul_(torch.tensor([0.25, 0.5, 1.0, 2.0, 4.0, 0.5, 1.0, 3.0])[:n_in])
    return lin


def test_linear_closed_form_one_unit_per_element():
    """f(x) = W x + c, one unit per input element, n = 8 units, c_i = ||W_:,i||^2.

    f(x + sigma o delta) - f(x) = W (sigma o delta), so
    E||f(x') - f(x)||^2 = sum_i sigma_i^2 c_i, and with s_i = log sigma_i
        Loss = sum_i e^{2 s_i} c_i / delta_f^2 - alpha/n sum_i s_i - alpha 1/2 log(2 pi e).
    dLoss/ds_i = 2 e^{2 s_i} c_i / delta_f^2 - alpha/n = 0 gives the unique minimum
        sigma_i^2 = alpha delta_f^2 / (2 n c_i),
    hence sigma_i / sigma_j = sqrt(c_j / c_i) whatever delta_f^2; and
    delta_f^2 = E||W tau delta||^2 = tau^2 ||W||_F^2.  The bias cancels.
    """
    lin = linear(bias=True)
    x = torch.randn(3, 8)
    r = information_discarding(lin, x, None, element_units((8,)), **EXACT)
    c = lin.weight.detach().pow(2).sum(0)
    assert r.valid.all() and r.converged.all()
    fro = TAU**2 * lin.weight.detach().pow(2).sum()
    # a Monte-Carlo estimate (the closed form below uses the returned value itself)
    assert torch.allclose(r.feature_variance, fro.expand(3), rtol=0.2)
    expected = (ALPHA * r.feature_variance[:, None] / (2 * 8 * c)).sqrt()
    rel = (r.sigma / expected - 1).abs()
    assert rel.max() < 0.04, rel.max()
    ratios = r.sigma / r.sigma[:, :1]
    assert torch.allclose(ratios, (c[0] / c).sqrt().expand(3, 8), rtol=0.05)
    assert torch.allclose(r.entropy, r.sigma.log() + 0.5 * math.log(2 * math.pi * math.e))
    # at the optimum the feature term equals alpha / 2
    optimum = ALPHA / 2 - ALPHA * (expected.log().mean(1) + 0.5 * math.log(2 * math.pi * math.e))
    assert torch.allclose(r.final_loss, optimum, atol=0.05)


def test_linear_closed_form_with_the_bound():
    """The loss of a linear f separates over units and is convex in each log sigma_u, so
    the optimum under sigma <= sigma_max is min(sigma_u*, sigma_max): the column of the
    smallest norm (sigma* ~ 1.4 here) stops at the bound, the others are unchanged."""
    lin = linear(bias=True)
    x = torch.randn(3, 8)
    r = information_discarding(lin, x, None, element_units((8,)), **dict(EXACT, sigma_max=1.0))
    c = lin.weight.detach().pow(2).sum(0)
    unbounded = (ALPHA * r.feature_variance[:, None] / (2 * 8 * c)).sqrt()
    assert (unbounded[:, 0] > 1.2).all() and (unbounded[:, 1:] < 0.9).all()
    expected = unbounded.clamp(max=1.0)
    assert (r.sigma / expected - 1).abs().max() < 0.04
    assert torch.allclose(r.sigma[:, 0], torch.ones(3), atol=1e-6)


def test_linear_closed_form_grouped_units():
    """Units u group elements and share sigma_u; n = 4 units, C_u = sum_{i in u} ||W_:,i||^2.

    E||f(x') - f(x)||^2 = sum_u sigma_u^2 C_u and the entropy term is alpha/n sum_u s_u,
    so the same derivation gives sigma_u^2 = alpha delta_f^2 / (2 n C_u).
    """
    lin = linear(bias=False, seed=1)
    units = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    x = torch.randn(2, 8)
    r = information_discarding(lin, x, None, units, **EXACT)
    c = lin.weight.detach().pow(2).sum(0)
    big_c = torch.zeros(4).index_add_(0, units, c)
    expected = (ALPHA * r.feature_variance[:, None] / (2 * 4 * big_c)).sqrt()
    assert r.sigma.shape == (2, 4)
    assert (r.sigma / expected - 1).abs().max() < 0.04


def test_dead_relu_is_invalid_without_nan():
    lin = nn.Linear(8, 6)
    with torch.no_grad():
        lin.weight.copy_(torch.rand(6, 8) + 0.1)
        lin.bias.zero_()
    model = nn.Sequential(lin, nn.ReLU())
    x = torch.stack([torch.rand(8), torch.full((8,), -100.0)])  # sample 1: every unit dead
    r = information_discarding(model, x, None, element_units((8,)), steps=20)
    assert r.valid.tolist() == [True, False]
    assert r.invalid_reason[0] is None and "delta_f^2 == 0" in r.invalid_reason[1]
    for t in (r.sigma, r.entropy, r.feature_variance, r.final_loss, r.loss_history):
        assert not torch.isnan(t).any()
    assert torch.allclose(r.sigma[1], torch.full((8,), TAU))
    assert not r.converged[1] and r.final_loss[1] == math.inf


def test_warm_start_from_optimum():
    lin = linear()
    x = torch.randn(2, 8)
    cold = information_discarding(lin, x, None, element_units((8,)), **EXACT)
    # same seed: the same delta_f^2 estimate as the cold run; a smaller lr because Adam's
    # first steps have size ~lr whatever the gradient, which would only jitter around the optimum
    warm_args = dict(EXACT, steps=40, lr=0.01)
    warm = information_discarding(lin, x, None, element_units((8,)), init_sigma=cold.sigma, **warm_args)
    start = information_discarding(lin, x, None, element_units((8,)), **warm_args)  # from sigma = tau
    # a single step's loss is a Monte-Carlo draw: compare the first 10 steps' mean
    assert torch.allclose(warm.loss_history[:10].mean(0), cold.final_loss, atol=0.08)
    assert (start.loss_history[:10].mean(0) - cold.final_loss).min() > 1.0
    assert warm.converged.all()
    assert (warm.sigma / cold.sigma - 1).abs().max() < 0.08
    assert (start.sigma / cold.sigma - 1).abs().max() > 0.5


def test_same_seed_same_result():
    lin, x, u = linear(), torch.randn(2, 8), element_units((8,))
    a = information_discarding(lin, x, None, u, steps=30, seed=5)
    b = information_discarding(lin, x, None, u, steps=30, generator=torch.Generator().manual_seed(5))
    c = information_discarding(lin, x, None, u, steps=30, seed=6)
    assert torch.equal(a.sigma, b.sigma) and torch.equal(a.loss_history, b.loss_history)
    assert not torch.equal(a.sigma, c.sigma)


def test_sample_seeds_make_a_sample_independent_of_its_batch():
    """One noise stream per sample: a sample's sigma is the same alone, in a batch, or
    with another chunk size (the analysis's chunks and shards rely on it)."""
    lin, x, u = linear(), torch.randn(3, 8), element_units((8,))
    batched = information_discarding(lin, x, None, u, steps=40, sample_seeds=[4, 5, 6])
    swapped = information_discarding(lin, x.flip(0), None, u, steps=40, sample_seeds=[6, 5, 4], max_batch=5)
    for b, seed in enumerate([4, 5, 6]):
        alone = information_discarding(lin, x[b : b + 1], None, u, steps=40, sample_seeds=[seed])
        torch.testing.assert_close(batched.sigma[b : b + 1], alone.sigma, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(batched.feature_variance[b : b + 1], alone.feature_variance)
    torch.testing.assert_close(batched.sigma, swapped.sigma.flip(0), rtol=1e-5, atol=1e-6)
    other = information_discarding(lin, x, None, u, steps=40, sample_seeds=[4, 5, 7])
    assert torch.equal(batched.sigma[:2], other.sigma[:2]) and not torch.equal(batched.sigma[2], other.sigma[2])


class Boom(nn.Module):
    def forward(self, x):
        raise AssertionError("a stage above the measured layer was run")


def test_forward_stops_at_named_layer_and_restores_model():
    model = NamedLayerModel([
        ("conv", nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten())),
        ("fc1", nn.Sequential(nn.Linear(4 * 8 * 8, 16), nn.Tanh(), nn.Dropout(0.5))),
        ("fc2", Boom()),
        ("fc3", Boom()),
    ])
    model.train()
    model.stages["conv"].requires_grad_(False)  # a caller's frozen stage stays frozen
    flags = [p.requires_grad for p in model.parameters()]
    r = information_discarding(model, torch.randn(2, 3, 8, 8), "fc1", grid_units(8, 8, 4), steps=5)
    assert r.sigma.shape == (2, 16) and r.valid.all()
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(KeyError):
        information_discarding(model, torch.randn(2, 3, 8, 8), "fc9", grid_units(8, 8, 4), steps=1)


def test_forward_stops_at_module_of_plain_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), Boom())
    x = torch.rand(2, 1, 4, 4) + 1.0
    r = information_discarding(model, x, "1", grid_units(4, 4, 2), steps=5)
    assert r.valid.all()
    assert not model[3]._forward_hooks and not model[1]._forward_hooks
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(1, 4, 4\)"):
        information_discarding(model, x, "1", torch.zeros(3, 3, dtype=torch.long), steps=1)


class LeftHalf(nn.Module):
    """f(x) = W . (left half of the image), flattened: the right half is never looked at."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8 * 4, 10)

    def forward(self, x):
        return self.lin(x[..., :, :4].flatten(1))


def test_noise_concentrates_on_ignored_units():
    x = torch.randn(3, 1, 8, 8)
    units = grid_units(8, 8, 4)  # 2x2-pixel cells, grid columns 0-1 are the left half
    r = information_discarding(LeftHalf(), x, None, units, steps=200)
    sigma = r.sigma.reshape(3, 4, 4)
    left, right = sigma[:, :, :2], sigma[:, :, 2:]
    assert r.valid.all()
    # the ignored half has no optimum: it stops at the bound, exactly, whatever the budget
    assert torch.equal(right, torch.ones_like(right))
    assert left.max() < 0.2


def test_linear_closed_form_per_sample_units_with_elements_in_no_unit():
    """A unit map per sample (words of different sentences): sample b has n_b units
    and elements in no unit (-1: special tokens, padding), which get no noise.

    Only in-unit elements are perturbed, so delta_f^2 = tau^2 sum_{i in a unit} ||W_:,i||^2,
    and the entropy term is the mean over the sample's own n_b units, so the
    derivation of the grouped case gives sigma_u^2 = alpha delta_f^2 / (2 n_b C_u).
    A unit a sample does not have has NaN sigma and entropy.
    """
    lin = linear(bias=True, seed=2)
    units = torch.tensor([[0, 0, 1, 2, 2, -1, -1, 3],     # 4 units, two elements in none
                          [-1, 0, 0, 0, 1, 1, 2, -1]])    # 3 units
    x = torch.randn(2, 8)
    c = lin.weight.detach().pow(2).sum(0)
    for estimator, options, tolerance in (("converged", EXACT, 0.04),):
        r = information_discarding(lin, x, None, units, estimator=estimator, **options)
        assert r.sigma.shape == (2, 4) and r.valid.all()
        assert torch.isnan(r.sigma[1, 3]) and torch.isnan(r.entropy[1, 3]) and torch.isfinite(r.sigma[0]).all()
        inside = (units >= 0).float()
        assert torch.allclose(r.feature_variance, TAU**2 * (inside * c).sum(1), rtol=0.2)
        for b, n_b in ((0, 4), (1, 3)):
            big_c = torch.zeros(n_b).index_add_(0, units[b][units[b] >= 0], c[units[b] >= 0])
            expected = (ALPHA * r.feature_variance[b] / (2 * n_b * big_c)).sqrt()
            assert (r.sigma[b, :n_b] / expected - 1).abs().max() < tolerance


def test_a_per_sample_map_equal_for_every_sample_gives_the_shared_result():
    """The per-sample path and the shared path are the same problem when every sample has the same map."""
    lin = linear(bias=True, seed=3)
    shared = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    x = torch.randn(3, 8)
    for estimator, options in (("converged", dict(steps=60)), ("paper", dict(entropy_weight=1.0))):
        one = information_discarding(lin, x, None, shared, estimator=estimator, **options)
        each = information_discarding(lin, x, None, shared.expand(3, 8).clone(), estimator=estimator, **options)
        assert torch.allclose(one.sigma, each.sigma, rtol=1e-4, atol=1e-6), estimator
        assert torch.allclose(one.feature_variance, each.feature_variance, rtol=1e-5)


def test_per_sample_units_that_skip_an_id_are_refused():
    with pytest.raises(Exception, match=r"units of sample 1 has ids \[-1, 0, 2\]"):
        information_discarding(linear(), torch.randn(2, 8), None,
                               torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 2, 2, -1, 0, 0, 0]]), steps=2)


def test_two_threads_give_the_same_answer_twice_and_the_callers_setting_is_restored():
    # Multi-threaded CPU kernels made two identical runs of a small VGG differ by up to
    # 0.11 in log sigma; the estimators run with deterministic algorithms (common.deterministic).
    from kdlens.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        model = build_model("vgg11", 4, image_size=32, width=0.125).eval()
        x = torch.randn(2, 3, 32, 32)
        units = grid_units(32, 32, 8)
        runs = [information_discarding(model, x, "fc1", units, sample_seeds=[1, 2], steps=60).sigma
                for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(runs[0], runs[1])
    assert not torch.are_deterministic_algorithms_enabled()
