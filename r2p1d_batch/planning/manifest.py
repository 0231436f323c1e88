"""Read and validate a manifest on the driver, before any work: one Parquet file, a directory of
them or a glob ("sharded"), local or s3://.

A bad manifest (no `uri` column, nulls, duplicate ids, reserved column names, start >= end,
shards whose columns differ) is one clear ManifestError listing the offending rows, and their
file when the manifest is sharded; nothing runs.

At scale (10M+ rows) nothing here costs a Python object per row: only the columns the plan needs
(`uri`, `video_id`, `start_sec`, `end_sec`) are read, one Arrow batch at a time; every check is
an Arrow kernel over a batch; derived ids are DuckDB's sha1 over a batch. What stays in memory is
the video ids (an Arrow array: ~160 MB for 10M ids of 12 characters). URIs are read again, a
batch at a time, when the plan fingerprints them (``Manifest.uri_batches``); the other columns
pass through to `videos` but stay in the files until the rows to label are read back
(``Manifest.read``), row group by row group.
"""
from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import schema
from ..errors import UserError
from ..runs.incremental import connect, take_rows
from ..storage import filesystem, is_local

SPINE = ("video_id", "uri", "start_sec", "end_sec")  # what the plan reads; the rest are extras
BATCH_ROWS = 1 << 18  # rows per Arrow batch while reading (bounds the transient copies)
ROW_LIMIT = 10  # rows named in a message


class ManifestError(UserError, ValueError):
    """The manifest cannot be used; raised before any work starts."""


def derive_video_id(uri: str) -> str:
    """A stable id for a row without one: the same URI always gets the same id."""
    return "v" + hashlib.sha1(uri.encode()).hexdigest()[:16]


def derive_video_ids(uris: pa.Array, con: Optional[duckdb.DuckDBPyConnection] = None) -> pa.Array:
    """``derive_video_id`` over an Arrow string array (DuckDB's sha1: same bytes, same ids)."""
    own = con is None
    con = connect() if own else con
    try:
        con.register("batch", pa.table({"u": uris}))
        out = con.sql("SELECT 'v' || substr(sha1(u), 1, 16) AS v FROM batch").to_arrow_table()
        con.unregister("batch")
    finally:
        if own:
            con.close()
    return out.column("v").cast(pa.string()).combine_chunks()


def _id_hashes(con: duckdb.DuckDBPyConnection, ids: pa.Array) -> np.ndarray:
    """The high 64 bits of each id's MD5 (duplicates are looked for among equal hashes)."""
    con.register("ids", pa.table({"v": ids}))
    try:
        return con.sql("SELECT (md5_number(v) >> 64)::UBIGINT AS h FROM ids").fetchnumpy()["h"]
    finally:
        con.unregister("ids")


# -- where a bad row is ------------------------------------------------------------------------
@dataclass
class _Bad:
    """Bad rows of one kind, as (file name, row in file), the first ROW_LIMIT kept, all counted."""

    rows: list[tuple[str, int]] = field(default_factory=list)
    total: int = 0

    def add(self, name: str, offset: int, mask: pa.Array) -> None:
        n = pc.sum(mask).as_py() or 0
        if not n:
            return
        self.total += n
        room = ROW_LIMIT - len(self.rows)
        if room > 0:
            idx = pc.indices_nonzero(mask).slice(0, room).to_numpy()
            self.rows += [(name, offset + int(i)) for i in idx]

    def text(self, sharded: bool) -> str:
        more = f" (+{self.total - len(self.rows)} more)" if self.total > len(self.rows) else ""
        if not sharded:
            return ", ".join(str(r) for _, r in self.rows) + more
        parts, last = [], None
        for name, r in self.rows:  # "3, 7 of a.parquet, 1 of b.parquet"
            if name != last:
                if parts:
                    parts[-1] += f" of {last}"
                parts.append(str(r))
                last = name
            else:
                parts[-1] += f", {r}"
        parts[-1] += f" of {last}"
        return ", ".join(parts) + more


# Row checks in the order they are reported (the order of the single-table checks before
# sharding): per kind, "'uri' is null or empty in rows ..." etc. Duplicates sit between the
# video_id checks and the start/end checks.
_BEFORE_DUPLICATES = ("type:uri", "uri", "type:video_id", "video_id")
_AFTER_DUPLICATES = ("type:start_sec", "type:end_sec", "start_neg", "start_ge_end")
_MESSAGES = {
    "uri": "'uri' is null or empty in rows {rows}",
    "video_id": "'video_id' is null in rows {rows}",
    "start_neg": "start_sec < 0 in rows {rows}",
    "start_ge_end": "start_sec >= end_sec in rows {rows}",
}


