"""IEP knowledge transfer as a kdlens method: sensing points, SPCA per point,
the MPNN (and MHGD) fitted on the teacher, the loss terms and the clipped
gradients of the joint trainer."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from kdlens.distill.base import METHODS
from kdlens.distill.iep.black_box import MultiHeadGraph, black_box_loss
from kdlens.distill.iep.gradients import combine_gradients, loss_gradients
from kdlens.distill.iep.sensing import SensingPoint
from kdlens.models import build_model
from kdlens.train.joint import LossTerms, controlled_backward

N = 12


def eq20(task_loss, distill_losses, params):
    """Eq. 20 from the losses, written plainly: each loss's gradient, then the clipped sum."""
    return combine_gradients(loss_gradients(task_loss, params), [loss_gradients(loss, params) for loss in distill_losses])


def _net(width=0.125, seed=0, arch="vgg11"):
    torch.manual_seed(seed)
    return build_model(arch, num_classes=3, image_size=16, width=width).eval()


def _images(n=N, seed=0):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _prepared(student, teacher, epochs=2, **options):
    """bind, setup and fit_teacher, as the joint trainer does."""
    method = METHODS.build("iep", mpnn_epochs=epochs, **options)
    method.bind(student, teacher)
    with torch.no_grad():
        probe = _images(2, seed=9)
        method.setup(student.features(probe, method.layers), teacher.features(probe, method.layers))
    batches = [_images(seed=s) for s in range(4)]

    def teacher_batches():
        for images in batches:
            with torch.no_grad():
                features = teacher.features(images, method.layers)
            yield features  # outside no_grad, which would otherwise hold in the consumer

    method.fit_teacher(teacher_batches, teacher)
    return method


def test_points_default_to_every_stage_end_and_can_be_chosen():
    student, teacher = _net(), _net(seed=1)
    method = METHODS.build("iep")
    method.bind(student, teacher)
    assert method.layers == ("stage1", "stage2", "stage3", "stage4", "stage5")  # VGG-11: 5 pools
    chosen = METHODS.build("iep", points=["stage2", "stage4"])
    chosen.bind(student, teacher)
    assert chosen.layers == ("stage2", "stage4")
    with pytest.raises(ValueError, match="the student has 4 stages and the teacher 5"):
        METHODS.build("iep").bind(_net(arch="resnet18"), teacher)


@pytest.mark.parametrize("options, match", [
    (dict(knowledge=["int", "logits"]), "knowledge = .*expected a non-empty subset"),
    (dict(knowledge=[]), "knowledge"),
    (dict(second_pca="svd"), "second_pca = 'svd'"),
    (dict(iterations=0), "iterations = 0"),
    (dict(gradient_control="amplify"), "gradient_control = 'amplify'"),
    (dict(points=["stage1"]), "at least two"),
    (dict(bb_heads=1), "bb_heads = 1"),
])
def test_bad_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        METHODS.build("iep", **options)


def test_a_student_equal_to_the_teacher_has_no_loss():
    # p_S = u_Tᵀ F / ||u_Tᵀ F|| = v_T when F_S = F_T, so C_S = C_T and every term is 0.
    teacher = _net(seed=1)
    method = _prepared(teacher, teacher, knowledge=["int", "alt", "bb"])
    features = teacher.features(_images(seed=5), method.layers)
    terms = method.loss_terms(features, features)
    assert set(terms) == {"int", "alt", "bb"}
    for name, value in terms.items():
        assert value.abs().item() < 1e-5, name
    other = method.loss_terms(_net(seed=2).features(_images(seed=5), method.layers), features)
    assert all(v.item() > 1e-4 for v in other.values())


def test_fitting_trains_and_then_freezes_the_modules():
    student, teacher = _net(), _net(seed=1)
    method = _prepared(student, teacher, epochs=4, knowledge=["int", "alt", "bb"])
    losses = method.mpnn_losses
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert "mpnn_history" in method.state_dict()
    for module in (method.mpnns, method.graphs):
        assert len(module) == 4  # five sensing points, four pairs
        assert not any(p.requires_grad for p in module.parameters())
    method.train()
    assert not method.mpnns.training and not method.graphs.training  # batch norm stays on running statistics
    assert method.trainable_parts() == []  # equal widths: no connector
    # the IPCA statistics are the teacher's, fixed during the student's training
    before = {k: v.clone() for k, v in method.state_dict().items()}
    features = student.features(_images(seed=7), method.layers)
    terms = method.loss_terms(features, teacher.features(_images(seed=7), method.layers))
    sum(terms.values()).backward()
    after = method.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_narrower_student_gets_connectors_and_gradients():
    student, teacher = _net(width=0.0625), _net(width=0.125, seed=1)
    method = _prepared(student, teacher, epochs=1)
    parts = method.trainable_parts()
    assert len(parts) == 5 and all(isinstance(p, torch.nn.Conv2d) for p in parts)
    assert parts[0].in_channels == 4 and parts[0].out_channels == 8
    images = _images(seed=3)
    logits, features = student.forward_with_features(images, method.layers)
    terms = method.loss_terms(features, teacher.features(images, method.layers))
    sum(terms.values()).backward()
    assert all(p.weight.grad is not None and p.weight.grad.abs().sum() > 0 for p in parts)
    assert next(student.parameters()).grad is not None


