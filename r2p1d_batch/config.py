"""Typed, frozen run configuration: YAML defaults + ``--set a.b=c`` overrides, validated once.

No ray or torch imports here: the driver validates config before any work starts.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import UserError

# Shipped with the package (the checkout's top-level configs/ points here): the defaults and
# the profiles, which --config also takes by name (``--config cpu``).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class ConfigError(UserError, ValueError):
    """A bad config file, key or value; raised before any work starts."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Concurrency = Union[None, int, tuple[int, int]]


def _check_concurrency(v: Any) -> Any:
    if isinstance(v, list):
        v = tuple(v)
    if isinstance(v, tuple):
        if len(v) != 2 or not all(isinstance(x, int) and x >= 1 for x in v) or v[0] > v[1]:
            raise ValueError("concurrency must be an int >= 1 or a [min, max] pair with 1 <= min <= max")
    elif v is not None and (not isinstance(v, int) or v < 1):
        raise ValueError("concurrency must be an int >= 1 or a [min, max] pair")
    return v


def _check_labels(v: Any) -> Any:
    """Ray node-label selector: {key: value}; a value may be "v", "!v", "in(a,b)", "!in(a,b)"."""
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and k and isinstance(x, str) and x for k, x in v.items()):
        raise ValueError("label_selector must map label keys to non-empty strings, e.g. {r2p1d.io/pool: gpu}")
    return v


class RayConfig(_Section):
    # None: use RAY_ADDRESS when set (ray job submit sets it), else start a local Ray.
    address: Optional[str] = None
    num_cpus: Optional[int] = Field(None, ge=1)
    object_store_memory_mb: Optional[int] = Field(None, ge=78)
    progress_bars: bool = True


class SamplingConfig(_Section):
    # dense: a clip every stride_sec (annotation); uniform: num_clips spread over the video
    # (Kinetics evaluation); zoo: one clip of clip_len frames strided over the whole video,
    # no fps resampling (qai-hub-models' demo).
    mode: Literal["dense", "uniform", "zoo"] = "dense"
    clip_len: int = Field(16, ge=1, le=256)
    fps: float = Field(15.0, gt=0, le=240)
    stride_sec: float = Field(1.0, gt=0)
    num_clips: int = Field(5, ge=1, le=10_000)
    # pad: a video shorter than one clip gives one clip whose tail repeats the last frame;
    # error: it becomes an error row.
    short_video: Literal["pad", "error"] = "pad"


class NvdecConfig(_Section):
    # The NVDEC lane (decode.device auto|cuda on a cluster with GPUs): decode actors holding a
    # fractional GPU, beside the CPU decode tasks. Defaults are placeholders until measured on a
    # GPU node (docs/gpu.md).
    library: Literal["auto", "pynvvideocodec", "torchcodec"] = "auto"  # auto: the first importable
    share: float = Field(0.5, ge=0, le=1)  # fraction of the videos sent to the NVDEC lane
    concurrency: Concurrency = 1  # NVDEC decode actors (each holds one reusable decoder)
    num_gpus: float = Field(0.25, gt=0, le=1)  # per NVDEC actor
    num_cpus: float = Field(1.0, gt=0)  # per NVDEC actor (demux, planning, host copies)

    _conc = field_validator("concurrency", mode="before")(_check_concurrency)


