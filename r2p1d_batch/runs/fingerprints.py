"""Source fingerprints for the plan, without a storage request per object.

The decode stage records ``storage.fingerprint(fs.info(path))`` for every video it opens; the
plan computes the same string for every manifest row (byte for byte: otherwise every committed
video would look "changed") so that skipping costs no decode. Here, over Arrow arrays:

- local files: one ``stat`` per file, in threads, never a read. The string is built by Arrow
  kernels from the sizes and mtimes (``size:N/mtime:M``, M as Python's float repr). There is no
  cheaper source: on Linux a directory listing carries no size or mtime (``os.scandir`` entries
  stat each file again), so listing directories first was measured no faster.
- S3: URIs grouped by bucket and parent prefix; each group is walked with ListObjectsV2 (1,000
  keys per request, ETag per key), jumping with StartAfter over keys no row asked for, so a group
  costs about min(its rows, its objects / 1000) requests, not one HEAD per row. A key the listing
  does not show is absent (None, as a failed HEAD); a key that lists as a "directory", and every
  key of a bucket whose listing fails (ListBucket denied), is asked with HEAD (``fs.info``).
- other allowed protocols (http(s), gs, memory, chained URLs...): ``fs.info`` per row, in
  threads, as before.
- URIs outside ``storage.allowed_protocols``: None, and no request anywhere.

None: the file cannot be stat'ed (the decode stage then writes its error row, with no
fingerprint either).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Optional
from urllib.parse import unquote
from xml.etree import ElementTree

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import StorageConfig
from ..storage import allowed_mask, bool_mask, filesystem, fingerprint, s3_client

log = logging.getLogger("r2p1d_batch")

CHUNK = 1 << 16  # local rows per stat task
# Threads stat'ing local files: the syscall releases the GIL, the rest does not. Measured on the
# idle 2-vCPU machine, per file: 1 thread 3.6-3.8 us, 2 threads 3.1-3.3, 4 or 8 4.0-4.5.
LOCAL_THREADS = 2
LIST_MAX_KEYS = 1000  # S3's page size for ListObjectsV2


# -- vectorised URI shapes ---------------------------------------------------------------------
def _local_paths(uris: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(paths as fsspec's LocalFileSystem resolves them, rows that need the slow path). Each
    rewrite runs only where some URI needs it (most manifests: absolute paths, none does)."""
    p = uris
    if bool_mask(pc.or_(pc.starts_with(p, "file:"), pc.starts_with(p, "local:"))).any():
        p = pc.replace_substring_regex(p, "^(?:file://|file:|local://|local:)", "")
    odd = bool_mask(pc.starts_with(p, "~"))  # home-relative: left to fsspec
    rel = pc.invert(pc.starts_with(p, "/"))
    if bool_mask(rel).any():  # make_path_posix: "./x" and "x" live under the working directory
        body = pc.if_else(pc.equal(p, "."), "", pc.replace_substring_regex(p, r"^\./", ""))
        p = pc.if_else(rel, pc.binary_join_element_wise(os.getcwd() + "/", body, ""), p)
    if bool_mask(pc.ends_with(p, "/")).any():
        p = pc.if_else(pc.greater(pc.utf8_length(p), 1), pc.utf8_rtrim(p, "/"), p)
    return p, odd


def _format_local(size: np.ndarray, mtime: np.ndarray) -> pa.Array:
    """``storage.fingerprint`` of local fs.info dicts, from their size and mtime columns:
    ``size:{size}/mtime:{mtime!r}`` (an mtime of 0.0 is falsy there: "None")."""
    m = pa.array(mtime)
    text = pc.cast(m, pa.string())  # Python's repr in [1e-4, 1e10) (tested), but for "1.0"
    whole = pc.invert(pc.match_substring(text, "."))
    if bool_mask(whole).any():
        text = pc.if_else(whole, pc.binary_join_element_wise(text, ".0", ""), text)
    a = np.abs(mtime)
    odd = ~((a >= 1e-4) & (a < 1e10)) & (mtime != 0)  # Arrow writes exponents there
    if odd.any():
        text = pc.replace_with_mask(text, pa.array(odd),
                                    pa.array([repr(float(v)) for v in mtime[odd]], pa.string()))
    if (mtime == 0).any():
        text = pc.if_else(pc.equal(m, 0.0), "None", text)
    return pc.binary_join_element_wise("size:", pc.cast(pa.array(size), pa.string()), "/mtime:", text, "")


