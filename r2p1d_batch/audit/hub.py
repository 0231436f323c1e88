"""Qualcomm AI Hub backend of the device consistency audit.

Runs clips through R(2+1)D-18 on a real phone with the `qai_hub` client:
upload the ONNX graph once, compile it for one device and runtime, then one
inference job per chunk of clips, and download the logits. Everything the
user can get wrong (no token, bad token, unknown device, failed job, rate
limit) surfaces as a `HubError` with a message that says what to do.

The device graph follows the model zoo's resnet_2plus1d: input `video` is RGB
in [0, 1], (1, 3, 16, 112, 112) float32, normalisation happens inside the
graph, output `class_probs` is the raw fc logits.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import qai_hub
import requests
from qai_hub import client as hub_client
from qai_hub import public_rest_api as hub_api

from ..classifying.export import CLIP_SHAPE, INPUT_NAME, OUTPUT_NAME, DeviceGraph, export_onnx  # noqa: F401 (re-exported)
from ..errors import ServiceError

CLIP_BYTES = 4 * math.prod(CLIP_SHAPE)  # float32: ~2.3 MiB per clip

# AI Hub uploads go in 256 MiB parts; keeping one dataset near half of that
# leaves room for h5 overhead when gzip cannot shrink the clips.
_DATASET_BUDGET_BYTES = 128 * 2**20
DEFAULT_CHUNK_CLIPS = _DATASET_BUDGET_BYTES // CLIP_BYTES  # 55 clips

# Our runtime names -> AI Hub `--target_runtime` values.
TARGET_RUNTIMES = {"tflite": "tflite", "qnn": "qnn_dlc", "onnx": "onnx"}
# TFLite/QNN are compiled channel-last like the zoo: (1, 16, 112, 112, 3).
_CHANNEL_LAST_RUNTIMES = frozenset({"tflite", "qnn"})
_DEVICE_FRAMEWORK = {"tflite": "framework:tflite", "qnn": "framework:qnn", "onnx": "framework:onnx"}

_CONFIGURE_HINT = (
    "Run `qai-hub configure --api_token YOUR_TOKEN` (the token is on your AI Hub "
    "account page, https://workbench.aihub.qualcomm.com/account/), or set "
    "QAIHUB_CLIENT_INI to a client.ini whose [api] section has api_token, api_url "
    "and web_url."
)


# HubError kinds that the user fixes (exit 2); the others mean the hub or a job failed (exit 3).
USER_KINDS = frozenset({"no_token", "auth", "unknown_device", "unsupported_runtime"})


class HubError(ServiceError):
    """A failure talking to AI Hub, phrased for the person running the audit.

    `kind` is one of: no_token, auth, unknown_device, unsupported_runtime,
    job_failed, timeout, rate_limited, unreachable, hub.
    """

    def __init__(
        self, message: str, *, kind: str, job_id: str | None = None, url: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.job_id = job_id
        self.url = url

    @property
    def exit_code(self) -> int:
        return 2 if self.kind in USER_KINDS else 3


# --- pure helpers -------------------------------------------------------------


def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most `chunk` items covering range(n)."""
    return [(start, min(start + chunk, n)) for start in range(0, n, chunk)]


def check_clips(clips_01: np.ndarray) -> np.ndarray:
    """Validate a float batch of clips (N, 3, 16, 112, 112) in [0, 1]."""
    clips = np.asarray(clips_01)
    if clips.ndim != 5 or clips.shape[1:] != CLIP_SHAPE or len(clips) == 0:
        raise ValueError(f"clips must have shape (N>0, {', '.join(map(str, CLIP_SHAPE))}); got {clips.shape}")
    if not np.issubdtype(clips.dtype, np.floating):
        raise ValueError(f"clips must be float in [0, 1] (got {clips.dtype}); divide uint8 clips by 255")
    if clips.size and (clips.min() < 0.0 or clips.max() > 1.0):
        raise ValueError("clips must be RGB in [0, 1]; the device graph normalises by itself")
    return clips.astype(np.float32, copy=False)


