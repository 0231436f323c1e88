"""The int8 CPU graph: ONNX Runtime static quantization of the fp32 CPU graph, calibrated on
the user's own clips, and the agreement with fp32 it must show on held-out clips before a run
may use it (docs/int8.md).

A graph directory (local or ``s3://``) holds two files, written by ``build``:

- ``model.int8.onnx``: the fp32 ``uint8+embedding`` graph (uint8 clips in; logits and the
  L2-normalised embedding out, export.py) quantized QDQ: int8 weights (per output channel by
  default), uint8 activations, ranges from the calibration clips. ONNX Runtime's CPU provider
  fuses each QuantizeLinear/DequantizeLinear pair around a Conv into an integer convolution.
- ``report.json``: what it was built from (weights id, calibration method and clips, ORT
  version, the CPU and its ISA) and the agreement with fp32 on the held-out clips, against the
  budget (``quantize.min_*``). ``passed`` is false, and ``missed`` names what, when any figure
  falls short.

``check`` is the driver's gate for ``model.int8``: one clear error (exit 2) for a directory
without a report, a failed report, other weights or a graph that is not the one the report
measured. ``local_graph`` is what a CPU actor opens (an ``s3://`` graph is fetched once per
machine, keyed by its sha256). Nothing here imports torch except ``build``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import UserError

GRAPH_FILE = "model.int8.onnx"
REPORT_FILE = "report.json"
REPORT_FORMAT = 1
RANDOM_NOTE = ("model.weights=random: the agreement is measured on random weights, whose logits have no "
               "margins; it says nothing about label fidelity on real weights")


class Int8Error(UserError, ValueError):
    """A ``model.int8`` directory a run must not use; the message says why and what to do."""


@dataclass(frozen=True)
class Agreement:
    """int8 vs fp32 on the same clips. Cosines are per clip, then the mean (and the worst)."""
    clips: int
    top1: float  # share of clips whose top-1 class is the same
    top5_overlap: float  # mean |top-5 int8 & top-5 fp32| / 5
    logits_cosine: float
    logits_cosine_min: float
    embedding_cosine: float
    embedding_cosine_min: float
    max_abs_dsoftmax: float  # the largest |p_int8 - p_fp32| over every clip and class


def agreement(ref_logits: np.ndarray, ref_emb: np.ndarray, logits: np.ndarray, emb: np.ndarray) -> Agreement:
    """How closely ``logits``/``emb`` (int8) follow ``ref_logits``/``ref_emb`` (fp32), row by row."""
    from .scores import softmax, topk

    def cosine(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)

    ref_top5, top5 = topk(softmax(ref_logits), 5)[0], topk(softmax(logits), 5)[0]
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ref_top5, top5)])
    lc, ec = cosine(ref_logits, logits), cosine(ref_emb, emb)
    return Agreement(
        clips=len(logits), top1=float(np.mean(ref_top5[:, 0] == top5[:, 0])), top5_overlap=float(overlap),
        logits_cosine=float(lc.mean()), logits_cosine_min=float(lc.min()),
        embedding_cosine=float(ec.mean()), embedding_cosine_min=float(ec.min()),
        max_abs_dsoftmax=float(np.abs(softmax(logits) - softmax(ref_logits)).max()),
    )


def missed(a: Agreement, budget: dict) -> list[str]:
    """What falls short of ``budget`` (``min_top1``, ``min_logits_cosine``, ``min_embedding_cosine``),
    as sentences naming the figure, its value and its bar."""
    pairs = (("top-1 agreement", a.top1, budget["min_top1"]),
             ("logits cosine", a.logits_cosine, budget["min_logits_cosine"]),
             ("embedding cosine", a.embedding_cosine, budget["min_embedding_cosine"]))
    return [f"{name} {value:.4f} < {bar:g}" for name, value, bar in pairs if value < bar]


def cpu_isa() -> dict:
    """This CPU's model name and the instruction sets integer convolutions use (from
    /proc/cpuinfo; empty on other systems). VNNI (AVX-512 VNNI, AVX-VNNI) makes int8 dot
    products one instruction; without it ORT's u8s8 kernels can saturate (hence reduce_range)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": "", "isa": []}
    first = dict(line.split(":", 1) for line in text.split("\n\n")[0].splitlines() if ":" in line)
    flags = set(first.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"model": first.get("model name", "").strip(), "isa": [f for f in wanted if f in flags]}


