"""Top-5 Kinetics-400 actions for one video, like the model zoo's demo (no Ray).

  r2p1d demo VIDEO [--weights kinetics400|random|PATH] [--mode zoo|uniform|dense]
"""
from __future__ import annotations

import argparse

from ..errors import UserError
from .args import command


def add_parser(sub) -> None:
    p = command(sub, "demo", __doc__, run)
    p.add_argument("video", help="a video file (local path or s3://)")
    p.add_argument("--weights", default="kinetics400", help="kinetics400 | random | checkpoint path")
    p.add_argument("--mode", default="zoo", choices=["zoo", "uniform", "dense"],
                   help="clip sampling (zoo: 16 frames strided over the whole video, like the zoo's demo)")
    p.add_argument("--seed", type=int, default=0, help="seed for --weights random")


def run(args: argparse.Namespace) -> int:
    from ..classifying.demo import classify_video
    from ..decoding.pyav import DecodeError

    try:
        top, weights_id, n = classify_video(args.video, args.weights, args.mode, args.seed)
    except DecodeError as e:  # in the job a bad video is an error row; here it is the input
        raise UserError(str(e)) from None
    print(f"{args.video}: {n} clip(s), weights {weights_id}")
    if weights_id.startswith("random:"):
        print("!! RANDOM WEIGHTS: these labels are meaningless !!")
    for rank, (label, prob) in enumerate(top, 1):
        print(f"{rank}. {label:<40s} {prob:.4f}")
    return 0
