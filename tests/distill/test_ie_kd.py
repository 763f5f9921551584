"""IE-KD (IE-FT / IE-AT / IE-OD) against Eq. 2-4 and sec. 4.2, computed independently."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlens.distill.base import METHODS
from kdlens.distill.methods.ie_kd import IEAttentionTransfer, IEFactorTransfer, IEOverhaul, InheritanceExploration
from kdlens.models import build_model


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _ie(variant="ie_ft", c_s=8, c_t=6, hw_s=(4, 4), hw_t=(4, 4), seed=0, fit=True, batch=4, **options):
    """A set-up (and paraphraser-fitted) IE method on (batch, c_s, *hw_s) / (batch, c_t, *hw_t) features."""
    options.setdefault("lambda_inh", 2.0)
    options.setdefault("lambda_exp", 3.0)
    method = METHODS.build(variant, layer="conv", paraphraser_epochs=1, **options)
    f_s = _randn(batch, c_s, *hw_s, seed=seed + 1)
    f_t = torch.relu(_randn(batch, c_t, *hw_t, seed=seed + 2))
    torch.manual_seed(seed)
    method.setup({"conv": f_s}, {"conv": f_t})
    if fit:
        batches = [{"conv": torch.relu(_randn(4, c_t, *hw_t, seed=seed + 3 + i))} for i in range(2)]
        method.fit_teacher(lambda: iter(batches), teacher=nn.Identity())
    return method, f_s, f_t


def _unit(x):
    x = x.flatten(1)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _factors(method: InheritanceExploration, f_s, f_t):
    """(F_inh, F_exp, F_T) straight from the modules (None for an empty part), no gradients."""
    k = int(method.split)
    inherit, explore = method.permutation[:k], method.permutation[k:]
    with torch.no_grad():
        f_t_factor = method.paraphraser.encoder(f_t)
        f_inh = method.inheritance_encoder(f_s[:, inherit]) if k > 0 else None
        f_exp = method.exploration_encoder(f_s[:, explore]) if k < f_s.shape[1] else None
    return f_inh, f_exp, f_t_factor


def _l1(a, b):
    return (_unit(a) - _unit(b)).abs().mean().item()


def _l2(a, b):
    return (_unit(a) - _unit(b)).pow(2).mean(1).sqrt().mean().item()


def _cos(a, b):
    return (1 - (_unit(a) * _unit(b)).sum(1)).mean().item()


def _partial_l2(a, b):
    s, t = _unit(a), _unit(b)
    keep = ~((s <= t) & (t <= 0))
    return ((s - t).pow(2) * keep).mean().item()


def _cka(a, b):
    x, y = _unit(a).double(), _unit(b).double()
    x, y = x - x.mean(0), y - y.mean(0)
    return ((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm())).item()


def _attention(factor):
    # AT's map: mean over channels of F², flattened, L2-normalised per sample
    q = factor.pow(2).mean(1).flatten(1)
    return q / q.norm(dim=1, keepdim=True)


# ------------------------------------------------------------------ split


def test_registered_variants():
    assert isinstance(METHODS.build("ie_ft"), IEFactorTransfer)
    assert isinstance(METHODS.build("ie_at"), IEAttentionTransfer)
    assert isinstance(METHODS.build("ie_od"), IEOverhaul)
    # default metrics: L1 for IE-FT and IE-AT, OD's L2 for IE-OD; eta 0.5, lambdas 50 (sec. 4.2)
    assert [METHODS.build(v).metric for v in ("ie_ft", "ie_at", "ie_od")] == ["l1", "l1", "l2"]
    method = METHODS.build("ie_ft")
    assert (method.eta, method.lambda_inh, method.lambda_exp, method.factor_ratio) == (0.5, 50.0, 50.0, 2.0)


@pytest.mark.parametrize("c_s, eta, size", [(8, 0.5, 4), (10, 0.3, 3), (10, 0.7, 7), (16, 0.25, 4), (6, 0.0, 0),
                                            (6, 1.0, 6), (9, 0.5, 5), (4, 0.1, 1), (4, 0.9, 3)])
def test_split_sizes_and_disjoint_cover(c_s, eta, size):
    # size = eta * C rounded half up (9 * 0.5 = 4.5 -> 5); with 0 < eta < 1 both
    # parts keep a channel (4 * 0.1 = 0.4 -> 1, 4 * 0.9 = 3.6 -> 3)
    method, _, _ = _ie(c_s=c_s, eta=eta, fit=False)
    inherit, explore = method.parts()
    assert len(inherit) == size and len(explore) == c_s - size
    assert int(method.split) == size
    assert sorted(torch.cat([inherit, explore]).tolist()) == list(range(c_s))
    assert not set(inherit.tolist()) & set(explore.tolist())
    # one factor encoder per non-empty part, into the teacher's 6 / 2 = 3 factor channels
    for part, encoder in ((inherit, method.inheritance_encoder), (explore, method.exploration_encoder)):
        if len(part) == 0:
            assert encoder is None
        else:
            assert encoder[0].in_channels == len(part) and encoder[6].out_channels == 3
    # the split is in the state dict, so a resumed run has the same one
    assert {"permutation", "split"} <= set(method.state_dict())


def test_split_is_random_seeded_and_restored_from_a_checkpoint():
    first, _, _ = _ie(c_s=16, seed=0, fit=False)
    again, _, _ = _ie(c_s=16, seed=0, fit=False)
    other, _, _ = _ie(c_s=16, seed=1, fit=False)
    assert torch.equal(first.permutation, again.permutation)
    assert not torch.equal(first.permutation, other.permutation)
    assert not torch.equal(first.permutation, torch.arange(16))  # a random split, not the first half
    other.load_state_dict(first.state_dict())
    assert torch.equal(other.permutation, first.permutation)
    assert [p.tolist() for p in other.parts()] == [p.tolist() for p in first.parts()]


def test_not_set_up_errors():
    method = METHODS.build("ie_ft")
    with pytest.raises(RuntimeError, match="set up"):
        method.parts()
    with pytest.raises(RuntimeError, match="set up"):
        method({"conv": _randn(2, 4, 2, 2)}, {"conv": _randn(2, 4, 2, 2)})
    with pytest.raises(ValueError, match="at least 2"):
        METHODS.build("ie_ft").setup({"conv": _randn(2, 1, 2, 2)}, {"conv": _randn(2, 4, 2, 2)})


@pytest.mark.parametrize("eta", [-0.1, 1.5, float("nan")])
def test_invalid_eta_names_the_value(eta):
    with pytest.raises(ValueError, match=f"eta = {eta!r}"):
        METHODS.build("ie_ft", eta=eta)


@pytest.mark.parametrize("variant", ["ie_ft", "ie_at", "ie_od"])
def test_invalid_metric_and_lambdas(variant):
    with pytest.raises(ValueError, match="metric = 'l3'"):
        METHODS.build(variant, metric="l3")
    with pytest.raises(ValueError, match="lambda_inh = -1.0"):
        METHODS.build(variant, lambda_inh=-1.0)
    with pytest.raises(ValueError, match="lambda_exp = -2.0"):
        METHODS.build(variant, lambda_exp=-2.0)


# ------------------------------------------------------------------ losses


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_ie_ft_terms_and_total_match_eq_2_to_4(mode):
    # L_inh = mean |F̂_inh - F̂_T|,  L_exp = -mean |F̂_exp - F̂_T|,  L = 2 L_inh + 3 L_exp
    method, f_s, f_t = _ie("ie_ft")
    method.train(mode == "train")
    loss = method({"conv": f_s}, {"conv": f_t})
    f_inh, f_exp, f_t_factor = _factors(method, f_s, f_t)
    assert f_inh.shape == f_exp.shape == f_t_factor.shape == (4, 3, 4, 4)
    l_inh, l_exp = _l1(f_inh, f_t_factor), -_l1(f_exp, f_t_factor)
    assert method.last_terms["inh"] == pytest.approx(l_inh, rel=1e-5)
    assert method.last_terms["exp"] == pytest.approx(l_exp, rel=1e-5)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(2.0 * l_inh + 3.0 * l_exp, rel=1e-5)
    assert l_inh > 0 and l_exp < 0


def test_eta_zero_and_one_drop_a_term():
    method, f_s, f_t = _ie("ie_ft", eta=0.0)
    method.eval()
    loss = method({"conv": f_s}, {"conv": f_t})
    _, f_exp, f_t_factor = _factors(method, f_s, f_t)
    assert set(method.last_terms) == {"exp"} and method.inheritance_encoder is None
    assert loss.item() == pytest.approx(-3.0 * _l1(f_exp, f_t_factor), rel=1e-5)
    assert method.trainable_parts() == [method.exploration_encoder]

    method, f_s, f_t = _ie("ie_ft", eta=1.0)
    method.eval()
    loss = method({"conv": f_s}, {"conv": f_t})
    f_inh, _, f_t_factor = _factors(method, f_s, f_t)
    assert set(method.last_terms) == {"inh"} and method.exploration_encoder is None
    assert loss.item() == pytest.approx(2.0 * _l1(f_inh, f_t_factor), rel=1e-5)
    assert method.trainable_parts() == [method.inheritance_encoder]


def test_lambdas_zero():
    method, f_s, f_t = _ie("ie_ft", lambda_inh=0.0, lambda_exp=0.0)
    method.eval()
    assert method({"conv": f_s}, {"conv": f_t}).item() == 0.0
    assert method.last_terms["inh"] > 0  # the terms are still measured


def test_ie_at_compares_attention_maps_of_the_factors():
    # sec. 4.2: the encoders' factors are reduced to spatial attention maps, then Eq. 2-3 (L1)
    method, f_s, f_t = _ie("ie_at")
    method.eval()
    loss = method({"conv": f_s}, {"conv": f_t})
    f_inh, f_exp, f_t_factor = _factors(method, f_s, f_t)
    q_inh, q_exp, q_t = _attention(f_inh), _attention(f_exp), _attention(f_t_factor)
    assert q_t.shape == (4, 16)
    l_inh = (q_inh - q_t).abs().mean().item()
    l_exp = -(q_exp - q_t).abs().mean().item()
    assert method.last_terms["inh"] == pytest.approx(l_inh, rel=1e-5)
    assert method.last_terms["exp"] == pytest.approx(l_exp, rel=1e-5)
    assert loss.item() == pytest.approx(2.0 * l_inh + 3.0 * l_exp, rel=1e-5)
    # not the same as IE-FT on the raw factors
    assert method.last_terms["inh"] != pytest.approx(_l1(f_inh, f_t_factor), rel=1e-3)


def test_ie_od_compares_rectified_factors():
    # sec. 4.2, OD form: L_inh = ||max(F_inh, 0) - max(F_T, 0)||_2 (per sample normalised, per element scale)
    method, f_s, f_t = _ie("ie_od")
    method.eval()
    loss = method({"conv": f_s}, {"conv": f_t})
    f_inh, f_exp, f_t_factor = _factors(method, f_s, f_t)
    r_inh, r_exp, r_t = f_inh.clamp_min(0), f_exp.clamp_min(0), f_t_factor.clamp_min(0)
    l_inh, l_exp = _l2(r_inh, r_t), -_l2(r_exp, r_t)
    assert method.last_terms["inh"] == pytest.approx(l_inh, rel=1e-5)
    assert method.last_terms["exp"] == pytest.approx(l_exp, rel=1e-5)
    assert loss.item() == pytest.approx(2.0 * l_inh + 3.0 * l_exp, rel=1e-5)
    # the rectification matters: LeakyReLU factors have negative entries
    assert (f_inh < 0).any()
    assert l_inh != pytest.approx(_l2(f_inh, f_t_factor), rel=1e-3)


REFERENCE = {"l1": _l1, "l2": _l2, "cos": _cos, "partial_l2": _partial_l2}


@pytest.mark.parametrize("metric", ["l1", "l2", "cos", "partial_l2"])
def test_metric_option_selects_table_6a(metric):
    method, f_s, f_t = _ie("ie_ft", metric=metric)
    method.eval()
    assert method.metric == metric
    loss = method({"conv": f_s}, {"conv": f_t})
    f_inh, f_exp, f_t_factor = _factors(method, f_s, f_t)
    distance = REFERENCE[metric]
    l_inh, l_exp = distance(f_inh, f_t_factor), -distance(f_exp, f_t_factor)
    assert method.last_terms["inh"] == pytest.approx(l_inh, rel=1e-5)
    assert method.last_terms["exp"] == pytest.approx(l_exp, rel=1e-5)
    assert loss.item() == pytest.approx(2.0 * l_inh + 3.0 * l_exp, rel=1e-5)


def test_metric_l1_cka_explores_by_cka():
    method, f_s, f_t = _ie("ie_ft", metric="l1_cka")
    method.eval()
    loss = method({"conv": f_s}, {"conv": f_t})
    f_inh, f_exp, f_t_factor = _factors(method, f_s, f_t)
    l_inh, l_exp = _l1(f_inh, f_t_factor), _cka(f_exp, f_t_factor)
    assert method.last_terms["inh"] == pytest.approx(l_inh, rel=1e-5)
    assert method.last_terms["exp"] == pytest.approx(l_exp, rel=1e-4)
    assert method.last_terms["exp"] >= 0
    assert loss.item() == pytest.approx(2.0 * l_inh + 3.0 * l_exp, rel=1e-4)


@pytest.mark.parametrize("variant", ["ie_at", "ie_od"])
def test_metric_option_applies_to_every_variant(variant):
    method, f_s, f_t = _ie(variant, metric="cos")
    method.eval()
    method({"conv": f_s}, {"conv": f_t})
    f_inh, _, f_t_factor = _factors(method, f_s, f_t)
    reduce = _attention if variant == "ie_at" else (lambda x: x.clamp_min(0))
    assert method.last_terms["inh"] == pytest.approx(_cos(reduce(f_inh), reduce(f_t_factor)), rel=1e-5)


class _Fixed(nn.Module):
    """An 'encoder' that returns a given factor, whatever its input."""

    def __init__(self, factor: torch.Tensor) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor


def test_exploration_loss_falls_as_the_factor_diverges_from_the_teacher():
    method, f_s, f_t = _ie("ie_ft", lambda_inh=0.0, lambda_exp=1.0)
    method.eval()
    _, _, f_t_factor = _factors(method, f_s, f_t)
    direction = _randn(*f_t_factor.shape, seed=30)
    values, totals = [], []
    for a in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0):
        method.exploration_encoder = _Fixed(f_t_factor + a * direction)
        totals.append(method({"conv": f_s}, {"conv": f_t}).item())
        values.append(method.last_terms["exp"])
    assert values[0] == pytest.approx(0.0, abs=1e-6)  # F_exp = F_T: no exploration
    assert all(b < a for a, b in zip(values, values[1:])), values
    assert totals == pytest.approx(values, rel=1e-6)


def test_gradient_steps_on_the_exploration_loss_move_away_from_the_teacher():
    method, f_s, f_t = _ie("ie_ft", lambda_inh=0.0, lambda_exp=1.0)
    optimizer = torch.optim.SGD(method.exploration_encoder.parameters(), lr=0.5)
    method.eval()  # fixed BN statistics, so the distance is a function of the weights only
    method({"conv": f_s}, {"conv": f_t})
    start = -method.last_terms["exp"]
    for _ in range(5):
        loss = method({"conv": f_s}, {"conv": f_t})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method({"conv": f_s}, {"conv": f_t})
    assert -method.last_terms["exp"] > start


# ------------------------------------------------------------ gradients


@pytest.mark.parametrize("variant", ["ie_ft", "ie_at", "ie_od"])
def test_teacher_gets_no_gradient(variant):
    method, f_s, f_t = _ie(variant)
    f_s = f_s.clone().requires_grad_(True)
    f_t = f_t.clone().requires_grad_(True)
    method.paraphraser.zero_grad(set_to_none=True)  # fit_teacher's last step leaves its .grad behind
    method.train()
    method({"conv": f_s}, {"conv": f_t}).backward()
    assert f_t.grad is None
    assert all(p.grad is None for p in method.paraphraser.parameters())
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    for encoder in (method.inheritance_encoder, method.exploration_encoder):
        assert all(p.grad is not None for p in encoder.parameters())


@pytest.mark.parametrize("variant", ["ie_ft", "ie_at", "ie_od"])
def test_frozen_paraphraser_unchanged_by_optimizer_steps(variant):
    method, f_s, f_t = _ie(variant)
    before = _state(method.paraphraser)
    encoders = _state(method.inheritance_encoder)
    # an optimiser over *every* parameter of the method, weight decay included
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    method.train()
    assert not method.paraphraser.training  # the frozen paraphraser stays in eval mode
    for step in range(3):
        loss = method({"conv": f_s + 0.1 * step}, {"conv": f_t + 0.05 * step})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _assert_same_state(_state(method.paraphraser), before)
    assert any(not torch.equal(v, encoders[k]) for k, v in _state(method.inheritance_encoder).items())


def test_trainable_parts_exclude_the_paraphraser():
    method, _, _ = _ie("ie_ft")
    parts = method.trainable_parts()
    assert parts == [method.inheritance_encoder, method.exploration_encoder]
    trainable = {id(p) for m in parts for p in m.parameters()}
    assert trainable.isdisjoint(id(p) for p in method.paraphraser.parameters())
    assert all(not p.requires_grad for p in method.paraphraser.parameters())
    # every parameter that requires a gradient is in a trainable part
    assert {id(p) for p in method.parameters() if p.requires_grad} == trainable


# ----------------------------------------------------------------- shapes


@pytest.mark.parametrize("variant", ["ie_ft", "ie_at", "ie_od"])
def test_student_larger_than_teacher_models(variant):
    torch.manual_seed(0)
    student = build_model("vgg11", num_classes=4, image_size=32, width=0.25)
    teacher = build_model("vgg11", num_classes=4, image_size=32, width=0.125).eval()
    x = _randn(4, 3, 32, 32, seed=40)
    method = METHODS.build(variant, paraphraser_epochs=1)
    with torch.no_grad():
        f_t = teacher.features(x, method.layers)
    method.setup(student.features(x, method.layers), f_t)
    method.fit_teacher(lambda: iter([f_t]), teacher)
    inherit, explore = method.parts()
    assert len(inherit) == len(explore) == 64  # half of the student's 128 channels
    assert method.inheritance_encoder[6].out_channels == 32  # half of the teacher's 64
    _, f_s = student.forward_with_features(x, method.layers)
    loss = method(f_s, f_t)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in teacher.parameters())
    assert student.stages["conv"][0].weight.grad is not None


@pytest.mark.parametrize("hw_s, hw_t", [((8, 8), (4, 4)), ((2, 2), (4, 4))])
def test_spatial_mismatch_is_pooled(hw_s, hw_t):
    method, f_s, f_t = _ie("ie_ft", hw_s=hw_s, hw_t=hw_t)
    method.eval()
    loss = method({"conv": f_s}, {"conv": f_t})
    f_inh, f_exp, f_t_factor = _factors(method, f_s, f_t)
    size = (min(hw_s[0], hw_t[0]), min(hw_s[1], hw_t[1]))
    pool = lambda x: F.adaptive_avg_pool2d(x, size)  # noqa: E731
    l_inh, l_exp = _l1(pool(f_inh), pool(f_t_factor)), -_l1(pool(f_exp), pool(f_t_factor))
    assert loss.item() == pytest.approx(2.0 * l_inh + 3.0 * l_exp, rel=1e-5)


def test_fc_features():
    method = METHODS.build("ie_ft", layer="fc1", paraphraser_epochs=0)
    f_s, f_t = _randn(3, 8, seed=50), torch.relu(_randn(3, 6, seed=51))
    method.setup({"fc1": f_s}, {"fc1": f_t})
    method.eval()
    loss = method({"fc1": f_s}, {"fc1": f_t})
    f_inh, f_exp, f_t_factor = _factors(method, f_s[:, :, None, None], f_t[:, :, None, None])
    # a (B, C) feature is a (B, C, 1, 1) map; default lambdas 50
    expected = 50.0 * _l1(f_inh, f_t_factor) - 50.0 * _l1(f_exp, f_t_factor)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ie_at_rejects_features_without_spatial_extent():
    method = METHODS.build("ie_at", layer="fc1", paraphraser_epochs=0)
    f_s = _randn(4, 8, seed=60).requires_grad_(True)
    f_t = _randn(4, 6, seed=61)
    with pytest.raises(ValueError, match="feature maps"):
        method.setup({"fc1": f_s.detach()}, {"fc1": f_t})
        method({"fc1": f_s}, {"fc1": f_t})

