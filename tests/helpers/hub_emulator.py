"""Emulator of the part of Qualcomm AI Hub's REST API that the audit uses.

The real `qai_hub` client (0.56) talks to it over HTTP on 127.0.0.1, exactly as
it talks to AI Hub: protobuf bodies under /api/v1/, uploads and downloads on
"presigned" URLs that the emulator hands out on itself. A single worker thread
plays the device: it "compiles" by checking the options and shapes against the
uploaded ONNX graph, and runs inference jobs with ONNX Runtime on the uploaded
h5 dataset, writing the outputs as an h5 dataset the client downloads.

Covered endpoints (all under /api/v1/, trailing slash as the client sends):
  GET  users/auth/user/                    token check
  GET  devices/                            name / select / attributes filters
  POST models/, GET models/<id>/           model records
  GET  models/<id>/multipart_upload/       multipart URLs (PUT parts, ETags)
  POST models/<id>/multipart_upload/       complete the upload
  POST datasets/, GET|PATCH datasets/<id>/ dataset records, upload confirm
  GET  datasets/<id>/upload_url/           form-POST URL for the h5 file
  GET  datasets/<id>/download_data/        download URL for the h5 file
  POST jobs/, GET jobs/<id>/               compile and inference jobs
  GET  jobs/<id>/result/                   output dataset id, profile detail
Plus /_blob/... (the presigned URLs) and /web/jobs/<id>/ (the job "page").

Faults to inject: `fail_compile` / `fail_inference` (a failure reason),
`inject_http_error(...)` (e.g. 429 on POST jobs/), and any request whose token
differs from `token` gets 401. Not covered: S3-credential transfers (the
emulator never offers them), projects, sharing, link/quantize jobs, real
TFLite/QNN conversion (the "compiled" model is the ONNX graph, run in fp32).
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import queue
import secrets
import shlex
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import onnxruntime as ort
from google.protobuf.message import Message
from qai_hub import public_api_pb2 as pb
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

MiB = 2**20
JOB_DONE_STATES = (pb.JobState.JOB_STATE_DONE, pb.JobState.JOB_STATE_FAILED)

ALL_FRAMEWORKS = ("framework:tflite", "framework:qnn", "framework:onnx")

# name, os, attributes - a few real AI Hub device names
DEFAULT_DEVICES: tuple[tuple[str, str, tuple[str, ...]], ...] = tuple(
    (name, os_, ("format:phone", "os:android", f"chipset:{chip}", *frameworks))
    for name, os_, chip, frameworks in [
        ("Samsung Galaxy S23 (Family)", "13", "qualcomm-snapdragon-8gen2", ALL_FRAMEWORKS),
        ("Samsung Galaxy S24 (Family)", "14", "qualcomm-snapdragon-8gen3", ALL_FRAMEWORKS),
        ("Samsung Galaxy S25 (Family)", "15", "qualcomm-snapdragon-8-elite", ALL_FRAMEWORKS),
        ("Snapdragon 8 Elite QRD", "15", "qualcomm-snapdragon-8-elite", ALL_FRAMEWORKS),
        ("Google Pixel 8", "14", "google-tensor-g3", ("framework:tflite",)),
    ]
)

# --target_runtime -> the model type of the compiled artefact
_RUNTIME_MODEL_TYPES = {
    "tflite": pb.ModelType.MODEL_TYPE_TFLITE,
    "qnn_dlc": pb.ModelType.MODEL_TYPE_QNN_DLC,
    "qnn_context_binary": pb.ModelType.MODEL_TYPE_QNN_CONTEXT_BINARY,
    "onnx": pb.ModelType.MODEL_TYPE_ONNX,
}
_DTYPES = {"float32": pb.TensorDtype.TENSOR_DTYPE_FLOAT32, "int32": pb.TensorDtype.TENSOR_DTYPE_INT32,
           "int64": pb.TensorDtype.TENSOR_DTYPE_INT64, "uint8": pb.TensorDtype.TENSOR_DTYPE_UINT8}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(int32)": "int32", "tensor(int64)": "int64",
               "tensor(uint8)": "uint8"}

Spec = list[tuple[str, tuple[int, ...], str]]  # (name, shape, dtype) per tensor


class _JobFailed(Exception):
    """Raised inside the device worker; becomes the job's failure_reason."""


