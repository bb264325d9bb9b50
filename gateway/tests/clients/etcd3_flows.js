// Node `etcd3` (gRPC) used as its users use it: its Lock, Election and
// software transactions (STM), plus the kv and watch calls they rest on,
// each outcome checked.
//
//     node etcd3_flows.js --endpoint 127.0.0.1:2379 [--prefix /clients/]
//
// All three are built in the client on KV, Lease and Watch (elections are
// keys under `election/<name>/` named by lease id; STM is a txn comparing
// mod revisions), so they need none of etcd's Lock/Election services. The
// same script runs against real etcd as a control, so every expectation
// here is what etcd 3.4 answers. Exits 0 after `PASS`, 1 after `FAIL: ...`.
'use strict';

const { Etcd3, EtcdLockFailedError, STMConflictError } = require('etcd3');

// === arguments, deadline, checks ===

const argv = process.argv.slice(2);
function flag(name, dflt) {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
}
const endpoint = flag('--endpoint');
if (!endpoint) {
  console.log('usage: node etcd3_flows.js --endpoint host:port [--prefix /clients/]');
  process.exit(2);
}
const P = flag('--prefix', '/clients/') + 'node/';
const DEADLINE_MS = 90_000;

let currentStep = 'start';
function step(name) {
  currentStep = name;
  console.log(`step: ${name}`);
}

// A client call that never settles must not hang the test.
setTimeout(() => {
  console.log(`FAIL: [${currentStep}] still running after ${DEADLINE_MS / 1000}s`);
  process.exit(1);
}, DEADLINE_MS);

class Mismatch extends Error {}

function check(cond, what) {
  if (!cond) throw new Mismatch(what);
}

function eq(got, want, what) {
  const g = JSON.stringify(got);
  const w = JSON.stringify(want);
  if (g !== w) throw new Mismatch(`${what}: expected ${w}, got ${g}`);
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

/** Resolves with `promise`'s value, or fails naming `what` after `ms`. */
function within(ms, what, promise) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Mismatch(`timed out after ${ms / 1000}s waiting for ${what}`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Polls `cond` (async) until truthy, or fails naming `what`. */
async function waitUntil(what, cond, ms = 15_000, every = 50) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() >= end) throw new Mismatch(`timed out after ${ms / 1000}s waiting for ${what}`);
    await sleep(every);
  }
}

/** Items pushed by event handlers, taken in order with a timeout. */
class Inbox {
  constructor() {
    this.items = [];
    this.waiters = [];
  }
  push(item) {
    const w = this.waiters.shift();
    if (w) w(item);
    else this.items.push(item);
  }
  take(what, ms = 15_000) {
    if (this.items.length) return Promise.resolve(this.items.shift());
    return within(ms, what, new Promise(resolve => this.waiters.push(resolve)));
  }
  /** Fails when anything arrives within `ms` (absence needs a window). */
  async nothing(what, ms = 1000) {
    await sleep(ms);
    if (this.items.length) throw new Mismatch(`${what}: got ${JSON.stringify(this.items[0])}`);
  }
}

function client() {
  return new Etcd3({
    hosts: `http://${endpoint}`,
    dialTimeout: 5000,
    // Unary calls get a deadline; streams (watch, keepalive) live on.
    defaultCallOptions: ctx => (ctx.isStream ? {} : { deadline: Date.now() + 10_000 }),
  });
}

const a = client();
const b = client();

// === flows ===

async function kv() {
  step('kv: put, get, prefix listing, delete');
  const k = P + 'kv/a';
  await a.put(k).value('1');
  eq(await a.get(k).string(), '1', 'value read back');
  await a.put(P + 'kv/b').value('2');
  eq(await a.getAll().prefix(P + 'kv/').strings(), { [P + 'kv/a']: '1', [P + 'kv/b']: '2' }, 'prefix listing');
  eq(await a.getAll().prefix(P + 'kv/').count(), 2, 'prefix count');
  const res = await a.get(k).exec();
  eq(res.kvs[0].version, '1', 'version (int64 as a decimal string)');
  await a.delete().prefix(P + 'kv/');
  eq(await a.get(k).string(), null, 'value after delete');

  step('kv: watch sees put then delete in order');
  const inbox = new Inbox();
  const w = await a.watch().prefix(P + 'w/').create();
  w.on('put', kv => inbox.push(['put', kv.key.toString(), kv.value.toString(), kv.mod_revision]));
  w.on('delete', kv => inbox.push(['delete', kv.key.toString(), '', kv.mod_revision]));
  await a.put(P + 'w/x').value('1');
  await a.delete().key(P + 'w/x');
  const e1 = await inbox.take('put event');
  const e2 = await inbox.take('delete event');
  eq([e1.slice(0, 3), e2.slice(0, 3)], [['put', P + 'w/x', '1'], ['delete', P + 'w/x', '']], 'events');
  check(Number(e1[3]) < Number(e2[3]), `event revisions not increasing: ${e1[3]}, ${e2[3]}`);
  await w.cancel();
}

