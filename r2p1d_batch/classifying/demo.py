"""Top-5 Kinetics-400 actions for one video, like the model zoo's demo, with the job's own
decode and preprocessing (no Ray).

r2p1d demo VIDEO [--weights kinetics400|random|PATH] [--mode zoo|uniform|dense]
"""
from __future__ import annotations

import numpy as np


def classify_video(uri: str, weights: str = "kinetics400", mode: str = "zoo", seed: int = 0, k: int = 5):
    """(top-k [(label, prob)], weights id, clip count) from the mean softmax over the video's clips."""
    from ..config import DecodeConfig, ModelConfig, SamplingConfig
    from ..decoding.pyav import VideoSource
    from ..decoding.sampling import plan_clips
    from ..storage import filesystem, is_local
    from .classifier import ClipClassifier
    from .scores import topk

    sampling = SamplingConfig(mode=mode)
    fs, path = filesystem(uri)
    src = path if is_local(uri) else fs.open(path, "rb")
    with VideoSource(src, uri, DecodeConfig()) as video:
        clips = [c.frames for c in video.clips(plan_clips(sampling, video.info.duration, video.info.fps))]
    clf = ClipClassifier(ModelConfig(weights=weights, seed=seed, topk=k))
    probs = np.concatenate([clf(np.stack(clips[i : i + 8])).probs for i in range(0, len(clips), 8)])
    ids, scores = topk(probs.mean(0, keepdims=True), k)
    return [(clf.labels[i], float(s)) for i, s in zip(ids[0], scores[0])], clf.weights_id, len(clips)