@dataclass
class _Model:
    pb: pb.Model
    path: Path | None = None
    input_spec: Spec = field(default_factory=list)
    output_spec: Spec = field(default_factory=list)
    channel_last: frozenset[str] = frozenset()
    upload_id: str = ""
    parts: dict[int, Path] = field(default_factory=dict)


@dataclass
class _Dataset:
    pb: pb.Dataset
    path: Path | None = None
    sig: str = field(default_factory=lambda: secrets.token_hex(8))


@dataclass
class _Job:
    pb: pb.Job
    job_id: str
    done: threading.Event = field(default_factory=threading.Event)
    result: pb.JobResult = field(default_factory=pb.JobResult)

    @property
    def inner(self) -> Any:  # the CompileJob / InferenceJob message
        return getattr(self.pb, self.pb.WhichOneof("job"))


@dataclass
class _HttpFault:
    status: int
    detail: str
    method: str
    path_prefix: str
    times: int | None


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # keep test output clean
        pass


def _now() -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(4)


def _tensor_list(spec: Spec) -> pb.NamedTensorTypeList:
    return pb.NamedTensorTypeList(types=[
        pb.NamedTensorType(name=n, tensor_type=pb.TensorType(shape=list(s), dtype=_DTYPES[d]))
        for n, s, d in spec
    ])


def _spec_from_list(lst: pb.NamedTensorTypeList) -> Spec:
    names = {v: k for k, v in _DTYPES.items()}
    return [(t.name, tuple(int(d) for d in t.tensor_type.shape), names[t.tensor_type.dtype]) for t in lst.types]


# --- h5 datasets, in the layout the client writes and reads ---------------------


def read_h5_entries(path: Path) -> dict[str, list[np.ndarray]]:
    with h5py.File(path, "r") as f:
        groups = sorted(f["data"].values(), key=lambda g: int(g.attrs.get("order", 0)))
        return {str(g.attrs["name"]): [np.array(g[f"batch_{i}"]) for i in range(int(g.attrs["batch_count"]))]
                for g in groups}


def write_h5_entries(path: Path, entries: dict[str, list[np.ndarray]]) -> None:
    with h5py.File(path, "w") as f:
        for index, (name, arrays) in enumerate(entries.items()):
            group = f.create_group(f"data/{index}")
            for i, arr in enumerate(arrays):
                group.create_dataset(f"batch_{i}", data=arr)
            group.attrs["name"] = name
            group.attrs["order"] = index
            group.attrs["batch_count"] = len(arrays)


# --- compile options --------------------------------------------------------------


def _parse_compile_options(options: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="compile options", add_help=False, exit_on_error=False)
    parser.add_argument("--target_runtime", default="tflite")
    parser.add_argument("--output_names", default="")
    parser.add_argument("--force_channel_last_input", default="")
    parser.add_argument("--force_channel_last_output", default="")
    parser.add_argument("--truncate_64bit_io", action="store_true")
    parser.add_argument("--compute_unit", default="")
    try:
        args, unknown = parser.parse_known_args(shlex.split(options))
    except (argparse.ArgumentError, SystemExit) as e:
        raise _JobFailed(f"Invalid compile options {options!r}: {e}") from None
    if unknown:
        raise _JobFailed(f"Unknown compile options: {' '.join(unknown)}")
    if args.target_runtime not in _RUNTIME_MODEL_TYPES:
        raise _JobFailed(f"Unsupported --target_runtime {args.target_runtime!r}; "
                         f"expected one of {', '.join(_RUNTIME_MODEL_TYPES)}")
    return args


def _csv(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


def _channel_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1])


