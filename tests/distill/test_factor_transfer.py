"""The paraphraser of IE-KD supplement Table 3 and factor transfer (FT) against its formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlens.distill.base import METHODS
from kdlens.distill.factors import FactorAutoEncoder, FactorEncoder, factor_channels, fit_autoencoder, freeze
from kdlens.distill.methods.factor_transfer import FactorTransfer
from kdlens.models import build_model


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------ paraphraser


def test_factor_channels():
    # C / ratio rounded, at least 1 (sec. 4.2: ratio 2)
    assert factor_channels(64, 2) == 32
    assert factor_channels(8, 2.0) == 4
    assert factor_channels(6, 4) == 2  # round(1.5) = 2
    assert factor_channels(1, 2) == 1
    assert factor_channels(8, 0.5) == 16
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="factor_ratio"):
            factor_channels(8, bad)


def test_autoencoder_follows_table_3():
    # Table 3: Conv1 C->C, Conv2 C->C/2, Conv3 C/2->C/2, Deconv1 C/2->C/2,
    # Deconv2 C/2->C, Deconv3 C->C; every one 3x3 / stride 1 / pad 1 and
    # followed by BN and LeakyReLU(0.1); the spatial size never changes.
    c, k = 8, 4
    ae = FactorAutoEncoder(c, k)
    layers = [*ae.encoder, *ae.decoder]
    assert len(layers) == 18
    expected = [
        (nn.Conv2d, c, c), (nn.Conv2d, c, k), (nn.Conv2d, k, k),
        (nn.ConvTranspose2d, k, k), (nn.ConvTranspose2d, k, c), (nn.ConvTranspose2d, c, c),
    ]  # fmt: skip
    x = _randn(2, c, 5, 7)
    shapes = []
    h = x
    for i, (kind, cin, cout) in enumerate(expected):
        conv, bn, act = layers[3 * i : 3 * i + 3]
        assert type(conv) is kind, i
        assert (conv.in_channels, conv.out_channels) == (cin, cout), i
        assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1), i
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == cout, i
        assert isinstance(act, nn.LeakyReLU) and act.negative_slope == pytest.approx(0.1), i
        h = act(bn(conv(h)))
        shapes.append(tuple(h.shape))
    assert shapes == [(2, 8, 5, 7), (2, 4, 5, 7), (2, 4, 5, 7), (2, 4, 5, 7), (2, 8, 5, 7), (2, 8, 5, 7)]
    # the encoder half gives the factor, the whole the reconstruction
    assert ae.encoder(x).shape == (2, k, 5, 7)
    assert ae(x).shape == x.shape
    assert torch.allclose(ae(x), h)


def test_factor_encoder_is_the_encoder_half_on_other_channels():
    enc = FactorEncoder(12, 4)
    convs = [m for m in enc if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(12, 12), (12, 4), (4, 4)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc) == 3
    assert all(m.negative_slope == pytest.approx(0.1) for m in enc if isinstance(m, nn.LeakyReLU))
    assert enc(_randn(2, 12, 3, 3)).shape == (2, 4, 3, 3)


def test_reconstruction_loss_is_the_mean_squared_error():
    ae = FactorAutoEncoder(4, 2).eval()
    x = _randn(3, 4, 2, 2)
    expected = (ae(x) - x).pow(2).mean()
    assert ae.reconstruction_loss(x).item() == pytest.approx(expected.item(), rel=1e-6)
    # a (B, C) feature is taken as a (B, C, 1, 1) map
    v = _randn(3, 4, seed=1)
    expected = (ae(v[:, :, None, None]) - v[:, :, None, None]).pow(2).mean()
    assert ae.reconstruction_loss(v).item() == pytest.approx(expected.item(), rel=1e-6)


# Fixed feature set for the paraphraser: 2 batches of post-ReLU-like (8, 8, 4, 4) maps.
FEATURES = [torch.relu(_randn(8, 8, 4, 4, seed=10 + i)) for i in range(2)]


def _batches():
    return ({"conv": f} for f in FEATURES)


def _eval_loss(ae: FactorAutoEncoder) -> float:
    ae.eval()
    with torch.no_grad():
        return sum(ae.reconstruction_loss(f).item() for f in FEATURES) / len(FEATURES)


def test_fit_autoencoder_lowers_the_loss_and_freezes():
    torch.manual_seed(0)
    ae = FactorAutoEncoder(8, 4)
    before = _eval_loss(ae)
    losses = fit_autoencoder(ae, _batches, "conv", epochs=4, lr=0.1)
    assert len(losses) == 4 and all(isinstance(v, float) for v in losses)
    assert losses[-1] < losses[0]
    assert _eval_loss(ae) < before
    # frozen: no parameter trains, batch norm uses its running statistics
    assert not ae.training and not any(m.training for m in ae.modules())
    assert all(not p.requires_grad for p in ae.parameters())


def test_fit_autoencoder_zero_epochs_and_bad_epochs():
    ae = FactorAutoEncoder(8, 4)
    state = _state(ae)
    assert fit_autoencoder(ae, _batches, "conv", epochs=0, lr=0.1) == []
    _assert_same_state(_state(ae), state)
    assert all(not p.requires_grad for p in ae.parameters()) and not ae.training
    with pytest.raises(ValueError, match="epochs"):
        fit_autoencoder(ae, _batches, "conv", epochs=-1, lr=0.1)


def test_freeze():
    m = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))
    freeze(m)
    assert not m.training and not m[1].training
    assert all(not p.requires_grad for p in m.parameters())


# ---------------------------------------------------------------------- FT


def _ft(c_s=6, c_t=8, hw_s=(4, 4), hw_t=(4, 4), beta=3.0, seed=0, fit=True, epochs=1):
    """An FT set up on student (2, c_s, *hw_s) and teacher (2, c_t, *hw_t) features."""
    torch.manual_seed(seed)
    f_s = _randn(2, c_s, *hw_s, seed=seed + 1)
    f_t = torch.relu(_randn(2, c_t, *hw_t, seed=seed + 2))
    method = FactorTransfer(layer="conv", beta=beta, paraphraser_epochs=epochs, paraphraser_lr=0.1)
    method.setup({"conv": f_s}, {"conv": f_t})
    if fit:
        batches = [{"conv": torch.relu(_randn(4, c_t, *hw_t, seed=seed + 3 + i))} for i in range(2)]
        method.fit_teacher(lambda: iter(batches), teacher=nn.Identity())
    return method, f_s, f_t


def _unit(x):
    x = x.flatten(1)
    return x / x.norm(dim=1, keepdim=True)


def test_registered():
    assert isinstance(METHODS.build("ft"), FactorTransfer)


def test_ft_setup_builds_translator_and_frozen_paraphraser():
    method, _, _ = _ft(c_s=6, c_t=8, fit=False)
    # paraphraser on the teacher's 8 channels with 8 / 2 = 4 factors; translator 6 -> 4
    assert method.paraphraser.encoder[0].in_channels == 8
    assert method.paraphraser.encoder[3].out_channels == 4
    convs = [m for m in method.translator if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(6, 6), (6, 4), (4, 4)]
    assert all(not p.requires_grad for p in method.paraphraser.parameters())
    assert not method.paraphraser.training
    # only the translator is optimised with the student
    parts = method.trainable_parts()
    assert parts == [method.translator]
    trainable = {id(p) for m in parts for p in m.parameters()}
    assert not trainable & {id(p) for p in method.paraphraser.parameters()}
    # the paraphraser is in the state dict (a resume gets it from the checkpoint)
    assert any(k.startswith("paraphraser.") for k in method.state_dict())


def test_ft_fit_teacher_records_losses_and_freezes():
    method, _, _ = _ft(epochs=2)
    assert len(method.paraphraser_losses) == 2
    assert all(not p.requires_grad for p in method.paraphraser.parameters())
    assert not method.paraphraser.training


def test_ft_loss_matches_formula():
    # L = beta * mean | T(f_s)/||T(f_s)|| - P_enc(f_t)/||P_enc(f_t)|| |
    method, f_s, f_t = _ft(beta=3.0)
    method.eval()
    loss = method({"conv": f_s}, {"conv": f_t})
    with torch.no_grad():
        factor_s = method.translator(f_s)
        factor_t = method.paraphraser.encoder(f_t)
    expected = 3.0 * (_unit(factor_s) - _unit(factor_t)).abs().mean()
    assert factor_s.shape == factor_t.shape == (2, 4, 4, 4)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # in train mode the translator's batch norm uses the batch statistics; the paraphraser stays in eval
    method.train()
    assert method.translator.training and not method.paraphraser.training
    loss = method({"conv": f_s}, {"conv": f_t})
    factor_s = method.translator(f_s).detach()
    expected = 3.0 * (_unit(factor_s) - _unit(factor_t)).abs().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ft_loss_scales_with_beta_bounded_and_zero_for_equal_factors():
    method, f_s, f_t = _ft(c_s=8, c_t=8, beta=1.0)
    method.eval()
    full = method({"conv": f_s}, {"conv": f_t}).item()
    method.beta = 0.5
    assert method({"conv": f_s}, {"conv": f_t}).item() == pytest.approx(0.5 * full, rel=1e-6)
    # mean over d elements of |â - b̂| for unit â, b̂: <= ||â - b̂||_2 / sqrt(d) <= 2 / sqrt(d), d = 4*4*4
    assert 0 < full <= 2 / 8
    # a translator equal to the paraphraser's encoder on the teacher's own feature: 0
    method.translator.load_state_dict(method.paraphraser.encoder.state_dict())
    assert method({"conv": f_t}, {"conv": f_t}).item() == pytest.approx(0.0, abs=1e-6)


def test_ft_teacher_gets_no_gradient():
    method, f_s, f_t = _ft()
    f_s = f_s.clone().requires_grad_(True)
    f_t = f_t.clone().requires_grad_(True)
    # (fit_teacher's last SGD step leaves its .grad behind; clear it to see what this backward does)
    method.paraphraser.zero_grad(set_to_none=True)
    method.train()
    method({"conv": f_s}, {"conv": f_t}).backward()
    assert f_t.grad is None
    assert all(p.grad is None for p in method.paraphraser.parameters())
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert all(p.grad is not None for p in method.translator.parameters())


def test_ft_frozen_paraphraser_unchanged_by_optimizer_steps():
    method, f_s, f_t = _ft()
    before = _state(method.paraphraser)
    translator_before = _state(method.translator)
    # Even an optimiser over *all* the method's parameters, with weight decay,
    # must leave the frozen paraphraser (weights and BN buffers) alone.
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    method.train()
    for step in range(3):
        student = f_s + 0.1 * step
        loss = method({"conv": student}, {"conv": f_t + 0.05 * step})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _assert_same_state(_state(method.paraphraser), before)
    changed = [k for k, v in _state(method.translator).items() if not torch.equal(v, translator_before[k])]
    assert changed  # the translator did train


@pytest.mark.parametrize(
    "c_s, c_t, hw_s, hw_t",
    [
        (6, 8, (4, 4), (4, 4)),  # student narrower
        (16, 8, (4, 4), (4, 4)),  # student wider than the teacher
        (3, 8, (8, 8), (4, 4)),  # student larger spatially: its factor is pooled to 4x4
        (8, 8, (2, 2), (4, 4)),  # teacher larger spatially
    ],
)
def test_ft_channel_and_spatial_mismatch(c_s, c_t, hw_s, hw_t):
    method, f_s, f_t = _ft(c_s=c_s, c_t=c_t, hw_s=hw_s, hw_t=hw_t, epochs=1)
    method.eval()
    loss = method({"conv": f_s}, {"conv": f_t})
    size = (min(hw_s[0], hw_t[0]), min(hw_s[1], hw_t[1]))
    with torch.no_grad():
        factor_s = F.adaptive_avg_pool2d(method.translator(f_s), size)
        factor_t = F.adaptive_avg_pool2d(method.paraphraser.encoder(f_t), size)
    expected = 3.0 * (_unit(factor_s) - _unit(factor_t)).abs().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ft_on_models_student_larger_than_teacher():
    torch.manual_seed(0)
    student = build_model("vgg11", num_classes=4, image_size=32, width=0.25).eval()
    teacher = build_model("vgg11", num_classes=4, image_size=32, width=0.125).eval()
    x = _randn(2, 3, 32, 32)
    f_s, f_t = student.features(x, ["conv"]), teacher.features(x, ["conv"])
    assert f_s["conv"].shape[1] == 128 and f_t["conv"].shape[1] == 64
    method = FactorTransfer(paraphraser_epochs=1)
    method.setup(f_s, f_t)
    method.fit_teacher(lambda: iter([teacher.features(x, ["conv"])]), teacher)
    assert method.translator[0].in_channels == 128 and method.translator[3].out_channels == 32
    loss = method(f_s, f_t)
    assert loss.shape == () and torch.isfinite(loss) and loss > 0


def test_ft_fc_feature_and_errors():
    # a (B, C) feature is a (B, C, 1, 1) map
    method, _, _ = _ft(c_s=5, c_t=6, hw_s=(1, 1), hw_t=(1, 1))
    f_s, f_t = _randn(3, 5, seed=20), torch.relu(_randn(3, 6, seed=21))
    method.eval()
    assert torch.isfinite(method({"conv": f_s}, {"conv": f_t}))
    with pytest.raises(RuntimeError, match="set up"):
        FactorTransfer()({"conv": f_s}, {"conv": f_t})
    with pytest.raises(ValueError, match="beta"):
        FactorTransfer(beta=-1.0)
    with pytest.raises(ValueError, match="paraphraser_epochs"):
        FactorTransfer(paraphraser_epochs=-1)
    with pytest.raises(ValueError, match="paraphraser_lr"):
        FactorTransfer(paraphraser_lr=0.0)
    with pytest.raises(ValueError, match="factor_ratio"):
        FactorTransfer(factor_ratio=0.0)