def _stat(path: str) -> tuple[int, float]:
    try:
        st = os.stat(path)  # follows links, as fsspec's info does for a str path
        return st.st_size, st.st_mtime
    except (OSError, ValueError):
        return -1, 0.0


_STAT = np.dtype([("size", np.int64), ("mtime", np.float64)])


def _stat_chunk(paths: pa.Array) -> np.ndarray:
    return np.fromiter(map(_stat, paths.to_pylist()), _STAT, len(paths))


def _local(paths: pa.Array, threads: int) -> pa.Array:
    chunks = [paths.slice(i, CHUNK) for i in range(0, len(paths), CHUNK)]
    if threads > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = list(pool.map(_stat_chunk, chunks))
    else:
        parts = [_stat_chunk(c) for c in chunks]
    st = np.concatenate(parts) if parts else np.zeros(0, _STAT)
    found = st["size"] >= 0
    text = _format_local(st["size"], st["mtime"])
    return pc.if_else(pa.array(found), text, pa.scalar(None, pa.string()))


# -- S3: list instead of HEAD ----------------------------------------------------------------------
_EMPTY_PAGE = b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult></ListBucketResult>'


def _keep_raw_page(response_dict, customized_response_dict, **_):
    """botocore's before-parse hook: a listing page's XML goes around botocore's parser (which
    costs ~0.5 ms per key, most of it turning LastModified into datetimes) to ``_page``."""
    if response_dict.get("status_code", 500) < 300:
        customized_response_dict["RawPage"] = response_dict["body"]
        response_dict["body"] = _EMPTY_PAGE


def _lister(storage):
    client = s3_client(storage)
    client.meta.events.register("before-parse.s3.ListObjectsV2", _keep_raw_page)
    return client


def _page(raw: bytes) -> tuple[dict[str, str], set[str], Optional[str]]:
    """(key -> ETag, common prefixes, continuation token) of a ListObjectsV2 page's XML."""
    root = ElementTree.fromstring(raw)
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    url = (root.findtext(f"{ns}EncodingType") or "") == "url"  # botocore asks for url-encoded keys

    def text(t: Optional[str]) -> str:
        return unquote(t) if url and t and "%" in t else (t or "")

    etags = {text(c.findtext(f"{ns}Key")): c.findtext(f"{ns}ETag") or "" for c in root.iterfind(f"{ns}Contents")}
    dirs = {text(c.findtext(f"{ns}Prefix")) for c in root.iterfind(f"{ns}CommonPrefixes")}
    truncated = (root.findtext(f"{ns}IsTruncated") or "").lower() == "true"
    return etags, dirs, root.findtext(f"{ns}NextContinuationToken") if truncated else None


