"""The authors' recipe (``estimator="paper"``) against a plain one-image reference.

``reference_sigma`` is written the way the authors' ``train_sigma.py`` and
``NoiseLayer`` write it (a 4x4 sigma nearest-upsampled by F.interpolate,
clamped in the forward pass, torch.optim.SGD, nn.MSELoss after a ReLU, the
lambda * 1.5 rule after step 59, the iterate nearest to the entropy -2.8), one
image at a time, given that image's slice of the batched run's noise draws.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlens.explain import grid_units, information_discarding, paper_defaults
from kdlens.errors import UsageError
from kdlens.explain.paper import NOISY_COPIES, STEPS


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 12))


def reference_sigma(model, image, lam, var_noise, step_noise):
    """One image, the authors' way. var_noise (96, 3, 8, 8); step_noise (80, 96, 3, 8, 8)."""
    def noisy(sigma, noise):
        sigma.data.clamp_(0.001, 1)
        out = image + F.interpolate(sigma.expand(noise.shape[0], 1, 4, 4), size=8, mode="nearest") * noise
        penalty = torch.mean(torch.log(sigma)) + 0.5 * torch.log(torch.tensor(2 * math.pi)) + torch.tensor(0.5)
        return out, penalty

    criterion, relu = nn.MSELoss(), nn.ReLU()
    with torch.no_grad():
        sigma0 = torch.nn.Parameter(torch.ones(1, 1, 4, 4) * 0.01)
        noise_image, _ = noisy(sigma0, var_noise)
        origin = relu(model(image))
        sigma_f = criterion(relu(model(noise_image)), origin.expand(NOISY_COPIES, -1))
    sigma = torch.nn.Parameter(torch.ones(1, 1, 4, 4) * 0.01)
    optimizer = torch.optim.SGD([sigma], lr=1e-4)
    sigmas, entropy = [], np.zeros(STEPS)
    for epoch in range(STEPS):
        noise_image, penalty = noisy(sigma, step_noise[epoch])
        sigmas.append(sigma.detach().clone())
        loss = criterion(relu(model(noise_image)), origin.expand(NOISY_COPIES, -1)) / sigma_f - penalty * lam
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        entropy[epoch] = float(penalty.detach())
        if epoch == STEPS - 20 - 1:
            if np.max(entropy[: STEPS - 20]) > -2.8:
                break
            lam = lam * 1.5
    ran = len(sigmas)
    best = int(np.argmin(np.abs(entropy[:ran] + 2.8)))
    return sigmas[best].reshape(16), float(sigma_f), ran


@pytest.mark.parametrize("lam", [7.0, 0.05])  # 7: the run stops after step 59; 0.05: lambda grows, 80 steps
def test_batched_equals_one_image_reference(lam):
    model = small_cnn().eval()
    images = torch.randn(3, 3, 8, 8)
    gen = torch.Generator().manual_seed(11)
    result = information_discarding(model, images, None, grid_units(8, 8, 4), estimator="paper",
                                    entropy_weight=lam, generator=gen)
    replay = torch.Generator().manual_seed(11)
    var_noise = torch.randn((NOISY_COPIES, 3, 3, 8, 8), generator=replay)
    step_noise = torch.stack([torch.randn((NOISY_COPIES, 3, 3, 8, 8), generator=replay) for _ in range(STEPS)])
    assert result.valid.all()
    for b in range(3):
        sigma, sigma_f, ran = reference_sigma(model, images[b : b + 1], lam, var_noise[:, b], step_noise[:, :, b])
        assert ran == (60 if lam == 7.0 else 80)
        assert torch.isfinite(result.loss_history[:ran, b]).all() and not torch.isfinite(result.loss_history[ran:, b]).any()
        assert math.isclose(float(result.feature_variance[b]), sigma_f, rel_tol=1e-5)
        torch.testing.assert_close(result.sigma[b], sigma, rtol=1e-5, atol=1e-7)
    assert torch.allclose(result.entropy, result.sigma.log() + 0.5 * math.log(2 * math.pi * math.e))
    assert ((result.sigma >= 0.001) & (result.sigma <= 1)).all()