class DecodeConfig(_Section):
    # exact: torch bilinear without antialias, identical to the torchvision preset;
    # cv2: OpenCV INTER_LINEAR on uint8, within 1 grey level of the preset and ~100x cheaper;
    # swscale: FFmpeg converts and scales in one pass at the small size (other pixels, outside
    # the fidelity budget; docs/bench.md).
    scaler: Literal["exact", "cv2", "swscale"] = "exact"
    threads: int = Field(1, ge=0, le=64)  # FFmpeg decoder threads per task (0 = FFmpeg picks)
    # exact scaler, frames of 1.2 MP and more: convert and resize only the source pixels the
    # model's crop reads (crop_taps.py): the same pixels, 1.6x (1080p) to 12x (2160p) cheaper.
    crop_taps: bool = True
    # Frames not decoded at all (a non-reference frame is one no other frame is predicted from):
    # unused: the non-reference frames no clip shows (same pixels, times and clip_sha as none);
    # nonref: every non-reference frame, a clip then shows the frame before (timestamps shift:
    # measured by `r2p1d bench --only levers`); none: decode every frame.
    skip_frames: Literal["none", "unused", "nonref"] = "unused"
    # Lossy: skip H.264/HEVC's in-loop deblocking filter (12-27 % less decoding) for videos whose
    # shorter side is at least this many pixels (null: never, 0: always). Its artefacts mostly
    # vanish in the model's downscale: inside the fidelity budget from 720 px (5.6x) up, not at
    # 360 px (docs/performance.md). configs/cluster.yaml sets 720.
    skip_loop_filter_min_side: Optional[int] = Field(None, ge=0)
    # FFmpeg decoder options (AVOptions), for what the switches above do not cover, e.g.
    # {flags2: "+fast"}. Unknown names are ignored by FFmpeg.
    codec_options: dict[str, str] = {}
    num_cpus: float = Field(1.0, gt=0)
    concurrency: Concurrency = None
    clips_per_block: int = Field(8, ge=1, le=1024)
    max_pixels: int = Field(8192 * 4320, ge=1)  # frames larger than this are an error row
    # Two needed spans closer than this are decoded through instead of seeking.
    seek_gap_sec: float = Field(2.0, ge=0)
    # Per-video decode time limit (seconds of decoding, back-pressure waits not counted);
    # a video over it becomes an error row with error_class=Timeout. null: no limit.
    timeout_sec: Optional[float] = Field(1800.0, gt=0)
    # Where decode tasks may run (placement.py): Ray node labels they require, e.g.
    # {r2p1d.io/pool: "!gpu"} keeps them off GPU nodes, and custom Ray resources per task.
    label_selector: dict[str, str] = {}
    resources: dict[str, float] = {}
    # auto: NVDEC beside the CPU decoders where the cluster has GPUs and NVDEC works (per-video
    # fallback to PyAV), else PyAV only; cpu: PyAV only; cuda: NVDEC required (exit 2 without it).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    nvdec: NvdecConfig = NvdecConfig()

    _conc = field_validator("concurrency", mode="before")(_check_concurrency)
    _labels = field_validator("label_selector", mode="before")(_check_labels)


# Default clips per classifier batch. GPU: r2plus1d_18 in bf16 reaches its throughput plateau
# at 32-128 on an H100 (8.4 GB at 128). CPU: big enough to amortise per-call overhead, small
# enough that a batch does not wait long for decode.
GPU_BATCH_SIZE = 64
CPU_BATCH_SIZE = 8


class ModelConfig(_Section):
    # kinetics400: torchvision's enum (hub cache, or download where allowed);
    # random: seeded random init, marked in every output row; anything else: a checkpoint path.
    weights: str = "kinetics400"
    seed: int = 0
    # auto: onnxruntime on CPU actors, torch on CUDA actors.
    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # None: per device, GPU_BATCH_SIZE for GPU actors (num_gpus > 0), CPU_BATCH_SIZE otherwise.
    batch_size: Optional[int] = Field(None, ge=1, le=4096)
    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(1.0, gt=0)
    concurrency: Concurrency = 1
    topk: int = Field(5, ge=1, le=400)
    amp: Literal["bf16", "fp16", "none"] = "bf16"  # CUDA only; CPU runs fp32
    # Where classifier actors may run (placement.py): node labels, e.g. {r2p1d.io/pool: gpu},
    # and custom Ray resources per actor.
    label_selector: dict[str, str] = {}
    resources: dict[str, float] = {}
    # A graph directory written by `r2p1d quantize` (local or s3://): CPU actors run its int8
    # graph instead of the fp32 one. The driver refuses one whose report is missing, missed its
    # budget or was built for other weights (docs/int8.md). null: fp32.
    int8: Optional[str] = None

    _conc = field_validator("concurrency", mode="before")(_check_concurrency)
    _labels = field_validator("label_selector", mode="before")(_check_labels)

    @property
    def effective_batch_size(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return GPU_BATCH_SIZE if self.num_gpus > 0 else CPU_BATCH_SIZE

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("weights must be kinetics400, random or a checkpoint path")
        return v.strip()


class QuantizeConfig(_Section):
    # `r2p1d quantize MANIFEST --output DIR` (docs/int8.md): clips decoded from the manifest with
    # the job's own decode and sampling, split by video into calibration and held-out clips.
    calibration_clips: int = Field(16, ge=1, le=10_000)
    holdout_clips: int = Field(32, ge=1, le=100_000)
    clips_per_video: int = Field(4, ge=1)  # at most this many from one video, spread over it
    seed: int = 0  # which videos, in which order
    # ORT's calibration: entropy (KL divergence of each activation's histogram; the best
    # agreement measured here), minmax (fastest to build), percentile.
    method: Literal["entropy", "minmax", "percentile"] = "entropy"
    per_channel: bool = True  # int8 weights scaled per output channel
    reduce_range: bool = False  # 7-bit weights (ORT's remedy for u8s8 saturation on CPUs without VNNI)
    head_fp32: bool = True  # keep the classifier head (fc) in fp32
    # The budget the int8 graph must reach on the held-out clips (mean over clips), else
    # `quantize` exits 1 and `label` refuses the graph.
    min_top1: float = Field(0.98, ge=0, le=1)
    min_logits_cosine: float = Field(0.999, ge=-1, le=1)
    min_embedding_cosine: float = Field(0.99, ge=-1, le=1)


class StorageConfig(_Section):
    # S3: endpoint/region/profile fall back to AWS_ENDPOINT_URL(_S3), AWS_REGION /
    # AWS_DEFAULT_REGION, AWS_PROFILE. Credentials are never config: env, profile or role.
    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    profile: Optional[str] = None
    anon: bool = False  # unsigned requests (public buckets)
    max_attempts: int = Field(10, ge=1, le=100)  # botocore attempts per request, first included
    retry_mode: Literal["adaptive", "standard", "legacy"] = "adaptive"
    connect_timeout_sec: float = Field(10.0, gt=0)
    read_timeout_sec: float = Field(60.0, gt=0)
    block_size_mb: float = Field(8.0, gt=0, le=1024)  # bytes per ranged GET when reading
    cache_type: Literal["readahead", "bytes", "blockcache", "first", "none"] = "readahead"
    # URL protocols a manifest row may name (every protocol of a chained URL such as
    # simplecache::s3://... counts). Anything else is never opened, on the driver or a worker: the
    # row becomes an error row "ProtocolNotAllowed". Local files and S3 by default; add http,
    # https, gs, memory... deliberately (an http:// row makes workers fetch whatever address the
    # cluster can reach: instance metadata, internal services).
    allowed_protocols: list[str] = ["file", "local", "s3", "s3a"]

    @field_validator("allowed_protocols", mode="before")
    @classmethod
    def _protocols(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) and p.strip() for p in v):
            raise ValueError("allowed_protocols must be a list of protocol names, e.g. [file, local, s3, s3a]")
        out = [p.strip().lower() for p in v]
        bad = [p for p in out if not re.fullmatch(r"[a-z][a-z0-9+.\-]*", p)]
        if bad:
            raise ValueError(f"allowed_protocols: {bad} are not protocol names (write s3, not s3://)")
        return out


