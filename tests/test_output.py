"""Readable output (issue 21 item 5): with standard output not a terminal (a log file, CI),
each epoch prints one line (Keras's ``verbose=2``) and no progress bar writes
carriage-return updates; in a terminal Keras's live bar stays."""
import io
import os
import subprocess
import sys

from surgery.progress import bars_wanted, fit_verbose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_verbosity_follows_the_stream():
    assert fit_verbose(stream=_Terminal()) == 1 and fit_verbose(stream=io.StringIO()) == 2
    assert fit_verbose(quiet=True, stream=_Terminal()) == 0 and fit_verbose(0) == 0
    assert bars_wanted(True, stream=_Terminal()) is True
    assert bars_wanted(True, stream=io.StringIO()) is False


def test_prune_logged_to_a_file_prints_one_line_per_epoch(tmp_path):
    log = tmp_path / "log"
    with open(log, "w") as fh:  # a file, as `> log 2>&1` gives
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, "prune_and_finetune.py"), "--model", "lenet5",
             "--image-size", "16", "--baseline-epochs", "2", "--finetune-epochs", "2",
             "--batch-size", "64", "--plots", "--out", str(tmp_path / "run")],
            stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, timeout=600,
            env=dict(os.environ, PYTHONPATH=ROOT))
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "\r" not in text and "\x08" not in text, text[-2000:]  # no bar updates
    assert "Sharding callback" not in text, text[-2000:]  # absl's line per checkpoint
    lines = text.splitlines()
    epochs = [i for i, line in enumerate(lines) if line.startswith("Epoch ")]
    assert len(epochs) == 4, lines  # baseline 2 + fine-tuning 2
    for i in epochs:  # the epoch's one summary line follows its header (log records of
        # BackupAndRestore's checkpoint writes, e.g. absl's "Sharding callback", may come first)
        summary = [line for line in lines[i + 1:i + 6] if " - loss: " in line]
        assert summary and "━" not in summary[0], lines[i + 1:i + 6]
    assert (tmp_path / "run" / "sensitivity.png").is_file()
