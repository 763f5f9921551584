"""``kdlens validate --modality text``: planted knowledge in sentences."""

import json
import math

import pytest

from kdlens.validate import ESTIMATORS, NETWORKS, TEXT_FULL, ValidationSettings, format_report, run_validation

# small enough for seconds: a BERT of hidden 64 on 40 sentences, the paper estimator on 2 of them
TINY = ValidationSettings(modality="text", arch="bert", num_classes=2, max_tokens=32, vocab_size=900,
                          train_samples=40, test_samples=10, dropout=0.1, epochs=1, batch_size=10, lr=0.001,
                          weight_decay=0.01, optimizer="adamw", warmup_epochs=1, layer="layer2", samples=2,
                          converged_steps=10, converged_noise_samples=2, map_samples=1)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("validate-text")
    return out, run_validation(out, progress=False, settings=TINY)


def test_json_shape_and_the_words_as_units(tiny_run, strict_json):
    out, summary = tiny_run
    saved = strict_json(out / "validation.json")
    assert saved == json.loads(json.dumps(summary))
    for network in NETWORKS:
        for estimator in ESTIMATORS:
            entry = saved[network][estimator]
            for key in ("lambda", "n_fg", "n_bg"):
                assert entry[key] is None or math.isfinite(entry[key])
            # a sentence has 8 to 14 words: no more points than words
            assert all(fg + bg <= 14 for fg, bg in zip(entry["per_sample_n_fg"], entry["per_sample_n_bg"]))
    settings, measurement = saved["settings"], saved["measurement"]
    assert settings["modality"] == "text" and settings["max_tokens"] == 32 and "num_points" not in settings
    assert measurement["units"] == "one unit per word"
    assert measurement["same_object_across_cues"] is True  # the same sentiment words at the same places
    assert measurement["rules"]["paper"]["threshold"] == 0.2  # the paper's b for BERT (Sec. 4.1)
    # 2 or 3 sentiment words of 8 to 14
    assert all(0.1 < share < 0.4 for share in measurement["foreground_unit_share"].values())
    assert saved["accuracy"]["background_cue"]["cue"] == "background"
    assert (out / "validation_maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "foreground share of the words" in format_report(summary)


def test_the_text_sizes_train_with_adamw_and_a_warm_up():
    assert TEXT_FULL.optimizer == "adamw" and TEXT_FULL.warmup_epochs == 1 and TEXT_FULL.layer == "layer2"
    assert "optimizer" in TEXT_FULL.training_key("object_only")
    assert "optimizer" not in ValidationSettings().training_key("object_only")  # images keep their keys
