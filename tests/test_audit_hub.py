"""HubBackend against the real qai_hub client and a local AI Hub emulator.

Nothing here mocks the client: `qai_hub` 0.56 sends real HTTP requests to
tests/helpers/hub_emulator.py on 127.0.0.1, which runs the uploaded ONNX graph with
ONNX Runtime. The only client setting touched is its retry back-off factor, so
that the client's own retries on 429 take milliseconds instead of ~30 s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import qai_hub
import qai_hub.util.session
import requests
import torch
import torchvision
from torch import nn

from r2p1d_batch.audit.hub import (
    CLIP_BYTES,
    DEFAULT_CHUNK_CLIPS,
    DeviceGraph,
    HubBackend,
    HubError,
    check_clips,
    chunk_bounds,
    export_onnx,
)

from tests.helpers.hub_emulator import HubEmulator

DEVICE = "Samsung Galaxy S24 (Family)"


class TinyVideoNet(nn.Module):
    """Same I/O contract as r2plus1d_18 (N,3,16,112,112 -> N,400), a few KB of ONNX."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 400)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3, 4)))


def _clips(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 112, 112), dtype=np.float32)


def _host_logits(graph: nn.Module, clips: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return graph(torch.from_numpy(clips)).numpy()


@pytest.fixture(scope="module")
def emulator() -> HubEmulator:
    # 48 MiB parts: the 120 MiB r2plus1d_18 graph goes up in three parts.
    with HubEmulator(part_size=48 * 2**20) as emu:
        yield emu


@pytest.fixture
def hub(emulator: HubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubEmulator:
    """The emulator, with the real client pointed at it through QAIHUB_CLIENT_INI."""
    emulator.reset_faults()
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(emulator.write_client_ini(tmp_path / "client.ini")))
    monkeypatch.setattr(qai_hub.util.session, "BACKOFF_FACTOR", 0.001)
    return emulator


@pytest.fixture(scope="module")
def r2p1d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """Seeded random r2plus1d_18, exported as the device graph."""
    torch.manual_seed(0)
    model = torchvision.models.video.r2plus1d_18(weights=None).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "r2plus1d_18.onnx")
    return path, DeviceGraph(model).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(1)
    model = TinyVideoNet().eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return path, DeviceGraph(model).eval()


# --- end to end ---------------------------------------------------------------


@pytest.mark.slow
def test_r2plus1d_on_device_matches_host_in_chunks(hub: HubEmulator, r2p1d: tuple[Path, nn.Module]) -> None:
    path, graph = r2p1d
    clips = _clips(5, seed=2)
    backend = HubBackend(path, DEVICE, "tflite", chunk_clips=2)
    first_compile = len(hub.jobs_of_kind("compile_job"))
    first_infer = len(hub.jobs_of_kind("inference_job"))

    logits, report = backend.run(clips)

    expected = _host_logits(graph, clips)
    assert logits.shape == (5, 400)
    assert np.abs(logits - expected).max() < 1e-5 * max(1.0, np.abs(expected).max()) + 1e-6
    assert (logits.argmax(1) == expected.argmax(1)).all()
    # 5 clips in chunks of 2 -> 3 inference jobs, each with its own dataset
    jobs = report["inference_jobs"]
    assert [(j["first_clip"], j["num_clips"]) for j in jobs] == [(0, 2), (2, 2), (4, 1)]
    assert len({j["job_id"] for j in jobs}) == 3 and len({j["dataset_id"] for j in jobs}) == 3
    assert all(j["url"] == f"{hub.url}/web/jobs/{j['job_id']}/" for j in jobs)
    assert report["device"] == DEVICE and report["runtime"] == "tflite"
    assert report["target_runtime"] == "tflite" and report["input_layout"] == "NTHWC"
    assert report["compile_job"]["url"].startswith(f"{hub.url}/web/jobs/")
    # what reached the hub: one compile (tflite, channel-last), plain inference, 3 model parts
    compile_job = hub.jobs_of_kind("compile_job")[-1].pb.compile_job
    assert "--target_runtime tflite" in compile_job.options
    assert "--force_channel_last_input video" in compile_job.options
    assert list(compile_job.target_tensor_type_list.types[0].tensor_type.shape) == [1, 16, 112, 112, 3]
    new_jobs = hub.jobs_of_kind("inference_job")[first_infer:]
    assert len(new_jobs) == 3 and not any(j.pb.inference_job.is_profiling_on for j in new_jobs)
    assert sum(1 for m, p in hub.calls if m == "PUT" and p.startswith(f"/_blob/models/{report['model_id']}/")) == 3

    # a second run reuses the compiled model: no new upload or compile
    more, report2 = backend.run(clips[:1])
    assert np.array_equal(more, logits[:1])
    assert report2["compile_job"] == report["compile_job"]
    assert len(hub.jobs_of_kind("compile_job")) == first_compile + 1


