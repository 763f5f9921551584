"""Multi-head graph distillation (MHGD): the compression, the graph KL, the teacher-fitted graphs, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlens.distill.base import METHODS
from kdlens.distill.iep.black_box import MultiHeadGraph
from kdlens.distill.methods.mhgd import MultiHeadGraphDistillation, align_signs, principal_vectors
from kdlens.errors import UsageError
from kdlens.models import build_model

from zoo_helpers import joint_step_leaves_teacher_alone


def test_registered_with_defaults():
    method = METHODS.build("mhgd")
    assert isinstance(method, MultiHeadGraphDistillation)
    assert method.sensing_points and not method.distils_logits and not method.includes_task_loss
    assert (method.weight, method.heads, method.graph_epochs) == (1.0, 8, 5)
    assert method.controls_gradients and method.gradient_control == "clip" and method.clip_scope == "parameter"
    assert not MultiHeadGraphDistillation(gradient_control="off").controls_gradients
    student = build_model("vgg11", 3, image_size=32, width=0.125)
    teacher = build_model("vgg11", 3, image_size=32, width=0.25)
    method.bind(student, teacher)
    assert method.layers == ("stage1", "stage2", "stage3", "stage4", "stage5")


def test_principal_vectors_by_hand():
    # A rank-one map: at position p the channel vector is u_p v with v = [0.6, 0.8], u = [1, 2]
    # (HW = 2, C = 2): its first right singular vector is v.
    v = torch.tensor([0.6, 0.8])
    u = torch.tensor([1.0, 2.0])
    feature = (u[:, None] * v[None, :]).T.reshape(1, 2, 1, 2)  # (N, C, H, W)
    assert principal_vectors(feature).tolist()[0] == pytest.approx([0.6, 0.8], abs=1e-5)
    # the sign is arbitrary: the entry of largest magnitude is made positive
    assert principal_vectors(-feature).tolist()[0] == pytest.approx([0.6, 0.8], abs=1e-5)
    # a (N, C) vector is its own, normalised: [3, 4] -> [0.6, 0.8]
    assert principal_vectors(torch.tensor([[3.0, 4.0]])).tolist()[0] == pytest.approx([0.6, 0.8], abs=1e-6)


def test_align_signs_by_hand():
    student = torch.tensor([[0.6, -0.8], [0.6, 0.8], [1.0, 0.0]])
    teacher = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # cosines -0.6 (flip), 0.6 (keep), 0 (keep)
    aligned = align_signs(student, teacher).flatten().tolist()
    assert aligned == pytest.approx([-0.6, 0.8, 0.6, 0.8, 1.0, 0.0], abs=1e-7)


def _identity_graph(graph: MultiHeadGraph) -> None:
    """One head of width 2 whose key and query maps are the identity: G = V_next V_prevᵀ."""
    with torch.no_grad():
        for branch in (graph.key, graph.query):
            linear, bn = branch
            linear.weight.copy_(torch.eye(2))
            bn.weight.fill_(1.0), bn.bias.zero_(), bn.running_mean.zero_(), bn.running_var.fill_(1.0)
            bn.eps = 0.0


# Two points p, q, two channels each, N = 2 samples given as (N, C) vectors (1x1 maps):
#   teacher rows e1, e2 at both points -> G_T = V_q V_pᵀ = I;   student rows e1, e1 -> G_S = all ones
#   rows of softmax(tanh G_S) = [1/2, 1/2];  of softmax(tanh G_T): [s, 1 - s] and [1 - s, s], s = σ(tanh 1)
#   KL(student || teacher) per row = 1/2 log(1/2 / s) + 1/2 log(1/2 / (1 - s)) = 1/2 log(1 / (4 s (1 - s)))
#   summed over the 2 rows (one head): log(1 / (4 s (1 - s)));  s = 1/(1 + e^-0.7615942) = 0.6816997 -> 0.1416318
S_SIG = 1 / (1 + math.exp(-math.tanh(1.0)))
KL_HAND = math.log(1 / (4 * S_SIG * (1 - S_SIG)))
TEACHER = {"p": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "q": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
STUDENT = {"p": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "q": torch.tensor([[1.0, 0.0], [1.0, 0.0]])}


def _hand_method(weight=1.0):
    method = MultiHeadGraphDistillation(points=["p", "q"], weight=weight, heads=1, graph_epochs=0)
    method.setup(STUDENT, TEACHER)
    _identity_graph(method.graphs[0])
    return method


def test_loss_by_hand():
    assert S_SIG == pytest.approx(0.6816997, abs=1e-6) and KL_HAND == pytest.approx(0.1416318, abs=1e-6)
    method = _hand_method(weight=3.0)
    assert all(isinstance(c, nn.Identity) for c in method.connectors)  # equal channels: no connector
    assert method.trainable_parts() == []
    assert method(STUDENT, TEACHER).item() == pytest.approx(3 * KL_HAND, abs=1e-5)
    assert method(TEACHER, TEACHER).item() == pytest.approx(0.0, abs=1e-6)
    # the student's sign does not matter: its vectors are aligned with the teacher's
    flipped = {k: -v for k, v in STUDENT.items()}
    assert method(flipped, TEACHER).item() == pytest.approx(3 * KL_HAND, abs=1e-5)


def _features(seed, c_s=(3, 5, 6), c_t=(4, 6, 8), n=6):
    g = torch.Generator().manual_seed(seed)
    names = ("a", "b", "c")
    student = {k: torch.randn(n, c, 4, 4, generator=g).relu() for k, c in zip(names, c_s)}
    teacher = {k: torch.randn(n, c, 2, 2, generator=g).relu() for k, c in zip(names, c_t)}
    return student, teacher


def test_fit_teacher_trains_then_freezes_the_graphs():
    student, teacher = _features(0)
    torch.manual_seed(0)
    method = MultiHeadGraphDistillation(points=["a", "b", "c"], graph_epochs=3)
    method.setup(student, teacher)
    assert [type(c) for c in method.connectors] == [nn.Conv2d] * 3  # 3->4, 5->6, 6->8
    shapes = [(g.in_dim, g.out_dim, g.learned, g.extrinsic) for g in method.graphs]
    assert shapes == [(4, 6, 8, False), (6, 8, 8, False)]
    assert not any(p.requires_grad for p in method.graphs.parameters())  # frozen until fitted
    before = [p.clone() for p in method.graphs.parameters()]
    batches = [_features(s)[1] for s in (1, 2)]
    method.fit_teacher(lambda: iter(batches), None)
    assert len(method.graph_losses) == 3 and all(math.isfinite(v) for v in method.graph_losses)
    assert any(not torch.equal(p, b) for p, b in zip(method.graphs.parameters(), before))
    assert not any(p.requires_grad for p in method.graphs.parameters())
    method.train()
    assert not method.graphs.training and method.connectors.training  # frozen graphs stay in eval
    assert {"graph_history", "graphs.0.key.1.running_mean", "connectors.0.weight"} <= set(method.state_dict())
    assert method.trainable_parts() == list(method.connectors)


def test_teacher_and_graphs_get_no_gradient():
    student, teacher = _features(3)
    student = {k: v.requires_grad_(True) for k, v in student.items()}
    teacher = {k: v.requires_grad_(True) for k, v in teacher.items()}
    method = MultiHeadGraphDistillation(points=["a", "b", "c"], graph_epochs=0)
    method.setup(student, teacher)
    method.train()
    loss = method(student, teacher)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(t.grad is None for t in teacher.values())
    assert all(p.grad is None for p in method.graphs.parameters())
    assert all(c.weight.grad is not None for c in method.connectors)
    assert any(s.grad is not None and s.grad.abs().sum() > 0 for s in student.values())


def test_joint_step_leaves_teacher_alone():
    assert math.isfinite(joint_step_leaves_teacher_alone(MultiHeadGraphDistillation(graph_epochs=1)))


@pytest.mark.parametrize("options, word", [
    (dict(weight=-1.0), "weight"), (dict(heads=0), "heads"), (dict(heads=2.5), "heads"),
    (dict(graph_epochs=-1), "graph_epochs"), (dict(graph_lr=0.0), "graph_lr"),
    (dict(gradient_control="sometimes"), "gradient_control"), (dict(clip_scope="layer"), "clip_scope"),
    (dict(points=["stage2"]), "points"),
])
def test_bad_options(options, word):
    with pytest.raises(UsageError, match=word) as info:
        METHODS.build("mhgd", **options)
    assert "\n" not in str(info.value)


def test_not_set_up():
    with pytest.raises(RuntimeError, match="set up"):
        MultiHeadGraphDistillation(points=["p", "q"])(STUDENT, TEACHER)
