"""Stacked PCA (Lee & Song, AAAI 2021, Eq. 1-7 and 16-17) against direct computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlens.distill.iep.spca import (
    IncrementalPCA,
    affinity,
    batch_pca,
    feature_matrix,
    first_principal_components,
    inverse_stereographic,
    principal_sign,
    project,
    sphere_center,
    stereographic,
    student_principal_vectors,
    top_eigenpair,
)


def _randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _unit_rows(n, d, seed=0):
    return F.normalize(_randn(n, d, seed=seed), dim=-1)


def _subspace_cosines(a, b):
    """Cosines of the principal angles between the column spans of two
    matrices with orthonormal columns."""
    return torch.linalg.svdvals(a.mT @ b)


def _svd_reference(features):
    """p_n, s_n u_n and σ_n from torch.linalg.svd with Eq. 2's sign correction."""
    u, s, vh = torch.linalg.svd(feature_matrix(features), full_matrices=False)
    v0, u0 = vh[:, 0], u[:, :, 0]
    sign = torch.sign(v0.amax(-1) + v0.amin(-1))[:, None]
    return sign * v0, sign * u0, s[:, 0]


# -- first PCA (Eq. 1-3) -----------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("dim", [3, 16, 64])
def test_top_eigenpair_matches_eigh(dim, dtype):
    data = _randn(8, 2 * dim, dim, seed=dim, dtype=dtype)
    data[:4] = data[:4].relu()  # uncentred ReLU-like data: a dominant top pair
    gram = data.mT @ data
    values, vectors = torch.linalg.eigh(gram.double())
    value, vector = top_eigenpair(gram)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(value.double(), values[:, -1], rtol=tolerance, atol=0)
    cosine = (vector.double() * vectors[:, :, -1]).sum(-1).abs()
    torch.testing.assert_close(cosine, torch.ones_like(cosine), rtol=0, atol=tolerance)


def test_top_eigenpair_gradient_matches_eigh_where_it_is_defined():
    data = _randn(3, 9, 5, seed=30)
    gram = data.mT @ data
    weights = _randn(5, seed=31)

    def objective(pair_of):
        value, vector = pair_of(gram)
        vector = vector * torch.sign(vector[:, :1])  # eigh's sign is arbitrary
        return (value.sum() + (vector @ weights).sum())

    mine = gram.clone().requires_grad_()
    objective(lambda g: top_eigenpair(mine)).backward()
    reference = gram.clone().requires_grad_()
    objective(lambda g: tuple(t[..., -1] for t in torch.linalg.eigh(reference))).backward()
    # eigh's gradient is not symmetrised: compare the symmetric parts
    torch.testing.assert_close(mine.grad, 0.5 * (reference.grad + reference.grad.mT))
    # symmetric perturbations only (an entry alone would break the symmetry)
    assert torch.autograd.gradcheck(lambda a: top_eigenpair(a.mT @ a), (data.clone().requires_grad_(),))


