"""Where bytes live: local paths and s3:// through fsspec, with options from config/env.

Everything that opens a manifest, a video, a checkpoint or an output file goes through here,
so one place knows about endpoints, credentials and fingerprints.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import fsspec

from .config import StorageConfig


def storage_options(uri: str, cfg: Optional[StorageConfig] = None) -> dict[str, Any]:
    """fsspec options for ``uri``; S3 endpoint/region/anon from config, else the AWS env."""
    protocol = fsspec.core.split_protocol(uri)[0] or "file"
    if protocol not in ("s3", "s3a"):
        return {}
    cfg = cfg or StorageConfig()
    client_kwargs: dict[str, Any] = {}
    endpoint = cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    opts: dict[str, Any] = {"anon": cfg.anon}
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    return opts


def filesystem(uri: str, cfg: Optional[StorageConfig] = None):
    """(fs, path) for a local path or URL."""
    return fsspec.core.url_to_fs(uri, **storage_options(uri, cfg))


def is_local(uri: str) -> bool:
    return (fsspec.core.split_protocol(uri)[0] or "file") in ("file", "local")


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
