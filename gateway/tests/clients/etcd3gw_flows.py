"""Python `etcd3gw` (etcd's JSON gateway, HTTP) used as its users use it:
kv, watch, lease and lock flows, each outcome checked.

    python etcd3gw_flows.py --endpoint 127.0.0.1:2379 [--prefix /clients/]

The client first reads `GET /version` to pick its path prefix (`/v3/` for
3.4), then POSTs JSON with base64 keys and values. Its lease calls use
etcd's older aliases (`/v3/kv/lease/revoke`, `/v3/kv/lease/timetolive`)
beside `/v3/lease/keepalive`. The same script runs against real etcd as a
control, so every expectation here is what etcd 3.4 answers.
"""

import queue
import threading

import etcd3gw

from checks import check, eq, main, nothing_in, setup, step, take, wait_until

args = setup(__doc__)
P = args.prefix + "etcd3gw/"
c = etcd3gw.client(host=args.host, port=args.port, timeout=10)


def meta_of(key):
    """(value, metadata) of `key`, or None when it does not exist."""
    got = c.get(key, metadata=True)
    check(len(got) <= 1, f"get {key} returned {len(got)} entries")
    return got[0] if got else None


def rev(meta, field="mod_revision"):
    # The JSON gateway writes int64 fields as strings.
    return int(meta[field])


def kv():
    step("kv: version discovery picks /v3/")
    eq(c.api_path, "/v3/", "api path chosen from GET /version")

    step("kv: put then get with metadata")
    a = P + "kv/a"
    check(c.put(a, "1") is True, "put returned False")
    v, m = meta_of(a)
    eq(v, b"1", "value read back")
    eq(m["key"], a.encode(), "key read back")
    eq(int(m["version"]), 1, "version after one put")
    eq(rev(m, "create_revision"), rev(m), "create_revision of a new key")
    r1 = rev(m)

    step("kv: second put raises mod_revision and version")
    c.put(a, "2")
    v, m = meta_of(a)
    eq(v, b"2", "value after the second put")
    check(rev(m) > r1, f"mod_revision {rev(m)} not above {r1}")
    eq(rev(m, "create_revision"), r1, "create_revision kept")
    eq(int(m["version"]), 2, "version after two puts")

    step("kv: read at the first revision")
    eq(c.get(a, revision=r1), [b"1"], "value at the first put's revision")

    step("kv: create only if absent")
    b = P + "kv/b"
    check(c.create(b, "x") is True, "create of an absent key failed")
    check(c.create(b, "y") is False, "create of an existing key succeeded")
    eq(c.get(b), [b"x"], "value after the refused create")

    step("kv: replace compares the value")
    check(c.replace(b, "x", "y") is True, "replace with the right old value failed")
    check(c.replace(b, "x", "z") is False, "replace with a stale old value succeeded")
    eq(c.get(b), [b"y"], "value after replace")

    step("kv: prefix listing in key order, sorted descending, limit")
    got = c.get_prefix(P + "kv/")
    eq([(m["key"], v) for v, m in got], [(a.encode(), b"2"), (b.encode(), b"y")], "prefix listing")
    got = c.get_prefix(P + "kv/", sort_order="descend", sort_target="key")
    eq([m["key"] for _, m in got], [b.encode(), a.encode()], "descending listing")
    got = c.get(P + "kv/", range_end=P + "kv0", limit=1)
    eq(got, [b"2"], "listing with limit 1")

    step("kv: delete one key, then a missing one")
    check(c.delete(a) is True, "delete of an existing key answered False")
    check(c.delete(a) is False, "delete of a missing key answered True")
    eq(c.get(a), [], "get after delete")

    step("kv: delete a prefix")
    c.put(P + "kv/c", "3")
    check(c.delete_prefix(P + "kv/") is True, "delete_prefix answered False")
    eq(c.get_prefix(P + "kv/"), [], "prefix after delete_prefix")

    step("kv: status and member list")
    st = c.status()
    check(st.get("version", "").startswith("3."), f"status version {st.get('version')!r}")
    check(int(st["header"]["revision"]) > r1, f"status revision {st['header']}")
    members = c.members()
    eq(len(members), 1, "member count")
    check(members[0].get("clientURLs"), f"member without clientURLs: {members[0]}")


def start_watch(key, prefix=False, **kw):
    """A watch whose events a reader thread moves into a queue, so the
    flow can wait on them with a timeout (the client's iterator has none)."""
    if prefix:
        events, cancel = c.watch_prefix(key, **kw)
    else:
        events, cancel = c.watch(key, **kw)
    q = queue.Queue()

    def pump():
        for ev in events:
            q.put(ev)

    threading.Thread(target=pump, daemon=True).start()
    return q, cancel


def kind(ev):
    # PUT is enum value 0, which the JSON gateway leaves out.
    return ev.get("type", "PUT")


