"""Where bytes live: local paths and s3:// through fsspec, with options from config/env.

Everything that opens a manifest, a video, a checkpoint or an output file goes through here,
so one place knows about endpoints, credentials, retries, read-ahead and fingerprints.

S3 in one paragraph: endpoint/region/profile come from ``storage.*`` or the standard AWS
environment and are resolved once on the driver (``with_env``), so they travel to every Ray
worker inside the config; credentials are never put in the config: botocore finds them in
the environment (``AWS_ACCESS_KEY_ID``...), a profile, or the instance/pod role, and the job
passes the driver's AWS_* variables to its workers through the runtime_env (``aws_env``).
Transient errors (throttling, 5xx, dropped connections) are retried by botocore with
backoff (``storage.max_attempts``, ``storage.retry_mode``); permanent ones surface as
OSError subclasses that ``error_kind`` names. Files opened for reading fetch
``storage.block_size_mb`` per ranged GET, so decoding a few clips of a large object reads
a few blocks, never the whole object, and holds at most one block in memory.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import fsspec

from .config import StorageConfig

# The standard AWS variables a worker may need; passed through the runtime_env, never logged.
AWS_ENV_VARS = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_SESSION_NAME", "AWS_STS_REGIONAL_ENDPOINTS",
)
S3_PROTOCOLS = ("s3", "s3a")


def _protocol(uri: str) -> str:
    return fsspec.core.split_protocol(uri)[0] or "file"


def with_env(cfg: Optional[StorageConfig] = None, env: Optional[dict] = None) -> StorageConfig:
    """``cfg`` with endpoint, region and profile filled in from the AWS environment.

    Done once on the driver: the result travels to the workers inside the run config, so a
    worker does not depend on its own environment for where S3 is.
    """
    cfg = cfg or StorageConfig()
    env = os.environ if env is None else env
    return cfg.model_copy(update={
        "endpoint_url": cfg.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        "region": cfg.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        "profile": cfg.profile or env.get("AWS_PROFILE") or None,
    })


def aws_env(env: Optional[dict] = None) -> dict[str, str]:
    """The driver's AWS_* variables, for the job's runtime_env (values are secrets: never log them)."""
    env = os.environ if env is None else env
    return {k: env[k] for k in AWS_ENV_VARS if env.get(k)}


def storage_options(uri: str, cfg: Optional[StorageConfig] = None) -> dict[str, Any]:
    """fsspec options for ``uri``: endpoint/region/profile/anon, retries and read-ahead."""
    if _protocol(uri) not in S3_PROTOCOLS:
        return {}
    cfg = with_env(cfg)
    client_kwargs: dict[str, Any] = {}
    if cfg.endpoint_url:
        client_kwargs["endpoint_url"] = cfg.endpoint_url
    if cfg.region:
        client_kwargs["region_name"] = cfg.region
    opts: dict[str, Any] = {
        "anon": cfg.anon,
        # botocore retries throttling (SlowDown, 503), 5xx and dropped connections with
        # exponential backoff; adaptive mode also slows the client down while throttled.
        "config_kwargs": {
            "retries": {"max_attempts": cfg.max_attempts, "mode": cfg.retry_mode},
            "connect_timeout": cfg.connect_timeout_sec,
            "read_timeout": cfg.read_timeout_sec,
        },
        # Reads are ranged GETs of this size; readahead keeps one block (streaming).
        "default_block_size": int(cfg.block_size_mb * 2**20),
        "default_cache_type": cfg.cache_type,
    }
    if cfg.profile and not cfg.anon:
        opts["profile"] = cfg.profile
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    return opts


def filesystem(uri: str, cfg: Optional[StorageConfig] = None):
    """(fs, path) for a local path or URL."""
    return fsspec.core.url_to_fs(uri, **storage_options(uri, cfg))


def is_local(uri: str) -> bool:
    return _protocol(uri) in ("file", "local")


try:  # botocore raises its own (non-OSError) errors once retries of a connection fault run out
    from botocore.exceptions import BotoCoreError, NoCredentialsError
except ImportError:  # pragma: no cover - s3fs pulls botocore in
    BotoCoreError = NoCredentialsError = OSError

# What a storage call may raise for a reason outside our code: each becomes an error row.
STORAGE_ERRORS = (OSError, BotoCoreError)


def s3_error_code(e: BaseException) -> str:
    """The S3 error code behind an s3fs OSError (NoSuchKey, AccessDenied, 403...), or ''."""
    for err in (e, e.__cause__, e.__context__):
        resp = getattr(err, "response", None)
        if isinstance(resp, dict):
            return str(resp.get("Error", {}).get("Code") or "")
    return ""


def error_kind(e: Exception, uri: str) -> tuple[str, str]:
    """(error_class, message) for one of STORAGE_ERRORS, with what the store said."""
    code = s3_error_code(e)
    said = f"{code}: {e}" if code and code not in str(e) else str(e)
    where = "S3" if _protocol(uri) in S3_PROTOCOLS else "storage"
    if isinstance(e, FileNotFoundError):
        if where == "storage":
            return "NotFound", f"{uri}: file not found"
        return "NotFound", f"{uri}: not found ({where} said: {said})"
    if isinstance(e, PermissionError):
        return "AccessDenied", f"{uri}: access denied ({where} said: {said})"
    if isinstance(e, NoCredentialsError):
        return "NoCredentials", (f"{uri}: no AWS credentials on this worker ({e}); set AWS_* in the job's "
                                 "runtime_env, use a profile or role, or storage.anon=true for a public bucket")
    return "StorageError", f"{uri}: {where} error ({type(e).__name__}: {said})"


def fingerprint(info: dict) -> str:
    """A source version stamp: the ETag where the store has one, else size + mtime."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"size:{info.get('size')}/mtime:{mtime}"


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