@pytest.mark.parametrize(
    ("runtime", "target_runtime", "target_shape"),
    [("qnn", "qnn_dlc", [1, 16, 112, 112, 3]), ("onnx", "onnx", [1, 3, 16, 112, 112])],
)
def test_runtimes_and_layouts(hub: HubEmulator, tiny: tuple[Path, nn.Module], runtime: str,
                              target_runtime: str, target_shape: list[int]) -> None:
    path, graph = tiny
    clips = _clips(3, seed=3)
    logits, report = HubBackend(path, DEVICE, runtime).run(clips)
    np.testing.assert_allclose(logits, _host_logits(graph, clips), rtol=1e-5, atol=1e-6)
    assert report["target_runtime"] == target_runtime and len(report["inference_jobs"]) == 1
    compile_job = hub.jobs_of_kind("compile_job")[-1].pb.compile_job
    assert f"--target_runtime {target_runtime}" in compile_job.options
    assert list(compile_job.target_tensor_type_list.types[0].tensor_type.shape) == target_shape


def test_profile_job_reports_latency(hub: HubEmulator, tiny: tuple[Path, nn.Module]) -> None:
    logits, report = HubBackend(tiny[0], DEVICE, "tflite", profile=True).run(_clips(1, seed=4))
    profile = report["profile"]
    assert profile["inference_ms"] is not None and profile["inference_ms"] >= 0
    assert profile["inference_peak_memory_mib"] > 0
    assert profile["url"] == f"{hub.url}/web/jobs/{profile['job_id']}/"
    profile_job = hub.jobs[profile["job_id"]].pb.inference_job
    assert profile_job.is_profiling_on and not profile_job.dataset.dataset_id


def test_emulator_rejects_wrong_layout(hub: HubEmulator, tiny: tuple[Path, nn.Module]) -> None:
    """The emulator checks shapes, so a backend that forgot the transpose would fail."""
    client = qai_hub.Client()
    compile_job = client.submit_compile_job(
        tiny[0], qai_hub.Device(DEVICE), input_specs={"video": ((1, 3, 16, 112, 112), "float32")},
        options="--target_runtime tflite --force_channel_last_input video",
    )
    assert compile_job.wait().success
    job = client.submit_inference_job(
        compile_job.get_target_model(), qai_hub.Device(DEVICE),
        inputs={"video": [_clips(1, seed=5)]}, profile=False,
    )
    status = job.wait()
    assert status.failure and "expects float32[1, 16, 112, 112, 3]" in status.message


# --- errors a user will hit -------------------------------------------------------


def test_no_token_configured(hub: HubEmulator, tiny: tuple[Path, nn.Module], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(tmp_path / "missing.ini"))
    with pytest.raises(HubError) as err:
        HubBackend(tiny[0], DEVICE).run(_clips(1, seed=6))
    assert err.value.kind == "no_token"
    assert "qai-hub configure --api_token" in str(err.value) and "QAIHUB_CLIENT_INI" in str(err.value)


def test_empty_token(hub: HubEmulator, tiny: tuple[Path, nn.Module], tmp_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(hub.write_client_ini(tmp_path / "blank.ini", token="")))
    with pytest.raises(HubError, match="qai-hub configure --api_token") as err:
        HubBackend(tiny[0], DEVICE).run(_clips(1, seed=6))
    assert err.value.kind == "no_token"


