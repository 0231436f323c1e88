"""RunSummary: what a run did, printed by the job and stored as its commit record."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass
class RunSummary:
    run_id: str
    output: str
    weights: str = ""
    random_weights: bool = False
    runtime: str = ""
    sampling: str = ""
    mode: str = "incremental"
    manifest_rows: int = 0
    # What this run did with each manifest row (runs.select): labeled = new + changed +
    # retried + forced; skipped rows already have a committed row for the same key.
    videos_new: int = 0
    videos_changed: int = 0
    videos_retried: int = 0
    videos_forced: int = 0
    videos_skipped: int = 0
    videos: int = 0
    videos_ok: int = 0
    videos_error: int = 0
    clips: int = 0
    errors_by_class: dict = field(default_factory=dict)
    # decode.device as resolved for this run (cpu: PyAV only; cuda: NVDEC lane beside the CPU
    # lane), and the decoder that produced each labeled video's clips (cpu | nvdec | nvdec+cpu).
    decode_device: str = ""
    videos_by_decoder: dict = field(default_factory=dict)
    wall_sec: float = 0.0
    clips_per_sec: float = 0.0
    # Start-up vs steady state, from labeled clip rows reaching the writer (driver clock):
    # first_clip_sec = run start to the first one (validation, Ray and actor start-up, the first
    # decode and classify); steady_clips_per_sec = clips after the first delivered block (one per
    # video, or per ~128 MiB of clips) / (last arrival - first arrival). None when no clip, or
    # only one block of clips, arrived.
    first_clip_sec: Optional[float] = None
    steady_clips_per_sec: Optional[float] = None
    # Resource keys sized to the cluster (sizing.size_to_cluster): cluster, chosen, kept (set by
    # the user), decode_slots, model_threads. Empty when Ray was not started.
    sizing: dict = field(default_factory=dict)
    committed: bool = False
    config: dict = field(default_factory=dict)  # the validated run config, for audits and reruns
    committed_at: str = ""
    files: list = field(default_factory=list)  # data files of this run, relative to the output root
    # model.int8: the graph (path, calibration, its agreement with fp32 and the budget; int8.summary)
    int8: dict = field(default_factory=dict)
    # output.maintain.after_label: what the maintenance after the commit did (not in the record)
    maintenance: dict = field(default_factory=dict)

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(asdict(self), indent=indent, sort_keys=True)

    def text(self) -> str:
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.errors_by_class.items())) or "none"
        lines = [
            f"run {self.run_id} -> {self.output} ({'committed' if self.committed else 'NOT committed'})",
            f"  manifest {self.manifest_rows} ({self.mode}): new {self.videos_new}, changed {self.videos_changed}, "
            f"retried {self.videos_retried}, forced {self.videos_forced}, skipped {self.videos_skipped}",
            f"  videos {self.videos} (ok {self.videos_ok}, error {self.videos_error}); errors: {errors}",
            f"  clips {self.clips} in {self.wall_sec:.1f} s = {self.clips_per_sec:.2f} clips/s" + self._steady_text(),
            f"  weights {self.weights}  runtime {self.runtime}  sampling {self.sampling}",
        ]
        if self.decode_device:
            by = ", ".join(f"{k} {v}" for k, v in sorted(self.videos_by_decoder.items())) or "none"
            lines.append(f"  decode.device {self.decode_device}: videos decoded by {by}")
        if self.sizing:
            z = self.sizing
            chosen = ", ".join(f"{k}={v}" for k, v in z["chosen"].items()) or "nothing (all set by you)"
            lines.append(f"  sized for {z['cluster']['CPU']:g} CPU / {z['cluster']['GPU']:g} GPU: {chosen}; "
                         f"{z['decode_slots']} decode task(s) at once, {z['model_threads']} model thread(s) per actor")
        if self.maintenance:
            m = self.maintenance
            files = m.get("files", {})
            lines.append(f"  maintained: {m['error']}" if "error" in m else
                         f"  maintained: clips {files.get('clips', 0)} files, videos {files.get('videos', 0)} files; "
                         f"{len(m['expired_runs'])} runs expired ({m['wall_sec']:.1f} s)")
        if self.int8:
            a = self.int8["agreement"]
            lines.append(f"  int8 graph {self.int8['path']}: agreement with fp32 on {a['clips']} held-out clips: "
                         f"top-1 {a['top1']:.3f}, logits cosine {a['logits_cosine']:.4f}"
                         + (" (MEANINGLESS: random weights)" if self.int8.get("random_weights") else ""))
        if self.random_weights:
            lines.append("  !! RANDOM WEIGHTS: these labels are meaningless (smoke run); every row says so !!")
        return "\n".join(lines)

    def _steady_text(self) -> str:
        if self.first_clip_sec is None:
            return ""
        steady = f", then {self.steady_clips_per_sec:.2f} clips/s" if self.steady_clips_per_sec else ""
        return f" (first clip at {self.first_clip_sec:.1f} s{steady})"