class HubEmulator:
    """Threaded HTTP emulator of AI Hub; use as a context manager."""

    def __init__(self, token: str = "emulator-token", *, part_size: int = 64 * MiB,
                 poll_hold_s: float = 15.0, ort_threads: int = 2) -> None:
        self.token = token
        self.part_size = part_size  # max_part_size of multipart model uploads
        self.poll_hold_s = poll_hold_s  # GET jobs/<id>/ waits this long for a finished state
        self.ort_threads = ort_threads
        self.devices = [pb.Device(name=n, os=o, attributes=list(a)) for n, o, a in DEFAULT_DEVICES]
        self.models: dict[str, _Model] = {}
        self.datasets: dict[str, _Dataset] = {}
        self.jobs: dict[str, _Job] = {}
        self.calls: list[tuple[str, str]] = []  # (method, path) of every request
        self.fail_compile: str | None = None
        self.fail_inference: str | None = None
        self._faults: list[_HttpFault] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._sessions: dict[Path, ort.InferenceSession] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="hub-emulator-")
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self._routes = Map([
            Rule("/api/v1/users/auth/user/", endpoint="user", methods=["GET"]),
            Rule("/api/v1/devices/", endpoint="devices", methods=["GET"]),
            Rule("/api/v1/models/", endpoint="create_model", methods=["POST"]),
            Rule("/api/v1/models/<mid>/", endpoint="get_model", methods=["GET"]),
            Rule("/api/v1/models/<mid>/multipart_upload/", endpoint="model_upload_urls", methods=["GET"]),
            Rule("/api/v1/models/<mid>/multipart_upload/", endpoint="model_upload_complete", methods=["POST"]),
            Rule("/api/v1/datasets/", endpoint="create_dataset", methods=["POST"]),
            Rule("/api/v1/datasets/<did>/", endpoint="get_dataset", methods=["GET"]),
            Rule("/api/v1/datasets/<did>/", endpoint="confirm_dataset", methods=["PATCH"]),
            Rule("/api/v1/datasets/<did>/upload_url/", endpoint="dataset_upload_url", methods=["GET"]),
            Rule("/api/v1/datasets/<did>/download_data/", endpoint="dataset_download_url", methods=["GET"]),
            Rule("/api/v1/jobs/", endpoint="create_job", methods=["POST"]),
            Rule("/api/v1/jobs/<jid>/", endpoint="get_job", methods=["GET"]),
            Rule("/api/v1/jobs/<jid>/result/", endpoint="job_result", methods=["GET"]),
            Rule("/_blob/models/<mid>/<int:part>", endpoint="put_model_part", methods=["PUT"]),
            Rule("/_blob/datasets/<did>", endpoint="post_dataset_file", methods=["POST"]),
            Rule("/_blob/datasets/<did>", endpoint="get_dataset_file", methods=["GET"]),
            Rule("/web/jobs/<jid>/", endpoint="job_page", methods=["GET"]),
        ])

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> HubEmulator:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._threads = [threading.Thread(target=self._server.serve_forever, daemon=True, name="hub-emulator-http"),
                         threading.Thread(target=self._device_worker, daemon=True, name="hub-emulator-device")]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._server.shutdown()
        for t in self._threads:
            t.join(timeout=10)
        self._tmp.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def write_client_ini(self, path: str | Path, token: str | None = None) -> Path:
        """A client.ini like `qai-hub configure` writes, pointing at this emulator."""
        path = Path(path)
        path.write_text(
            "[api]\n"
            f"api_token = {self.token if token is None else token}\n"
            f"api_url = {self.url}\n"
            f"web_url = {self.url}/web/\n"
            "verbose = False\n"
        )
        return path

    # -- fault injection -------------------------------------------------------------

    def inject_http_error(self, status: int, detail: str, *, method: str = "POST",
                          path_prefix: str = "/api/v1/jobs/", times: int | None = None) -> None:
        """Answer matching requests with `status` and {"detail": detail}; `times=None` means always."""
        with self._lock:
            self._faults.append(_HttpFault(status, detail, method, path_prefix, times))

    def reset_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self.fail_compile = self.fail_inference = None

    def jobs_of_kind(self, kind: str) -> list[_Job]:
        """kind: compile_job | inference_job, in submission order."""
        with self._lock:
            return [j for j in self.jobs.values() if j.pb.WhichOneof("job") == kind]

    # -- HTTP plumbing ----------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        with self._lock:
            self.calls.append((request.method, request.path))
        try:
            endpoint, args = self._routes.bind_to_environ(environ).match()
            response = self._guard(request, endpoint) or getattr(self, f"_ep_{endpoint}")(request, **args)
        except HTTPException as e:
            response = self._error(e.code or 500, e.description or e.name)
        return response(environ, start_response)

    def _guard(self, request: Request, endpoint: str) -> Response | None:
        """Token check on API routes, then injected faults."""
        if request.path.startswith("/api/") and request.headers.get("Authorization") != f"token {self.token}":
            return self._error(401, "Invalid token.")
        with self._lock:
            for fault in self._faults:
                if request.method == fault.method and request.path.startswith(fault.path_prefix):
                    if fault.times is not None:
                        if fault.times <= 0:
                            continue
                        fault.times -= 1
                    return self._error(fault.status, fault.detail)
        return None

    @staticmethod
    def _error(status: int, detail: str) -> Response:
        return Response(json.dumps({"detail": detail}), status=status, content_type="application/json")

    @staticmethod
    def _proto(message: Message, status: int = 200) -> Response:
        return Response(message.SerializeToString(), status=status, content_type="application/x-protobuf")

    @staticmethod
    def _parse(request: Request, cls: type[Message]) -> Any:
        message = cls()
        message.ParseFromString(request.get_data())
        return message

    def _blob_url(self, path: str) -> str:
        return f"{self.url}/_blob/{path}"

    # -- users and devices --------------------------------------------------------------

    def _ep_user(self, request: Request) -> Response:
        return self._proto(pb.User(id=1, first_name="Hub", last_name="Emulator",
                                   email="emulator@example.invalid", org_id=1))

    def _ep_devices(self, request: Request) -> Response:
        name, os_ = request.args.get("name", ""), request.args.get("os", "")
        wanted = set(request.args.getlist("attributes"))
        found = [d for d in self.devices
                 if (not name or d.name == name) and (not os_ or d.os == os_) and wanted <= set(d.attributes)]
        if request.args.get("select") == "True":  # one device: the newest OS
            found = sorted(found, key=lambda d: d.os)[-1:]
        return self._proto(pb.DeviceList(devices=found, total_query_count=len(found)))

    def _find_device(self, wanted: pb.Device) -> pb.Device:
        for d in sorted(self.devices, key=lambda d: d.os, reverse=True):
            if d.name == wanted.name and (not wanted.os or d.os == wanted.os):
                return d
        raise _BadRequest(f"Device {wanted.name!r} is not available.")

    # -- models ---------------------------------------------------------------------------

    def _ep_create_model(self, request: Request) -> Response:
        model_pb = self._parse(request, pb.Model)
        model_pb.model_id = _new_id("m")
        model_pb.creation_time.CopyFrom(_now())
        with self._lock:
            self.models[model_pb.model_id] = _Model(pb=model_pb)
        return self._proto(pb.CreateUpdateResponse(id=model_pb.model_id, creation_time=model_pb.creation_time))

    def _model(self, mid: str) -> _Model:
        if mid not in self.models:
            raise NotFound(f"Model ID '{mid}' could not be found.")
        return self.models[mid]

    def _ep_get_model(self, request: Request, mid: str) -> Response:
        model = self._model(mid)
        model.pb.input_spec.CopyFrom(_tensor_list(model.input_spec))
        model.pb.output_spec.CopyFrom(_tensor_list(model.output_spec))
        return self._proto(model.pb)

    def _ep_model_upload_urls(self, request: Request, mid: str) -> Response:
        model = self._model(mid)
        size = int(request.args["file_size"])
        model.upload_id = secrets.token_hex(8)
        n_parts = max(1, -(-size // self.part_size))
        urls = [self._blob_url(f"models/{mid}/{i}?upload_id={model.upload_id}") for i in range(n_parts)]
        multipart = pb.FileMultipartUploadURL(urls=urls, upload_id=model.upload_id, max_part_size=self.part_size)
        return self._proto(pb.FileUploadResponse(multipart_url=multipart))

    def _ep_put_model_part(self, request: Request, mid: str, part: int) -> Response:
        model = self._model(mid)
        if request.args.get("upload_id") != model.upload_id:
            return Response("<Error><Code>AccessDenied</Code><Message>bad upload id</Message></Error>", status=403)
        path = Path(self._tmp.name) / f"{mid}.part{part}"
        digest = hashlib.md5()
        with path.open("wb") as f:
            while chunk := request.stream.read(MiB):
                f.write(chunk)
                digest.update(chunk)
        model.parts[part] = path
        return Response(status=200, headers={"ETag": f'"{digest.hexdigest()}"'})

    def _ep_model_upload_complete(self, request: Request, mid: str) -> Response:
        model = self._model(mid)
        done = self._parse(request, pb.FileMultipartUploadComplete)
        if done.upload_id != model.upload_id or len(done.etags) != len(model.parts):
            return self._error(400, "Multipart upload does not match the uploaded parts.")
        model.path = Path(self._tmp.name) / f"{mid}.onnx"
        with model.path.open("wb") as out:
            for i in range(len(model.parts)):
                out.write(model.parts.pop(i).read_bytes())
        model.pb.file_upload_complete = True
        return self._proto(pb.CreateUpdateResponse(id=mid, creation_time=model.pb.creation_time))

    # -- datasets -----------------------------------------------------------------------

    def _ep_create_dataset(self, request: Request) -> Response:
        ds_pb = self._parse(request, pb.Dataset)
        ds_pb.dataset_id = _new_id("d")
        ds_pb.creation_time.CopyFrom(_now())
        ds_pb.expiration_time.seconds = ds_pb.creation_time.seconds + 30 * 24 * 3600  # hub keeps 30 days
        with self._lock:
            self.datasets[ds_pb.dataset_id] = _Dataset(pb=ds_pb)
        return self._proto(pb.CreateUpdateResponse(
            id=ds_pb.dataset_id, creation_time=ds_pb.creation_time, expiration_time=ds_pb.expiration_time))

    def _dataset(self, did: str) -> _Dataset:
        if did not in self.datasets:
            raise NotFound(f"Dataset ID '{did}' could not be found.")
        return self.datasets[did]

    def _ep_get_dataset(self, request: Request, did: str) -> Response:
        return self._proto(self._dataset(did).pb)

    def _ep_confirm_dataset(self, request: Request, did: str) -> Response:
        ds = self._dataset(did)
        if self._parse(request, pb.Dataset).file_upload_complete:
            if ds.path is None:
                return self._error(400, "Dataset file has not been uploaded.")
            ds.pb.file_upload_complete = True
        return self._proto(pb.CreateUpdateResponse(id=did, creation_time=ds.pb.creation_time))

    def _ep_dataset_upload_url(self, request: Request, did: str) -> Response:
        ds = self._dataset(did)
        url = pb.FileUploadURL(url=self._blob_url(f"datasets/{did}"), file_field_name="file",
                               fields={"key": f"datasets/{did}.h5", "signature": ds.sig})
        return self._proto(pb.FileUploadResponse(url=url))

    def _ep_post_dataset_file(self, request: Request, did: str) -> Response:
        ds = self._dataset(did)
        if request.form.get("signature") != ds.sig or "file" not in request.files:
            return Response("<Error><Code>AccessDenied</Code><Message>bad form</Message></Error>", status=403)
        ds.path = Path(self._tmp.name) / f"{did}.h5"
        request.files["file"].save(ds.path)
        return Response(status=204)

    def _ep_dataset_download_url(self, request: Request, did: str) -> Response:
        ds = self._dataset(did)
        url = pb.FileDownloadURL(url=self._blob_url(f"datasets/{did}?signature={ds.sig}"),
                                 filename=f"{ds.pb.name or did}.h5")
        return self._proto(pb.FileDownloadResponse(url=url))

    def _ep_get_dataset_file(self, request: Request, did: str) -> Response:
        ds = self._dataset(did)
        if request.args.get("signature") != ds.sig or ds.path is None:
            return Response("<Error><Code>AccessDenied</Code><Message>bad signature</Message></Error>", status=403)
        return Response(ds.path.read_bytes(), content_type="application/octet-stream")

    # -- jobs ---------------------------------------------------------------------------

    def _ep_create_job(self, request: Request) -> Response:
        job_pb = self._parse(request, pb.Job)
        kind = job_pb.WhichOneof("job")
        try:
            if kind == "compile_job":
                job = self._new_compile_job(job_pb, request)
            elif kind == "inference_job":
                job = self._new_inference_job(job_pb)
            else:
                raise _BadRequest(f"The emulator does not run {kind or 'unknown'} jobs.")
        except _BadRequest as e:
            return self._error(400, str(e))
        with self._lock:
            self.jobs[job.job_id] = job
        self._queue.put(job.job_id)
        return self._proto(pb.CreateUpdateResponse(id=job.job_id, creation_time=job.inner.creation_time))

    def _ready_model(self, model_pb: pb.Model) -> _Model:
        model = self.models.get(model_pb.model_id)
        if model is None or not model.pb.file_upload_complete:
            raise _BadRequest(f"Model {model_pb.model_id!r} does not exist or has not finished uploading.")
        return model

    def _new_compile_job(self, job_pb: pb.Job, request: Request) -> _Job:
        inner = job_pb.compile_job
        source = self._ready_model(inner.model)
        device = self._find_device(inner.devices.devices[0])
        inner.compile_job_id = _new_id("j")
        inner.model.CopyFrom(source.pb)
        inner.device.CopyFrom(device)
        inner.job_state = pb.JobState.JOB_STATE_CREATED
        inner.creation_time.CopyFrom(_now())
        if request.args.get("seed_target_model") == "true":  # the client asks for it
            inner.target_model.CopyFrom(self._seed_target_model(inner))
        return _new_job(job_pb, inner.compile_job_id)

    def _seed_target_model(self, inner: pb.CompileJob) -> pb.Model:
        runtime = _option(inner.options, "--target_runtime", "tflite")
        target = pb.Model(model_id=_new_id("m"), name=f"{inner.name}_{runtime}", producer_id=inner.compile_job_id,
                          model_type=_RUNTIME_MODEL_TYPES.get(runtime, pb.ModelType.MODEL_TYPE_UNSPECIFIED))
        target.creation_time.CopyFrom(_now())
        with self._lock:
            self.models[target.model_id] = _Model(pb=target)
        return target

    def _new_inference_job(self, job_pb: pb.Job) -> _Job:
        inner = job_pb.inference_job
        model = self.models.get(inner.model.model_id)
        if model is None:
            raise _BadRequest(f"Model {inner.model.model_id!r} does not exist.")
        if inner.dataset.dataset_id:
            ds = self.datasets.get(inner.dataset.dataset_id)
            if ds is None or not ds.pb.file_upload_complete:
                raise _BadRequest(f"Dataset {inner.dataset.dataset_id!r} does not exist or is incomplete.")
            inner.dataset.CopyFrom(ds.pb)
        elif not inner.is_profiling_on:
            raise _BadRequest("Inference without inputs requires profiling.")
        inner.inference_job_id = _new_id("j")
        inner.model.CopyFrom(model.pb)
        inner.device.CopyFrom(self._find_device(inner.device))
        inner.job_state = pb.JobState.JOB_STATE_CREATED
        inner.creation_time.CopyFrom(_now())
        return _new_job(job_pb, inner.inference_job_id)

    def _job(self, jid: str) -> _Job:
        if jid not in self.jobs:
            raise NotFound(f"Job ID '{jid}' could not be found.")
        return self.jobs[jid]

    def _ep_get_job(self, request: Request, jid: str) -> Response:
        job = self._job(jid)
        job.done.wait(self.poll_hold_s)  # long poll: spares the client its 10 s polling sleep
        with self._lock:
            return self._proto(job.pb)

    def _ep_job_result(self, request: Request, jid: str) -> Response:
        job = self._job(jid)
        if not job.done.is_set():
            return self._error(404, "Results are not available yet.")
        return self._proto(job.result)

    def _ep_job_page(self, request: Request, jid: str) -> Response:
        inner = self._job(jid).inner
        state = pb.JobState.Name(inner.job_state).removeprefix("JOB_STATE_")
        body = f"<h1>Job {jid}: {state}</h1><p>{html.escape(inner.failure_reason)}</p>"
        return Response(body, content_type="text/html")

    # -- the device ------------------------------------------------------------------------

    def _device_worker(self) -> None:
        """One device: runs queued jobs one after another."""
        while (jid := self._queue.get()) is not None:
            job = self.jobs[jid]
            try:
                if job.pb.WhichOneof("job") == "compile_job":
                    self._compile(job)
                else:
                    self._infer(job)
                state, reason = pb.JobState.JOB_STATE_DONE, ""
            except _JobFailed as e:
                state, reason = pb.JobState.JOB_STATE_FAILED, str(e)
            except Exception as e:  # an emulator bug must still finish the job
                state, reason = pb.JobState.JOB_STATE_FAILED, f"Internal emulator error: {e!r}"
            self._set_state(job, state, reason)
            job.done.set()

    def _set_state(self, job: _Job, state: int, reason: str = "") -> None:
        with self._lock:
            job.inner.job_state = state
            job.inner.failure_reason = reason
            if state in JOB_DONE_STATES:
                job.inner.completion_time.CopyFrom(_now())

    def _session(self, path: Path) -> ort.InferenceSession:
        if path not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.ort_threads
            try:
                self._sessions[path] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as e:
                raise _JobFailed(f"Failed to load the model: {e}") from None
        return self._sessions[path]

    def _compile(self, job: _Job) -> None:
        inner = job.pb.compile_job
        self._set_state(job, pb.JobState.JOB_STATE_OPTIMIZING_MODEL)
        if self.fail_compile:
            raise _JobFailed(self.fail_compile)
        args = _parse_compile_options(inner.options)
        source = self.models[inner.model.model_id]
        session = self._session(source.path)
        inputs = _input_spec(session, _spec_from_list(inner.tensor_type_list))
        outputs = _output_spec(session, _csv(args.output_names))
        channel_last = frozenset(_csv(args.force_channel_last_input))
        unknown = channel_last - {n for n, _, _ in inputs}
        if unknown:
            raise _JobFailed(f"--force_channel_last_input names unknown inputs: {', '.join(sorted(unknown))}")
        target = self.models[inner.target_model.model_id]
        target.path, target.output_spec, target.channel_last = source.path, outputs, channel_last
        target.input_spec = [(n, _channel_last(s) if n in channel_last else s, d) for n, s, d in inputs]
        target.pb.file_upload_complete = True
        with self._lock:
            inner.target_tensor_type_list.CopyFrom(_tensor_list(target.input_spec))
            inner.target_model.CopyFrom(target.pb)
            job.result.compile_job_result.compile_job_id = inner.compile_job_id

    def _infer(self, job: _Job) -> None:
        inner = job.pb.inference_job
        self._set_state(job, pb.JobState.JOB_STATE_PROVISIONING_DEVICE)
        model = self.models[inner.model.model_id]
        if model.path is None:
            raise _JobFailed("The model has no runnable artefact.")
        session = self._session(model.path)
        spec = model.input_spec or _input_spec(session, [])
        running = pb.JobState.JOB_STATE_MEASURING_PERFORMANCE if inner.is_profiling_on \
            else pb.JobState.JOB_STATE_RUNNING_INFERENCE
        self._set_state(job, running)
        if self.fail_inference:
            raise _JobFailed(self.fail_inference)
        entries = self._job_inputs(inner, spec)
        outputs, times_us = _run_samples(session, entries, model.channel_last)
        with self._lock:
            inner.tensor_type_list.CopyFrom(_tensor_list(spec))
            result = job.result.inference_job_result
            result.inference_job_id = inner.inference_job_id
        if inner.dataset.dataset_id:
            result.output_dataset_id = self._store_outputs(outputs, inner.name)
        if inner.is_profiling_on:
            result.detail.CopyFrom(_profile_detail(times_us, model.path.stat().st_size))

    def _job_inputs(self, inner: pb.InferenceJob, spec: Spec) -> dict[str, list[np.ndarray]]:
        """The uploaded dataset, checked against the compiled model; random data if none."""
        if not inner.dataset.dataset_id:
            rng = np.random.default_rng(0)
            return {n: [rng.random(s, dtype=np.float32).astype(d)] for n, s, d in spec}
        entries = read_h5_entries(self.datasets[inner.dataset.dataset_id].path)
        if list(entries) != [n for n, _, _ in spec]:
            raise _JobFailed(f"Dataset inputs {list(entries)} do not match the model inputs {[n for n, _, _ in spec]}.")
        for name, shape, dtype in spec:
            for i, arr in enumerate(entries[name]):
                if arr.shape != shape or arr.dtype != np.dtype(dtype):
                    raise _JobFailed(f"Input '{name}' sample {i} is {arr.dtype}{list(arr.shape)}; "
                                     f"the compiled model expects {dtype}{list(shape)}.")
        return entries

    def _store_outputs(self, outputs: dict[str, list[np.ndarray]], job_name: str) -> str:
        ds_pb = pb.Dataset(dataset_id=_new_id("d"), name=f"{job_name}-outputs", file_upload_complete=True)
        ds_pb.creation_time.CopyFrom(_now())
        ds_pb.expiration_time.seconds = ds_pb.creation_time.seconds + 30 * 24 * 3600
        ds = _Dataset(pb=ds_pb, path=Path(self._tmp.name) / f"{ds_pb.dataset_id}.h5")
        write_h5_entries(ds.path, outputs)
        with self._lock:
            self.datasets[ds_pb.dataset_id] = ds
        return ds_pb.dataset_id


class _BadRequest(Exception):
    pass


def _new_job(job_pb: pb.Job, job_id: str) -> _Job:
    job_pb.hub_version = "emulator"
    return _Job(pb=job_pb, job_id=job_id)


def _option(options: str, flag: str, default: str) -> str:
    tokens = shlex.split(options)
    return tokens[tokens.index(flag) + 1] if flag in tokens[:-1] else default


def _input_spec(session: ort.InferenceSession, requested: Spec) -> Spec:
    """Input specs the job compiles for: the requested ones, checked against the graph."""
    graph = [(i.name, i.shape, _ORT_DTYPES.get(i.type, i.type)) for i in session.get_inputs()]
    if not requested:
        if any(not isinstance(d, int) for _, shape, _ in graph for d in shape):
            raise _JobFailed("The model has dynamic input shapes; pass input_specs.")
        return [(n, tuple(s), d) for n, s, d in graph]
    if [n for n, _, _ in requested] != [n for n, _, _ in graph]:
        raise _JobFailed(f"input_specs names {[n for n, _, _ in requested]} do not match "
                         f"the model inputs {[n for n, _, _ in graph]}.")
    for (name, shape, dtype), (_, gshape, gdtype) in zip(requested, graph):
        if len(shape) != len(gshape) or any(isinstance(g, int) and g != s for s, g in zip(shape, gshape)):
            raise _JobFailed(f"input_specs shape {list(shape)} for '{name}' does not fit the model's {list(gshape)}.")
        if dtype != gdtype:
            raise _JobFailed(f"input_specs dtype {dtype} for '{name}' does not match the model's {gdtype}.")
    return requested


def _output_spec(session: ort.InferenceSession, names: list[str]) -> Spec:
    graph = {o.name: o for o in session.get_outputs()}
    missing = [n for n in names if n not in graph]
    if missing:
        raise _JobFailed(f"--output_names {', '.join(missing)} not found; the model outputs {', '.join(graph)}.")
    # Symbolic dims (the batch) become 1: the hub compiles for fixed shapes.
    return [(o.name, tuple(d if isinstance(d, int) else 1 for d in o.shape), _ORT_DTYPES.get(o.type, o.type))
            for o in session.get_outputs()]


def _run_samples(session: ort.InferenceSession, entries: dict[str, list[np.ndarray]],
                 channel_last: frozenset[str]) -> tuple[dict[str, list[np.ndarray]], list[int]]:
    """Run each sample like the device does; channel-last inputs go back to channel-first."""
    names = [o.name for o in session.get_outputs()]
    outputs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    times_us = []
    for i in range(len(next(iter(entries.values())))):
        feed = {n: np.moveaxis(arrs[i], -1, 1) if n in channel_last else arrs[i] for n, arrs in entries.items()}
        start = time.perf_counter()
        values = session.run(None, feed)
        times_us.append(int((time.perf_counter() - start) * 1e6))
        for n, v in zip(names, values):
            outputs[n].append(v)
    return outputs, times_us


def _profile_detail(times_us: list[int], model_bytes: int) -> pb.ProfileDetail:
    """Emulator numbers (host CPU), in the fields the client's download_profile reads."""
    detail = pb.ProfileDetail(
        major_version=1, minor_version=2, execution_time=int(np.median(times_us)),
        after_execution_peak_memory=2 * model_bytes, cold_load_time=times_us[0], warm_load_time=times_us[-1],
        all_execution_times=times_us,
    )
    for usage in (detail.execution_memory, detail.cold_load_memory):
        usage.increase.lower, usage.increase.upper = model_bytes, 2 * model_bytes
        usage.peak.lower, usage.peak.upper = model_bytes, 2 * model_bytes
    return detail
