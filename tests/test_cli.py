import yaml

from kdlens.cli import main


def test_train_command_trains_and_resumes(tmp_path, capsys):
    raw = {
        "device": "cpu", "train": ["baseline"],
        "data": {"image_size": 32, "num_classes": 3, "train_size": 60, "test_size": 30, "student_fraction": 1.0},
        "model": {"arch": "vgg11", "width": 0.125},
        "baseline": {"epochs": 1, "batch_size": 16},
    }
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0
    assert "baseline" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "baseline" / "checkpoints").iterdir()) == ["epoch_000.pt", "epoch_001.pt"]
    assert main(["train", "--config", str(config), "--out", str(out), "--quiet"]) == 0

    capsys.readouterr()
    analyze = ["analyze", str(out), "--samples", "2", "--grid", "4", "--steps", "5", "--quiet"]
    assert main(analyze) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "n_fg" in printed
    assert list((out / "analysis").glob("fc1-*/summary-b1std-sample.json"))  # converged: 1 background std
    assert main([*analyze, "--estimator", "paper", "--baseline", "dataset"]) == 0
    assert "estimator paper" in capsys.readouterr().out
    assert list((out / "analysis").glob("fc1-*/summary-b0.2-dataset.json"))
    assert main([*analyze[:2], "--layer", "fc7", *analyze[2:]]) == 2
    assert "no layer 'fc7'" in capsys.readouterr().err


def test_bad_config_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model: {arch: vgg11, width: -1}\n")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.width" in err and "-1" in err


def test_unknown_role(tmp_path, capsys):
    config = tmp_path / "ok.yaml"
    config.write_text("seed: 1\n")
    assert main(["train", "--config", str(config), "--roles", "teacher,professor"]) == 2
    assert "professor" in capsys.readouterr().err
