"""Synthetic inputs for tests: videos (frame *i* has grey level 10*i, so sampling is checked by
value), yuv420p videos with chosen colour tags, and decode-stage tables."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pyarrow as pa

from r2p1d_batch import schema
from r2p1d_batch.synth import frame_index, grey_of, level, make_audio_only, make_video  # noqa: F401 (re-exported)

CLIP_SHAPE = (16, 112, 112, 3)

def make_yuv_video(path: Path, w: int, h: int, *, colorspace: int = 0, color_range: int = 0,
                   pattern: str = "noise", n: int = 3, codec: str = "libx264", lossless: bool = True) -> Path:
    """A yuv420p video whose planes are written directly (noise or gradients), tagged with an
    AVColorSpace / AVColorRange (0 = untagged)."""
    rng = np.random.default_rng(w * 1000 + h)
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=30)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "0", "preset": "ultrafast"} if lossless else {"preset": "ultrafast", "crf": "30"}
        if colorspace:
            s.codec_context.colorspace = colorspace
        if color_range:
            s.codec_context.color_range = color_range
        for i in range(n):
            f = av.VideoFrame(w, h, "yuv420p")
            cw, ch = (w + 1) // 2, (h + 1) // 2
            if pattern == "noise":
                planes = [rng.integers(0, 256, (h, w)), rng.integers(0, 256, (ch, cw)), rng.integers(0, 256, (ch, cw))]
            else:  # gradients over the whole code range, shifted per frame
                yy, xx = np.mgrid[0:h, 0:w]
                cy, cx = np.mgrid[0:ch, 0:cw]
                planes = [(xx * 255 // max(1, w - 1) + 7 * i) % 256, cx * 255 // max(1, cw - 1),
                          (cy * 255 // max(1, ch - 1) + 3 * i) % 256]
            for p, a in zip(f.planes, planes):
                buf = np.frombuffer(p, np.uint8).reshape(-1, p.line_size)
                buf[: a.shape[0], : a.shape[1]] = a.astype(np.uint8)
            if colorspace:
                f.colorspace = colorspace
            if color_range:
                f.color_range = color_range
            f.pts = i
            for pkt in s.encode(f):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


def decoded_table(kinds: str, seed: int = 0) -> tuple[pa.Table, list[np.ndarray]]:
    """A DECODED table with a row per letter: c = clip (random pixels), v = video row (no frames)."""
    rng = np.random.default_rng(seed)
    clips = [rng.integers(0, 256, CLIP_SHAPE, dtype=np.uint8) for k in kinds if k == "c"]
    it = iter(clips)
    cols = {f.name: [None] * len(kinds) for f in schema.DECODED}
    cols["kind"] = ["clip" if k == "c" else "video" for k in kinds]
    cols["video_id"] = [f"v{i}" for i in range(len(kinds))]
    cols["uri"] = ["file.mp4"] * len(kinds)
    cols["clip_index"] = list(range(len(kinds)))
    cols["frames"] = [next(it).tobytes() if k == "c" else None for k in kinds]
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema.DECODED}, schema=schema.DECODED), clips


def make_cut_video(path: Path, n_frames: int = 150, fps: int = 15, keep: float = 0.6, seed: int = 0) -> Path:
    """A video whose decode fails half-way: its index (moov) comes first, then its data is cut at
    ``keep`` of the file, so the first clips decode and the rest are missing (Truncated)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = make_video(Path(tmp) / "src.mp4", n_frames=n_frames, fps=fps, size=(64, 48), pattern="noise", seed=seed)
        with av.open(str(src)) as i, av.open(str(path), "w", options={"movflags": "faststart"}) as o:
            ins = i.streams.video[0]
            outs = o.add_stream_from_template(ins)
            for pkt in i.demux(ins):
                if pkt.dts is None:
                    continue
                pkt.stream = outs
                o.mux(pkt)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
