"""Top-5 Kinetics-400 actions for one video, like the model zoo's demo, with the job's own
decode and preprocessing (no Ray).

python -m r2p1d_batch.demo VIDEO [--weights kinetics400|random|PATH] [--mode zoo|uniform|dense]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def classify_video(uri: str, weights: str = "kinetics400", mode: str = "zoo", seed: int = 0, k: int = 5):
    """(top-k [(label, prob)], weights id, clip count) from the mean softmax over the video's clips."""
    from .classify import ClipClassifier, topk
    from .config import DecodeConfig, ModelConfig, SamplingConfig
    from .decode import VideoSource
    from .sampling import plan_clips
    from .storage import filesystem, is_local

    sampling = SamplingConfig(mode=mode)
    fs, path = filesystem(uri)
    src = path if is_local(uri) else fs.open(path, "rb")
    with VideoSource(src, uri, DecodeConfig()) as video:
        clips = [c.frames for c in video.clips(plan_clips(sampling, video.info.duration, video.info.fps))]
    clf = ClipClassifier(ModelConfig(weights=weights, seed=seed, topk=k))
    probs = np.concatenate([clf(np.stack(clips[i : i + 8])).probs for i in range(0, len(clips), 8)])
    ids, scores = topk(probs.mean(0, keepdims=True), k)
    return [(clf.labels[i], float(s)) for i, s in zip(ids[0], scores[0])], clf.weights_id, len(clips)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m r2p1d_batch.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", help="a video file (local path or s3://)")
    p.add_argument("--weights", default="kinetics400", help="kinetics400 | random | checkpoint path")
    p.add_argument("--mode", default="zoo", choices=["zoo", "uniform", "dense"],
                   help="clip sampling (zoo: 16 frames strided over the whole video, like the zoo's demo)")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    args = p.parse_args(argv)
    from .decode import DecodeError
    from .model import WeightsError

    try:
        top, weights_id, n = classify_video(args.video, args.weights, args.mode, args.seed)
    except (DecodeError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.video}: {n} clip(s), weights {weights_id}")
    if weights_id.startswith("random:"):
        print("!! RANDOM WEIGHTS: these labels are meaningless !!")
    for rank, (label, prob) in enumerate(top, 1):
        print(f"{rank}. {label:<40s} {prob:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
