"""Read and validate a manifest (Parquet, local or s3://) on the driver, before any work.

A bad manifest (no `uri` column, nulls, duplicate ids, reserved column names, start >= end)
is one clear ManifestError listing the offending rows; nothing runs.
"""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import schema
from ..errors import UserError
from ..storage import filesystem


class ManifestError(UserError, ValueError):
    """The manifest cannot be used; raised before any work starts."""


def derive_video_id(uri: str) -> str:
    """A stable id for a row without one: the same URI always gets the same id."""
    return "v" + hashlib.sha1(uri.encode()).hexdigest()[:16]


def _rows(mask: pa.Array, limit: int = 10) -> str:
    idx = pc.indices_nonzero(mask).to_pylist()
    more = f" (+{len(idx) - limit} more)" if len(idx) > limit else ""
    return ", ".join(map(str, idx[:limit])) + more


def read_manifest(uri: str, storage=None) -> pa.Table:
    try:
        fs, path = filesystem(uri, storage)
        table = pq.read_table(path, filesystem=fs)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {uri}") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise ManifestError(f"manifest {uri} is not a readable Parquet file: {e}") from None
    return validate(table, uri)


def validate(table: pa.Table, where: str = "manifest") -> pa.Table:
    """Checked, normalised manifest: string uri and video_id, float64 start/end, extras kept."""
    names = table.column_names
    if "uri" not in names:
        raise ManifestError(f"{where}: required column 'uri' is missing (columns: {', '.join(names) or 'none'})")
    if table.num_rows == 0:
        raise ManifestError(f"{where}: has no rows")
    reserved = sorted((set(names) - {"uri", *schema.MANIFEST_OPTIONAL}) & schema.RESERVED)
    if reserved:
        raise ManifestError(f"{where}: columns {reserved} are reserved for output; rename them")

    def cast(name: str, typ: pa.DataType) -> pa.ChunkedArray:
        try:
            return table.column(name).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ManifestError(
                f"{where}: column '{name}' has type {table.schema.field(name).type}, expected {typ}"
            ) from None

    uri = cast("uri", pa.string())
    bad = pc.or_(pc.is_null(uri), pc.equal(pc.utf8_trim_whitespace(pc.fill_null(uri, "")), ""))
    if pc.any(bad).as_py():
        raise ManifestError(f"{where}: 'uri' is null or empty in rows {_rows(bad.combine_chunks())}")
    if "video_id" in names:
        vid = cast("video_id", pa.string())
        nulls = pc.is_null(vid)
        if pc.any(nulls).as_py():
            raise ManifestError(f"{where}: 'video_id' is null in rows {_rows(nulls.combine_chunks())}")
    else:
        vid = pa.chunked_array([pa.array([derive_video_id(u) for u in uri.to_pylist()], pa.string())])
    counts = pc.value_counts(vid.combine_chunks())
    dup = [c["values"] for c in counts.to_pylist() if c["counts"] > 1]
    if dup:
        what = "video_id" if "video_id" in names else "uri (no video_id column)"
        raise ManifestError(f"{where}: duplicate {what} values: {dup[:10]}{' …' if len(dup) > 10 else ''}")

    cols = {"video_id": vid, "uri": uri}
    for name in ("start_sec", "end_sec"):
        cols[name] = cast(name, pa.float64()) if name in names else pa.nulls(table.num_rows, pa.float64())
    start, end = cols["start_sec"], cols["end_sec"]
    neg = pc.fill_null(pc.less(start, 0), False)
    if pc.any(neg).as_py():
        raise ManifestError(f"{where}: start_sec < 0 in rows {_rows(neg.combine_chunks())}")
    inverted = pc.fill_null(pc.greater_equal(start, end), False)
    if pc.any(inverted).as_py():
        raise ManifestError(f"{where}: start_sec >= end_sec in rows {_rows(inverted.combine_chunks())}")
    extras = [n for n in names if n not in cols]
    return pa.table({**cols, **{n: table.column(n) for n in extras}})