def has_vnni(isa: dict) -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(isa.get("isa", [])))


def runtime_id(report: dict) -> str:
    """Every row's ``runtime`` for a run on this graph: int8, and how it was calibrated."""
    q = report["quantization"]
    return (f"onnxruntime-cpu-int8[{q['method']},{report['calibration']['clips']}clips,"
            f"{'per-channel' if q['per_channel'] else 'per-tensor'}@{report['graph_sha256'][:8]}]")


def summary(graph_dir: str, report: dict) -> dict:
    """What a run's summary and record say about the int8 graph it ran."""
    return {"path": graph_dir, "graph_sha256": report["graph_sha256"], "quantization": report["quantization"],
            "calibration": report["calibration"], "agreement": report["agreement"], "budget": report["budget"],
            "random_weights": report.get("random_weights", False), "note": report.get("note", "")}


# -- building a graph (the `r2p1d quantize` command) ------------------------------------------


@dataclass
class Built:
    """What ``build`` wrote and measured: the report as stored, and where."""
    report: dict
    path: str  # the graph directory
    passed: bool = False
    missed: list = field(default_factory=list)


class _Clips:
    """ORT's CalibrationDataReader over uint8 clips, a batch at a time. ``__len__`` and
    ``set_range`` let quantize_static calibrate one batch per pass (its CalibStridedMinMax
    option): each pass reduces that batch's intermediate outputs into the ranges (MinMax) or
    histograms (Entropy, Percentile) and drops them, so memory holds one batch's activations,
    not every clip's (~0.8 GiB per clip here)."""

    def __init__(self, clips: np.ndarray, batch: int = 2):
        self.batches = [clips[i : i + batch] for i in range(0, len(clips), batch)]
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self.batches[start_index:end_index])

    def get_next(self):
        from .ort import INPUT_NAME

        x = next(self._next, None)
        return None if x is None else {INPUT_NAME: np.ascontiguousarray(x, np.uint8)}


def quantize_graph(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calibration: np.ndarray, *,
                   method: str = "entropy", per_channel: bool = True, reduce_range: bool = False,
                   fp32_nodes: tuple[str, ...] = ()) -> Path:
    """ORT static quantization (QDQ, int8 weights, uint8 activations) of the fp32 graph at
    ``fp32_path``, calibrated on ``calibration`` (uint8 clips). ``quant_pre_process`` first
    (shape inference, constant folding, BatchNorm already folded by the exporter), as ORT
    recommends. ``fp32_nodes``: node names left unquantized (e.g. the classifier head)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    out_path = Path(out_path)
    root = logging.getLogger()
    root.addFilter(_ort_chatter)  # a line per node and bias copy, logged on the root logger at INFO
    try:
        with tempfile.TemporaryDirectory(prefix="r2p1d-int8-") as tmp:
            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            tmp_out = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
            with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print() progress
                quantize_static(
                    str(pre), str(tmp_out), _Clips(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=methods[method],
                    nodes_to_exclude=list(fp32_nodes), extra_options={"CalibStridedMinMax": 1},
                    calibration_providers=["CPUExecutionProvider"],
                )
            tmp_out.replace(out_path)
    finally:
        root.removeFilter(_ort_chatter)
    return out_path


def _ort_chatter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname


def head_nodes(path: str | os.PathLike) -> tuple[str, ...]:
    """The graph's classifier head (its Gemm/MatMul nodes: ``fc``), by node name."""
    import onnx

    return tuple(n.name for n in onnx.load(str(path), load_external_data=False).graph.node
                 if n.op_type in ("Gemm", "MatMul"))


def run_graph(path: str | os.PathLike, clips: np.ndarray, threads: Optional[int] = None, batch: int = 8):
    """(logits, embedding, clips/s) of ``clips`` through the graph at ``path`` (ORT CPU). The
    rate leaves out the first batch (ORT's arena and kernel set-up); None with one batch."""
    from .ort import INPUT_NAME, cpu_session

    sess = cpu_session(path, threads)
    outs, t = [], None
    for i in range(0, len(clips), batch):
        outs.append(sess.run(None, {INPUT_NAME: np.ascontiguousarray(clips[i : i + batch], np.uint8)}))
        t = time.perf_counter() if t is None else t
    timed = len(clips) - min(batch, len(clips))
    rate = timed / (time.perf_counter() - t) if timed else None
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]), rate


