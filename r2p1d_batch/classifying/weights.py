"""Which weights a run uses, as the ids every output row records, and the Kinetics-400 facts
a run needs without building the model: the 400 category names (``kinetics400.txt``, equal to
torchvision's weights meta: tests/test_model.py checks) and the crop the preset feeds the model.

No torch here: the driver and a CPU classifier actor whose ONNX export is cached import this
module, never torch (~6 s and ~0.5 GiB per process).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

MODEL_NAME = "r2plus1d_18"
KINETICS_ENUM = "R2Plus1D_18_Weights.KINETICS400_V1"  # torchvision's weights enum member
KINETICS_ID = f"torchvision:{KINETICS_ENUM}"
KINETICS_FILE = "r2plus1d_18-91a641e6.pth"  # the file name in the enum's download URL
CROP = (112, 112)  # the preset's crop_size: the clips' H, W


class WeightsError(UserError, RuntimeError):
    """Weights that cannot be loaded; the message says what to do."""


@lru_cache(maxsize=1)
def categories() -> tuple[str, ...]:
    """The Kinetics-400 class names, in the model's output order."""
    names = (Path(__file__).with_name("kinetics400.txt")).read_text(encoding="utf-8").splitlines()
    return tuple(names)


def kinetics_checkpoint_path() -> Path:
    """Where torch hub caches (and where to put, offline) the Kinetics-400 file. torch.hub's own
    rule ($TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch; then hub/checkpoints),
    without importing torch; tests/test_model.py holds it to torch.hub.get_dir()."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints" / KINETICS_FILE


def kinetics_available() -> bool:
    return kinetics_checkpoint_path().is_file()


def is_kinetics(spec: str) -> bool:
    return spec in ("kinetics400", KINETICS_ENUM)


def is_random(weights_id: str) -> bool:
    return weights_id.startswith("random:")


def checkpoint_id(path: str, digest: str) -> str:
    return f"file:{os.path.basename(path)}@sha256:{digest[:16]}"


def weights_id(spec: str, seed: int = 0, storage=None) -> str:
    """The id ``model.load_model`` will record for ``spec``, without building the model (a
    checkpoint is streamed once through sha256). The driver uses it to skip rows before any
    work starts, and a CPU actor to find its cached ONNX export."""
    if spec == "random":
        return f"random:seed={seed}"
    if is_kinetics(spec):
        return KINETICS_ID
    from ..storage import filesystem, sha256

    try:
        fs, path = filesystem(spec, storage)
        digest = sha256(fs, path)
    except FileNotFoundError:
        raise WeightsError(f"checkpoint not found: {spec}") from None
    except Exception as e:
        raise WeightsError(f"cannot read checkpoint {spec}: {type(e).__name__}: {e}") from None
    return checkpoint_id(path, digest)
