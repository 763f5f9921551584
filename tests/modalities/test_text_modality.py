import pytest
import torch

from kdlens.errors import UsageError
from kdlens.modalities import modality_of
from kdlens.modalities.text import words_of
from kdlens.modalities.units import UnitMap


class Sentences:
    modality = "text"


class Pieces:
    """A toy vocabulary: id -> word piece."""
    vocab = {0: "[PAD]", 2: "[CLS]", 3: "[SEP]", 5: "good", 6: "film", 7: "re", 8: "##mark", 9: "##able"}

    def id_to_token(self, token):
        return self.vocab[token]


def batch():
    # "good film" and "remarkable" (three pieces), padded to 6 tokens
    ids = torch.tensor([[2, 5, 6, 3, 0, 0], [2, 7, 8, 9, 3, 0]])
    words = torch.tensor([[-1, 0, 1, -1, -1, -1], [-1, 0, 0, 0, -1, -1]])
    masks = torch.tensor([[False, True, False, False, False, False], [False, True, True, True, False, False]])
    return torch.stack([ids, words], 1), masks


def test_a_word_is_a_unit_over_all_its_pieces_and_dimensions():
    text = modality_of(Sentences())
    inputs, masks = batch()
    analysed = torch.zeros(2, 6, 6)  # 4 embedding dimensions, the segment and the attention-mask channel
    units = text.batch_units(inputs, analysed, grid=16)
    assert units.shape == (2, 6, 6)
    assert (units[..., -2:] == -1).all()  # the segment and mask channels are in no unit
    assert units[1, 1:4, :4].unique().tolist() == [0]  # the three pieces of "remarkable"
    assert units[0, 0].tolist() == [-1] * 6 and units[0, 4].tolist() == [-1] * 6  # [CLS] and padding
    layout = UnitMap(units, analysed.shape)
    assert layout.n == 2 and layout.present.tolist() == [[True, True], [True, False]]
    assert text.foreground(masks, units, rule=0.5).tolist() == [[True, False], [True, False]]


def test_words_are_rebuilt_from_their_pieces():
    inputs, masks = batch()
    assert words_of(inputs, Pieces()) == [["good", "film"], ["remarkable"]]
    shown = modality_of(Sentences()).report_inputs(inputs, masks, type("D", (), {"tokenizer": Pieces()})())
    assert shown["words"][1] == ["remarkable"] and shown["word_labels"].tolist() == [[True, False], [True, False]]


def test_text_needs_a_text_model_and_its_own_units():
    text = modality_of(Sentences())
    with pytest.raises(UsageError, match="takes no text"):
        text.analysed(torch.nn.Linear(2, 2), batch()[0])
    with pytest.raises(UsageError, match="words of each sentence"):
        text.units((2, 6), grid=16)