def _walk(client, fs, bucket: str, prefix: str, names: list[str]) -> list[Optional[str]]:
    """Fingerprints of ``prefix + name`` for ``names`` (sorted) in ``bucket``, from listings:
    pages of 1,000 keys, from just before the next wanted key (StartAfter), continued while the
    wanted keys follow on. S3 lists keys in UTF-8 byte order, which is Python's str order."""
    out: list[Optional[str]] = [None] * len(names)
    heads: list[int] = []
    i, after, token = 0, "", None
    try:
        while i < len(names):
            want = prefix + names[i]
            if token and want[:-1] <= after:  # the next wanted key follows this page: continue it
                kw = {"ContinuationToken": token}
            else:  # jump: list from just before the next wanted key
                start_after = max(after, want[:-1])
                kw = {"StartAfter": start_after} if start_after else {}
            got = client.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/", MaxKeys=LIST_MAX_KEYS, **kw)
            etags, dirs, token = _page(got["RawPage"])
            last = max(max(etags, default=""), max(dirs, default=""), after)
            while i < len(names) and (token is None or prefix + names[i] <= last):
                key = prefix + names[i]
                if etags.get(key):
                    out[i] = f"etag:{etags[key].strip(chr(34))}"
                elif key in etags or key + "/" in dirs:
                    heads.append(i)  # no ETag, or a "directory": ask as the decoder's fs.info does
                i += 1
            after = last
    except Exception as e:  # ListBucket denied, throttled past retries...: ask each object
        log.warning("listing s3://%s/%s failed (%s: %s): one HEAD per object there", bucket, prefix,
                    type(e).__name__, e)
        heads = list(range(len(names)))
    for j in heads:
        try:
            out[j] = fingerprint(fs.info(f"{bucket}/{prefix}{names[j]}"))
        except Exception:
            out[j] = None
    return out


class _S3Rows:
    """The S3 rows met so far, kept compactly (group id, key name, row number) and walked together
    at the end: a prefix is listed once, however its rows are spread through the manifest."""

    def __init__(self):
        self.ids: dict[str, int] = {}  # "bucket/prefix/" -> group id
        self.where: list[tuple[str, str]] = []  # group id -> (bucket, prefix)
        self.gids: list[np.ndarray] = []
        self.names: list[pa.Array] = []
        self.rows: list[np.ndarray] = []

    def add(self, rows: np.ndarray, uris: pa.Array) -> np.ndarray:
        """Keep ``uris`` (S3) of manifest rows ``rows``; returns the rows whose URI has no
        bucket/key shape (left to fs.info)."""
        path = pc.replace_substring_regex(uris, "^s3a?://", "")
        parts = pc.extract_regex(path, r"^(?P<bucket>[^/]+)/(?P<prefix>(?:.*/)?)(?P<name>[^/]+)$")
        ok = bool_mask(pc.is_valid(parts))
        parts = parts.filter(pa.array(ok))
        enc = pc.dictionary_encode(pc.binary_join_element_wise(parts.field("bucket"), parts.field("prefix"), "/"))
        local_to_global = []
        for g in enc.dictionary.to_pylist():  # one Python string per group, not per row
            if g not in self.ids:
                self.ids[g] = len(self.where)
                bucket, _, prefix = g.partition("/")
                self.where.append((bucket, prefix))
            local_to_global.append(self.ids[g])
        self.gids.append(np.asarray(local_to_global, np.int64)[enc.indices.to_numpy()] if len(parts) else
                         np.zeros(0, np.int64))
        self.names.append(parts.field("name"))
        self.rows.append(rows[ok])
        return rows[~ok]

    def walk(self, storage, threads: int) -> Iterator[tuple[np.ndarray, pa.Array]]:
        """(rows, fingerprints) per group, groups listed in threads."""
        if not self.where:
            return
        gids = np.concatenate(self.gids)
        rows = np.concatenate(self.rows)
        names = pa.chunked_array(self.names, pa.string())
        order = np.argsort(gids, kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(gids[order])) + 1)
        fs, _ = filesystem("s3://" + self.where[0][0], storage)
        client = _lister(storage)

        def one(idx: np.ndarray) -> tuple[np.ndarray, pa.Array]:
            wanted = names.take(pa.array(idx)).to_pylist()  # this group's names only, while it is walked
            by_name = sorted(range(len(wanted)), key=wanted.__getitem__)
            bucket, prefix = self.where[int(gids[idx[0]])]
            found = _walk(client, fs, bucket, prefix, [wanted[k] for k in by_name])
            return rows[idx[by_name]], pa.array(found, pa.string())

        with ThreadPoolExecutor(max_workers=threads) as pool:
            yield from pool.map(one, groups)


# -- anything else: fs.info per row ----------------------------------------------------------------
def _one(uri: str, storage) -> Optional[str]:
    if not uri:
        return None
    try:
        fs, path = filesystem(uri, storage)
        return fingerprint(fs.info(path))
    except Exception:
        return None


