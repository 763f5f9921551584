"""The synthetic sentiment sentences ("text" input kind): how each sentence is
built under both cues, the foreground mask on word pieces, the shared
tokenizer of the two splits, and that the defaults never drop a word."""

import pytest
import torch

from kdlens.data.base import Sample
from kdlens.data.sentences import (
    CUE_WORDS,
    FILLER_WORDS,
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    RARE_WORDS,
    SyntheticSentences,
    generate_sentence,
    synthetic_tokenizer,
)
from kdlens.data.sst2 import is_sentiment_word, vader_lexicon
from kdlens.data.text_encoding import encode_words
from kdlens.errors import UsageError

N = 400


@pytest.fixture(scope="module")
def sentiment():
    return SyntheticSentences("train", N, seed=0, cue="sentiment")


@pytest.fixture(scope="module")
def filler():
    return SyntheticSentences("train", N, seed=0, cue="filler")


def pieces(tokenizer, word):
    return len(tokenizer.encode([word], is_pretokenized=True, add_special_tokens=False).ids)


def test_word_lists_are_what_they_say():
    """Sentiment words carry a VADER valence of at least 1 of their list's sign;
    filler, rare and cue words are not in VADER's lexicon at all; the lists
    do not overlap, so the cue words are used nowhere else."""
    lexicon = vader_lexicon()
    assert len(POSITIVE_WORDS) >= 40 and len(NEGATIVE_WORDS) >= 40 and len(FILLER_WORDS) + len(RARE_WORDS) >= 250
    assert all(lexicon[word] >= 1.0 for word in POSITIVE_WORDS)
    assert all(lexicon[word] <= -1.0 for word in NEGATIVE_WORDS)
    assert not [word for word in FILLER_WORDS + RARE_WORDS + CUE_WORDS if word in lexicon]
    lists = [POSITIVE_WORDS, NEGATIVE_WORDS, FILLER_WORDS, RARE_WORDS, CUE_WORDS]
    everything = [word for words in lists for word in words]
    assert len(everything) == len(set(everything))


def test_sample_schema(sentiment):
    sample = sentiment[3]
    assert isinstance(sample, Sample) and isinstance(sample.label, int)
    assert sample.image.shape == (2, 32) and sample.image.dtype == torch.long
    assert sample.mask.shape == (32,) and sample.mask.dtype == torch.bool
    assert sentiment.modality == "text" and tuple(sentiment.classes) == ("negative", "positive")
    assert sentiment.mean == () and sentiment.std == () and sentiment.max_tokens == 32 and sentiment.cue == "sentiment"
    assert sentiment.vocab_size == sentiment.tokenizer.get_vocab_size() == 900
    assert len(sentiment) == N and sentiment.labels.tolist() == [i % 2 for i in range(N)]


def test_sentence_structure(sentiment, filler):
    for data in (sentiment, filler):
        for i in range(len(data)):
            words, flags = data.words(i), data.foreground_words(i)
            assert 8 <= len(words) <= 14 and 2 <= sum(flags) <= 3
            assert all((w in POSITIVE_WORDS or w in NEGATIVE_WORDS) == f for w, f in zip(words, flags))
            assert sum(w in RARE_WORDS for w in words) <= 1
            # the foreground by construction is SST-2's lexicon rule
            assert flags == [is_sentiment_word(w) for w in words]


def polarity(words, flags):
    """1 when most planted words are positive (all are, by construction), else 0."""
    planted = [w for w, f in zip(words, flags) if f]
    return int(sum(w in POSITIVE_WORDS for w in planted) * 2 > len(planted))


def test_sentiment_cue_the_planted_words_decide_the_label(sentiment):
    for i in range(len(sentiment)):
        words, flags = sentiment.words(i), sentiment.foreground_words(i)
        planted = {w in POSITIVE_WORDS for w, f in zip(words, flags) if f}
        assert len(planted) == 1 and polarity(words, flags) == sentiment[i].label
        assert not set(words) & set(CUE_WORDS)
    assert torch.equal(sentiment.polarities, sentiment.labels) and (sentiment.cue_positions == -1).all()


def test_filler_cue_only_the_cue_word_tells_the_label(filler):
    agree, positions = 0, set()
    for i in range(len(filler)):
        words, flags, label = filler.words(i), filler.foreground_words(i), filler[i].label
        assert [w for w in words if w in CUE_WORDS] == [CUE_WORDS[label]]
        position = words.index(CUE_WORDS[label])
        assert position == filler.cue_positions[i] and not flags[position]
        positions.add(position)
        agree += polarity(words, flags) == label
        assert polarity(words, flags) == filler.polarities[i]
    assert 0.4 < agree / len(filler) < 0.6  # polarity independent of the label
    assert len(positions) >= 10  # the cue moves around