def test_top_eigenpair_of_a_repeated_top_eigenvalue_and_of_zero():
    basis = torch.linalg.qr(_randn(4, 4, seed=32))[0]
    gram = basis @ torch.diag(torch.tensor([2.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ basis.mT
    value, vector = top_eigenpair(gram[None])
    torch.testing.assert_close(value, torch.tensor([2.0], dtype=torch.float64))
    in_top_space = basis[:, :2].mT @ vector[0]
    torch.testing.assert_close(in_top_space.norm(), torch.tensor(1.0, dtype=torch.float64))
    value, vector = top_eigenpair(torch.zeros(1, 3, 3))
    assert value.item() == 0.0 and torch.isfinite(vector).all()


@pytest.mark.parametrize("shape", [(3, 4, 3, 3), (3, 6, 2, 2), (2, 5, 1, 3)], ids=["hw>d", "hw<d", "hw<d-1row"])
def test_first_principal_vector_matches_svd(shape):
    features = _randn(*shape, seed=1)
    pc = first_principal_components(features)
    p, u, sigma = _svd_reference(features)
    torch.testing.assert_close(pc.vector, p)
    torch.testing.assert_close(pc.left, u)
    torch.testing.assert_close(pc.singular_value, sigma)
    torch.testing.assert_close(pc.vector.norm(dim=-1), torch.ones(shape[0], dtype=torch.float64))


def test_first_principal_vector_of_matrices_and_float32():
    matrices = _randn(2, 7, 3, seed=2)  # (N, HW, D) taken as it is
    pc = first_principal_components(matrices)
    torch.testing.assert_close(pc.vector, _svd_reference(matrices)[0])
    single = first_principal_components(matrices.float())
    assert single.vector.dtype == torch.float32
    torch.testing.assert_close(single.vector.double(), pc.vector, atol=1e-5, rtol=0)


def test_sign_correction_makes_the_largest_entry_positive_and_ignores_the_map_sign():
    features = _randn(5, 4, 3, 3, seed=3)
    pc = first_principal_components(features)
    largest = pc.vector.gather(1, pc.vector.abs().argmax(1, keepdim=True))
    assert (largest > 0).all()
    flipped = first_principal_components(-features)
    torch.testing.assert_close(flipped.vector, pc.vector)  # F and -F: same p
    torch.testing.assert_close(flipped.left, -pc.left)  # F = σ u vᵀ
    assert principal_sign(torch.tensor([[1.0, -1.0], [-2.0, 1.0]])).flatten().tolist() == [1.0, -1.0]


@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (2, 5, 2, 2)], ids=["gram-DxD", "gram-HWxHW"])
def test_first_principal_components_gradcheck(shape):
    features = _randn(*shape, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: tuple(first_principal_components(x)), (features,))


@pytest.mark.parametrize("case", ["repeated", "dead-channels"])
def test_gradient_is_finite_where_svd_gradients_are_nan(case):
    """Degenerate *discarded* singular values: the first PC is well defined
    and so is its gradient, but torch's SVD backward divides by 0."""
    if case == "repeated":
        matrix = torch.diag(torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64))[None]
    else:
        matrix = torch.zeros(1, 6, 4, dtype=torch.float64)
        matrix[..., :2] = _randn(1, 6, 2, seed=5)
    weights = torch.arange(1.0, matrix.shape[-1] + 1, dtype=torch.float64)

    x = matrix.clone().requires_grad_()
    (torch.linalg.svd(x, full_matrices=False)[2][:, 0] @ weights).sum().backward()
    assert torch.isnan(x.grad).any()

    x = matrix.clone().requires_grad_()
    (first_principal_components(x).vector @ weights).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.autograd.gradcheck(lambda m: first_principal_components(m).vector, (matrix.clone().requires_grad_(),))


@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (2, 6, 2, 2)], ids=["hw>d", "hw<d"])
def test_all_zero_map_keeps_gradients_finite(shape):
    features = torch.zeros(shape, dtype=torch.float64)
    features[1] = _randn(*shape[1:], seed=24)
    features.requires_grad_()
    pc = first_principal_components(features)
    (pc.vector.sum() + pc.left.sum() + pc.singular_value.sum()).backward()
    assert torch.isfinite(features.grad).all()
    assert float(pc.singular_value[0].detach()) == 0.0


def test_student_principal_vectors_eq16():
    teacher = _randn(3, 4, 3, 3, seed=6)
    pc = first_principal_components(teacher)
    # the teacher's own map gives back its p: s uᵀF / ||s uᵀF|| = s v
    torch.testing.assert_close(student_principal_vectors(teacher, pc.left), pc.vector)
    student = _randn(3, 4, 3, 3, seed=7).requires_grad_()
    p_s = student_principal_vectors(student, pc.left)
    torch.testing.assert_close(p_s.norm(dim=-1), torch.ones(3, dtype=torch.float64))
    p_s.sum().backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"expected \(N, HW\) = \(3, 4\)"):
        student_principal_vectors(_randn(3, 4, 2, 2, seed=8), pc.left)


# -- stereographic projection (Eq. 4) -----------------------------------------