class MaintainConfig(_Section):
    # `r2p1d maintain OUT` (runs/maintain.py), and what a label run does after its commit.
    after_label: bool = False  # maintain the output after each committed label run (a nightly cron's job in one)
    keep_days: Optional[float] = Field(None, gt=0)  # expire history older than this (None: keep it all)
    keep_runs: Optional[int] = Field(None, ge=1)  # ...or beyond the newest N runs (both: whichever keeps more)
    # Files a version stopped referencing less than this long ago are never deleted: a reader
    # that opened that version a moment ago can still read it.
    min_retention_hours: float = Field(1.0, ge=0)
    compact: bool = True  # merge small data files toward output.rows_per_file rows


class OutputConfig(_Section):
    path: str = "out"
    rows_per_file: int = Field(200_000, ge=1)
    embeddings: bool = False  # clips.embedding: the pooled 512-d feature, L2-normalised (embeddings.py)
    maintain: MaintainConfig = MaintainConfig()


class AuditThresholds(_Section):
    # Fractions over the verified clips (device vs host reference, same input):
    min_top1_agreement: float = Field(0.95, ge=0, le=1)
    min_top5_overlap: float = Field(0.90, ge=0, le=1)  # mean |top5 device & top5 host| / 5
    # Worst clip: every verified clip must reach these.
    min_cosine: float = Field(0.99, ge=-1, le=1)
    min_psnr_db: float = 30.0  # 20*log10(max|ref| / RMSE), as the model zoo measures it
    # Host reference (PyTorch, fp32) vs the labels stored by the run (a GPU run in bf16 may
    # flip near-ties, hence not 1.0).
    min_host_label_agreement: float = Field(0.98, ge=0, le=1)
    # Sampled clips whose input could not be re-created (source gone, changed or undecodable).
    max_unverified: int = Field(0, ge=0)
    # Clips labeled from NVDEC output, audited without NVDEC: the NVDEC path's arithmetic vs the
    # CPU path on the same decoded frames, per pixel (grey levels), instead of clip_sha.
    nvdec_max_abs_px: int = Field(3, ge=0, le=255)
    nvdec_mean_abs_px: float = Field(0.5, ge=0)


class AuditConfig(_Section):
    sample: int = Field(64, ge=1, le=100_000)  # clips, stratified by stored label
    seed: int = 0
    run_id: Optional[str] = None  # null: every committed run (they must share weights)
    backend: Literal["onnxruntime", "qai-hub", "replay"] = "onnxruntime"
    device: str = "Samsung Galaxy S24 (Family)"  # AI Hub device name
    runtime: Literal["tflite", "qnn", "onnx"] = "tflite"  # AI Hub target runtime
    chunk_clips: int = Field(50, ge=1, le=110)  # clips per inference job (2.3 MiB each)
    profile: bool = False  # also run an AI Hub profile job (latency, memory)
    device_outputs: list[str] = []  # replay: .h5 (AI Hub download) or .npz files, in order
    cache_dir: Optional[str] = None  # exported ONNX graphs; null: ~/.cache/r2p1d_batch
    host_batch_size: int = Field(8, ge=1, le=1024)
    thresholds: AuditThresholds = AuditThresholds()