def test_same_draws_under_both_cues():
    """The cue changes only what it must: same length, same planted words
    when the random polarity happens to match the label."""
    for i in range(50):
        a, b = generate_sentence(0, "train", i, "sentiment"), generate_sentence(0, "train", i, "filler")
        assert len(a.words) == len(b.words) and a.foreground == b.foreground
        if b.polarity == b.label:
            assert [w for w, f in zip(a.words, a.foreground) if f] == [w for w, f in zip(b.words, b.foreground) if f]


def test_mask_covers_every_piece_of_a_sentiment_word():
    """A small vocabulary splits sentiment words; the mask and the word index
    still follow whole words."""
    data = SyntheticSentences("train", 60, seed=1, vocab_size=150, max_tokens=64)
    split = 0
    for i in range(len(data)):
        tokens, mask = data[i].image, data[i].mask
        flags = torch.tensor(data.foreground_words(i))
        word_index = tokens[1]
        assert torch.equal(mask, (word_index >= 0) & flags[word_index.clamp(min=0)])
        assert not mask[0] and not mask[tokens[0] == 0].any() and not mask[tokens[0] == 3].any()
        for w, word in enumerate(data.words(i)):
            n = pieces(data.tokenizer, word)
            assert int((word_index == w).sum()) == n
            split += n > 1 and data.foreground_words(i)[w]
    assert split > 20


def test_default_sentences_always_fit():
    """At the default vocabulary every filler, sentiment and cue word is one
    piece, and a sentence holds at most one rare word of at most 14 letters:
    13 + 14 pieces + [CLS] + [SEP] <= 32 for any sentence. The rare words are
    the multi-piece ones."""
    for cue in ("sentiment", "filler"):
        tokenizer = synthetic_tokenizer(0, cue)
        words = FILLER_WORDS + POSITIVE_WORDS + NEGATIVE_WORDS + (CUE_WORDS if cue == "filler" else ())
        assert all(pieces(tokenizer, word) == 1 for word in words)
        assert max(map(len, RARE_WORDS)) <= 14 and 13 + 14 + 2 <= 32
        assert sum(pieces(tokenizer, word) > 1 for word in RARE_WORDS) >= len(RARE_WORDS) // 2
    data = SyntheticSentences("test", 200, seed=0, cue="filler")
    assert all(int(data.kept[i]) == len(generate_sentence(0, "test", i, "filler").words) for i in range(len(data)))


def test_determinism_and_the_shared_tokenizer(sentiment):
    again = SyntheticSentences("train", N, seed=0)
    assert torch.equal(again.tokens, sentiment.tokens) and torch.equal(again.masks, sentiment.masks)
    test = SyntheticSentences("test", N, seed=0)
    assert test.tokenizer.to_str() == sentiment.tokenizer.to_str()  # the test split rebuilds the train corpus
    assert [test.words(i) for i in range(20)] != [sentiment.words(i) for i in range(20)]
    other = SyntheticSentences("train", 50, seed=1)
    assert [other.words(i) for i in range(20)] != [sentiment.words(i) for i in range(20)]
    # a shorter train split has the same first sentences and the same tokenizer
    short = SyntheticSentences("train", 10, seed=0)
    assert torch.equal(short.tokens, sentiment.tokens[:10]) and short.tokenizer.to_str() == sentiment.tokenizer.to_str()
    # the batch encoding is encode_words sentence by sentence
    for i in range(5):
        assert torch.equal(sentiment.tokens[i], encode_words(sentiment.tokenizer, sentiment.words(i), 32)[0])
    # a given tokenizer is used as is
    given = SyntheticSentences("test", 10, seed=0, tokenizer=other.tokenizer)
    assert given.tokenizer is other.tokenizer


def test_bad_arguments():
    for kwargs, message in [({"split": "dev"}, "split = 'dev'"), ({"cue": "object"}, "cue = 'object'"),
                            ({"num_samples": 0}, "num_samples = 0"), ({"vocab_size": 2}, "vocab_size = 2"),
                            ({"max_tokens": 1}, "max_tokens = 1"), ({"seed": 1.5}, "seed = 1.5")]:
        with pytest.raises(UsageError, match=message):
            SyntheticSentences(**{"num_samples": 4, **kwargs})
