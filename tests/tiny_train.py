"""examples/train.py as a script on 96 training and 40 test digits (tests.helpers.tiny_digits), for
the tests that kill it, resume it or start it under torchrun. It also offers ``tiny_cnn``, a model
without BatchNorm, whose multi-process run equals the single-process one (BatchNorm's batch
statistics are per process on the CPU). With TINY_TRAIN_ROWS set to a folder, every process writes
there the recorder rows of each method it trained, as rows_<method>_<rank>.json. With
TINY_TRAIN_KILL_AT=N, the process kills itself with SIGKILL as it begins its N-th training step,
counted over the whole process (the warm-up's steps included)."""

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import load_example, tiny_digits  # noqa: E402 -- after the repository is on the path


def tiny_cnn(in_channels, num_classes):
    """One convolution, a ReLU, a 4x4 average pool and a linear head: no BatchNorm."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(8 * 16, num_classes))


def main(argv):
    train = load_example("train")
    tiny_digits(train, pytest.MonkeyPatch())
    train.models.MODELS["tiny_cnn"] = tiny_cnn
    rows = os.environ.get("TINY_TRAIN_ROWS")
    if rows:
        train_method = train.train_method

        def recording(method, *args, **kwargs):
            curves, recorder = train_method(method, *args, **kwargs)
            Path(rows, f"rows_{method}_{os.environ.get('RANK', '0')}.json").write_text(json.dumps(recorder.flush()))
            return curves, recorder

        train.train_method = recording
    kill_at = int(os.environ.get("TINY_TRAIN_KILL_AT", "0"))
    if kill_at:
        train_step, calls = train.MethodRun.train_step, [0]

        def killed_at(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return train_step(self, *args, **kwargs)

        train.MethodRun.train_step = killed_at
    train.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
