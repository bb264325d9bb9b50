"""Python `etcd3` 0.12 (gRPC) used as its users use it: kv, txn, lease
refresh, watch and its lock, each outcome checked.

    python etcd3_flows.py --endpoint 127.0.0.1:2379 [--prefix /clients/]

The lock is the client's own (`/locks/<name>` created in a txn under a
lease, waiters `watch_once` the key), so it needs only KV, Lease and
Watch. The same script runs against real etcd as a control, so every
expectation here is what etcd 3.4 answers.
"""

import queue
import threading
import time

import etcd3
import etcd3.exceptions
import grpc

from checks import Mismatch, check, eq, known, main, nothing_in, setup, step, take, wait_until

args = setup(__doc__)
P = args.prefix + "etcd3/"
c = etcd3.client(host=args.host, port=args.port, timeout=10)
T = c.transactions


def kv():
    step("kv: put then get with metadata")
    a = P + "kv/a"
    r1 = c.put(a, "1").header.revision
    v, m = c.get(a)
    eq(v, b"1", "value read back")
    eq((m.key, m.version, m.create_revision, m.mod_revision), (a.encode(), 1, r1, r1), "metadata")

    step("kv: put with prev_kv, revisions move on")
    resp = c.put(a, "2", prev_kv=True)
    eq(resp.prev_kv.value, b"1", "prev_kv of the second put")
    check(resp.header.revision > r1, f"revision {resp.header.revision} not above {r1}")
    v, m = c.get(a)
    eq((v, m.version, m.create_revision, m.mod_revision), (b"2", 2, r1, resp.header.revision), "after the second put")

    step("kv: missing key")
    eq(c.get(P + "kv/none"), (None, None), "get of a missing key")

    step("kv: put_if_not_exists and replace")
    b = P + "kv/b"
    check(c.put_if_not_exists(b, "x") is True, "put_if_not_exists of an absent key failed")
    check(c.put_if_not_exists(b, "y") is False, "put_if_not_exists of an existing key succeeded")
    check(c.replace(b, "x", "y") is True, "replace with the right old value failed")
    check(c.replace(b, "x", "z") is False, "replace with a stale old value succeeded")
    eq(c.get(b)[0], b"y", "value after replace")

    step("kv: prefix and range listings")
    c.put(P + "kv/c", "3")
    got = [(m.key, v) for v, m in c.get_prefix(P + "kv/")]
    eq(got, [(a.encode(), b"2"), (b.encode(), b"y"), ((P + "kv/c").encode(), b"3")], "prefix listing")
    got = [m.key for _, m in c.get_prefix(P + "kv/", sort_order="descend", sort_target="mod")]
    eq(got, [(P + "kv/c").encode(), b.encode(), a.encode()], "listing by mod revision, descending")
    got = [v for v, _ in c.get_range(a, P + "kv/c")]
    eq(got, [b"2", b"y"], "range [a, c)")

    step("kv: delete with prev_kv, then a missing key")
    resp = c.delete(a, prev_kv=True, return_response=True)
    eq((resp.deleted, [kv.value for kv in resp.prev_kvs]), (1, [b"2"]), "delete response")
    check(c.delete(a) is False, "delete of a missing key answered True")
    eq(c.delete_prefix(P + "kv/").deleted, 2, "keys removed by delete_prefix")

    step("kv: status")
    st = c.status()
    check(st.version.startswith("3."), f"status version {st.version!r}")
    # A leader is named once the server knows one (a gateway asks its store,
    # which may be slow to answer on a loaded machine): bounded wait.
    wait_until(lambda: c.status().leader is not None,
               "status to name a leader that the member list contains")
    check(len(list(c.members)) == 1, "member count")