def speed_note(report: dict) -> str:
    """What quantize measured of the speed (fp32 and int8 over the held-out clips, this CPU),
    and a warning where int8 was the slower: then it is no use on a fleet of this CPU."""
    s = report.get("speed") or {}
    if not s.get("fp32_clips_per_s") or not s.get("int8_clips_per_s"):
        return ""
    ratio = s["int8_clips_per_s"] / s["fp32_clips_per_s"]
    cpu = f"{report['cpu']['model'] or 'this CPU'} ({', '.join(report['cpu']['isa']) or 'no AVX2'})"
    text = (f"speed on {cpu}, {s['threads']} threads, batch {s['batch']}: int8 {s['int8_clips_per_s']:.2f} "
            f"clips/s, fp32 {s['fp32_clips_per_s']:.2f} ({ratio:.2f}x; r2p1d bench --only model times it)")
    if ratio < 1:
        text += " -- int8 is SLOWER than fp32 on this CPU: keep fp32 here"
    return text


def sha256_file(path: str | os.PathLike) -> str:
    import fsspec

    from ..storage import sha256

    return sha256(fsspec.filesystem("file"), str(path))


def build(module, weights_id: str, calibration: np.ndarray, holdout: np.ndarray, out_dir: str, qcfg,
          storage=None, threads: Optional[int] = None, source: Optional[dict] = None) -> Built:
    """Quantize ``module`` (the fp32 network of ``weights_id``) on ``calibration`` clips, measure
    it against fp32 on ``holdout`` clips, and write the graph and report.json to ``out_dir``
    (local or s3://; the report last, so a directory with a report is complete). ``qcfg``: the
    ``quantize`` config section; ``source``: where the clips came from, for the report."""
    from .export import export_onnx

    if not len(calibration) or not len(holdout):
        raise Int8Error(f"quantize needs calibration and held-out clips (got {len(calibration)} and {len(holdout)})")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="r2p1d-int8-") as tmp:
        fp32 = export_onnx(module, Path(tmp) / "fp32.onnx", graph="uint8+embedding")
        graph = Path(tmp) / GRAPH_FILE
        fp32_nodes = head_nodes(fp32) if qcfg.head_fp32 else ()
        quantize_graph(fp32, graph, calibration, method=qcfg.method, per_channel=qcfg.per_channel,
                       reduce_range=qcfg.reduce_range, fp32_nodes=fp32_nodes)
        built_sec = time.perf_counter() - t0
        ref, mine = run_graph(fp32, holdout, threads), run_graph(graph, holdout, threads)
        agreed = agreement(ref[0], ref[1], mine[0], mine[1])
        speed = {"fp32_clips_per_s": ref[2], "int8_clips_per_s": mine[2], "batch": 8,
                 "threads": threads or os.cpu_count()}
        budget = {"min_top1": qcfg.min_top1, "min_logits_cosine": qcfg.min_logits_cosine,
                  "min_embedding_cosine": qcfg.min_embedding_cosine}
        short = missed(agreed, budget)
        isa = cpu_isa()
        random = weights_id.startswith("random:")
        report = {
            "format": REPORT_FORMAT, "weights": weights_id, "random_weights": random,
            "graph": GRAPH_FILE, "graph_sha256": sha256_file(graph), "graph_bytes": graph.stat().st_size,
            "quantization": {"format": "QDQ", "weights": "int8", "activations": "uint8", "method": qcfg.method,
                             "per_channel": qcfg.per_channel, "reduce_range": qcfg.reduce_range,
                             "fp32_nodes": list(fp32_nodes)},
            "calibration": {"clips": int(len(calibration)), **(source or {}).get("calibration", {})},
            "holdout": {"clips": int(len(holdout)), **(source or {}).get("holdout", {})},
            "manifest": (source or {}).get("manifest", ""),
            "agreement": asdict(agreed), "budget": budget, "passed": not short, "missed": short,
            "note": RANDOM_NOTE if random else "",
            "onnxruntime": version("onnxruntime"), "cpu": isa, "vnni": has_vnni(isa), "speed": speed,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "build_sec": round(built_sec, 1),
        }
        _publish(graph, report, out_dir, storage)
    return Built(report, out_dir, not short, short)


