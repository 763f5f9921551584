"""The IEP distillation MPNN (Lee & Song, AAAI 2021, Eq. 8-15) and the student losses (Eq. 18-19)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlens.distill.iep.mpnn import (
    EmbeddingProcedureMPNN,
    affinity_kl,
    alteration_loss,
    interim_loss,
    mpnn_loss,
)



def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _mpnn(in_dim=3, node_dim=4, seed=0, **options):
    torch.manual_seed(seed)
    return EmbeddingProcedureMPNN(in_dim, node_dim, **options)


def _manual(mpnn: EmbeddingProcedureMPNN, c_prev, c_next):
    """Eq. 8-12 pair by pair, with the module's weights (eval-mode batch norm)."""
    linear, norm = mpnn.edge_map
    mapped = F.batch_norm(
        c_prev @ linear.weight.T + linear.bias, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=norm.eps
    )
    unit = mapped / mapped.norm(dim=1, keepdim=True)
    n, width = c_prev.shape[0], mpnn.edge_dim
    affinity = torch.zeros(n, n)
    messages = torch.zeros(n, n, mpnn.iterations, width)
    for v in range(n):
        for w in range(n):
            edge = unit[v] * unit[w] * width  # Eq. 8 with the code's scale
            for i in range(mpnn.iterations):
                x = torch.cat([c_next[v] - c_next[w], edge.mean()[None]])
                out = mpnn.message.weight @ x + mpnn.message.bias
                message = out[:width] * torch.sigmoid(out[width:])  # GLU, Eq. 9
                edge = edge + message  # Eq. 10
                messages[v, w, i] = message
            affinity[v, w] = edge.mean()  # Eq. 11-12
    return affinity, messages


def test_forward_is_eq8_to_12():
    mpnn = _mpnn().eval()
    c_prev, c_next = _randn(4, 3, seed=1), _randn(4, 4, seed=2)
    with torch.no_grad():
        mpnn.edge_map[1].running_mean.copy_(_randn(4, seed=3) * 0.1)
        out = mpnn(c_prev, c_next)
        affinity, messages = _manual(mpnn, c_prev, c_next)
    assert out.affinity.shape == (4, 4) and out.messages.shape == (4, 4, 2, 4)  # I = 2 by default
    torch.testing.assert_close(out.affinity, affinity)
    torch.testing.assert_close(out.messages, messages)


def test_initial_edge_readout_is_the_cosine_affinity_of_the_mapped_components():
    c_prev = _randn(5, 3, seed=4)
    for scale in (True, False):
        mpnn = _mpnn(scale_edges=scale).eval()
        with torch.no_grad():
            mapped = mpnn.edge_map(c_prev)
            cosine = F.cosine_similarity(mapped[:, None], mapped[None], dim=-1)
            readout = mpnn.initial_edges(c_prev).mean(-1)
        torch.testing.assert_close(readout, cosine if scale else cosine / mpnn.edge_dim)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_mpnn_is_permutation_equivariant(train):
    mpnn = _mpnn(in_dim=4, node_dim=3, iterations=3).train(train)
    c_prev, c_next = _randn(6, 4, seed=5), _randn(6, 3, seed=6)
    permutation = torch.randperm(6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        out = mpnn(c_prev, c_next)
        permuted = mpnn(c_prev[permutation], c_next[permutation])
    grid = (permutation[:, None], permutation[None, :])
    torch.testing.assert_close(permuted.affinity, out.affinity[grid])
    torch.testing.assert_close(permuted.messages, out.messages[grid])


def test_knowledge_is_differentiable_in_both_components():
    mpnn = _mpnn().eval()
    c_prev, c_next = _randn(4, 3, seed=8).requires_grad_(), _randn(4, 4, seed=9).requires_grad_()
    out = mpnn(c_prev, c_next)
    (out.affinity.sum() + out.messages.pow(2).sum()).backward()
    assert c_prev.grad.abs().sum() > 0 and c_next.grad.abs().sum() > 0


def test_training_on_eq13_lowers_the_loss():
    torch.manual_seed(10)
    c_prev, c_next = _randn(8, 3, seed=11), _randn(8, 4, seed=12)
    target = F.normalize(c_next, dim=1) @ F.normalize(c_next, dim=1).T  # Eq. 7's A_{l+1}
    mpnn = _mpnn().train()
    losses = []
    for _ in range(30):  # plain gradient descent (torch.optim's first import costs a second)
        loss = mpnn_loss(target, mpnn(c_prev, c_next).affinity)
        grads = torch.autograd.grad(loss, list(mpnn.parameters()))
        with torch.no_grad():
            for parameter, grad in zip(mpnn.parameters(), grads):
                parameter -= 0.5 * grad
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_affinity_kl_rowwise_and_the_directions_of_eq13_and_eq18():
    p_logits, q_logits = _randn(5, 5, seed=13), _randn(5, 5, seed=14)
    expected = F.kl_div(F.log_softmax(q_logits, 1), F.log_softmax(p_logits, 1), reduction="batchmean", log_target=True)
    torch.testing.assert_close(affinity_kl(p_logits, q_logits), expected)
    assert float(affinity_kl(p_logits, p_logits)) == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(mpnn_loss(p_logits, q_logits), expected)  # KLD(σ(A) || σ(Ã))
    student, teacher = q_logits.clone().requires_grad_(), p_logits.clone().requires_grad_()
    loss = interim_loss(student, teacher)  # KLD(σ(K^T) || σ(K^S)), the code's order
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_alteration_loss_is_l1_over_n_squared():
    student = _randn(4, 4, 2, 3, seed=15).requires_grad_()
    teacher = _randn(4, 4, 2, 3, seed=16).requires_grad_()
    loss = alteration_loss(student, teacher)
    torch.testing.assert_close(loss, (student - teacher).abs().sum(dim=(2, 3)).mean())
    loss.backward()
    assert teacher.grad is None
    assert float(alteration_loss(teacher.detach(), teacher)) == 0.0


def test_errors():
    with pytest.raises(ValueError, match="iterations = 0: expected a positive integer"):
        EmbeddingProcedureMPNN(3, 4, iterations=0)
    mpnn = _mpnn().eval()
    with pytest.raises(ValueError, match=r"c_next of shape \(4, 5\): expected \(N, 4\)"):
        mpnn(_randn(4, 3), _randn(4, 5))
    with pytest.raises(ValueError, match="expected the same batch"):
        mpnn(_randn(4, 3), _randn(5, 4))
    with pytest.raises(ValueError, match=r"expected two \(N, N\) matrices"):
        affinity_kl(_randn(3, 3), _randn(4, 4))
    with pytest.raises(ValueError, match="expected equal"):
        alteration_loss(_randn(3, 3, 2), _randn(3, 3, 3))
