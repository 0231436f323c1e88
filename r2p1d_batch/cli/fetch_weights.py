"""Make the Kinetics-400 weights available in the torch hub cache, or say where to put them.

  r2p1d fetch-weights       exit 0 when cached (or just downloaded), 2 when they cannot be had here
"""
from __future__ import annotations

import argparse

from .args import command


def add_parser(sub) -> None:
    command(sub, "fetch-weights", __doc__, run)


def run(args: argparse.Namespace) -> int:
    from ..classifying.model import kinetics_checkpoint_path, load_model

    load_model("kinetics400")  # WeightsError (a UserError) says where to put the file
    print(kinetics_checkpoint_path())
    return 0
