//! The same JSON request sequence against etcd 3.4's own grpc-gateway and
//! against ours: the normalized answers (status, body) must be identical.
//!
//! Normalization drops what legitimately differs between two clusters:
//! `cluster_id`, `member_id`, `raft_term`, server-chosen lease IDs, the
//! remaining TTL (a clock), Status's sizes and version, the member's name
//! and URLs. Bad-JSON errors compare status and code only: etcd's message
//! is Go's decoder text, ours names the field.

use serde_json::{Value, json};

use lookout_testkit::EtcdServer;

use crate::harness::TestGateway;
use crate::http_client::{Lines, TestStore, b64, post};

/// How a step's answer is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Exact,
    /// Status and `code` only (bad JSON: the message is Go's vs ours).
    CodeOnly,
    /// A server-chosen lease ID.
    NoId,
    /// `TTL` counts down with the clock.
    NoTtl,
    /// Status: the header's revision only.
    HeaderOnly,
    /// MemberList: how many members. etcd's MemberList header carries no
    /// revision while the store's does (a store difference, not HTTP's).
    Members,
}

fn normalize(cmp: Cmp, status: u16, mut v: Value) -> String {
    crate::support::strip_cluster_ids(&mut v);
    let v = match cmp {
        Cmp::Exact => v,
        Cmp::CodeOnly => json!({"code": v["code"]}),
        Cmp::NoId => {
            v.as_object_mut().unwrap().remove("ID");
            v
        }
        Cmp::NoTtl => {
            v.as_object_mut().unwrap().remove("TTL");
            v
        }
        Cmp::HeaderOnly => json!({"header": v["header"]}),
        Cmp::Members => json!({"members": v["members"].as_array().map(Vec::len)}),
    };
    format!("{status} {v}")
}

