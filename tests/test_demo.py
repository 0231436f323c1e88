import subprocess
import sys

import pytest

from r2p1d_batch.classifying.demo import classify_video

from tests.helpers import REPO
from tests.helpers.videos import make_video


def test_demo_prints_top5_with_the_jobs_preprocessing(tmp_path):
    video = make_video(tmp_path / "v.mp4", n_frames=45, fps=15, pattern="moving")
    top, wid, n = classify_video(str(video), weights="random", mode="zoo")
    assert n == 1 and wid == "random:seed=0" and len(top) == 5
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
    proc = subprocess.run([sys.executable, "-m", "r2p1d_batch", "demo", str(video), "--weights", "random"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "RANDOM WEIGHTS" in proc.stdout and lines[-5].startswith("1. " + top[0][0])


def test_demo_help_and_bad_input(tmp_path, capsys):
    """The command's help and its exit status on a bad file, in process (the subprocess above
    and tests/test_cli.py run the command itself)."""
    from r2p1d_batch.cli import main

    with pytest.raises(SystemExit) as h:
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert h.value.code == 0 and "--weights" in out and "zoo" in out
    bad = tmp_path / "x.mp4"
    bad.write_text("nope")
    assert main(["demo", str(bad), "--weights", "random"]) == 2
    assert "not a readable media file" in capsys.readouterr().err
