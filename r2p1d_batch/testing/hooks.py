"""Fault-injection hooks for tests. Never imported by production code unless a test sets
R2P1D_TEST_HOOKS=1 in the workers' environment (faults.test_hooks).

A URI "testhook:ACTION[=ARG][:TARGET]" is decoded as TARGET after ACTION: segv (the process
dies natively), sleep=S (hangs S s before decoding), slow=S (S s per clip, so a test can kill
a worker mid-video), writer_exit=MARKER (decoded as usual; the writer stage task that writes
this video's clips dies right after writing its part file, before reporting it, unless MARKER
exists: it creates MARKER first, so only the first attempt dies). Without the variable such a
URI is just an unknown protocol (an error row).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

PREFIX = "testhook:"


@dataclass(frozen=True)
class Hook:
    action: str  # "" when the URI carries no hook
    arg: str
    target: str


def parse(uri: str) -> Hook:
    if not uri.startswith(PREFIX):
        return Hook("", "", uri)
    action, _, target = uri[len(PREFIX):].partition(":")
    name, _, arg = action.partition("=")
    return Hook(name, arg, target)


def run(hook: Hook) -> float:
    """Do the hook's action; returns the seconds to sleep per clip (slow=S), else 0."""
    if hook.action == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif hook.action == "sleep":
        time.sleep(float(hook.arg))
    return float(hook.arg) if hook.action == "slow" else 0.0


def writer_exit(uris: list[str]) -> None:
    """In the writer stage, after a part file is written: die (os._exit, no report) if one of its
    clips carries writer_exit=MARKER and MARKER does not exist yet (created first: once)."""
    for uri in dict.fromkeys(uris):
        hook = parse(uri)
        if hook.action == "writer_exit" and not os.path.exists(hook.arg):
            open(hook.arg, "w").close()
            os._exit(17)