/// `(path, body, how)` for the unary steps, in order.
fn steps() -> Vec<(&'static str, String, Cmp)> {
    let k = |s: &str| b64(s);
    use Cmp::*;
    vec![
        (
            "/v3/kv/put",
            format!(r#"{{"key":"{}","value":"{}"}}"#, k("foo"), k("bar")),
            Exact,
        ),
        (
            "/v3/kv/put",
            format!(
                r#"{{"key":"{}","value":"{}","prev_kv":true}}"#,
                k("foo"),
                k("baz")
            ),
            Exact,
        ),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{}"}}"#, k("foo")),
            Exact,
        ),
        (
            "/v3/kv/put",
            format!(r#"{{"key":"{}","value":"{}"}}"#, k("foo/a"), k("1")),
            Exact,
        ),
        (
            "/v3/kv/put",
            format!(r#"{{"key":"{}","value":"{}"}}"#, k("foo/b"), k("2")),
            Exact,
        ),
        (
            "/v3/kv/put",
            format!(r#"{{"key":"{}","value":""}}"#, k("foo/c")),
            Exact,
        ),
        (
            "/v3/kv/range",
            format!(
                r#"{{"key":"{}","range_end":"{}","limit":2}}"#,
                k("foo/"),
                k("foo0")
            ),
            Exact,
        ),
        (
            "/v3/kv/range",
            format!(
                r#"{{"key":"{}","range_end":"{}","sort_order":"DESCEND","sort_target":"KEY"}}"#,
                k("foo/"),
                k("foo0")
            ),
            Exact,
        ),
        (
            "/v3/kv/range",
            format!(
                r#"{{"key":"{}","range_end":"{}","count_only":true}}"#,
                k("a"),
                k("z")
            ),
            Exact,
        ),
        (
            "/v3/kv/range",
            format!(
                r#"{{"key":"{}","range_end":"{}","keys_only":true}}"#,
                k("foo/"),
                k("foo0")
            ),
            Exact,
        ),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{}","revision":"2"}}"#, k("foo")),
            Exact,
        ),
        // camelCase (json_name) input and unknown fields, as jsonpb takes them.
        (
            "/v3/kv/range",
            format!(
                r#"{{"key":"{}","rangeEnd":"{}","countOnly":true,"nonsense":[1]}}"#,
                k("foo/"),
                k("foo0")
            ),
            Exact,
        ),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{}","revision":"100"}}"#, k("foo")),
            Exact,
        ),
        ("/v3/kv/range", r#"{"key":""}"#.into(), Exact),
        ("/v3/kv/range", r#"{"key":"!!"}"#.into(), CodeOnly),
        ("/v3/kv/range", r#"{"key":"#.into(), CodeOnly),
        ("/v3/kv/range", r#"{"limit":"x"}"#.into(), CodeOnly),
        (
            "/v3/kv/deleterange",
            format!(r#"{{"key":"{}","prev_kv":true}}"#, k("foo/a")),
            Exact,
        ),
        (
            "/v3/kv/deleterange",
            format!(r#"{{"key":"{}"}}"#, k("nothing")),
            Exact,
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"target":"VALUE","result":"EQUAL","key":"{}","value":"{}"}}],"success":[{{"request_put":{{"key":"{}","value":"{}"}}}},{{"request_range":{{"key":"{}"}}}}],"failure":[{{"request_range":{{"key":"{}"}}}}]}}"#,
                k("foo"),
                k("baz"),
                k("foo"),
                k("qux"),
                k("foo"),
                k("foo")
            ),
            Exact,
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"target":"MOD","result":"LESS","key":"{}","mod_revision":"2"}}],"success":[{{"request_delete_range":{{"key":"{}"}}}}],"failure":[{{"request_range":{{"key":"{}","range_end":"{}"}}}}]}}"#,
                k("foo"),
                k("foo"),
                k("foo/"),
                k("foo0")
            ),
            Exact,
        ),
        (
            "/v3/kv/txn",
            format!(
                r#"{{"success":[{{"request_put":{{"key":"{}"}}}},{{"request_put":{{"key":"{}"}}}}]}}"#,
                k("dup"),
                k("dup")
            ),
            Exact,
        ),
        (
            "/v3/lease/grant",
            r#"{"ID":"1000","TTL":"60"}"#.into(),
            Exact,
        ),
        (
            "/v3/lease/grant",
            r#"{"ID":"1000","TTL":"60"}"#.into(),
            Exact,
        ),
        (
            "/v3/kv/put",
            format!(
                r#"{{"key":"{}","value":"{}","lease":"1000"}}"#,
                k("leased"),
                k("v")
            ),
            Exact,
        ),
        (
            "/v3/kv/put",
            format!(
                r#"{{"key":"{}","value":"{}","lease":"999"}}"#,
                k("leased"),
                k("v")
            ),
            Exact,
        ),
        (
            "/v3/lease/timetolive",
            r#"{"ID":"1000","keys":true}"#.into(),
            NoTtl,
        ),
        ("/v3/lease/timetolive", r#"{"ID":"5"}"#.into(), Exact),
        ("/v3/lease/leases", "".into(), Exact),
        ("/v3/lease/revoke", r#"{"ID":"1000"}"#.into(), Exact),
        ("/v3/lease/revoke", r#"{"ID":"1000"}"#.into(), Exact),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{}"}}"#, k("leased")),
            Exact,
        ),
        ("/v3/lease/grant", r#"{"TTL":"30"}"#.into(), NoId),
        ("/v3/kv/compaction", r#"{"revision":"5"}"#.into(), Exact),
        ("/v3/kv/compaction", r#"{"revision":"5"}"#.into(), Exact),
        ("/v3/kv/compaction", r#"{"revision":"1000"}"#.into(), Exact),
        (
            "/v3/kv/range",
            format!(r#"{{"key":"{}","revision":"3"}}"#, k("foo")),
            Exact,
        ),
        ("/v3/maintenance/status", "{}".into(), HeaderOnly),
        ("/v3/cluster/member/list", "{}".into(), Members),
    ]
}

/// Flattens a watch: the created line, then every event in order (etcd
/// may batch a catch-up's revisions into one response where the store
/// sends one per revision; the events are what must agree) until
/// `events` events arrived, or `lines` lines without events did.
async fn watch_transcript(addr: &str, body: String, events: usize, lines: usize) -> Vec<String> {
    let mut w = Lines::open(addr, "POST", "/v3/watch", &[], body).await;
    let mut out = vec![format!("status {}", w.status)];
    let mut created = w.next_json().await;
    crate::support::strip_cluster_ids(&mut created);
    out.push(created.to_string());
    let (mut seen, mut others) = (0, 0);
    // Bounded: at most `events` + `lines` + 5 lines, each within STEP.
    for _ in 0..events + lines + 5 {
        if seen >= events && others >= lines {
            break;
        }
        let mut j = w.next_json().await;
        crate::support::strip_cluster_ids(&mut j);
        let r = &j["result"];
        if let Some(evs) = r["events"].as_array() {
            for e in evs {
                out.push(format!("event {e}"));
                seen += 1;
            }
        } else {
            out.push(format!("other {j}"));
            others += 1;
        }
    }
    out
}

async fn session(addr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (path, body, cmp) in steps() {
        let r = post(addr, path, &body).await;
        out.push(format!(
            "{path} {body}\n  -> {}",
            normalize(cmp, r.status, r.json())
        ));
    }
    // Keep-alive: a stream of `{"result": ...}` lines, one per request.
    post(addr, "/v3/lease/grant", r#"{"ID":"2000","TTL":"60"}"#).await;
    let r = post(addr, "/v3/lease/keepalive", r#"{"ID":"2000"} {"ID":"77"}"#).await;
    for line in r.text().lines() {
        let mut j: Value = serde_json::from_str(line).unwrap();
        crate::support::strip_cluster_ids(&mut j);
        out.push(format!("keepalive -> {} {j}", r.status));
    }
    // Watches: from a compacted revision, from a retained one with prev_kv,
    // and a progress request on an idle watch.
    let k = |s: &str| b64(s);
    out.extend(
        watch_transcript(
            addr,
            format!(
                r#"{{"create_request":{{"key":"{}","start_revision":"2"}}}}"#,
                k("foo")
            ),
            0,
            1,
        )
        .await,
    );
    out.extend(
        watch_transcript(
            addr,
            format!(
                r#"{{"create_request":{{"key":"{}","range_end":"{}","start_revision":"5","prev_kv":true}}}}"#,
                k("foo"),
                k("foo0")
            ),
            4,
            0,
        )
        .await,
    );
    out.extend(
        watch_transcript(
            addr,
            format!(
                r#"{{"create_request":{{"key":"{}"}}}} {{"progress_request":{{}}}}"#,
                k("idle")
            ),
            0,
            1,
        )
        .await,
    );
    out
}

fn assert_same(want: &[String], got: &[String], who: &str) {
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        assert_eq!(w, g, "step {i} differs between etcd and {who}");
    }
    assert_eq!(want.len(), got.len(), "{who}: transcript lengths");
}

/// What every compared session must have exercised.
fn check_coverage(want: &[String]) {
    // The session saw what it meant to: errors, a compaction cancel, events.
    let all = want.join("\n");
    assert!(
        all.contains("required revision has been compacted"),
        "{all}"
    );
    assert!(all.contains("\"compact_revision\":\"5\""), "{all}");
    assert!(all.contains("event {\"kv\""), "{all}");
    assert!(all.contains("412 "), "{all}");
    assert!(all.contains(r#""watch_id":"-1""#), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_json_gateway_matches_etcd() {
    let etcd = EtcdServer::start().await;
    let store = TestStore::start().await;
    let want = session(&etcd.endpoint).await;
    let got = session(&store.addr).await;
    assert_same(&want, &got, "lookout store");
    check_coverage(&want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_over_store_json_matches_etcd() {
    let etcd = EtcdServer::start().await;
    let store = TestStore::start().await;
    let gw = TestGateway::start(&[&store.addr]).await;
    let want = session(&etcd.endpoint).await;
    let got = session(&gw.endpoint).await;
    assert_same(&want, &got, "a gateway over lookout store");
    check_coverage(&want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_over_etcd_json_matches_etcd() {
    let reference = EtcdServer::start().await;
    let upstream = EtcdServer::start().await;
    let gw = TestGateway::start(&[&upstream.endpoint]).await;
    let want = session(&reference.endpoint).await;
    let got = session(&gw.endpoint).await;
    assert_same(&want, &got, "a gateway over etcd");
    check_coverage(&want);
}
