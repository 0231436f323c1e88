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

import hashlib
import os
import re
from typing import Any, Optional

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


# -- which URLs may be opened at all (storage.allowed_protocols) ----------------------------------
_NOT_A_WORD = re.compile(".*[^a-z]+.*")  # fsspec's own test for a chain part that is not a bare protocol


def protocols(uri: str) -> list[str]:
    """Every protocol fsspec would use to open ``uri``, chained URLs included, without opening
    anything: ``simplecache::s3://b/k`` -> [simplecache, s3]; ``zip://a.mp4::/x.zip`` -> [zip, file];
    a plain path -> [file]. The same split as fsspec.core.url_to_fs (``_un_chain``)."""
    if "::" in uri:
        bits = [p if "://" in p or _NOT_A_WORD.match(p) else p + "://" for p in uri.split("::")]
    else:
        bits = [uri]
    return [fsspec.core.split_protocol(b)[0] or "file" for b in bits]


class ProtocolNotAllowed(OSError):
    """A URI whose protocol is outside storage.allowed_protocols: never opened; an error row."""

    kind = "ProtocolNotAllowed"


def disallowed(uri: str, allowed) -> Optional[str]:
    """Why ``uri`` may not be opened under the allow-list ``allowed`` (None: it may)."""
    bad = [p for p in protocols(uri) if p not in allowed]
    if not bad:
        return None
    return (f"{uri}: protocol {bad[0]!r} is not in storage.allowed_protocols ({', '.join(allowed)}); "
            "not opened (add it to the list to read such URLs)")


def check_protocol(uri: str, cfg: Optional[StorageConfig] = None) -> None:
    """Raise ProtocolNotAllowed for a URI outside ``storage.allowed_protocols``, before any request.
    The decode stage calls this first thing; ``error_kind`` turns it into the row's error."""
    why = disallowed(uri, (cfg or StorageConfig()).allowed_protocols)
    if why:
        raise ProtocolNotAllowed(why)


def allowed_mask(uris, allowed, at=None, odd: Optional[np.ndarray] = None) -> np.ndarray:
    """``disallowed(u, allowed) is None`` for every URI of an Arrow string array, vectorised: the
    common shapes (a path, ``proto://...``) by Arrow kernels, chained (``::``) and ``data:`` URLs
    (rare) one by one. A null URI is not allowed. ``at`` (``pc.find_substring(uris, "://")``)
    and ``odd`` (those rare rows) are computed here unless the caller has them."""
    uris = uris.combine_chunks() if isinstance(uris, pa.ChunkedArray) else uris
    allowed = list(allowed)
    # split_protocol: the text before the first "://" when it is longer than one character,
    # else (no "://", or "C://...") a path: "file"
    at = pc.find_substring(uris, "://") if at is None else at
    out = bool_mask(pc.less_equal(at, 1)) if "file" in allowed else np.zeros(len(uris), bool)
    for p in allowed:
        out |= bool_mask(pc.and_(pc.equal(at, len(p)), pc.starts_with(uris, p + "://")))
    if odd is None:
        odd = bool_mask(pc.or_(pc.match_substring(uris, "::"), pc.starts_with(uris, "data:")))
    for i in np.flatnonzero(odd):
        u = uris[int(i)].as_py()
        out[i] = u is not None and disallowed(u, allowed) is None
    return out & bool_mask(pc.is_valid(uris))


def bool_mask(mask) -> np.ndarray:
    """An Arrow boolean array as numpy, null as False."""
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


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


def s3_client(cfg: Optional[StorageConfig] = None, max_pool_connections: int = 32):
    """A botocore S3 client with the settings ``storage_options`` gives s3fs (endpoint, region,
    profile or anonymous access, retries, timeouts), for the calls the plan makes itself (listing
    pages it parses on its own: runs/fingerprints.py). Credentials: botocore's usual chain."""
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config as BotoConfig

    cfg = with_env(cfg)
    session = botocore.session.Session(profile=cfg.profile if cfg.profile and not cfg.anon else None)
    unsigned = {"signature_version": UNSIGNED} if cfg.anon else {}
    conf = BotoConfig(retries={"max_attempts": cfg.max_attempts, "mode": cfg.retry_mode},
                      connect_timeout=cfg.connect_timeout_sec, read_timeout=cfg.read_timeout_sec,
                      max_pool_connections=max_pool_connections, **unsigned)
    return session.create_client("s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region, config=conf)


def filesystem(uri: str, cfg: Optional[StorageConfig] = None):
    """(fs, path) for a local path or URL."""
    return fsspec.core.url_to_fs(uri, **storage_options(uri, cfg))


def sha256(fs, path: str) -> str:
    """The SHA-256 hex digest of the file ``path`` on ``fs``, read in 8 MiB pieces."""
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    if isinstance(e, ProtocolNotAllowed):
        return ProtocolNotAllowed.kind, str(e)
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
