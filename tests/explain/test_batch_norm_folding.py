"""Batch norms folded into their convolutions: the same features, the caller's model untouched."""

import torch
from torch import nn

from kdlens.explain import grid_units, information_discarding
from kdlens.explain.batch_norm_folding import fold_batch_norms
from kdlens.explain.common import feature_fn
from kdlens.models import build_model

from test_paper_estimator import reference_sigma  # the authors' one-image form, on the unfolded network


def trained_statistics(model: nn.Module) -> nn.Module:
    """Batch norms with running statistics and affine weights far from their initial 0, 1."""
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.2, 3.0)
            module.weight.data.uniform_(0.5, 2.0)
            module.bias.data.normal_(0, 0.3)
    return model.eval()


def test_a_folded_vgg_computes_the_same_features_and_the_original_is_unchanged():
    torch.manual_seed(0)
    model = trained_statistics(build_model("vgg11", num_classes=6, image_size=32, width=0.125))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norms(model)
    assert folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8  # VGG-11: one per conv
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for layer in ("conv", "fc1"):
            torch.testing.assert_close(feature_fn(folded, layer)(x), feature_fn(model, layer)(x), rtol=1e-4, atol=1e-5)
        bn_name = next(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
        torch.testing.assert_close(feature_fn(folded, bn_name)(x), feature_fn(model, bn_name)(x), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_nothing_to_fold_returns_the_model_itself():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))  # the norm follows a ReLU
    assert fold_batch_norms(plain) is plain
    linear = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))  # a Linear's norm is left alone
    assert fold_batch_norms(linear) is linear


def test_the_paper_recipe_on_a_network_with_batch_norm_equals_the_unfolded_reference():
    torch.manual_seed(0)
    model = trained_statistics(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1),
        nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 12)))
    images = torch.randn(2, 3, 8, 8)
    result = information_discarding(model, images, None, grid_units(8, 8, 4), estimator="paper",
                                    entropy_weight=7.0, sample_seeds=[3, 4])
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the caller's model keeps its norms
    for b, seed in enumerate([3, 4]):
        own = torch.Generator().manual_seed(seed)
        var_noise = torch.randn((96, 3, 8, 8), generator=own)
        step_noise = torch.stack([torch.randn((96, 3, 8, 8), generator=own) for _ in range(80)])
        sigma, _, _ = reference_sigma(model, images[b : b + 1], 7.0, var_noise, step_noise)
        torch.testing.assert_close(result.sigma[b], sigma, rtol=1e-4, atol=1e-6)