def test_sample_seeds_give_each_image_the_answer_of_a_run_on_it_alone():
    """With one noise stream per sample, the batched recipe is the authors' one-image
    procedure run with that image's seed: its 96 copies for delta_f^2, then 96 per step."""
    model = small_cnn(3).eval()
    images = torch.randn(3, 3, 8, 8)
    seeds = [101, 7, 2**40 + 5]
    result = information_discarding(model, images, None, grid_units(8, 8, 4), estimator="paper",
                                    entropy_weight=7.0, sample_seeds=seeds)
    for b, seed in enumerate(seeds):
        own = torch.Generator().manual_seed(seed)
        var_noise = torch.randn((NOISY_COPIES, 3, 8, 8), generator=own)
        step_noise = torch.stack([torch.randn((NOISY_COPIES, 3, 8, 8), generator=own) for _ in range(STEPS)])
        sigma, sigma_f, ran = reference_sigma(model, images[b : b + 1], 7.0, var_noise, step_noise)
        assert math.isclose(float(result.feature_variance[b]), sigma_f, rel_tol=1e-5)
        torch.testing.assert_close(result.sigma[b], sigma, rtol=1e-5, atol=1e-7)
        alone = information_discarding(model, images[b : b + 1], None, grid_units(8, 8, 4), estimator="paper",
                                       entropy_weight=7.0, sample_seeds=[seed])
        torch.testing.assert_close(result.sigma[b : b + 1], alone.sigma, rtol=1e-5, atol=1e-7)


def test_sample_seeds_are_checked():
    images = torch.randn(2, 3, 8, 8)
    for bad in ([1], [1, 2.5], [1, True]):
        with pytest.raises(UsageError, match="sample_seeds"):
            information_discarding(small_cnn(), images, None, grid_units(8, 8, 4), estimator="paper", sample_seeds=bad)
    with pytest.raises(UsageError, match="both given"):
        information_discarding(small_cnn(), images, None, grid_units(8, 8, 4), estimator="paper", sample_seeds=[1, 2],
                               generator=torch.Generator())


def test_dead_feature_is_invalid_and_finite():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 5), nn.ReLU())
    with torch.no_grad():
        model[1].weight.abs_()
        model[1].bias.zero_()
    images = torch.stack([torch.rand(3, 8, 8), torch.full((3, 8, 8), -50.0)])  # the second: every ReLU dead
    r = information_discarding(model, images, None, grid_units(8, 8, 4), estimator="paper")
    assert r.valid.tolist() == [True, False] and "delta_f^2 == 0" in r.invalid_reason[1]
    assert torch.allclose(r.sigma[1], torch.full((16,), 0.01))
    for t in (r.sigma, r.entropy, r.feature_variance, r.final_loss):
        assert not torch.isnan(t).any()


def test_architecture_defaults_and_unknown_options():
    assert paper_defaults("vgg11") == (7.0, 0.2) and paper_defaults("alexnet") == (7.0, 0.25)
    assert paper_defaults("resnet18") == (6.0, 0.2)
    # point clouds: b of Sec. 4.1 (0.5 for PointNet, 0.25 otherwise), lambda ours (VGG's)
    assert paper_defaults("pointnet") == (7.0, 0.5) and paper_defaults("dgcnn") == (7.0, 0.25)
    assert paper_defaults("pointnet2") == (7.0, 0.25)  # only PointNet itself has b = 0.5
    with pytest.raises(ValueError, match="pointnet"):
        paper_defaults("pointconv")
    with pytest.raises(TypeError, match="steps"):
        information_discarding(small_cnn(), torch.randn(1, 3, 8, 8), None, grid_units(8, 8, 4),
                               estimator="paper", steps=10)
    with pytest.raises(ValueError, match="'exact'"):
        information_discarding(small_cnn(), torch.randn(1, 3, 8, 8), None, grid_units(8, 8, 4), estimator="exact")
