"""DML and IE-DML: the paper's alternating four-step update (sec. 3.3)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from kdlens.config import OptimConfig
from kdlens.data.synthetic import SyntheticShapes
from kdlens.models import build_model
from kdlens.store import CheckpointStore
from kdlens.train.mutual import MutualOptions, MutualPair, _parameters, mutual_step, train_mutually
from kdlens.train.optim import build_optimizer


def pair_of(mode: str, seed: int = 0) -> MutualPair:
    torch.manual_seed(seed)
    net1 = build_model("vgg11", num_classes=4, image_size=32, width=0.125)
    net2 = build_model("vgg11", num_classes=4, image_size=32, width=0.25)  # a larger peer
    pair = MutualPair(net1, net2, mode)
    pair.setup(torch.randn(2, 3, 32, 32))
    return pair


def side_states(pair: MutualPair, k: int) -> dict[str, torch.Tensor]:
    """Parameters *and* buffers of everything network k's side owns."""
    out = {}
    for i, module in enumerate(pair.side(k)):
        for name, value in module.state_dict().items():
            out[f"{i}.{name}"] = value.clone()
    return out


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("mode", ["dml", "ie_dml"])
def test_step_b_changes_only_network_1_and_step_d_only_network_2(mode):
    pair = pair_of(mode)
    optimizers = [build_optimizer(OptimConfig(lr=0.05), _parameters(pair.side(k)))[0] for k in (0, 1)]
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,))
    start = [side_states(pair, 0), side_states(pair, 1)]

    loss, _ = pair.loss(0, x, y)  # (a) predictions, then (b) update network 1
    optimizers[0].zero_grad()
    loss.backward()
    optimizers[0].step()
    after_b = [side_states(pair, 0), side_states(pair, 1)]
    assert changed(start[0], after_b[0])
    assert not changed(start[1], after_b[1])

    loss, _ = pair.loss(1, x, y)  # (c) fresh predictions, then (d) update network 2
    optimizers[1].zero_grad()
    loss.backward()
    optimizers[1].step()
    after_d = [side_states(pair, 0), side_states(pair, 1)]
    assert not changed(after_b[0], after_d[0])
    assert changed(after_b[1], after_d[1])


def test_sides_are_disjoint_and_cover_the_pair():
    pair = pair_of("ie_dml")
    ids = [{id(p) for p in _parameters(pair.side(k))} for k in (0, 1)]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == {id(p) for p in pair.parameters()}
    # Network 1's side holds its own auto-encoder: the paraphraser network 2 inherits through.
    assert pair.learn[1].paraphraser in pair.side(0)


def test_dml_loss_is_cross_entropy_plus_kl_to_the_peer():
    pair = pair_of("dml")
    for m in pair.modules():  # no dropout, so the loss can be recomputed exactly
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 4, (6,))
    loss, terms = pair.loss(0, x, y)
    with torch.no_grad():
        z2 = pair.nets[1].train()(x)  # the peer: train mode (batch statistics), no gradients
        z1 = pair.nets[0].train()(x)  # network 1 as loss() ran it
    expected = F.cross_entropy(z1, y) + F.kl_div(F.log_softmax(z1, 1), F.softmax(z2, 1), reduction="batchmean")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["kl"] >= 0


def test_ie_dml_loss_adds_weighted_reconstruction_and_ie_terms():
    options = MutualOptions(lambda_rec=0.8, lambda_inh=50.0, lambda_exp=50.0)
    pair = pair_of("ie_dml")
    assert pair.options == options
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 4, (6,))
    loss, terms = pair.loss(0, x, y)
    expected = terms["ce"] + 0.8 * terms["rec"] + 50 * terms["inh"] + 50 * terms["exp"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_bad_mode_and_weights_are_refused():
    net = build_model("vgg11", num_classes=4, image_size=32, width=0.125)
    with pytest.raises(ValueError, match="mutual mode = 'kd'"):
        MutualPair(net, copy.deepcopy(net), "kd")
    with pytest.raises(ValueError, match="lambda_rec"):
        MutualPair(net, copy.deepcopy(net), "ie_dml", MutualOptions(lambda_rec=-1))


class Interrupt(Exception):
    pass


def test_interrupted_ie_dml_resumes_to_the_uninterrupted_weights(tmp_path):
    train = SyntheticShapes(split="train", num_samples=48, image_size=32, num_classes=4, seed=0)
    test = SyntheticShapes(split="test", num_samples=16, image_size=32, num_classes=4, seed=0)
    optim = OptimConfig(epochs=2, batch_size=16, lr=0.05)
    common = dict(seed=3, role="ie_dml", device=torch.device("cpu"), progress=False)

    full = pair_of("ie_dml", seed=1)
    train_mutually(full, train, test, CheckpointStore(tmp_path / "full"), optim, **common)

    def stop(epoch):
        if epoch == 1:
            raise Interrupt

    first = pair_of("ie_dml", seed=1)
    with pytest.raises(Interrupt):
        train_mutually(first, train, test, CheckpointStore(tmp_path / "cut"), optim, on_epoch_end=stop, **common)
    resumed = pair_of("ie_dml", seed=1)
    history = train_mutually(resumed, train, test, CheckpointStore(tmp_path / "cut"), optim, **common)
    assert [row["epoch"] for row in history] == [0, 1, 2]
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert torch.equal(first.learn[0].permutation, resumed.learn[0].permutation)


def test_mutual_step_returns_both_losses():
    pair = pair_of("dml")
    optimizers = [build_optimizer(OptimConfig(lr=0.05), _parameters(pair.side(k)))[0] for k in (0, 1)]
    values = mutual_step(pair, optimizers, torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,)))
    assert len(values) == 2 and all(v > 0 for v in values)