def test_stereographic_is_eq4_and_lands_on_the_plane_orthogonal_to_o():
    d = 6
    p = _unit_rows(20, d, seed=9)
    o = sphere_center(d, dtype=torch.float64)
    literal = (p + o) / torch.cos(torch.arccos(p @ o) / 2)[:, None] ** 2 - 2 * o
    x = stereographic(p)
    torch.testing.assert_close(x, literal)
    torch.testing.assert_close(x @ o, torch.zeros(20, dtype=torch.float64), atol=1e-12, rtol=0)
    theta = torch.arccos(p @ o)
    torch.testing.assert_close(x.norm(dim=-1), 2 * torch.tan(theta / 2))
    torch.testing.assert_close(stereographic(o[None]), torch.zeros(1, d, dtype=torch.float64))


def test_stereographic_and_its_inverse_are_inverse():
    d = 5
    p = _unit_rows(20, d, seed=10)
    torch.testing.assert_close(inverse_stereographic(stereographic(p)), p)
    o = sphere_center(d, dtype=torch.float64)
    x = 3 * _randn(20, d, seed=11)
    x = x - (x @ o)[:, None] * o  # a point on the plane
    back = inverse_stereographic(x)
    torch.testing.assert_close(back.norm(dim=-1), torch.ones(20, dtype=torch.float64))
    torch.testing.assert_close(stereographic(back), x)