class _Checker:
    """Validates a manifest batch by batch and keeps its video ids."""

    def __init__(self, where: str, sch: pa.Schema, sharded: bool):
        self.where, self.schema, self.sharded = where, sch, sharded
        self.names = sch.names
        self.has_id = "video_id" in self.names
        self.bad: dict[str, _Bad] = {k: _Bad() for k in (*_BEFORE_DUPLICATES, *_AFTER_DUPLICATES)}
        self.type_errors: dict[str, str] = {}
        self.ids: list[pa.Array] = []
        self.hashes: list[np.ndarray] = []
        self.con = connect()

    def _cast(self, batch: pa.RecordBatch | pa.Table, name: str, typ: pa.DataType, fname: str):
        try:
            return batch.column(name).cast(typ)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if name not in self.type_errors:
                self.type_errors[name] = (f"{self.where}: column '{name}' has type {self.schema.field(name).type}, "
                                          f"expected {typ}" + (f" (in {fname})" if self.sharded else ""))
                self.bad[f"type:{name}"].total += 1
            return None

    def add(self, batch: pa.RecordBatch | pa.Table, fname: str, offset: int) -> None:
        uri = self._cast(batch, "uri", pa.string(), fname)
        if uri is not None:
            empty = pc.or_(pc.equal(pc.utf8_length(uri), 0), pc.utf8_is_space(uri))
            self.bad["uri"].add(fname, offset, pc.or_(pc.is_null(uri), pc.fill_null(empty, False)))
        if self.has_id:
            vid = self._cast(batch, "video_id", pa.string(), fname)
            if vid is not None:
                self.bad["video_id"].add(fname, offset, pc.is_null(vid))
        else:
            vid = derive_video_ids(pc.fill_null(uri, ""), self.con) if uri is not None else None
        if uri is not None and vid is not None:
            self.ids.append(_array(vid))
            self.hashes.append(_id_hashes(self.con, self.ids[-1]))
        start = self._cast(batch, "start_sec", pa.float64(), fname) if "start_sec" in self.names else None
        end = self._cast(batch, "end_sec", pa.float64(), fname) if "end_sec" in self.names else None
        if start is not None:
            self.bad["start_neg"].add(fname, offset, pc.fill_null(pc.less(start, 0), False))
            if end is not None:
                self.bad["start_ge_end"].add(fname, offset, pc.fill_null(pc.greater_equal(start, end), False))

    def _raise_first(self, kinds) -> None:
        for kind in kinds:
            bad = self.bad[kind]
            if not bad.total:
                continue
            if kind.startswith("type:"):
                raise ManifestError(self.type_errors[kind[5:]])
            raise ManifestError(f"{self.where}: " + _MESSAGES[kind].format(rows=bad.text(self.sharded)))

    def finish(self) -> pa.ChunkedArray:
        self.con.close()
        self._raise_first(_BEFORE_DUPLICATES)
        ids = pa.chunked_array(self.ids, pa.string())
        # Duplicates: equal ids have equal hashes, so only rows whose hash repeats are compared
        # (16 bytes a row for a moment, where a hash set of the strings took ~40).
        hashes = np.concatenate(self.hashes) if self.hashes else np.zeros(0, np.uint64)
        self.hashes = []
        ordered = np.sort(hashes)
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        del ordered
        if len(repeated):
            rows = np.flatnonzero(np.isin(hashes, repeated))
            counts = pc.value_counts(ids.take(pa.array(rows)))  # in order of first appearance
            dup = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
        else:
            dup = pa.array([], pa.string())
        if len(dup):
            what = "video_id" if self.has_id else "uri (no video_id column)"
            shown = dup.slice(0, 10).to_pylist()
            raise ManifestError(f"{self.where}: duplicate {what} values: {shown}{' …' if len(dup) > 10 else ''}")
        self._raise_first(_AFTER_DUPLICATES)
        return ids


def _array(a) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def _check_columns(names: list[str], where: str, nrows: int) -> None:
    if "uri" not in names:
        raise ManifestError(f"{where}: required column 'uri' is missing (columns: {', '.join(names) or 'none'})")
    if nrows == 0:
        raise ManifestError(f"{where}: has no rows")
    reserved = sorted((set(names) - {"uri", *schema.MANIFEST_OPTIONAL}) & schema.RESERVED)
    if reserved:
        raise ManifestError(f"{where}: columns {reserved} are reserved for output; rename them")


