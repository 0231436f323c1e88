"""Fault tooling of the decode stage: the per-video time limit, the crash ledger, and the gate
that lets a test (and only a test) inject faults."""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Optional

from .pyav import DecodeError

# -- test-only fault injection ----------------------------------------------------------------
# The hooks themselves live in r2p1d_batch.testing.hooks, imported only when a test sets this
# variable in the workers' environment; production never loads them.
TEST_HOOKS_ENV = "R2P1D_TEST_HOOKS"


def test_hooks() -> Optional[ModuleType]:
    """The fault-injection hooks module when R2P1D_TEST_HOOKS=1, else None."""
    if os.environ.get(TEST_HOOKS_ENV) != "1":
        return None
    from ..testing import hooks

    return hooks


def hook_target(uri: str) -> str:
    """The file a (possibly hooked) URI reads: the URI itself unless test hooks are on."""
    hooks = test_hooks()
    return hooks.parse(uri).target if hooks else uri


# -- per-video time limit ---------------------------------------------------------------------
class DecodeTimeout(DecodeError):
    kind = "Timeout"


REFIRE_SEC = 1.0  # how often an expired Deadline raises again while the decode goes on


class Deadline:
    """decode.timeout_sec for one video, counting decode time only.

    In the worker's main thread a SIGALRM interrupts a decode stuck between Python steps (a
    pathological stream, a hung read); the timer is paused while the generator is suspended at
    a yield, so time spent waiting on back-pressure (or in Ray's code) is not counted and the
    signal never fires outside our code. Once the limit has passed the signal comes again every
    REFIRE_SEC until the timeout leaves the decode: code in between that swallows it (a blanket
    ``except Exception`` in a library's retry loop) cannot turn the limit off. Elsewhere (no
    signals) the limit is checked per clip.
    """

    def __init__(self, seconds: Optional[float], uri: str):
        self.seconds, self.uri, self.used, self.expired, self.inside = seconds, uri, 0.0, False, False
        self._t, self._old = 0.0, None
        self._signals = bool(seconds) and threading.current_thread() is threading.main_thread()

    def _fire(self, *_):
        self.expired = True
        if self.inside:
            self._raise()  # again in REFIRE_SEC if something swallows it; pause() stops that

    def _raise(self):
        raise DecodeTimeout(f"{self.uri}: decoding took longer than decode.timeout_sec={self.seconds:g} s")

    def resume(self) -> None:
        if not self.seconds:
            return
        if self.expired or self.used >= self.seconds:
            self._raise()
        self._t, self.inside = time.monotonic(), True
        if self._signals:
            self._old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds - self.used, REFIRE_SEC)

    @contextmanager
    def off_clock(self) -> Iterator[None]:
        """Set-up inside a decode that is not decode time (a fresh worker's imports, Ray's KV
        calls): the clock stops, and no SIGALRM lands in code that is not ours. Not resumed when
        the block raises: decode_video's error handling takes over."""
        self.pause()
        yield
        self.resume()

    def pause(self) -> None:
        if not self.seconds or not self.inside:
            return
        self.inside = False
        if self._signals:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._old or signal.SIG_DFL)
        self.used += time.monotonic() - self._t
        if self.used >= self.seconds:
            self.expired = True


# -- native crashes ---------------------------------------------------------------------------
# A video that kills its decoder natively (segfault, abort) kills the worker on every retry.
# Each decode attempt is noted in Ray's cluster-wide KV store before it starts and cleared when
# it ends (ok or error row); an attempt that finds CRASHES_BEFORE_ERROR notes left by attempts
# that died becomes an error row "DecoderCrashed" instead of decoding again. One death (an
# OOM kill) is retried normally. A note names the node of its attempt, and attempts whose node
# is gone (a preempted spot node) are not counted: losing nodes is not the video's fault. The
# note is taken just before the first step that can crash natively (opening the source; a test
# hook), so a row that fails its stat (a missing file) costs no KV call, and a decoded one two
# (put-if-absent, delete).
CRASHES_BEFORE_ERROR = 2


class CrashLedger:
    def __init__(self, run_id: str):
        self.run_id = run_id
        self._kv = None
        try:
            import ray

            if run_id and ray.is_initialized():
                from ray.experimental import internal_kv

                self._kv = internal_kv
        except Exception:
            self._kv = None

    def _key(self, video_id: str) -> bytes:
        return f"r2p1d/decode/{self.run_id}/{video_id}".encode()

    def begin(self, video_id: str) -> int:
        """Attempts at ``video_id`` that died so far on nodes still alive; notes this one."""
        if self._kv is None:
            return 0
        key = self._key(video_id)
        try:
            import ray

            me = ray.get_runtime_context().get_node_id()
            # One call in the common case (no note yet): put-if-absent says whether one existed.
            if not self._kv._internal_kv_put(key, me, overwrite=False, namespace="r2p1d"):
                return 0
            notes = (self._kv._internal_kv_get(key, namespace="r2p1d") or b"").decode().split()
            self._kv._internal_kv_put(key, " ".join(notes + [me]), overwrite=True, namespace="r2p1d")
            alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            return sum(1 for node in notes if node in alive)
        except Exception:  # the ledger is a safety net; never fail a video over it
            return 0

    def end(self, video_id: str) -> None:
        if self._kv is not None:
            try:
                self._kv._internal_kv_del(self._key(video_id), namespace="r2p1d")
            except Exception:
                pass