async function lock() {
  step('lock: a second holder is refused while the first holds it');
  const l1 = a.lock(P + 'L1').ttl(5);
  await l1.acquire();
  check((await l1.leaseId()) !== null, 'held lock without a lease');
  let refused = null;
  try {
    await b.lock(P + 'L1').ttl(5).acquire();
  } catch (e) {
    refused = e;
  }
  check(refused instanceof EtcdLockFailedError, `second acquire: expected EtcdLockFailedError, got ${refused}`);
  eq(await a.get(P + 'L1').exists(), true, 'lock key while held');

  step('lock: release lets the second holder in');
  await l1.release();
  eq(await a.get(P + 'L1').exists(), false, 'lock key after release (its lease revoked)');
  const l2 = b.lock(P + 'L1').ttl(5);
  await l2.acquire();
  let again = null;
  try {
    await a.lock(P + 'L1').ttl(5).acquire();
  } catch (e) {
    again = e;
  }
  check(again instanceof EtcdLockFailedError, `first holder re-acquired a held lock: ${again}`);
  await l2.release();

  step('lock: do() holds the lock around the function');
  const out = await a.lock(P + 'L2').ttl(5).do(async () => {
    let inside = null;
    try {
      await b.lock(P + 'L2').acquire();
    } catch (e) {
      inside = e;
    }
    check(inside instanceof EtcdLockFailedError, `lock taken twice inside do(): ${inside}`);
    return 42;
  });
  eq(out, 42, 'do() result');
  const l3 = b.lock(P + 'L2').ttl(5);
  await l3.acquire();
  await l3.release();
}

async function election() {
  step('election: first campaign is elected, the observer sees it');
  const name = P.replace(/\//g, '_') + 'E1';
  const ea = a.election(name, 5);
  const eb = b.election(name, 5);
  const observer = await ea.observe();
  const seen = new Inbox();
  observer.on('change', v => seen.push(v === undefined ? null : String(v)));
  observer.on('error', e => seen.push(`error: ${e}`));

  const ca = ea.campaign('alice');
  await within(10_000, 'alice elected', ca.wait());
  eq(await eb.leader(), 'alice', 'leader after the first campaign');
  eq(await seen.take('observer: alice'), 'alice', 'observed leader');

  step('election: a second campaign waits while the leader holds');
  const cb = eb.campaign('bob');
  const bobElected = new Inbox();
  cb.on('elected', () => bobElected.push('elected'));
  cb.on('error', e => bobElected.push(`error: ${e}`));
  // Both candidates have a key under the election prefix, ordered by
  // create revision; only the oldest leads.
  await waitUntil('both campaign keys', async () => (await a.getAll().prefix(`election/${name}/`).count()) === 2);
  await bobElected.nothing('bob elected while alice leads');

  step('election: proclaim changes the leader value');
  await ca.proclaim('alice-2');
  eq(await eb.leader(), 'alice-2', 'leader after proclaim');
  eq(await seen.take('observer: alice-2'), 'alice-2', 'observed proclamation');

  step('election: resign hands leadership to the waiting candidate');
  await ca.resign();
  eq(await bobElected.take('bob elected after resign'), 'elected', 'second campaign');
  eq(await ea.leader(), 'bob', 'leader after resign');
  eq(await seen.take('observer: bob'), 'bob', 'observed leader change');

  step('election: no leader once the last candidate resigns');
  await cb.resign();
  eq(await ea.leader(), undefined, 'leader after every candidate resigned');
  await observer.cancel();
}

async function stm() {
  step('stm: read-modify-write commits');
  const k = P + 'stm/counter';
  await a.put(k).value('0');
  const r = await a.stm().transact(async tx => {
    const v = await tx.get(k).number();
    await tx.put(k).value(String(v + 1));
    return v;
  });
  eq(r, 0, 'value the transaction read');
  eq(await a.get(k).number(), 1, 'value after commit');

  step('stm: a conflicting write makes it retry, then commit');
  let attempts = 0;
  await a.stm().transact(async tx => {
    attempts += 1;
    const v = await tx.get(k).number();
    if (attempts === 1) await b.put(k).value('100'); // lands between read and commit
    await tx.put(k).value(String(v + 1));
  });
  eq(attempts, 2, 'attempts (one conflict, one commit)');
  eq(await a.get(k).number(), 101, 'value after the retried commit');

  step('stm: with no retries left, the conflict is the answer');
  let err = null;
  try {
    await a.stm({ retries: 0 }).transact(async tx => {
      const v = await tx.get(k).number();
      await b.put(k).value('500');
      await tx.put(k).value(String(v + 1));
    });
  } catch (e) {
    err = e;
  }
  check(err instanceof STMConflictError, `expected STMConflictError, got ${err}`);
  eq(await a.get(k).number(), 500, 'value after the refused commit');

  step('stm: concurrent increments from two clients add up');
  await a.put(k).value('0');
  const inc = c => c.stm({ retries: 50 }).transact(async tx => {
    const v = await tx.get(k).number();
    await tx.put(k).value(String(v + 1));
  });
  const runs = [];
  for (let i = 0; i < 10; i++) runs.push(inc(a), inc(b));
  await within(30_000, '20 concurrent increments', Promise.all(runs));
  eq(await a.get(k).number(), 20, 'counter after 20 increments');
}

async function main() {
  try {
    await kv();
    await lock();
    await election();
    await stm();
  } catch (e) {
    if (!(e instanceof Mismatch)) console.log(e && e.stack);
    console.log(`FAIL: [${currentStep}] ${e && e.constructor ? e.constructor.name + ': ' : ''}${e && e.message}`);
    process.exit(1);
  }
  console.log('PASS');
  process.exit(0);
}

main();