def test_stereographic_gradient_is_finite_at_the_center():
    o = sphere_center(4, dtype=torch.float64)[None].clone().requires_grad_()
    stereographic(o).sum().backward()  # arccos in the printed form would give NaN here
    assert torch.isfinite(o.grad).all()
    p = _unit_rows(3, 4, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(stereographic, (p,))


# -- second PCA (Eq. 5-6) ------------------------------------------------------


def _stream(batches, batch_size, d=8, seed=13):
    """Batches from one Gaussian with a clear gap after the 4th direction."""
    basis = torch.linalg.qr(_randn(d, d, seed=seed))[0]
    scales = torch.tensor([3.0, 2.6, 2.2, 2.0, 0.5, 0.4, 0.3, 0.2], dtype=torch.float64)[:d]
    mean = 2 * _randn(d, seed=seed + 1)
    return [mean + (_randn(batch_size, d, seed=seed + 2 + i) * scales) @ basis.mT for i in range(batches)]


def test_batch_pca_matches_svd():
    x = _randn(12, 6, seed=14)
    stats = batch_pca(x)
    _, s, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    assert stats.components.shape == (6, 3)  # D/2, Eq. 6
    torch.testing.assert_close(stats.mean, x.mean(0))
    torch.testing.assert_close(stats.singular_values, s[:3])
    torch.testing.assert_close(stats.components.abs(), vh[:3].mT.abs())
    torch.testing.assert_close(project(x, stats), (x - x.mean(0)) @ stats.components)


def test_batch_pca_of_a_batch_smaller_than_the_components():
    stats = batch_pca(_randn(3, 10, seed=15), components=5)  # rank 2 after centring
    torch.testing.assert_close(stats.components.mT @ stats.components, torch.eye(5, dtype=torch.float64))
    assert (stats.singular_values[2:].abs() < 1e-12).all()


def test_ipca_with_the_running_mean_and_all_components_is_exact():
    """Ross et al.'s update, conventional mean, nothing truncated: the PCA of
    all the data seen."""
    batches = _stream(6, 5, d=6)
    ipca = IncrementalPCA(6, components=6, momentum=None).double()
    for batch in batches:
        ipca.update(batch)
    everything = torch.cat(batches)
    reference = batch_pca(everything, components=6)
    torch.testing.assert_close(ipca.mean, everything.mean(0))
    torch.testing.assert_close(ipca.singular_values, reference.singular_values)
    torch.testing.assert_close(ipca.components, reference.components)
    assert int(ipca.count) == 30


def test_ipca_with_ema_mean_approaches_batch_pca_of_the_stream():
    batches = _stream(40, 16)
    ipca = IncrementalPCA(8).double()  # D/2 = 4 components, momentum 0.9
    for batch in batches:
        ipca.update(batch)
    reference = batch_pca(torch.cat(batches))
    cosines = _subspace_cosines(ipca.components, reference.components)
    assert cosines.min() > 0.99, cosines  # largest principal angle < 8 degrees
    # each component individually (up to sign: Eq. 2 is a near tie for some)
    assert (ipca.components * reference.components).sum(0).abs().min() > 0.97
    ratio = ipca.singular_values / reference.singular_values
    assert ((ratio > 0.9) & (ratio < 1.15)).all(), ratio
    # one batch alone is further off than the stream (the Table 5 argument)
    single = batch_pca(batches[-1])
    assert _subspace_cosines(single.components, reference.components).min() < cosines.min()


def test_ipca_mean_is_an_exponential_moving_average():
    batches = _stream(3, 4)
    ipca = IncrementalPCA(8, momentum=0.25).double()
    ipca.update(batches[0])
    expected = batches[0].mean(0)  # the first batch sets it
    torch.testing.assert_close(ipca.mean, expected)
    for batch in batches[1:]:
        ipca.update(batch)
        expected = 0.75 * expected + 0.25 * batch.mean(0)
    torch.testing.assert_close(ipca.mean, expected)


def test_ipca_first_batch_smaller_than_the_components():
    ipca = IncrementalPCA(8).double()
    ipca.update(_randn(2, 8, seed=16))
    torch.testing.assert_close(ipca.components.mT @ ipca.components, torch.eye(4, dtype=torch.float64))
    ipca.update(_randn(1, 8, seed=17))
    assert torch.isfinite(ipca.components).all() and int(ipca.count) == 3


def test_ipca_state_dict_round_trip():
    ipca = IncrementalPCA(8)
    for batch in _stream(3, 8):
        ipca.update(batch.float())
    state = ipca.state_dict()
    assert set(state) == {"mean", "components", "singular_values", "count"}
    restored = IncrementalPCA(8)
    restored.load_state_dict(state)
    x = _randn(5, 8, seed=18).float()
    torch.testing.assert_close(restored.project(x), ipca.project(x))
    assert int(restored.count) == 24


def test_ipca_project_differentiates_the_input_only():
    ipca = IncrementalPCA(6).double()
    with torch.enable_grad():
        ipca.update(_randn(10, 6, seed=19).requires_grad_())
    assert not any(b.requires_grad for b in ipca.buffers())
    x = _randn(4, 6, seed=20).requires_grad_()
    c = ipca(x)
    assert c.shape == (4, 3)
    c.pow(2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * c.detach() @ ipca.components.mT)


def test_ipca_errors():
    with pytest.raises(RuntimeError, match="seen no data"):
        IncrementalPCA(4).project(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"expected \(m >= 1, 4\)"):
        IncrementalPCA(4).update(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="expected 1 <= components <= 4"):
        IncrementalPCA(4, components=5)
    with pytest.raises(ValueError, match="momentum = 0"):
        IncrementalPCA(4, momentum=0)
    ipca = IncrementalPCA(4)
    ipca.update(torch.randn(3, 4))
    with pytest.raises(ValueError, match="points of dimension 3: expected 4"):
        ipca.project(torch.zeros(2, 3))


# -- affinity (Eq. 7) and the whole chain -------------------------------------


def test_affinity_is_symmetric_cosine_similarity_with_unit_diagonal():
    c = _randn(7, 4, seed=21)
    a = affinity(c)
    torch.testing.assert_close(a, a.mT)
    torch.testing.assert_close(a.diagonal(), torch.ones(7, dtype=torch.float64))
    torch.testing.assert_close(a, F.cosine_similarity(c[:, None], c[None], dim=-1))


def test_spca_chain_teacher_and_student():
    """Eq. 1-7 on the teacher, Eq. 16-17 on the student with the teacher's statistics."""
    teacher_maps, student_maps = _randn(6, 8, 3, 3, seed=22), _randn(6, 8, 3, 3, seed=23).requires_grad_()
    ipca = IncrementalPCA(8).double()
    pc = first_principal_components(teacher_maps)
    plane = stereographic(pc.vector)
    ipca.update(plane)
    a_t = affinity(ipca.project(plane))
    c_s = ipca.project(stereographic(student_principal_vectors(student_maps, pc.left)))
    a_s = affinity(c_s)
    assert a_t.shape == a_s.shape == (6, 6) and c_s.shape == (6, 4)
    torch.testing.assert_close(a_s.diagonal(), torch.ones(6, dtype=torch.float64))
    (a_s - a_t).pow(2).sum().backward()
    assert torch.isfinite(student_maps.grad).all() and student_maps.grad.abs().sum() > 0
    assert math.isfinite(float(a_t.sum()))
