"""What the Python client flows share: argument parsing, a hard deadline,
assertions that say what was expected and what came back, and bounded
waits. Standard library only, so both client venvs can import it.

Every flow script exits 0 only when each of its checks held; any mismatch
raises `Mismatch`, printed as one `FAIL:` line with the step it was in.
"""

import argparse
import faulthandler
import os
import queue
import sys
import time
import traceback

_step = "start"
_known = set()


class Mismatch(AssertionError):
    """A client saw something other than what etcd 3.4 would show it."""


def setup(description, deadline_s=90):
    """Parses `--endpoint host:port` and `--prefix`, and arms a watchdog:
    past `deadline_s` every thread's stack is printed and the process exits
    non-zero, so a client call that never returns cannot hang the test."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--endpoint", required=True, help="host:port of the etcd API")
    p.add_argument("--prefix", default="/clients/", help="keys go under this prefix")
    p.add_argument(
        "--known",
        action="append",
        default=[],
        metavar="NAME",
        help="a difference from etcd this target is known to have (see `known`)",
    )
    args = p.parse_args()
    _known.update(args.known)
    host, _, port = args.endpoint.rpartition(":")
    args.host, args.port = host, int(port)
    faulthandler.dump_traceback_later(deadline_s, exit=True)
    return args


def step(name):
    """Names the flow step that follows (printed, and quoted on failure)."""
    global _step
    _step = name
    print(f"step: {name}", flush=True)


def check(cond, what):
    if not cond:
        raise Mismatch(what)


def eq(got, want, what):
    if got != want:
        raise Mismatch(f"{what}: expected {want!r}, got {got!r}")


def known(name, cond, what):
    """`check(cond, what)`, except on a target run with `--known NAME`:
    there the difference must show (it is printed) and its absence fails,
    so an allowance is removed as soon as the target is fixed."""
    if name not in _known:
        check(cond, what)
    elif cond:
        raise Mismatch(f"known difference {name!r} no longer shows: drop --known {name}")
    else:
        print(f"KNOWN DIFFERENCE {name}: {what}", flush=True)


def wait_until(cond, what, timeout=15.0, every=0.05):
    """Polls `cond` until it returns a truthy value (returned), or fails
    after `timeout` seconds naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise Mismatch(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def take(q, what, timeout=15.0):
    """The next item of queue `q`, or a failure naming `what`."""
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise Mismatch(f"timed out after {timeout}s waiting for {what}") from None


def nothing_in(q, what, quiet=1.0):
    """Fails when `q` yields anything within `quiet` seconds. Absence can
    only be checked over a window; callers keep it short and also check a
    positive fact (the waiter's key exists) alongside."""
    try:
        item = q.get(timeout=quiet)
    except queue.Empty:
        return
    raise Mismatch(f"{what}: got {item!r}")


def main(flows):
    """Runs each flow function in order; exits 1 with a `FAIL:` line on the
    first mismatch or client error, 0 with `PASS` after all of them."""
    try:
        for fn in flows:
            fn()
    except Mismatch as e:
        _exit(1, f"FAIL: [{_step}] {e}")
    except Exception as e:  # a client error is a failure too, with its type
        traceback.print_exc()
        _exit(1, f"FAIL: [{_step}] {type(e).__name__}: {e}")
    _exit(0, "PASS")


def _exit(code, line):
    # os._exit, not sys.exit: the clients leave non-daemon threads behind
    # (watch readers, keep-alive loops) that interpreter shutdown would join.
    print(line, flush=True)
    sys.stderr.flush()
    os._exit(code)