def test_bad_token(hub: HubEmulator, tiny: tuple[Path, nn.Module], tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QAIHUB_CLIENT_INI", str(hub.write_client_ini(tmp_path / "bad.ini", token="wrong")))
    with pytest.raises(HubError, match=r"rejected the API token \(HTTP 401\)") as err:
        HubBackend(tiny[0], DEVICE).run(_clips(1, seed=6))
    assert err.value.kind == "auth" and "qai-hub configure --api_token" in str(err.value)


def test_unknown_device_lists_close_matches(hub: HubEmulator, tiny: tuple[Path, nn.Module]) -> None:
    uploads = len(hub.models)
    with pytest.raises(HubError) as err:
        HubBackend(tiny[0], "Samsung Galaxy S42 (Family)").run(_clips(1, seed=6))
    assert err.value.kind == "unknown_device"
    assert "'Samsung Galaxy S24 (Family)'" in str(err.value) and "qai-hub list-devices" in str(err.value)
    assert len(hub.models) == uploads  # nothing uploaded before the name was checked


def test_device_without_runtime(hub: HubEmulator, tiny: tuple[Path, nn.Module]) -> None:
    with pytest.raises(HubError, match="does not support runtime 'qnn'") as err:
        HubBackend(tiny[0], "Google Pixel 8", "qnn").run(_clips(1, seed=6))
    assert err.value.kind == "unsupported_runtime"


def test_compile_job_failure_shows_reason_and_url(hub: HubEmulator, tiny: tuple[Path, nn.Module]) -> None:
    hub.fail_compile = "Op 'Conv3d' is not supported by the TFLite converter."
    with pytest.raises(HubError) as err:
        HubBackend(tiny[0], DEVICE).run(_clips(1, seed=6))
    e = err.value
    assert e.kind == "job_failed" and "compile job" in str(e)
    assert hub.fail_compile in str(e) and e.url in str(e)
    assert e.url == f"{hub.url}/web/jobs/{e.job_id}/"
    assert "FAILED" in requests.get(e.url, timeout=5).text  # the link leads to the job


def test_inference_job_failure_shows_reason_and_url(hub: HubEmulator, tiny: tuple[Path, nn.Module]) -> None:
    hub.fail_inference = "Device disconnected during inference."
    with pytest.raises(HubError) as err:
        HubBackend(tiny[0], DEVICE, chunk_clips=1).run(_clips(2, seed=6))
    e = err.value
    assert e.kind == "job_failed" and "inference job" in str(e)
    assert hub.fail_inference in str(e) and e.url in str(e)
    assert hub.jobs[e.job_id].pb.WhichOneof("job") == "inference_job"


def test_rate_limit_on_job_submission(hub: HubEmulator, tiny: tuple[Path, nn.Module]) -> None:
    hub.inject_http_error(429, "Too many jobs in the queue for your organization.", path_prefix="/api/v1/jobs/")
    with pytest.raises(HubError) as err:
        HubBackend(tiny[0], DEVICE).run(_clips(1, seed=6))
    assert err.value.kind == "rate_limited"
    assert "HTTP 429" in str(err.value) and "Too many jobs in the queue" in str(err.value)


def test_transient_rate_limit_is_retried_by_the_client(hub: HubEmulator, tiny: tuple[Path, nn.Module]) -> None:
    hub.inject_http_error(429, "Slow down.", path_prefix="/api/v1/jobs/", times=2)
    logits, report = HubBackend(tiny[0], DEVICE).run(_clips(1, seed=6))
    assert logits.shape == (1, 400) and report["compile_job"]["job_id"]


def test_rate_limit_on_reads(hub: HubEmulator, tiny: tuple[Path, nn.Module]) -> None:
    hub.inject_http_error(429, "Request was throttled.", method="GET", path_prefix="/api/v1/devices/")
    with pytest.raises(HubError, match="HTTP 429") as err:
        HubBackend(tiny[0], DEVICE).run(_clips(1, seed=6))
    assert err.value.kind == "rate_limited"


# --- pure parts ------------------------------------------------------------------------


def test_default_chunk_keeps_datasets_well_under_upload_part() -> None:
    assert DEFAULT_CHUNK_CLIPS * CLIP_BYTES <= 128 * 2**20 < 256 * 2**20
    assert chunk_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert chunk_bounds(4, 4) == [(0, 4)]


def test_normalisation_comes_from_torchvision_preset() -> None:
    preset = torchvision.models.video.R2Plus1D_18_Weights.KINETICS400_V1.transforms()
    graph = DeviceGraph(nn.Identity())
    assert graph.mean.flatten().tolist() == pytest.approx(preset.mean)
    assert graph.std.flatten().tolist() == pytest.approx(preset.std)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 16, 3, 112, 112), np.float32), np.zeros((2, 3, 16, 112, 112), np.uint8),
     np.full((1, 3, 16, 112, 112), 255.0, np.float32), np.zeros((0, 3, 16, 112, 112), np.float32)],
)
def test_clip_validation(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        check_clips(bad)


def test_unknown_runtime_is_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="runtime must be one of"):
        HubBackend("model.onnx", DEVICE, "coreml")