def _slow(uris: list[str], storage, threads: int) -> list[Optional[str]]:
    if len(uris) < 2:
        return [_one(u, storage) for u in uris]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda u: _one(u, storage), uris))


# -- the plan's entry points ---------------------------------------------------------------------------
def fingerprint_pieces(chunks: Iterable[tuple[int, pa.Array]], storage: Optional[StorageConfig] = None,
                       threads: int = 32) -> Iterator[tuple[np.ndarray, pa.Array]]:
    """Fingerprints of a manifest's URIs, given as (first row, URI array) chunks: yields (row
    numbers, fingerprints) pieces, every row exactly once. Local, other and not-allowed rows are
    answered chunk by chunk; S3 rows are listed after the last chunk, prefix by prefix. Memory:
    one chunk, plus ~40 bytes per S3 row until the end."""
    storage = storage or StorageConfig()
    s3 = _S3Rows()
    for offset, uris in chunks:
        uris = uris.combine_chunks() if isinstance(uris, pa.ChunkedArray) else uris
        rows = offset + np.arange(len(uris), dtype=np.int64)
        at = pc.find_substring(uris, "://")
        chained = bool_mask(pc.or_(pc.match_substring(uris, "::"), pc.starts_with(uris, "data:")))
        allowed = allowed_mask(uris, storage.allowed_protocols, at, chained)
        allowed &= bool_mask(pc.greater(pc.utf8_length(uris), 0))  # "" (a test hook's empty target): None
        has_scheme = bool_mask(pc.greater_equal(at, 0))
        is_s3 = bool_mask(pc.or_(pc.starts_with(uris, "s3://"), pc.starts_with(uris, "s3a://"))) & allowed & ~chained
        local_scheme = bool_mask(pc.or_(pc.starts_with(uris, "file://"), pc.starts_with(uris, "local://")))
        is_local = allowed & ~chained & (~has_scheme | local_scheme)
        other = allowed & ~is_s3 & ~is_local
        if not allowed.all():
            yield rows[~allowed], pa.nulls(int((~allowed).sum()), pa.string())
        if is_local.any():
            paths, odd = _local_paths(uris.filter(pa.array(is_local)))
            local_rows = np.flatnonzero(is_local)
            yield rows[local_rows[~odd]], _local(paths.filter(pa.array(~odd)), min(threads, LOCAL_THREADS))
            other[local_rows[odd]] = True
        if is_s3.any():
            other[s3.add(np.flatnonzero(is_s3), uris.filter(pa.array(is_s3)))] = True
        if other.any():
            yield rows[other], pa.array(_slow(uris.filter(pa.array(other)).to_pylist(), storage, threads), pa.string())
    yield from s3.walk(storage, threads)


def fingerprints(uris, storage: Optional[StorageConfig] = None, threads: int = 32, chunk: int = 1 << 18) -> pa.Array:
    """Fingerprint per URI (an Arrow string array; None where unknown or not allowed), as the
    decode stage would record it. See the module docstring for what each kind of URI costs."""
    uris = uris.combine_chunks() if isinstance(uris, pa.ChunkedArray) else pa.array(uris, pa.string())
    n = len(uris)
    pieces = [(r, v) for r, v in fingerprint_pieces(((i, uris.slice(i, chunk)) for i in range(0, n, chunk)),
                                                   storage, threads) if len(r)]
    if len(pieces) == 1 and len(pieces[0][0]) == n and (np.diff(pieces[0][0]) > 0).all():
        return pieces[0][1]  # the usual case: local files, in manifest order
    pos = np.full(n, -1, dtype=np.int64)
    start = 0
    for r, _ in pieces:
        pos[r] = np.arange(start, start + len(r))
        start += len(r)
    values = pa.concat_arrays([v for _, v in pieces]) if pieces else pa.array([], pa.string())
    return values.take(pa.array(pos, mask=pos < 0))
