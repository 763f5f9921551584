"""DML and IE-DML: the paper's alternating four-step update (sec. 3.3)."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from kdlens.config import OptimConfig
from kdlens.data.synthetic import SyntheticShapes
from kdlens.errors import TrainingDiverged
from kdlens.models import build_model
from kdlens.store import CheckpointStore
from kdlens.train.loop import unique_parameters as _parameters
from kdlens.train.mutual import MutualOptions, MutualPair, mutual_step, train_mutually
from kdlens.train.loop import NonFiniteLoss
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


def _tiny_data():
    train = SyntheticShapes(split="train", num_samples=32, image_size=32, num_classes=4, seed=0)
    test = SyntheticShapes(split="test", num_samples=8, image_size=32, num_classes=4, seed=0)
    return train, test


def test_interrupted_dml_resumes_to_the_uninterrupted_weights_and_history(tmp_path):
    train, test = _tiny_data()
    optim = OptimConfig(epochs=2, batch_size=16, lr=0.05)
    common = dict(seed=5, role="dml", device=torch.device("cpu"), progress=False)

    full = pair_of("dml", seed=2)
    full_history = train_mutually(full, train, test, CheckpointStore(tmp_path / "full"), optim, **common)

    def stop(epoch):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_mutually(pair_of("dml", seed=2), train, test, CheckpointStore(tmp_path / "cut"), optim,
                       on_epoch_end=stop, **common)
    assert CheckpointStore(tmp_path / "cut").latest() == 1
    resumed = pair_of("dml", seed=2)
    history = train_mutually(resumed, train, test, CheckpointStore(tmp_path / "cut"), optim, **common)
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in rows] for rows in (history, full_history)]
    assert untimed[0] == untimed[1]
    assert list(history[-1]) == ["epoch", "seconds", "net1_objective", "net1_test_accuracy", "net1_test_loss",
                                 "net2_objective", "net2_test_accuracy", "net2_test_loss"]


def test_a_mutual_checkpoint_is_plain_data_with_the_mode_and_both_optimizers(tmp_path):
    train, test = _tiny_data()
    pair = pair_of("ie_dml")
    store = CheckpointStore(tmp_path / "ie_dml")
    train_mutually(pair, train, test, store, OptimConfig(epochs=1, batch_size=16, lr=0.05), seed=0, role="ie_dml",
                   device=torch.device("cpu"), progress=False)
    state = torch.load(store.path(1), weights_only=True)
    assert state["mode"] == "ie_dml" and state["phase"] == "ie_dml"
    assert state["model"].keys() == pair.state_dict().keys()
    assert len(state["optimizer"]) == 2 and len(state["scheduler"]) == 2
    sizes = [len(o["param_groups"][0]["params"]) for o in state["optimizer"]]
    assert sizes == [len(_parameters(pair.side(k))) for k in (0, 1)]
    assert all(p.requires_grad for p in pair.parameters())  # the loop leaves the pair trainable again


def _nan_for(pair: MutualPair, network: int, call: int):
    """``pair.loss`` with the loss of ``network`` (0 or 1) NaN from its ``call``-th call on."""
    original, calls = pair.loss, []

    def loss(k, images, labels):
        value, terms = original(k, images, labels)
        if k == network:
            calls.append(k)
            if len(calls) >= call:
                value = value * math.nan
        return value, terms

    return loss


def _params_of(pair: MutualPair, k: int) -> dict[str, torch.Tensor]:
    side = {id(p) for p in _parameters(pair.side(k))}
    return {name: p.detach().clone() for name, p in pair.named_parameters() if id(p) in side}


def test_a_non_finite_loss_of_net2_stops_the_run_before_net2_steps(tmp_path):
    train, test = _tiny_data()
    pair = pair_of("dml")
    pair.loss = _nan_for(pair, network=1, call=3)  # 2 batches an epoch: epoch 2, batch 1
    store = CheckpointStore(tmp_path / "dml")
    with pytest.raises(TrainingDiverged) as error:
        train_mutually(pair, train, test, store, OptimConfig(epochs=3, batch_size=16, lr=0.05), seed=3, role="dml",
                       device=torch.device("cpu"), progress=False)
    message = str(error.value)
    assert "\n" not in message
    assert "dml diverged in epoch 2 (dml phase, batch 1)" in message
    assert "the loss L_2 of net2 is nan" in message and "epoch 1 stays the latest" in message
    assert store.latest() == 1
    saved = store.load(1)["model"]
    assert all(torch.equal(value, saved[name]) for name, value in _params_of(pair, 1).items())  # net2: no step
    assert any(not torch.equal(value, saved[name]) for name, value in _params_of(pair, 0).items())  # net1 stepped


def test_mutual_step_raises_before_the_step_of_the_network_whose_loss_is_not_finite():
    pair = pair_of("dml")
    optimizers = [build_optimizer(OptimConfig(lr=0.05), _parameters(pair.side(k)))[0] for k in (0, 1)]
    pair.loss = _nan_for(pair, network=0, call=1)
    before = [_params_of(pair, k) for k in (0, 1)]
    with pytest.raises(NonFiniteLoss, match="the loss L_1 of net1 is nan"):
        mutual_step(pair, optimizers, torch.randn(8, 3, 32, 32), torch.randint(0, 4, (8,)))
    after = [_params_of(pair, k) for k in (0, 1)]
    for k in (0, 1):
        assert all(torch.equal(before[k][name], after[k][name]) for name in before[k])