class RunPolicyConfig(_Section):
    # incremental: label only manifest rows without a committed row (ok or error) for the same
    # (video_id, source fingerprint, weights); rerun_failed: also retry committed error rows;
    # force: label every row again (the "current" views then show the newest run's rows).
    mode: Literal["incremental", "rerun_failed", "force"] = "incremental"
    # A killed run's leftovers are removed by the next run once its lease is stale: at once
    # when its driver ran on this host and is gone, else after this many seconds without a
    # heartbeat (written every 30 s). A new run waits up to this long for another host's live
    # lease to go stale, then refuses to start; a live driver on this host: refuses at once.
    stale_after_sec: float = Field(300.0, ge=0)
    # A run in which nothing moves for this long fails and commits nothing: the bound on
    # waiting for a lost node's work to be placed again (a spot GPU node that never comes
    # back, a classifier no node can host). null: wait forever.
    stall_timeout_sec: Optional[float] = Field(1800.0, gt=0)


class Config(_Section):
    manifest: str = ""
    run: RunPolicyConfig = RunPolicyConfig()
    ray: RayConfig = RayConfig()
    sampling: SamplingConfig = SamplingConfig()
    decode: DecodeConfig = DecodeConfig()
    model: ModelConfig = ModelConfig()
    storage: StorageConfig = StorageConfig()
    output: OutputConfig = OutputConfig()
    audit: AuditConfig = AuditConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    # Dotted keys the user set (a profile's YAML, --set, the command's own options), as opposed
    # to the shipped defaults: sizing.py sizes only what the user left to it. Set by load().
    _explicit: frozenset = PrivateAttr(default_factory=frozenset)

    @property
    def explicit(self) -> frozenset:
        return self._explicit

    @model_validator(mode="after")
    def _gpu_needs_cuda(self) -> Config:
        if self.model.num_gpus > 0 and self.model.device == "cpu":
            raise ValueError("model.num_gpus > 0 with model.device=cpu: pick one")
        return self


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value); the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key.sub=value, got {text!r}")
    keys = key.strip().split(".")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if value is not None and _is_string_field(keys):
        value = raw.strip()
    return keys, value


def _is_string_field(keys: list[str]) -> bool:
    """Paths, ids and names stay strings even when YAML would read them as a number or bool."""
    model: Any = Config
    for k in keys:
        field = getattr(model, "model_fields", {}).get(k)
        if field is None:
            return False
        model = field.annotation
    return model in (str, Optional[str])


def _apply(tree: dict, keys: list[str], value: Any, text: str) -> None:
    node = tree
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {text}: {k!r} is not a section")
        node = child
    node[keys[-1]] = value


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def profiles() -> list[str]:
    """Names of the profiles shipped with the package (``--config NAME``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "default")


def profile_path(path: str | os.PathLike) -> Path:
    """A YAML file, or the name of a shipped profile (``cpu``, ``cluster``)."""
    p = Path(path)
    if p.exists() or p.suffix or os.sep in str(path):
        return p
    shipped = CONFIG_DIR / f"{p}.yaml"
    if shipped.exists():
        return shipped
    raise ConfigError(f"config file not found: {path} (shipped profiles: {', '.join(profiles())})")


def _keys(tree: dict, prefix: str = "") -> set[str]:
    """Dotted leaf keys of a nested mapping."""
    out: set[str] = set()
    for k, v in tree.items():
        out |= _keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}"}
    return out


def load(path: str | os.PathLike | None = None, overrides: list[str] = (), **top: Any) -> Config:
    """Defaults, then ``path`` (a profile layered on the defaults), then ``--set`` overrides.
    Every key set by the profile, an override or ``top`` is recorded in ``Config.explicit``."""
    tree = _read_yaml(DEFAULT_CONFIG)  # package data: missing means a broken install, not "no defaults"
    explicit: set[str] = set()
    if path is not None and profile_path(path).resolve() != DEFAULT_CONFIG:
        profile = _read_yaml(profile_path(path))
        explicit |= _keys(profile)
        tree = _merge(tree, profile)
    for text in overrides:
        keys, value = parse_override(text)
        _apply(tree, keys, value, text)
        explicit |= _keys(value, ".".join(keys) + ".") if isinstance(value, dict) and value else {".".join(keys)}
    for k, v in top.items():
        if v is not None:
            _apply(tree, k.split("."), v, k)
            explicit.add(k)
    try:
        cfg = Config.model_validate(tree)
        cfg._explicit = frozenset(explicit)
        return cfg
    except ValidationError as e:
        lines = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {where}: {msg}")
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None