def _normalised_schema(sch: pa.Schema) -> pa.Schema:
    """The rows to label: video_id and uri (string), start/end (float64), then the extras as stored."""
    fields = [pa.field("video_id", pa.string()), pa.field("uri", pa.string()),
              pa.field("start_sec", pa.float64()), pa.field("end_sec", pa.float64())]
    return pa.schema(fields + [f for f in sch if f.name not in SPINE])


def _normalise(batch: pa.Table, ids: pa.Array, sch: pa.Schema, n: Optional[int] = None) -> pa.Table:
    """``sch``'s columns of a batch read from the manifest: the checked ids, string uri, float64
    start/end (nulls where the manifest has none), the extras as stored."""
    n = batch.num_rows if n is None else n
    cols = {}
    for f in sch:
        if f.name == "video_id":
            cols[f.name] = ids
        elif f.name == "uri":
            cols[f.name] = batch.column("uri").cast(pa.string())
        elif f.name in ("start_sec", "end_sec"):
            cols[f.name] = (batch.column(f.name).cast(pa.float64()) if f.name in batch.column_names
                            else pa.nulls(n, pa.float64()))
        else:
            cols[f.name] = batch.column(f.name)
    return pa.table(cols, schema=sch)


def validate(table: pa.Table, where: str = "manifest") -> pa.Table:
    """Checked, normalised manifest: string uri and video_id, float64 start/end, extras kept.
    (An in-memory table; ``read_manifest`` does the same over files without loading them.)"""
    _check_columns(table.column_names, where, table.num_rows)
    checker = _Checker(where, table.schema, sharded=False)
    for start in range(0, table.num_rows, BATCH_ROWS):
        checker.add(table.slice(start, BATCH_ROWS), "", start)
    ids = checker.finish()
    return _normalise(table, ids, _normalised_schema(table.schema))


# -- the manifest on storage -------------------------------------------------------------------
@dataclass
class Manifest:
    """A validated manifest: where its files are and its video ids (manifest order).
    ``uri_batches`` streams the URIs back from the files, ``read`` the full rows (extras
    included) of any subset.

    Extras (pass-through columns) are never held for the whole manifest: the rows to label carry
    them (``read``), which is how the `videos` writer gets them."""

    uri: str
    fs: Any
    files: list[str]  # filesystem paths of the shards, in order
    names: list[str]  # how messages name each shard (relative to the manifest's root)
    file_rows: list[int]
    file_schema: pa.Schema  # as stored (the same in every shard)
    video_id: pa.ChunkedArray

    @property
    def num_rows(self) -> int:
        return len(self.video_id)

    @property
    def schema(self) -> pa.Schema:
        """Schema of ``read``'s rows: video_id, uri, start_sec, end_sec, then the extras."""
        return _normalised_schema(self.file_schema)

    @property
    def extras(self) -> list[str]:
        return [n for n in self.file_schema.names if n not in SPINE]

    def ids(self, rows: np.ndarray) -> pa.Array:
        """The video ids of manifest rows ``rows`` (any order), taken chunk by chunk: Arrow's
        take on the whole chunked column would first concatenate all of it."""
        return take_rows(self.video_id, rows)

    def column(self, name: str) -> pa.ChunkedArray:
        """``video_id`` (held in memory); the other columns are read back with ``uri_batches``
        or ``read``."""
        if name == "video_id":
            return self.video_id
        raise KeyError(f"{name!r} is not held in memory; use Manifest.uri_batches or Manifest.read")

    def uri_batches(self, rows: int = BATCH_ROWS) -> Iterator[tuple[int, pa.Array]]:
        """(first row, URIs) of the whole manifest, a batch at a time, read again from the files."""
        offset = 0
        for path, name, n in zip(self.files, self.names, self.file_rows):
            with self.fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                if pf.metadata.num_rows != n:
                    raise ManifestError(f"{self.uri}: {name} changed while the job was reading it")
                for batch in pf.iter_batches(batch_size=rows, columns=["uri"]):
                    yield offset, _array(batch.column(0).cast(pa.string()))
                    offset += batch.num_rows

    def read(self, mask: Optional[np.ndarray] = None, columns: Optional[list[str]] = None) -> Iterator[pa.Table]:
        """The normalised rows where ``mask`` (bool per manifest row; None: all), in manifest
        order, one row group at a time; row groups without a selected row are not read.
        ``columns``: only these (of ``schema``'s)."""
        sch = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        stored = None if columns is None else [c for c in columns if c in self.file_schema.names and c != "video_id"]
        offset = 0
        ids = self.video_id
        for path, rows in zip(self.files, self.file_rows):
            sel = None if mask is None else mask[offset:offset + rows]
            if sel is not None and not sel.any():
                offset += rows
                continue
            with self.fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                start = 0
                for g in range(pf.metadata.num_row_groups):
                    n = pf.metadata.row_group(g).num_rows
                    pick = None if sel is None else sel[start:start + n]
                    if pick is None or pick.any():
                        batch = pf.read_row_group(g, columns=stored if stored else (None if columns is None else []))
                        out = _normalise(batch, ids.slice(offset + start, n).combine_chunks(), sch, n)
                        yield out if pick is None else out.filter(pa.array(pick))
                    start += n
            offset += rows

    def table(self, mask: Optional[np.ndarray] = None) -> pa.Table:
        """``read`` as one table (small selections, tests)."""
        parts = list(self.read(mask))
        return pa.concat_tables(parts) if parts else self.schema.empty_table()


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _hidden(rel: str) -> bool:
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


