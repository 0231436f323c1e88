import subprocess
import sys

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


def test_demo_help_and_bad_input(tmp_path):
    h = subprocess.run([sys.executable, "-m", "r2p1d_batch", "demo", "--help"], capture_output=True, text=True,
                       cwd=REPO)
    assert h.returncode == 0 and "--weights" in h.stdout and "zoo" in h.stdout
    bad = tmp_path / "x.mp4"
    bad.write_text("nope")
    r = subprocess.run([sys.executable, "-m", "r2p1d_batch", "demo", str(bad), "--weights", "random"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "not a readable media file" in r.stderr