def test_ablations_build_what_they_name():
    student, teacher = _net(), _net(seed=1)
    pca = _prepared(student, teacher, epochs=1, second_pca="pca", knowledge=["alt"], iterations=3)
    assert not any("pca." in k for k in pca.state_dict())  # no IPCA statistics
    assert pca.mpnns[0].iterations == 3
    images = _images(seed=4)
    terms = pca.loss_terms(student.features(images, pca.layers), teacher.features(images, pca.layers))
    assert set(terms) == {"alt"}
    senses, outputs = pca.teacher_knowledge(teacher.features(images, pca.layers))
    assert outputs[0].messages.shape[:3] == (N, N, 3)


def test_controlled_backward_clips_each_term_to_the_task_gradient():
    student = _net()
    params = list(student.parameters())
    x, y = _images(seed=6), torch.arange(N) % 3
    method = METHODS.build("iep")

    def terms():
        logits = student(x)
        feature = student.features(x, ["conv"])["conv"]
        return LossTerms(F.cross_entropy(logits, y), {"big": 1e4 * feature.pow(2).mean(),
                                                       "small": 1e-6 * logits.pow(2).mean()})

    task_only = torch.autograd.grad(terms().task, params, allow_unused=True)
    loss = controlled_backward(method, student)(terms(), params)
    assert torch.isfinite(loss)
    expected = eq20(terms().task, list(terms().distillation.values()), params)
    for p, g, e, t in zip(params, [p.grad for p in params], expected, task_only):
        if e is None:
            assert g is None
            continue
        assert torch.allclose(g, e)
        # at most the task gradient plus one task-norm per term
        task_norm = 0.0 if t is None else t.norm()
        assert (g - (0 if t is None else t)).norm() <= 2 * task_norm + 1e-6


def test_graph_logits_are_permutation_equivariant_and_the_loss_vanishes_on_equal_logits():
    torch.manual_seed(0)
    graph = MultiHeadGraph(4, 6, heads=3).eval()
    c_prev, c_next = torch.randn(N, 4), torch.randn(N, 6)
    g = graph.logits(c_prev, c_next)
    assert g.shape == (2, N, N)
    perm = torch.randperm(N)
    assert torch.allclose(graph.logits(c_prev[perm], c_next[perm]), g[:, perm][:, :, perm], atol=1e-5)
    estimate = graph.estimate(c_prev, c_next, torch.eye(N))
    assert torch.allclose(estimate.norm(dim=1), torch.ones(N))
    assert black_box_loss(g, g).abs() < 1e-6 and black_box_loss(g, g.flip(0)) > 0
    with pytest.raises(ValueError, match="extrinsic head"):
        graph.estimate(c_prev, c_next)


def test_loss_terms_are_equivariant_in_the_batch():
    student, teacher = _net(), _net(seed=1)
    method = _prepared(student, teacher, epochs=1)
    method.eval()
    images = _images(seed=8)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = method.loss_terms(student.features(images, method.layers), teacher.features(images, method.layers))
        b = method.loss_terms(student.features(images[perm], method.layers),
                              teacher.features(images[perm], method.layers))
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key
    assert list(itertools.islice(a, 2)) == ["int", "alt"]


@pytest.mark.parametrize("student_channels", [6, 4])
def test_the_student_path_has_the_gradient_of_finite_differences(student_channels):
    # Eq. 16-17 (through the connector when the widths differ) against finite differences, in float64.
    torch.manual_seed(0)
    point = SensingPoint((6, 3, 3), (student_channels, 3, 3)).double()
    point.teacher(torch.randn(16, 6, 3, 3, dtype=torch.float64).relu(), update=True)  # fit the IPCA
    sense = point.teacher(torch.randn(4, 6, 3, 3, dtype=torch.float64).relu(), update=False)
    feature = torch.randn(4, student_channels, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: point.student(f, sense), (feature,))


def test_controlled_backward_gives_the_connectors_the_plain_sum_of_the_terms_gradients():
    student, teacher = _net(width=0.0625), _net(width=0.125, seed=1)
    method = _prepared(student, teacher, epochs=1)
    connectors = [p for part in method.trainable_parts() for p in part.parameters()]
    params = list(student.parameters()) + connectors
    images, labels = _images(seed=8), torch.arange(N) % 3

    def terms():
        logits, features = student.forward_with_features(images, method.layers)
        return LossTerms(F.cross_entropy(logits, labels),
                         method.loss_terms(features, teacher.features(images, method.layers)))

    expected = torch.autograd.grad(sum(terms().distillation.values()), connectors)
    controlled_backward(method, student)(terms(), params)
    for p, e in zip(connectors, expected):
        torch.testing.assert_close(p.grad, e)
    theta = list(student.parameters())
    clipped = eq20(terms().task, list(terms().distillation.values()), theta)
    for p, e in zip(theta, clipped):
        torch.testing.assert_close(p.grad, e)