def _publish(graph: Path, report: dict, out_dir: str, storage) -> None:
    from ..storage import filesystem

    fs, root = filesystem(out_dir, storage)
    fs.makedirs(root, exist_ok=True)
    # A rebuild into the same directory: the old report goes first, so no moment pairs it
    # with the new graph (check() compares the graph's sha256 with the report's anyway).
    report_path = f"{root.rstrip('/')}/{REPORT_FILE}"
    if fs.exists(report_path):
        fs.rm(report_path)
    fs.put_file(str(graph), f"{root.rstrip('/')}/{GRAPH_FILE}")
    with fs.open(report_path, "w") as f:
        f.write(json.dumps(report, indent=2, sort_keys=True) + "\n")


# -- using a graph (label --set model.int8=DIR) ------------------------------------------------


def read_report(graph_dir: str, storage=None) -> dict:
    from ..storage import filesystem

    fs, root = filesystem(graph_dir, storage)
    path = f"{root.rstrip('/')}/{REPORT_FILE}"
    try:
        with fs.open(path, "r") as f:
            report = json.load(f)
    except FileNotFoundError:
        raise Int8Error(f"model.int8={graph_dir}: no {REPORT_FILE} there; build the graph with "
                        f"`r2p1d quantize MANIFEST --output {graph_dir}`") from None
    except (OSError, ValueError) as e:
        raise Int8Error(f"model.int8={graph_dir}: cannot read {REPORT_FILE} ({type(e).__name__}: {e})") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise Int8Error(f"model.int8={graph_dir}: {REPORT_FILE} is not an r2p1d quantize report "
                        f"(format {report.get('format') if isinstance(report, dict) else None!r})")
    return report


def check(graph_dir: str, weights_id: str, storage=None) -> dict:
    """The report of ``graph_dir`` when a run with ``weights_id`` may use its graph; else an
    Int8Error saying why (missing, failed budget, other weights, a graph not the one measured)."""
    from ..storage import filesystem, sha256

    report = read_report(graph_dir, storage)
    if not report.get("passed"):
        raise Int8Error(f"model.int8={graph_dir}: the graph missed its agreement budget when it was built "
                        f"({'; '.join(report.get('missed') or ['passed is false'])}); rebuild it "
                        f"(r2p1d quantize; docs/int8.md) or label with the fp32 graph")
    if report.get("weights") != weights_id:
        raise Int8Error(f"model.int8={graph_dir}: built for weights {report.get('weights')}, this run uses "
                        f"{weights_id}; rebuild it with these weights")
    fs, root = filesystem(graph_dir, storage)
    path = f"{root.rstrip('/')}/{report.get('graph', GRAPH_FILE)}"
    try:
        digest = sha256(fs, path)
    except FileNotFoundError:
        raise Int8Error(f"model.int8={graph_dir}: {REPORT_FILE} is there but its graph {path} is not") from None
    if digest != report.get("graph_sha256"):
        raise Int8Error(f"model.int8={graph_dir}: {report.get('graph')} is not the graph its report measured "
                        f"(sha256 {digest[:12]} != {str(report.get('graph_sha256'))[:12]}); rebuild it")
    return report


def local_graph(graph_dir: str, report: dict, storage=None, root: Optional[str | os.PathLike] = None) -> Path:
    """The graph as a local file for ONNX Runtime: the file itself for a local directory; an
    s3:// graph is fetched once per machine into the export cache, named by its sha256 (a
    graph rebuilt in place gets a new name, so no actor opens a stale copy)."""
    from ..storage import filesystem, is_local
    from .ort import cache_dir

    fs, base = filesystem(graph_dir, storage)
    remote = f"{base.rstrip('/')}/{report['graph']}"
    if is_local(graph_dir):
        return Path(remote)
    path = Path(root or cache_dir()) / f"int8-{report['graph_sha256'][:16]}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fs.get_file(remote, str(tmp))
        if sha256_file(tmp) != report["graph_sha256"]:
            tmp.unlink()
            raise Int8Error(f"model.int8={graph_dir}: the fetched graph's sha256 is not its report's")
        tmp.replace(path)
    return path
