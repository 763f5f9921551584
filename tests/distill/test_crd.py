"""Contrastive representation distillation (CRD, queue form): InfoNCE, both directions, the queues, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kdlens.distill.base import METHODS
from kdlens.distill.methods.crd import ContrastiveRepresentationDistillation, info_nce
from kdlens.errors import UsageError

from zoo_helpers import joint_step_leaves_teacher_alone


def test_registered_with_defaults():
    method = METHODS.build("crd")
    assert isinstance(method, ContrastiveRepresentationDistillation)
    assert method.layers == ("conv",)
    assert (method.beta, method.feat_dim, method.nce_k, method.nce_t) == (0.8, 128, 4096, 0.07)
    assert not method.distils_logits and not method.sensing_points and not method.includes_task_loss
    method.setup({"conv": torch.zeros(2, 4, 2, 2)}, {"conv": torch.zeros(2, 8, 2, 2)})
    assert method.embed_s.linear.in_features == 16 and method.embed_t.linear.in_features == 32
    assert method.queue_s.shape == method.queue_t.shape == (4096, 128)
    assert torch.allclose(method.queue_t.norm(dim=1), torch.ones(4096))  # random unit vectors at the start
    assert {"queue_s", "queue_t", "queue_ptr", "embed_s.linear.weight", "embed_t.linear.bias"} <= set(
        method.state_dict())


def test_info_nce_by_hand():
    # anchor [1, 0], positive [0.6, 0.8], negatives [0, 1] and [-1, 0], tau = 1:
    #   logits [0.6, 0, -1]: loss = -0.6 + log(e^0.6 + e^0 + e^-1) = -0.6 + log(3.1899981) = 0.5600208
    anchor, positive = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])
    negatives = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    loss = info_nce(anchor, positive, negatives, 1.0)
    assert loss.item() == pytest.approx(-0.6 + math.log(math.exp(0.6) + 1 + math.exp(-1)), abs=1e-6)
    assert loss.item() == pytest.approx(0.5600208, abs=1e-6)
    # tau = 0.5 doubles the logits: [1.2, 0, -2] -> -1.2 + log(e^1.2 + 1 + e^-2)
    loss = info_nce(anchor, positive, negatives, 0.5)
    assert loss.item() == pytest.approx(-1.2 + math.log(math.exp(1.2) + 1 + math.exp(-2)), abs=1e-6)


def _hand_method(beta=1.0):
    """feat_dim 2, two negatives, tau 1, identity embeddings and known queues."""
    method = ContrastiveRepresentationDistillation(layer="fc1", beta=beta, feat_dim=2, nce_k=2, nce_t=1.0)
    method.setup({"fc1": torch.zeros(1, 2)}, {"fc1": torch.zeros(1, 2)})
    with torch.no_grad():
        for embed in (method.embed_s, method.embed_t):
            embed.linear.weight.copy_(torch.eye(2))
            embed.linear.bias.zero_()
        method.queue_t.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        method.queue_s.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    return method


# f_s = [3, 0] -> s = [1, 0];  f_t = [0, 2] -> t = [0, 1];  s . t = 0
# step 1:
#   L_S (anchor s, positive t, negatives Q^T = [1, 0], [-1, 0]): logits [0, 1, -1] -> log(1 + e + e^-1) = 1.4076058
#   L_T (anchor t, positive s, negatives Q^S = [0, 1], [1, 0]):  logits [0, 1, 0]  -> log(1 + e + 1)    = 1.5514447
#   then s, t are written to slot 0: Q^T = [0, 1], [-1, 0];  Q^S = [1, 0], [1, 0]
# step 2:
#   L_S: logits [0, 0, -1] -> log(2 + e^-1) = 0.8620035;   L_T: logits [0, 0, 0] -> log 3 = 1.0986123
STEP1 = math.log(1 + math.e + math.exp(-1)) + math.log(2 + math.e)
STEP2 = math.log(2 + math.exp(-1)) + math.log(3)
F_S, F_T = {"fc1": torch.tensor([[3.0, 0.0]])}, {"fc1": torch.tensor([[0.0, 2.0]])}


def test_forward_by_hand_and_queue_updates():
    assert STEP1 == pytest.approx(1.4076058 + 1.5514447, abs=1e-6)
    method = _hand_method(beta=0.5)
    assert method(F_S, F_T).item() == pytest.approx(0.5 * STEP1, abs=1e-5)
    assert method.queue_ptr.item() == 1
    assert method.queue_t.tolist() == [[0.0, 1.0], [-1.0, 0.0]]
    assert method.queue_s.tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert method(F_S, F_T).item() == pytest.approx(0.5 * STEP2, abs=1e-5)
    assert method.queue_ptr.item() == 0  # FIFO wraps around
    assert method.queue_t.tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_eval_mode_leaves_the_queues_alone():
    method = _hand_method()
    method.eval()
    before = (method.queue_s.clone(), method.queue_t.clone())
    assert method(F_S, F_T).item() == pytest.approx(STEP1, abs=1e-5)
    assert method(F_S, F_T).item() == pytest.approx(STEP1, abs=1e-5)
    assert torch.equal(method.queue_s, before[0]) and torch.equal(method.queue_t, before[1])
    assert method.queue_ptr.item() == 0


def test_batch_larger_than_the_queue_keeps_its_last_rows():
    method = _hand_method()
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    method({"fc1": f}, {"fc1": f.flip(1)})
    # rows 2 and 3 of the batch go to slots 0 and 1; the write position is back at 0
    assert method.queue_s.tolist() == [[0.0, 1.0], [0.0, -1.0]]
    assert method.queue_t.tolist() == [[1.0, 0.0], [-1.0, 0.0]]
    assert method.queue_ptr.item() == 0


def test_each_term_trains_its_anchor_and_the_teacher_gets_no_gradient():
    f_s = torch.tensor([[3.0, 0.0], [1.0, 1.0]], requires_grad=True)
    f_t = torch.tensor([[0.0, 2.0], [1.0, -1.0]], requires_grad=True)
    method = _hand_method()
    method({"fc1": f_s}, {"fc1": f_t}).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    assert method.embed_s.linear.weight.grad.abs().sum() > 0
    assert method.embed_t.linear.weight.grad.abs().sum() > 0  # trained by the teacher-anchored term
    assert method.trainable_parts() == [method]
    # the student-anchored term alone sends nothing to the teacher's embedding
    method.zero_grad()
    s, t = method.embeddings({"fc1": f_s}, {"fc1": f_t})
    info_nce(s, t.detach(), method.queue_t.clone(), 1.0).backward()
    assert method.embed_t.linear.weight.grad is None


def test_joint_step_leaves_teacher_alone():
    loss = joint_step_leaves_teacher_alone(ContrastiveRepresentationDistillation(nce_k=64))
    assert math.isfinite(loss)


@pytest.mark.parametrize("options, word", [
    (dict(beta=-0.1), "beta"), (dict(feat_dim=0), "feat_dim"), (dict(feat_dim=1.5), "feat_dim"),
    (dict(nce_k=0), "nce_k"), (dict(nce_t=0.0), "nce_t"), (dict(nce_t=float("nan")), "nce_t"),
])
def test_bad_options(options, word):
    with pytest.raises(UsageError, match=word) as info:
        METHODS.build("crd", **options)
    assert "\n" not in str(info.value)


def test_not_set_up():
    with pytest.raises(RuntimeError, match="set up"):
        ContrastiveRepresentationDistillation(layer="fc1")(F_S, F_T)