def device_inputs(clips: np.ndarray, channel_last: bool) -> list[np.ndarray]:
    """One (1, ...) array per clip: the hub compiles for batch 1."""
    if channel_last:  # NCTHW -> NTHWC, as --force_channel_last_input expects
        return [np.ascontiguousarray(c.transpose(1, 2, 3, 0))[None] for c in clips]
    return [np.ascontiguousarray(c)[None] for c in clips]


def _job_ref(job: Any) -> dict[str, str]:
    return {"job_id": job.job_id, "url": job.url}


# --- the backend ----------------------------------------------------------------


class HubBackend:
    """Runs clips on an AI Hub device; same `run()` contract as the other backends."""

    name = "qai-hub"

    def __init__(
        self,
        onnx_path: str | Path,
        device: str,
        runtime: str = "tflite",
        *,
        chunk_clips: int = DEFAULT_CHUNK_CLIPS,
        profile: bool = False,
        wait_on_rate_limit: bool = False,
        job_timeout_s: int | None = None,
        client: qai_hub.Client | None = None,
    ) -> None:
        """`wait_on_rate_limit=True` lets the client retry rate-limited job
        submissions for up to 10 minutes instead of failing at once."""
        if runtime not in TARGET_RUNTIMES:
            raise ValueError(f"runtime must be one of {sorted(TARGET_RUNTIMES)}; got {runtime!r}")
        if chunk_clips < 1:
            raise ValueError(f"chunk_clips must be >= 1; got {chunk_clips}")
        self.onnx_path = Path(onnx_path)
        self.device_name = device
        self.runtime = runtime
        self.chunk_clips = chunk_clips
        self.profile_enabled = profile
        self.wait_on_rate_limit = wait_on_rate_limit
        self.job_timeout_s = job_timeout_s
        self._client = client or qai_hub.Client()  # reads QAIHUB_CLIENT_INI lazily
        self._device: qai_hub.Device | None = None
        self._model: qai_hub.Model | None = None
        self._target: qai_hub.Model | None = None
        self._compile_job: dict[str, str] | None = None

    @property
    def channel_last(self) -> bool:
        return self.runtime in _CHANNEL_LAST_RUNTIMES

    @property
    def compile_options(self) -> str:
        options = f"--target_runtime {TARGET_RUNTIMES[self.runtime]} --output_names {OUTPUT_NAME}"
        if self.channel_last:
            options += f" --force_channel_last_input {INPUT_NAME}"
        return options

    # -- public API --------------------------------------------------------------

    def run(self, clips_01: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Logits (N, classes) computed on the device, and a report of the jobs."""
        clips = check_clips(clips_01)
        target = self.compile()
        bounds = chunk_bounds(len(clips), self.chunk_clips)
        # Submit every chunk before waiting: the hub runs them side by side.
        jobs = [
            self._submit_chunk(target, clips[a:b], i, len(bounds)) for i, (a, b) in enumerate(bounds)
        ]
        logits = [self._collect(job, b - a) for job, (a, b) in zip(jobs, bounds)]
        report = self._report(len(clips))
        report["inference_jobs"] = [
            {**_job_ref(job), "first_clip": a, "num_clips": b - a,
             "dataset_id": job.inputs.dataset_id if job.inputs else None}
            for job, (a, b) in zip(jobs, bounds)
        ]
        if self.profile_enabled:
            report["profile"] = self.profile()
        return np.concatenate(logits), report

    def compile(self) -> qai_hub.Model:
        """Upload the ONNX graph and compile it for the device (once per instance)."""
        if self._target is not None:
            return self._target
        device = self._resolve_device()
        with self._hub_errors("uploading the model"):
            self._model = self._client.upload_model(str(self.onnx_path), name=self.onnx_path.name)
        with self._hub_errors("submitting the compile job"):
            job = self._client.submit_compile_job(
                self._model,
                device=device,
                name=f"r2p1d-audit compile {self.runtime}",
                input_specs={INPUT_NAME: ((1, *CLIP_SHAPE), "float32")},
                options=self.compile_options,
                retry=self.wait_on_rate_limit,
            )
        assert isinstance(job, hub_client.CompileJob)
        self._wait_ok(job, "compile")
        self._compile_job = _job_ref(job)
        with self._hub_errors("fetching the compiled model"):
            self._target = job.get_target_model()
        if self._target is None:
            raise HubError(f"Compile job {job.job_id} produced no model: {job.url}", kind="hub",
                           job_id=job.job_id, url=job.url)
        return self._target

    def profile(self) -> dict[str, Any]:
        """Latency and memory from one profiling run (random inputs) on the device."""
        target = self.compile()
        with self._hub_errors("submitting the profile job"):
            job = self._client.submit_inference_job(
                target, device=self._resolve_device(), inputs=None,
                name="r2p1d-audit profile", profile=True, retry=self.wait_on_rate_limit,
            )
        assert isinstance(job, hub_client.InferenceJob)
        self._wait_ok(job, "profile")
        with self._hub_errors("downloading the profile"):
            summary = job.download_profile().get("execution_summary", {})
        return {**_job_ref(job), **_latency_summary(summary)}

    # -- steps -------------------------------------------------------------------

    def _resolve_device(self) -> qai_hub.Device:
        """Check the token, then the device name and runtime, before any upload."""
        if self._device is not None:
            return self._device
        self._check_token()
        with self._hub_errors("listing devices"):
            devices = self._client.get_devices()
        matching = [d for d in devices if d.name == self.device_name]
        if not matching:
            raise _unknown_device(self.device_name, sorted({d.name for d in devices}))
        framework = _DEVICE_FRAMEWORK[self.runtime]
        if not any(framework in d.attributes for d in matching):
            raise HubError(
                f"AI Hub device {self.device_name!r} does not support runtime "
                f"{self.runtime!r} (no {framework}); pick another runtime or device.",
                kind="unsupported_runtime",
            )
        self._device = qai_hub.Device(self.device_name)
        return self._device

    def _check_token(self) -> None:
        """Fail early with setup instructions when no usable token is configured."""
        ini = Path(qai_hub.api_utils.get_config_path())  # honours QAIHUB_CLIENT_INI
        problem = f"no client config at {ini}" if not ini.exists() else f"{ini} has no api_token"
        try:
            config = self._client.config
        except hub_client.UserError as e:
            raise HubError(f"No AI Hub API token configured: {problem}. {_CONFIGURE_HINT}", kind="no_token") from e
        if not config.api_token.strip():
            raise HubError(f"No AI Hub API token configured: {problem}. {_CONFIGURE_HINT}", kind="no_token")
        try:  # direct REST call: keeps the HTTP status that the client would hide
            hub_api.get_auth_user(config)
        except hub_api.APIException as e:
            if e.status_code == 401:
                raise _bad_token(config.api_url) from e
            if e.status_code == 429:
                raise _rate_limited("checking the API token", str(e)) from e
            raise HubError(f"AI Hub at {config.api_url} refused the token check: {e}", kind="hub") from e
        except requests.exceptions.RequestException as e:
            raise HubError(f"Cannot reach AI Hub at {config.api_url}: {e}", kind="unreachable") from e

    def _submit_chunk(self, target: qai_hub.Model, clips: np.ndarray, index: int, total: int) -> Any:
        with self._hub_errors(f"submitting inference job {index + 1}/{total}"):
            job = self._client.submit_inference_job(
                target,
                device=self._resolve_device(),
                inputs={INPUT_NAME: device_inputs(clips, self.channel_last)},
                name=f"r2p1d-audit {index + 1}/{total}",
                profile=False,  # qai-hub 0.56 profiles by default; we only want outputs
                retry=self.wait_on_rate_limit,
            )
        assert isinstance(job, hub_client.InferenceJob)
        return job

    def _collect(self, job: Any, expected: int) -> np.ndarray:
        self._wait_ok(job, "inference")
        with self._hub_errors(f"downloading outputs of job {job.job_id}"):
            outputs = job.download_output_data()
        if not outputs:
            raise HubError(f"Inference job {job.job_id} returned no outputs: {job.url}",
                           kind="hub", job_id=job.job_id, url=job.url)
        arrays = outputs.get(OUTPUT_NAME) or next(iter(outputs.values()))
        logits = np.concatenate([np.asarray(a, np.float32).reshape(len(a), -1) for a in arrays])
        if len(logits) != expected:
            raise HubError(f"Inference job {job.job_id} returned {len(logits)} rows for {expected} clips: {job.url}",
                           kind="hub", job_id=job.job_id, url=job.url)
        return logits

    def _wait_ok(self, job: Any, what: str) -> None:
        try:
            with self._hub_errors(f"waiting for {what} job {job.job_id}"):
                status = job.wait(timeout=self.job_timeout_s)
        except TimeoutError as e:
            raise HubError(f"AI Hub {what} job {job.job_id} still running after {self.job_timeout_s} s: {job.url}",
                           kind="timeout", job_id=job.job_id, url=job.url) from e
        if not status.success:
            raise HubError(
                f"AI Hub {what} job {job.job_id} failed on {self.device_name!r} "
                f"(runtime {self.runtime}): {status.message or 'no failure reason given'}\n"
                f"  Job page: {job.url}",
                kind="job_failed", job_id=job.job_id, url=job.url,
            )

    def _report(self, num_clips: int) -> dict[str, Any]:
        config = self._client.config
        return {
            "backend": self.name,
            "device": self.device_name,
            "runtime": self.runtime,
            "target_runtime": TARGET_RUNTIMES[self.runtime],
            "compile_options": self.compile_options,
            "input_layout": "NTHWC" if self.channel_last else "NCTHW",
            "num_clips": num_clips,
            "chunk_clips": self.chunk_clips,
            "model_id": self._model.model_id if self._model else None,
            "target_model_id": self._target.model_id if self._target else None,
            "compile_job": self._compile_job,
            "api_url": config.api_url,
            "qai_hub_version": qai_hub.__version__,
        }

    @contextmanager
    def _hub_errors(self, action: str) -> Iterator[None]:
        """Turn the client's exceptions into HubErrors that say what to do."""
        try:
            yield
        except hub_client.RateLimitedError as e:
            raise _rate_limited(action, str(e)) from e
        except hub_client.InternalError as e:
            if "429" in str(e.__cause__):  # GETs that kept getting 429 end up here
                raise _rate_limited(action, "the hub kept answering 429 Too Many Requests") from e
            raise HubError(f"AI Hub failed while {action}: {e}", kind="hub") from e
        except hub_client.UserError as e:
            if "authenticate" in str(e):
                raise _bad_token(self._client.config.api_url) from e
            raise HubError(f"AI Hub rejected {action}: {e}", kind="hub") from e
        except hub_api.APIException as e:
            if e.status_code == 429:
                raise _rate_limited(action, str(e)) from e
            raise HubError(f"AI Hub error while {action} (HTTP {e.status_code}): {e}", kind="hub") from e


# --- messages ---------------------------------------------------------------------


def _unknown_device(name: str, known: list[str]) -> HubError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f"Close matches: {', '.join(repr(c) for c in close)}." if close else "No close match."
    return HubError(
        f"Unknown AI Hub device {name!r}. {hint} `qai-hub list-devices` lists all {len(known)} devices.",
        kind="unknown_device",
    )


def _bad_token(api_url: str) -> HubError:
    return HubError(f"AI Hub at {api_url} rejected the API token (HTTP 401). {_CONFIGURE_HINT}", kind="auth")


def _rate_limited(action: str, detail: str) -> HubError:
    return HubError(
        f"AI Hub rate limit or quota reached (HTTP 429) while {action}: {detail.strip()}. "
        "Wait and rerun, use a larger chunk_clips (fewer jobs), or pass "
        "wait_on_rate_limit=True to keep retrying for up to 10 minutes.",
        kind="rate_limited",
    )


def _latency_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """AI Hub reports microseconds and bytes; the report uses ms and MiB."""

    def ms(key: str) -> float | None:
        value = summary.get(key)
        return None if value is None else value / 1000.0

    def mib(key: str) -> float | None:
        value = summary.get(key)
        return None if value is None else value / 2**20

    return {
        "inference_ms": ms("estimated_inference_time"),
        "inference_peak_memory_mib": mib("estimated_inference_peak_memory"),
        "first_load_ms": ms("first_load_time"),
        "warm_load_ms": ms("warm_load_time"),
        "all_inference_ms": [t / 1000.0 for t in summary.get("all_inference_times") or []],
    }