def watch():
    step("watch: prefix watch sees put, put, delete in order")
    w = P + "w/"
    q, cancel = start_watch(w, prefix=True)
    c.put(w + "a", "1")
    c.put(w + "b", "2")
    c.delete(w + "a")
    evs = [take(q, f"watch event {i + 1} of 3") for i in range(3)]
    eq(
        [(kind(e), e["kv"]["key"], e["kv"].get("value", b"")) for e in evs],
        [("PUT", (w + "a").encode(), b"1"), ("PUT", (w + "b").encode(), b"2"), ("DELETE", (w + "a").encode(), b"")],
        "events",
    )
    revs = [int(e["kv"]["mod_revision"]) for e in evs]
    check(revs[0] < revs[1] < revs[2], f"event revisions not increasing: {revs}")
    cancel()

    step("watch: replay from the first put's revision")
    q, cancel = start_watch(w + "a", start_revision=revs[0])
    e1, e2 = take(q, "replayed put"), take(q, "replayed delete")
    eq((kind(e1), int(e1["kv"]["mod_revision"])), ("PUT", revs[0]), "first replayed event")
    eq((kind(e2), int(e2["kv"]["mod_revision"])), ("DELETE", revs[2]), "second replayed event")
    nothing_in(q, "replay of a single key delivered an event of another key", quiet=0.5)
    cancel()

    step("watch: prev_kv and the NOPUT filter")
    k = w + "p"
    c.put(k, "old")
    q, cancel = start_watch(k, prev_kv=True, filters=["NOPUT"])
    c.put(k, "new")
    c.delete(k)
    e = take(q, "delete event with prev_kv")
    eq(kind(e), "DELETE", "NOPUT filter passed a put")
    eq(e.get("prev_kv", {}).get("value"), "bmV3", "prev_kv value (base64 of 'new')")
    cancel()


def lease():
    step("lease: grant, attach, keys, ttl")
    l = c.lease(ttl=5)
    check(l.id > 0, f"lease id {l.id}")
    k = P + "lease/k"
    c.put(k, "v", lease=l)
    _, m = meta_of(k)
    eq(int(m["lease"]), l.id, "lease on the key")
    eq(l.keys(), [k.encode()], "lease keys")
    ttl = l.ttl()
    check(0 < ttl <= 5, f"remaining ttl {ttl}")

    step("lease: listed by the /v3/kv/lease/leases alias")
    # etcd3gw has no call for it; its public post/get_url reach the path.
    listed = c.post(c.get_url("/kv/lease/leases"), json={}).get("leases", [])
    check(str(l.id) in [x["ID"] for x in listed], f"lease {l.id} not in {listed}")

    step("lease: refresh answers the granted ttl")
    eq(l.refresh(), 5, "ttl after keepalive")

    step("lease: revoke deletes its keys")
    check(l.revoke() is True, "revoke answered False")
    eq(c.get(k), [], "key after revoke")
    eq(l.ttl(), -1, "ttl of a revoked lease")

    step("lease: an unrefreshed lease expires with its key")
    short = c.lease(ttl=2)
    k2 = P + "lease/short"
    c.put(k2, "v", lease=short)
    eq(c.get(k2), [b"v"], "key under the short lease")
    wait_until(lambda: c.get(k2) == [], "the short lease's key to expire", timeout=15)
    eq(short.refresh(), -1, "keepalive of an expired lease")


def lock():
    step("lock: a second holder is refused until release")
    l1 = c.lock("L1", ttl=5)
    l2 = c.lock("L1", ttl=5)
    check(l1.acquire() is True, "first acquire failed")
    check(l1.is_acquired(), "holder does not see its lock")
    check(l2.acquire() is False, "second holder acquired a held lock")
    check(not l2.is_acquired(), "second holder believes it holds the lock")
    eq(l1.refresh(), 5, "lock lease refresh")

    step("lock: release hands it over")
    check(l1.release() is True, "release failed")
    check(not l1.is_acquired(), "released lock still held")
    check(l2.acquire() is True, "acquire after release failed")
    check(l1.acquire() is False, "first holder re-acquired a held lock")
    check(l2.release() is True, "second release failed")

    step("lock: as a context manager")
    with c.lock("L2", ttl=5) as held:
        check(held.is_acquired(), "lock not held inside `with`")
        check(c.lock("L2", ttl=5).acquire() is False, "lock acquired twice inside `with`")
    check(c.lock("L2", ttl=5).acquire() is True, "lock not free after `with`")

    step("lock: an unrefreshed holder's lock expires")
    c.lock("L3", ttl=2).acquire()
    wait_until(lambda: c.lock("L3", ttl=5).acquire(), "L3 to be free after its lease expired", timeout=15, every=0.5)


main([kv, watch, lease, lock])
