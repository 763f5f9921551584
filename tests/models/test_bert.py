"""BERT through transformers, cut into kdlens stages: the same network, the same outputs."""

import pytest
import torch

from kdlens.errors import MissingFileError, UsageError
from kdlens.models import build_model, input_kind
from kdlens.models.bert import BertClassifier

PAD = 0


def batch(seed=0, vocab=50, tokens=12):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, tokens), generator=generator)
    ids[:, 0] = 2
    ids[0, 8:], ids[1, 5:] = PAD, PAD  # two shorter sentences, padded
    words = torch.arange(tokens).expand(3, tokens).clone() - 1
    words[ids == PAD] = -1
    return torch.stack([ids, words], 1)


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_model("bert", num_classes=2, vocab_size=50, max_tokens=12).eval()


def test_stages_are_named_and_the_last_hidden_layer_is_known():
    model = tiny()
    assert input_kind("bert") == "text"
    assert model.layer_names == ("embeddings", "layer1", "layer2", "pooler", "classifier")
    assert model.last_hidden == "layer2"
    assert model.stage_names == ("stage1", "stage2", "stage3")


def test_the_stages_give_transformers_own_logits():
    model, x = tiny(), batch()
    ids = x[:, 0]
    expected = model.network(input_ids=ids, attention_mask=(ids != PAD).long()).logits
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_the_embedded_input_gives_the_same_features_and_padding_is_silent():
    model, x = tiny(), batch()
    embedded = model.embed_words(x)
    assert embedded.shape == (3, 12, 66) and embedded[..., -1].tolist()[1] == [1.0] * 5 + [0.0] * 7
    assert (embedded[..., -2] == 0).all()  # one segment: sentence classification
    for layer in ("embeddings", "layer1", "layer2"):
        assert torch.allclose(model.forward_to(embedded, layer), model.forward_to(x, layer), atol=1e-6)
    hidden = model.forward_to(x, "layer2")
    assert hidden[1, 5:].abs().max() == 0  # padding rows are zero, mask channel included
    # whatever the padding tokens' embeddings are, the real tokens do not see them
    noisy = embedded.clone()
    noisy[1, 5:, :-2] += torch.randn(7, 64)
    assert torch.allclose(model.forward_to(noisy, "layer2")[1, :5], hidden[1, :5], atol=1e-5)


def test_save_and_load_from_a_local_directory_gives_the_same_features(tmp_path):
    model, x = tiny(seed=3), batch()
    model.save_pretrained(tmp_path / "bert")
    loaded = BertClassifier.from_pretrained(tmp_path / "bert").eval()
    assert torch.allclose(loaded.forward_to(x, "layer2"), model.forward_to(x, "layer2"), atol=1e-6)
    also = build_model("bert", num_classes=2, pretrained=str(tmp_path / "bert")).eval()
    assert torch.allclose(also(x), model(x), atol=1e-6)
    assert set(also.state_dict()) == set(model.state_dict())
    with pytest.raises(MissingFileError, match="has no config.json"):
        BertClassifier.from_pretrained(tmp_path / "nothing")


def test_bad_inputs_and_options_are_one_line_errors():
    model = tiny()
    with pytest.raises(UsageError, match=r"shape \(3, 12\) and dtype torch.int64; expected \(B, 2, T\)"):
        model(torch.zeros(3, 12, dtype=torch.long))
    with pytest.raises(UsageError, match="bert layers = 0"):
        build_model("bert", num_classes=2, layers=0)


def test_it_learns_a_planted_token():
    """Class 1 when token 7 is in the sentence: a few Adam steps fit it."""
    torch.manual_seed(0)
    model = build_model("bert", num_classes=2, vocab_size=20, max_tokens=8, dropout=0.0)
    ids = torch.randint(8, 20, (64, 8))
    labels = torch.randint(0, 2, (64,))
    ids[labels == 1, 3] = 7
    x = torch.stack([ids, torch.zeros_like(ids)], 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
    assert (model.eval()(x).argmax(1) == labels).float().mean() > 0.95


def test_question_answering_gives_one_logit_per_span_and_transformers_own_ends():
    """bert_qa: start[s] + end[e] at s * T + e, with the segments of question and context."""
    torch.manual_seed(1)
    model = build_model("bert_qa", num_classes=12 * 12, vocab_size=50, max_tokens=12).eval()
    assert model.layer_names == ("embeddings", "layer1", "layer2", "spans") and model.last_hidden == "layer2"
    x = batch()
    segments = torch.zeros(3, 12, dtype=torch.long)
    segments[:, 4:] = 1
    segments[x[:, 0] == PAD] = 0
    x = torch.cat([x, segments[:, None]], 1)
    ids, mask = x[:, 0], (x[:, 0] != PAD).long()
    reference = model.network(input_ids=ids, attention_mask=mask, token_type_ids=segments)
    pairs = model(x).reshape(3, 12, 12)
    start, end = reference.start_logits, reference.end_logits
    real = mask.bool()
    expected = start[:, :, None] + end[:, None, :]
    both = real[:, :, None] & real[:, None, :]
    assert torch.allclose(pairs[both], expected[both], atol=1e-5)
    assert (pairs[~both] < -1e3).all()  # a span that starts or ends on padding is never chosen
    assert torch.allclose(model.forward_to(model.embed_words(x), "layer2"), model.forward_to(x, "layer2"), atol=1e-6)
    # the cross-entropy over pairs is the sum of the start and end cross-entropies
    labels = torch.tensor([1 * 12 + 3, 2 * 12 + 2, 5 * 12 + 7])
    ce = torch.nn.functional.cross_entropy
    joint = ce(model(x), labels)
    ends = ce(start.masked_fill(~real, -1e4), labels // 12) + ce(end.masked_fill(~real, -1e4), labels % 12)
    assert torch.allclose(joint, ends, atol=1e-5)


def test_question_answering_from_a_local_directory_and_its_class_count(tmp_path):
    torch.manual_seed(2)
    model = build_model("bert_qa", num_classes=144, vocab_size=50, max_tokens=12).eval()
    model.save_pretrained(tmp_path / "qa")
    x = batch()
    loaded = build_model("bert_qa", num_classes=100, pretrained=str(tmp_path / "qa")).eval()  # 10-token inputs
    assert torch.allclose(loaded(x[..., :10]), model(x[..., :10]), atol=1e-6)
    with pytest.raises(UsageError, match="bert_qa num_classes = 50: expected T \\*\\* 2"):
        build_model("bert_qa", num_classes=50, vocab_size=50, max_tokens=12)