def _shards(fs, path: str, uri: str) -> tuple[list[str], list[str]]:
    """(files, names): a glob's matches, a directory's Parquet files (recursively; names
    starting with _ or . are skipped, like _SUCCESS), or the one file."""
    if _is_glob(path):
        found = sorted(p for p, info in fs.glob(path, detail=True).items() if info.get("type") == "file")
        root = path[: min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
    elif fs.isdir(path):
        root = path.rstrip("/")
        found = sorted(p for p, info in fs.find(root, detail=True).items()
                       if info.get("type") == "file" and not _hidden(p[len(root) + 1:]))
    else:
        return [path], [posixpath.basename(path)]
    if not found:
        raise ManifestError(f"manifest not found: {uri} (no Parquet files there)")
    return found, [p[len(root) + 1:] if p.startswith(root + "/") else p for p in found]


def _footer(fs, path: str) -> tuple[pa.Schema, int]:
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        return pf.schema_arrow.remove_metadata(), pf.metadata.num_rows


def _same_columns(schemas: list[pa.Schema], names: list[str], where: str) -> pa.Schema:
    ref = schemas[0]
    ref_types = {f.name: f.type for f in ref}
    for sch, name in zip(schemas[1:], names[1:]):
        types = {f.name: f.type for f in sch}
        if set(types) != set(ref_types):
            raise ManifestError(
                f"{where}: {name} has columns {sorted(types)} but {names[0]} has {sorted(ref_types)}; "
                "every file of a sharded manifest needs the same columns")
        for col, typ in types.items():
            if typ != ref_types[col]:
                raise ManifestError(f"{where}: column '{col}' is {typ} in {name} but {ref_types[col]} in {names[0]}; "
                                    "every file of a sharded manifest needs the same column types")
    return ref


def read_manifest(uri: str, storage=None) -> Manifest:
    """The manifest at ``uri`` (a Parquet file, a directory of them, or a glob), validated."""
    try:
        fs, path = filesystem(uri, storage)
        files, names = _shards(fs, path, uri)
    except FileNotFoundError:
        raise ManifestError(f"manifest not found: {uri}") from None
    sharded = len(files) > 1 or files[0] != path

    def unreadable(name: str, e: Exception) -> ManifestError:
        if isinstance(e, FileNotFoundError):
            return ManifestError(f"manifest not found: {uri}" + (f" ({name} vanished)" if sharded else ""))
        return ManifestError(f"manifest {uri}{': ' + name if sharded else ''} is not a readable Parquet file: {e}")

    def footer(i: int) -> tuple[pa.Schema, int]:
        try:
            return _footer(fs, files[i])
        except (pa.ArrowInvalid, OSError) as e:
            raise unreadable(names[i], e) from None

    if len(files) > 1 and not is_local(uri):
        with ThreadPoolExecutor(max_workers=16) as pool:
            footers = list(pool.map(footer, range(len(files))))
    else:
        footers = [footer(i) for i in range(len(files))]
    sch = _same_columns([s for s, _ in footers], names, uri)
    file_rows = [n for _, n in footers]
    _check_columns(sch.names, uri, sum(file_rows))
    checker = _Checker(uri, sch, sharded)
    columns = [c for c in SPINE if c in sch.names]
    for path, name in zip(files, names):
        offset = 0
        try:
            with fs.open(path, "rb") as f:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    checker.add(batch, name, offset)
                    offset += batch.num_rows
        except (pa.ArrowInvalid, OSError) as e:
            raise unreadable(name, e) from None
    ids = checker.finish()
    pa.default_memory_pool().release_unused()  # the batches' buffers, kept by the allocator otherwise
    return Manifest(uri, fs, files, names, file_rows, sch, ids)
