"""Text through the whole house: a config of sentences and a BERT trains the
three roles, and the analysis measures knowledge points with one unit per
word, sentences of different lengths in one batch (tiny sizes; the numbers
mean nothing here)."""

import json

import pytest
import yaml

from kdlens.cli import main
from kdlens.config import ConfigError, parse_config

TINY = {
    "device": "cpu",
    "data": {"name": "sentences", "train_size": 40, "test_size": 12, "max_tokens": 32, "student_fraction": 0.5},
    "model": {"arch": "bert", "dropout": 0.1, "options": {"hidden": 16, "layers": 2, "heads": 2}},
    "teacher": {"epochs": 1, "batch_size": 10, "optimizer": "adamw", "lr": 0.001, "warmup_epochs": 1},
    "baseline": {"epochs": 1, "batch_size": 10, "optimizer": "adamw", "lr": 0.001},
    "student": {"layer": "layer2", "distill": {"epochs": 1, "batch_size": 10, "optimizer": "adamw", "lr": 0.001},
                "classify": {"epochs": 1, "batch_size": 10, "optimizer": "adamw", "lr": 0.001}},
}


def test_sentences_train_and_analyse_with_both_estimators(tmp_path, capsys):
    config = tmp_path / "text.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    assert main(["analyze", str(out), "--samples", "3", "--steps", "4", "--quiet"]) == 0  # the distilled layer
    assert "one unit per word" in capsys.readouterr().out
    summary = json.loads(next((out / "analysis").glob("layer2-*/summary-*.json")).read_text())
    for role in ("teacher", "random", "student", "baseline"):
        counts = summary[role]["per_sample"]
        assert all(fg + bg <= 14 for fg, bg in zip(counts["n_fg"], counts["n_bg"]) if fg is not None)
    # more sentences, some longer than any before: the cached ones are reused as they are
    assert main(["analyze", str(out), "--samples", "6", "--steps", "4", "--quiet"]) == 0
    assert main(["analyze", str(out), "--samples", "2", "--steps", "4", "--quiet"]) == 0
    # the paper's recipe with b = 0.2 (Sec. 4.1, BERT)
    assert main(["analyze", str(out), "--layer", "layer2", "--samples", "2", "--estimator", "paper", "--quiet"]) == 0
    summary = json.loads(next((out / "analysis").glob("layer2-*/summary-b0.2-*.json")).read_text())
    assert summary["teacher"]["rule"]["threshold"] == 0.2
    assert summary["teacher"]["per_sample"]["n_fg"][0] is not None


@pytest.mark.parametrize("changes,expected", [
    ({"model": {"arch": "vgg11"}}, "model.arch = 'vgg11' takes image input"),
    ({"student": {"layer": "fc1"}}, "student.layer = 'fc1': the text models' layers are embeddings"),
])
def test_text_configs_name_text_models_and_their_layers(changes, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config({**TINY, **changes})


@pytest.mark.parametrize("changes,expected", [
    ({"model": {"arch": "bert_qa"}}, "model.arch = 'bert_qa' with data.name = 'sentences': expected a sentence"),
    ({"model": {"arch": "bert", "linear_init": "pytorch"}}, "would re-draw every linear layer of a BERT"),
    ({"model": {"arch": "bert", "options": {"pretrained": "/nowhere"}}}, "data.tokenizer is not"),
])
def test_text_models_must_fit_the_text_data(changes, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_config({**TINY, **changes})


def test_a_text_model_takes_berts_dropout_unless_told():
    assert parse_config({**TINY, "model": {"arch": "bert"}}).model.dropout == 0.1
    assert parse_config({**TINY, "model": {"arch": "bert", "dropout": 0.3}}).model.dropout == 0.3


def test_a_trained_vocabulary_larger_than_the_model_is_refused():
    from kdlens.builders import build_datasets

    config = parse_config({**TINY, "data": {**TINY["data"], "vocab_size": 16}})
    with pytest.raises(ConfigError, match="data.vocab_size = 16: the tokenizer trained on the data has"):
        build_datasets(config)


def test_an_image_config_refuses_a_text_layer():
    with pytest.raises(ConfigError, match="student.layer = 'layer2': expected one of conv, fc1, fc2, fc3"):
        parse_config({"student": {"layer": "layer2"}})


def _squad(path, questions):
    context = ("the red team played the blue team in the old stadium on sunday and the red team won . "
               "the crowd was happy and the band played late into the night .")
    qas = [{"id": f"q{k}", "question": question,
            "answers": [{"text": answer, "answer_start": context.index(answer)}]}
           for k, (question, answer) in enumerate(questions)]
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": qas}]}]}))


QUESTIONS = [("who won ?", "the red team"), ("where did they play ?", "the old stadium"),
             ("when did they play ?", "sunday"), ("who was happy ?", "the crowd"),
             ("what played late ?", "the band")] * 4


def test_question_answering_trains_and_is_analysed(tmp_path):
    """SQuAD through the house: bert_qa, one class per span, the answer words as foreground."""
    _squad(tmp_path / "train-v1.1.json", QUESTIONS)
    _squad(tmp_path / "dev-v1.1.json", QUESTIONS[:5])
    config = {**TINY, "data": {"name": "squad", "path": str(tmp_path), "max_tokens": 48, "vocab_size": 200,
                               "student_fraction": 0.5},
              "model": {**TINY["model"], "arch": "bert_qa"}}
    (tmp_path / "qa.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "qa.yaml"), "--out", str(out), "--quiet"]) == 0
    assert main(["analyze", str(out), "--samples", "2", "--steps", "4", "--quiet"]) == 0
    summary = json.loads(next((out / "analysis").glob("layer2-*/summary-*.json")).read_text())
    assert summary["teacher"]["samples"] == 2
    # question and context words are units; at most the 30-odd words of one example
    counts = summary["teacher"]["per_sample"]
    assert all(fg + bg <= 40 for fg, bg in zip(counts["n_fg"], counts["n_bg"]) if fg is not None)


def test_an_sst2_config_reads_dev_as_its_test_split(tmp_path):
    from kdlens.builders import build_datasets, build_network

    rows = ["a good film", "an awful mess", "the best day", "a terrible plot"]
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / name).write_text("sentence\tlabel\n" + "".join(f"{s}\t{k % 2 == 0:d}\n" for k, s in enumerate(rows)))
    config = parse_config({**TINY, "data": {"name": "sst2", "path": str(tmp_path), "vocab_size": 60}})
    train, test = build_datasets(config)
    assert (train.split, test.split) == ("train", "dev") and train.tokenizer.to_str() == test.tokenizer.to_str()
    assert train.foreground_words(0) == [False, True, False]  # "good" is in VADER's lexicon
    network = build_network(config.model, config, len(train.classes), init="teacher")
    assert network.network.config.vocab_size == 60 and network.network.config.max_position_embeddings == 64
