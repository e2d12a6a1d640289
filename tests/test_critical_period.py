"""examples/critical_period.py: the study's grid, its table and figure, and its bad-input errors,
on a tiny slice of the digits."""

import json
import statistics

import pytest

from tests.helpers import load_example, tiny_digits

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


def tiny_study(monkeypatch):
    """The study on 96 training and 40 test digits: two steps an epoch."""
    study = load_example("critical_period")
    tiny_digits(study.train, monkeypatch)
    return study


def test_every_method_deficit_and_seed_is_trained_tabled_and_drawn(tmp_path, monkeypatch, capsys):
    study = tiny_study(monkeypatch)
    blurred_epochs = []
    train_method = study.train.train_method

    def spy(method, args, images, augmented, device):
        blurred_epochs.append((method, args.seed, args.deficit_epochs))
        return train_method(method, args, images, augmented, device)

    monkeypatch.setattr(study.train, "train_method", spy)
    record = study.main(["--seeds", "3,4", "--epochs", "3", "--early", "1:1", "--late", "2:3", "--out", str(tmp_path)])
    expected = {(m, s, d) for m in ("adamw", "gan") for s in (3, 4) for d in (None, "1:1", "2:3")}
    assert len(blurred_epochs) == 12 and set(blurred_epochs) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["critical_period.png", "study.json", "table.md"]
    saved = json.loads((tmp_path / "study.json").read_text())
    assert saved["seeds"] == [3, 4] and len(saved["runs"]) == 12
    for run in saved["runs"]:
        assert len(run["test_accuracy"]) == 3 and run["final_accuracy"] == run["test_accuracy"][-1]
        assert {"coherence/1", "coherence/5", "function_step"} <= set(run["dynamics"])
        assert len(run["dynamics"]["step"]) == 6
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[0].startswith("| method | no deficit | early deficit (epochs 1–1) | late deficit (epochs 2–3) |")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| adamw", "| gan"]
    for line, method in zip(lines[2:], ("adamw", "gan")):
        cells = line.strip("| ").split(" | ")
        means = {}
        for cell, deficit in zip(cells[1:4], study.DEFICITS):
            values = [r["final_accuracy"] for r in saved["runs"] if r["method"] == method and r["deficit"] == deficit]
            means[deficit] = statistics.fmean(values)
            assert cell.startswith(f"{means[deficit]:.4f} ± {statistics.stdev(values):.4f}")
        assert cells[4] == f"{means['early'] - means['none']:+.4f}"
    assert (tmp_path / "critical_period.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("wrote ")
    assert record["runs"] == saved["runs"]


@pytest.mark.parametrize("argv,message", [
    (["--early", "0:2"], "--deficit-epochs 0:2: need 1 <= A <= B <= --epochs (15)"),
    (["--late", "12:20"], "need 1 <= A <= B <= --epochs (15)"),
    (["--seeds", "a"], "--seeds takes distinct comma-separated integers"),
    (["--seeds", "1,1"], "--seeds takes distinct"),
    (["--methods", "adamw,sgd"], "unknown method 'sgd'"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--methods", ","], "--methods names no method"),
    (["--dataset", "cifar100"], "--dataset cifar100 needs --data-dir"),
    (["--dataset", "cifar100", "--data-dir", "{tmp}"], "CIFAR-100 not found"),
])
def test_bad_input_is_one_line_and_writes_nothing(argv, message, tmp_path):
    out = tmp_path / "study"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        load_example("critical_period").main(argv + ["--out", str(out)])
    text = str(exit_info.value.code)
    assert text.startswith("critical_period.py: error: ") and message in text and "\n" not in text
    assert not out.exists()
