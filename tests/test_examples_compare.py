"""examples/compare.py: the seed-paired study's files, its paired interval against a hand
computation, the pairing of init and batches, and its bad-input errors."""

import json

import pytest
import torch

from tests.helpers import load_example

pytest.importorskip("mnist1d")
pytest.importorskip("matplotlib")

compare = load_example("compare")


def tiny(tmp_path, *extra):
    """A 2-seed, 1-epoch study on 200 signals (160 train: 4 steps at the default batch of 50)."""
    return ["--seeds", "3,4", "--epochs", "1", "--samples", "200", "--out", str(tmp_path / "study"),
            "--runs", str(tmp_path / "runs"), *extra]


def test_a_tiny_study_writes_its_json_table_and_figure(tmp_path, capsys):
    argv = tiny(tmp_path, "--methods", "gan,adamw")
    record = compare.main(argv)
    out = tmp_path / "study"
    assert sorted(p.name for p in out.iterdir()) == ["study.json", "study.md", "study.png"]
    saved = json.loads((out / "study.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["methods"] == ["adamw", "gan"] and saved["seeds"] == [3, 4]  # the baseline first
    assert saved["config"]["train_size"] == 160 and saved["config"]["test_size"] == 40
    assert saved["config"]["model"] == "cnn1d" and saved["config"]["epochs"] == 1
    assert [run["seed"] for run in saved["runs"]] == [3, 4]
    for run in saved["runs"]:
        metrics = json.loads((tmp_path / "runs" / f"seed-{run['seed']}" / "metrics.json").read_text())
        for method in ("adamw", "gan"):
            assert run["test_accuracy"][method] == [round(metrics["curves"][method]["test_accuracy"][0], 4)]
    gan = saved["summary"]["gan"]
    finals = {m: [run["test_accuracy"][m][-1] for run in saved["runs"]] for m in ("adamw", "gan")}
    assert gan["final_accuracy"] == finals["gan"]
    assert gan["paired_difference"]["per_seed"] == pytest.approx([g - a for g, a in zip(finals["gan"], finals["adamw"])])
    assert "paired_difference" not in saved["summary"]["adamw"]
    text = (out / "study.md").read_text()
    assert "python examples/compare.py " + " ".join(argv) in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| method | final test accuracy (mean ± std, 2 seeds) | − adamw, paired")
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| adamw", "| gan"]
    pair = gan["paired_difference"]
    assert f"{gan['mean']:.4f} ± {gan['std']:.4f} | {pair['mean']:+.4f} [{pair['low']:+.4f}, {pair['high']:+.4f}]" in lines[3]
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"wrote {out / 'study.json'}")


def test_every_method_of_a_seed_starts_from_the_same_weights_and_sees_the_same_batches(tmp_path, monkeypatch):
    build = compare.train.models.MODELS["cnn1d"]
    seen = []

    def spy(**kwargs):
        model = build(**kwargs)
        batches = []
        model.register_forward_pre_hook(lambda module, inputs: batches.append(inputs[0].sum().item()) if module.training else None)
        seen.append((model[0].weight.detach().clone(), batches))
        return model

    monkeypatch.setitem(compare.train.models.MODELS, "cnn1d", spy)
    compare.main(tiny(tmp_path, "--methods", "adamw,gc,gan-fused"))
    # Each seed's run first warms every method up on a throwaway model (two steps), then trains.
    assert [len(batches) for _, batches in seen] == [2, 2, 2, 4, 4, 4] * 2
    seen = [each for each in seen if len(each[1]) == 4]  # 2 seeds x 3 methods, in that order
    for first in (0, 3):
        weights, batches = seen[first]
        assert len(batches) == 4
        for other_weights, other_batches in seen[first + 1:first + 3]:
            assert torch.equal(weights, other_weights) and other_batches == batches
    assert not torch.equal(seen[0][0], seen[3][0]) and seen[0][1] != seen[3][1]  # the seeds differ


def test_the_paired_interval_is_the_t_interval_of_the_differences():
    # Differences 0.01, 0.03, 0.00: mean 0.013333, sd 0.015275, t(0.975, 2) = 4.303,
    # half-width 4.303 * 0.015275 / sqrt(3) = 0.037949.
    pair = compare.paired_interval([0.91, 0.95, 0.94], [0.90, 0.92, 0.94])
    assert pair["per_seed"] == pytest.approx([0.01, 0.03, 0.0])
    assert pair["mean"] == pytest.approx(0.013333, abs=1e-6)
    assert pair["std"] == pytest.approx(0.015275, abs=1e-6)
    assert pair["low"] == pytest.approx(0.013333 - 0.037949, abs=1e-6)
    assert pair["high"] == pytest.approx(0.013333 + 0.037949, abs=1e-6)


def test_the_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 30, 31, 50, 200):
        assert compare.t_quantile(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    with pytest.raises(ValueError, match="at least 1 degree of freedom"):
        compare.t_quantile(0)


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "1"], "--seeds takes at least two distinct"),
    (["--seeds", "1,1"], "--seeds takes at least two distinct"),
    (["--seeds", "a,b"], "--seeds takes at least two distinct"),
    (["--methods", "gc,gan"], "--methods must include adamw"),
    (["--methods", "adamw,gan,gan"], "--methods names a method twice"),
    (["--methods", "adamw,lion"], "unknown method 'lion'"),
    (["--model", "resnet20"], "model 'resnet20' does not take the 1-D signals of --dataset mnist1d"),
    (["--samples", "25"], "--samples N takes a positive multiple of 10"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--device", "foo"], "unknown device 'foo'"),
])
def test_bad_input_is_one_line_before_any_training(argv, message, tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained despite bad input")

    monkeypatch.setattr(compare.train, "train_method", no_training)
    with pytest.raises(SystemExit) as exit_info:
        compare.main(["--out", str(tmp_path / "study"), "--runs", str(tmp_path / "runs"), *argv])
    text = str(exit_info.value.code)
    assert text.startswith("compare.py: error: ") and message in text and "\n" not in text
    assert not any(tmp_path.iterdir())