def txn():
    step("txn: compares hold, success branch runs")
    k = P + "txn/k"
    c.put(k, "v1")
    ok, resps = c.transaction(
        compare=[T.value(k) == "v1", T.version(k) > 0, T.create(P + "txn/absent") == 0],
        success=[T.put(k, "v2"), T.get(k)],
        failure=[T.put(k, "failed")],
    )
    check(ok is True, "transaction whose compares hold did not succeed")
    eq(len(resps), 2, "responses")
    eq([v for v, _ in resps[1]], [b"v2"], "get inside the success branch")
    rev = resps[1][0][1].mod_revision

    step("txn: a compare fails, failure branch runs")
    ok, resps = c.transaction(
        compare=[T.value(k) == "v1"],
        success=[T.put(k, "v3")],
        failure=[T.get(k), T.delete(P + "txn/absent")],
    )
    check(ok is False, "transaction with a false compare succeeded")
    eq([v for v, _ in resps[0]], [b"v2"], "get inside the failure branch")
    eq(resps[1].response_delete_range.deleted, 0, "delete of an absent key in the failure branch")
    eq(c.get(k)[0], b"v2", "value after the failed transaction")

    step("txn: mod revision compare, nested txn, one revision for all puts")
    q = queue.Queue()
    events, cancel = c.watch_prefix(P + "txn/")
    threading.Thread(target=lambda: [q.put(e) for e in events], daemon=True).start()
    ok, resps = c.transaction(
        compare=[T.mod(k) == rev],
        success=[
            T.put(P + "txn/x", "1"),
            T.txn(compare=[T.value(k) == "v2"], success=[T.put(P + "txn/y", "2")], failure=[]),
        ],
        failure=[],
    )
    check(ok is True, "transaction on the right mod revision failed")
    nested = resps[1].response_txn
    check(nested.succeeded, "nested transaction did not succeed")
    ex, ey = take(q, "event of txn/x"), take(q, "event of txn/y")
    eq((ex.key, ey.key), ((P + "txn/x").encode(), (P + "txn/y").encode()), "event keys")
    eq(ex.mod_revision, ey.mod_revision, "one transaction, one revision")
    # etcd fills in the header of the outer response only.
    eq(nested.header.revision, 0, "nested txn response header revision")
    cancel()

    step("txn: a key written twice in one txn is refused")
    try:
        c.transaction(compare=[], success=[T.put(k, "a"), T.put(k, "b")], failure=[])
    except grpc.RpcError as e:
        eq(
            (e.code(), e.details()),
            (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request"),
            "a key written twice in one txn",
        )
    else:
        raise Mismatch("a transaction writing one key twice succeeded")


def lease():
    step("lease: grant, attach, inspect")
    l = c.lease(5)
    eq(l.ttl, 5, "granted ttl in the grant response")
    k = P + "lease/k"
    c.put(k, "v", lease=l)
    eq(c.get(k)[1].lease_id, l.id, "lease on the key")
    eq(l.granted_ttl, 5, "granted ttl from time-to-live")
    check(0 < l.remaining_ttl <= 5, f"remaining ttl {l.remaining_ttl}")
    eq(list(l.keys), [k.encode()], "lease keys")

    step("lease: refresh answers the granted ttl, on every keepalive")
    for i in range(3):
        got = l.refresh()
        eq([(r.ID, r.TTL) for r in got], [(l.id, 5)], f"keepalive response {i + 1}")

    step("lease: revoke deletes its keys")
    l.revoke()
    eq(c.get(k), (None, None), "key after revoke")
    eq(l.remaining_ttl, -1, "remaining ttl of a revoked lease")

    step("lease: refreshing keeps a short lease alive past its ttl, then it expires")
    short = c.lease(2)
    k2 = P + "lease/short"
    c.put(k2, "v", lease=short)
    stop = threading.Event()

    def keep():
        while not stop.wait(0.5):
            short.refresh()

    t = threading.Thread(target=keep, daemon=True)
    t.start()
    # The point is that the key outlives its two-second ttl, so time has to
    # pass: three seconds of refreshes every half second.
    time.sleep(3)
    eq(c.get(k2)[0], b"v", "key of a refreshed lease after 3 s")
    stop.set()
    t.join(5)
    wait_until(lambda: c.get(k2) == (None, None), "the unrefreshed lease's key to expire", timeout=15)
    eq([r.TTL for r in short.refresh()], [0], "keepalive of an expired lease")


def watch():
    step("watch: prefix watch sees put, put, delete in order")
    w = P + "w/"
    events, cancel = c.watch_prefix(w)
    q = queue.Queue()
    threading.Thread(target=lambda: [q.put(e) for e in events], daemon=True).start()
    c.put(w + "a", "1")
    c.put(w + "b", "2")
    c.delete(w + "a")
    evs = [take(q, f"watch event {i + 1} of 3") for i in range(3)]
    eq(
        [(type(e).__name__, e.key, e.value) for e in evs],
        [("PutEvent", (w + "a").encode(), b"1"), ("PutEvent", (w + "b").encode(), b"2"), ("DeleteEvent", (w + "a").encode(), b"")],
        "events",
    )
    revs = [e.mod_revision for e in evs]
    check(revs[0] < revs[1] < revs[2], f"event revisions not increasing: {revs}")
    cancel()

    step("watch: replay from a revision, with prev_kv")
    events, cancel = c.watch(w + "a", start_revision=revs[0], prev_kv=True)
    q = queue.Queue()
    threading.Thread(target=lambda: [q.put(e) for e in events], daemon=True).start()
    e1, e2 = take(q, "replayed put"), take(q, "replayed delete")
    eq((type(e1).__name__, e1.mod_revision), ("PutEvent", revs[0]), "first replayed event")
    eq((type(e2).__name__, e2.mod_revision, e2.prev_value), ("DeleteEvent", revs[2], b"1"), "second replayed event")
    cancel()

    step("watch: callbacks and cancel_watch")
    q = queue.Queue()
    wid = c.add_watch_callback(w + "cb", q.put)
    c.put(w + "cb", "x")
    resp = take(q, "callback response")
    eq([(e.key, e.value) for e in resp.events], [((w + "cb").encode(), b"x")], "callback events")
    eq(resp.header.revision, resp.events[0].mod_revision, "callback header revision")
    c.cancel_watch(wid)
    c.put(w + "cb", "y")
    nothing_in(q, "a cancelled watch delivered", quiet=0.5)

    step("watch: watch_once and its timeout")
    got = queue.Queue()
    threading.Thread(target=lambda: got.put(c.watch_once(w + "once", timeout=10)), daemon=True).start()
    # watch_once gives no sign once its watch is registered: put until it
    # returns, then check it returned one of those puts.
    sent = []
    wait_until(lambda: sent.append(c.put(w + "once", str(len(sent))).header.revision) or not got.empty(),
               "watch_once to see a put", timeout=10, every=0.2)
    e = got.get()
    check(e.key == (w + "once").encode() and e.mod_revision in sent, f"watch_once returned {e}")
    eq(e.value, str(sent.index(e.mod_revision)).encode(), "watch_once value")
    try:
        c.watch_once(w + "quiet", timeout=0.3)
    except etcd3.exceptions.WatchTimedOut:
        pass
    else:
        raise Mismatch("watch_once on a quiet key returned an event")

    step("watch: from a compacted revision")
    k = w + "compacted"
    first = c.put(k, "1").header.revision
    last = c.put(k, "2").header.revision
    c.compact(last)
    events, cancel = c.watch(k, start_revision=first)
    q = queue.Queue()

    def pump():
        try:
            for e in events:
                q.put(e)
        except etcd3.exceptions.RevisionCompactedError as e:
            q.put(e)

    threading.Thread(target=pump, daemon=True).start()
    e = take(q, "the compaction error")
    check(isinstance(e, etcd3.exceptions.RevisionCompactedError), f"expected RevisionCompactedError, got {e!r}")
    eq(e.compacted_revision, last, "compacted revision")


def lock():
    step("lock: a second holder waits until the first releases")
    l1 = c.lock("L1", ttl=5)
    l2 = c.lock("L1", ttl=5)
    check(l1.acquire(timeout=5) is True, "first acquire failed")
    check(l1.is_acquired(), "holder does not see its lock")
    eq([r.TTL for r in l1.refresh()], [5], "lock lease refresh")
    got = queue.Queue()
    threading.Thread(target=lambda: got.put(l2.acquire(timeout=20)), daemon=True).start()
    nothing_in(got, "second holder returned while the lock was held", quiet=1.0)
    check(not l2.is_acquired(), "second holder holds a held lock")
    check(l1.release() is True, "release failed")
    eq(take(got, "second holder to acquire after the release", timeout=10), True, "second acquire")
    check(l2.is_acquired() and not l1.is_acquired(), "lock not handed over")

    step("lock: acquire with a timeout gives up")
    check(c.lock("L1", ttl=5).acquire(timeout=0.5) is False, "a held lock was acquired")
    check(l2.release() is True, "second release failed")
    check(l1.release() is False, "releasing a lock held by nobody succeeded")

    step("lock: as a context manager")
    with c.lock("L2", ttl=5) as held:
        check(held.is_acquired(), "lock not held inside `with`")
    check(c.lock("L2", ttl=5).acquire(timeout=1) is True, "lock not free after `with`")

    step("lock: an unrefreshed holder's lock expires")
    check(c.lock("L3", ttl=2).acquire(timeout=1), "L3 acquire failed")
    check(c.lock("L3", ttl=5).acquire(timeout=15) is True, "L3 not free after its holder's lease expired")


main([kv, txn, lease, watch, lock])
