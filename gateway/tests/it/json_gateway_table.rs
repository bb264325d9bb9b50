//! Every path and verb of etcd's JSON gateway, sent to real etcd 3.4 and
//! to each Lookout target in the same order, written as one table: a row
//! per request, a column per target, each cell the normalized answer or
//! "same". Every row must agree with etcd, or differ only where the
//! README says a gateway or Lookout differs by design ([`BY_DESIGN`]).
//!
//! Normalization removes what two clusters legitimately do not share:
//! `cluster_id`, `member_id`, `raft_term`, server-chosen IDs, clocks
//! (TTLs), hashes and sizes of two different storage engines, and Go's
//! JSON decoder text (bad-JSON rows compare status and code).
//!
//! The table is printed and written to `json_gateway_table.md` in the
//! test's temporary directory.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use lookout_testkit::EtcdServer;

use crate::harness::TestGateway;
use crate::http_client::{Lines, b64, call, post};

/// How an answer is reduced before comparing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Norm {
    Exact,
    /// Status and `code` (bad JSON: Go's decoder text vs ours).
    CodeOnly,
    /// Drop the listed top-level fields.
    Drop(&'static [&'static str]),
    /// Status and the body's text (non-JSON answers: 405s, 404s).
    Text,
    /// Members: per member whether it has a name, how many peer and
    /// client URLs, whether it is a learner (IDs and addresses differ).
    Members,
    /// A stream line: the field names of its `result` (chunks of two
    /// different backup formats).
    ResultKeys,
}

fn normalize(norm: Norm, status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).into_owned();
    if norm == Norm::Text {
        return format!("{status} {}", text.trim());
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return format!("{status} (not JSON) {}", text.trim());
    };
    crate::support::strip_cluster_ids(&mut v);
    let v = match norm {
        Norm::Exact | Norm::Text => v,
        Norm::CodeOnly => json!({"code": v["code"]}),
        Norm::Drop(fields) => {
            if let Some(m) = v.as_object_mut() {
                for f in fields {
                    m.remove(*f);
                }
            }
            v
        }
        Norm::Members => {
            let shape = |m: &Value| {
                json!({
                    "named": m["name"].as_str().is_some_and(|n| !n.is_empty()),
                    "peerURLs": m["peerURLs"].as_array().map_or(0, Vec::len),
                    "clientURLs": m["clientURLs"].as_array().map_or(0, Vec::len),
                    "isLearner": m["isLearner"] == true,
                })
            };
            let mut members: Vec<Value> = v["members"]
                .as_array()
                .map(|a| a.iter().map(shape).collect())
                .unwrap_or_default();
            members.sort_by_key(|m| m.to_string());
            json!({
                "header": v["header"],
                "members": members,
                "member": v.get("member").map(shape),
                "error": v["error"],
            })
        }
        Norm::ResultKeys => {
            let mut keys: Vec<String> = v["result"]
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            keys.sort();
            json!({"result": keys, "error": v.get("error")})
        }
    };
    format!("{status} {v}")
}

/// One target's answers, in order, by row label.
#[derive(Default)]
struct Session {
    rows: Vec<(String, String)>,
}

impl Session {
    fn row(&mut self, label: impl Into<String>, answer: String) {
        self.rows.push((label.into(), answer));
    }

    async fn post(&mut self, addr: &str, path: &str, body: &str, norm: Norm) -> Value {
        self.post_as(addr, path, body, body, norm).await
    }

    /// As [`Session::post`], labelled with `shown` in place of a body that
    /// holds values the server chose (IDs, keys).
    async fn post_as(
        &mut self,
        addr: &str,
        path: &str,
        body: &str,
        shown: &str,
        norm: Norm,
    ) -> Value {
        let r = post(addr, path, body).await;
        self.row(
            format!("POST {path} {}", short(shown)),
            normalize(norm, r.status, &r.body),
        );
        serde_json::from_slice(&r.body).unwrap_or(Value::Null)
    }

    async fn get(&mut self, addr: &str, path: &str, norm: Norm) {
        let r = call(addr, "GET", path, &[], "").await;
        self.row(format!("GET {path}"), normalize(norm, r.status, &r.body));
    }

    /// A streamed answer: its status and first `n` lines.
    async fn stream(&mut self, addr: &str, path: &str, body: &str, n: usize, norm: Norm) {
        let mut l = Lines::open(addr, "POST", path, &[], body.to_string()).await;
        let mut out = vec![format!("{}", l.status)];
        for _ in 0..n {
            match l.next_line_within(Duration::from_secs(10)).await {
                Some(Some(line)) => out.push(normalize(norm, 200, line.as_bytes())),
                Some(None) => out.push("(end)".into()),
                None => out.push("(no line in 10s)".into()),
            }
        }
        self.row(
            format!("POST {path} {} (stream)", short(body)),
            out.join(" | "),
        );
    }
}

fn short(body: &str) -> String {
    if body.len() > 60 {
        format!("{}…", &body[..60])
    } else {
        body.to_string()
    }
}

/// Every path under `/v3` (the listing the server itself publishes is
/// checked against this in `every_listed_path_is_in_the_table`).
const PATHS: &[&str] = &[
    "/kv/range",
    "/kv/put",
    "/kv/deleterange",
    "/kv/txn",
    "/kv/compaction",
    "/watch",
    "/lease/grant",
    "/lease/revoke",
    "/kv/lease/revoke",
    "/lease/keepalive",
    "/lease/timetolive",
    "/kv/lease/timetolive",
    "/lease/leases",
    "/kv/lease/leases",
    "/cluster/member/add",
    "/cluster/member/remove",
    "/cluster/member/update",
    "/cluster/member/list",
    "/cluster/member/promote",
    "/maintenance/alarm",
    "/maintenance/status",
    "/maintenance/defragment",
    "/maintenance/hash",
    "/maintenance/hashkv",
    "/maintenance/snapshot",
    "/maintenance/transfer-leadership",
    "/auth/enable",
    "/auth/disable",
    "/auth/status",
    "/auth/authenticate",
    "/auth/user/add",
    "/auth/user/get",
    "/auth/user/list",
    "/auth/user/delete",
    "/auth/user/changepw",
    "/auth/user/grant",
    "/auth/user/revoke",
    "/auth/role/add",
    "/auth/role/get",
    "/auth/role/list",
    "/auth/role/delete",
    "/auth/role/grant",
    "/auth/role/revoke",
    "/lock/lock",
    "/lock/unlock",
    "/election/campaign",
    "/election/proclaim",
    "/election/leader",
    "/election/observe",
    "/election/resign",
];

/// Paths etcd 3.5 added, which etcd 3.4 answers 404 and Lookout serves.
const ETCD_35_PATHS: &[&str] = &["/maintenance/hashkv", "/auth/status"];

async fn session(addr: &str) -> Session {
    use Norm::*;
    let k = |s: &str| b64(s);
    let mut s = Session::default();

    // --- KV ---
    s.post(
        addr,
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, k("a"), k("1")),
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/kv/put",
        &format!(
            r#"{{"key":"{}","value":"{}","prev_kv":true}}"#,
            k("a"),
            k("2")
        ),
        Exact,
    )
    .await;
    for (key, val) in [("t/1", "x"), ("t/2", "y"), ("t/3", "x"), ("t/4", "y")] {
        post(
            addr,
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","value":"{}"}}"#, k(key), k(val)),
        )
        .await;
    }
    s.post(
        addr,
        "/v3/kv/range",
        &format!(
            r#"{{"key":"{}","range_end":"{}","sort_target":"VALUE","sort_order":"DESCEND","limit":3}}"#,
            k("t/"),
            k("t0")
        ),
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3beta/kv/range",
        &format!(r#"{{"key":"{}"}}"#, k("a")),
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3alpha/kv/range",
        &format!(r#"{{"key":"{}"}}"#, k("a")),
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{}","prev_kv":true}}"#, k("t/4")),
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/kv/txn",
        &format!(
            r#"{{"compare":[{{"target":"VALUE","key":"{}","value":"{}"}}],"success":[{{"request_put":{{"key":"{}","value":"{}"}}}},{{"request_txn":{{"success":[{{"request_range":{{"key":"{}"}}}}]}}}}],"failure":[{{"request_range":{{"key":"{}"}}}}]}}"#,
            k("a"),
            k("2"),
            k("a"),
            k("3"),
            k("a"),
            k("a")
        ),
        Exact,
    )
    .await;
    s.post(addr, "/v3/kv/compaction", r#"{"revision":"3"}"#, Exact)
        .await;
    s.stream(
        addr,
        "/v3/watch",
        &format!(
            r#"{{"create_request":{{"key":"{}","start_revision":"4"}}}}"#,
            k("a")
        ),
        2,
        Exact,
    )
    .await;

    // --- Lease ---
    s.post(
        addr,
        "/v3/lease/grant",
        r#"{"ID":"1000","TTL":"60"}"#,
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/lease/grant",
        r#"{"ID":"1001","TTL":"60"}"#,
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/lease/grant",
        r#"{"ID":"1002","TTL":"60"}"#,
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/lease/grant",
        r#"{"ID":"1003","TTL":"60"}"#,
        Exact,
    )
    .await;
    s.post(addr, "/v3/lease/grant", r#"{"TTL":"60"}"#, Drop(&["ID"]))
        .await;
    s.post(
        addr,
        "/v3/kv/put",
        &format!(
            r#"{{"key":"{}","value":"{}","lease":"1002"}}"#,
            k("leased"),
            k("v")
        ),
        Exact,
    )
    .await;
    s.stream(addr, "/v3/lease/keepalive", r#"{"ID":"1000"}"#, 1, Exact)
        .await;
    s.post(
        addr,
        "/v3/lease/timetolive",
        r#"{"ID":"1002","keys":true}"#,
        Drop(&["TTL"]),
    )
    .await;
    s.post(
        addr,
        "/v3/kv/lease/timetolive",
        r#"{"ID":"1002"}"#,
        Drop(&["TTL"]),
    )
    .await;
    s.post(addr, "/v3/lease/leases", "{}", Drop(&["leases"]))
        .await;
    s.post(addr, "/v3/kv/lease/leases", "{}", Drop(&["leases"]))
        .await;
    s.post(addr, "/v3/lease/revoke", r#"{"ID":"1002"}"#, Exact)
        .await;
    s.post(addr, "/v3/kv/lease/revoke", r#"{"ID":"1003"}"#, Exact)
        .await;
    s.post(addr, "/v3/kv/lease/revoke", r#"{"ID":"1003"}"#, Exact)
        .await;

    // --- Lock and Election ---
    let lock = s
        .post(
            addr,
            "/v3/lock/lock",
            &format!(r#"{{"name":"{}","lease":"1000"}}"#, k("lk")),
            Exact,
        )
        .await;
    let key = lock["key"].as_str().unwrap_or_default().to_string();
    s.post_as(
        addr,
        "/v3/lock/unlock",
        &format!(r#"{{"key":"{key}"}}"#),
        r#"{"key":<the lock's key>}"#,
        Exact,
    )
    .await;
    let camp = s
        .post(
            addr,
            "/v3/election/campaign",
            &format!(
                r#"{{"name":"{}","lease":"1001","value":"{}"}}"#,
                k("el"),
                k("v1")
            ),
            Exact,
        )
        .await;
    let leader = camp["leader"].to_string();
    s.post_as(
        addr,
        "/v3/election/proclaim",
        &format!(r#"{{"leader":{leader},"value":"{}"}}"#, k("v2")),
        r#"{"leader":<campaign's leader>,"value":"v2"}"#,
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/election/leader",
        &format!(r#"{{"name":"{}"}}"#, k("el")),
        Exact,
    )
    .await;
    s.stream(
        addr,
        "/v3/election/observe",
        &format!(r#"{{"name":"{}"}}"#, k("el")),
        1,
        Exact,
    )
    .await;
    s.post_as(
        addr,
        "/v3/election/resign",
        &format!(r#"{{"leader":{leader}}}"#),
        r#"{"leader":<campaign's leader>}"#,
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/election/leader",
        &format!(r#"{{"name":"{}"}}"#, k("el")),
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/election/proclaim",
        &format!(r#"{{"value":"{}"}}"#, k("v")),
        Exact,
    )
    .await;

    // --- Cluster ---
    s.post(addr, "/v3/cluster/member/list", "{}", Members).await;
    let added = s
        .post(
            addr,
            "/v3/cluster/member/add",
            r#"{"peerURLs":["http://127.0.0.1:1"],"isLearner":true}"#,
            Members,
        )
        .await;
    let id = added["member"]["ID"].as_str().unwrap_or("0").to_string();
    s.post_as(
        addr,
        "/v3/cluster/member/update",
        &format!(r#"{{"ID":"{id}","peerURLs":["http://127.0.0.1:2"]}}"#),
        r#"{"ID":<the learner>,"peerURLs":["http://127.0.0.1:2"]}"#,
        Members,
    )
    .await;
    s.post_as(
        addr,
        "/v3/cluster/member/promote",
        &format!(r#"{{"ID":"{id}"}}"#),
        r#"{"ID":<the learner>}"#,
        Members,
    )
    .await;
    s.post_as(
        addr,
        "/v3/cluster/member/remove",
        &format!(r#"{{"ID":"{id}"}}"#),
        r#"{"ID":<the learner>}"#,
        Members,
    )
    .await;
    s.post(addr, "/v3/cluster/member/remove", r#"{"ID":"1"}"#, Members)
        .await;

    // --- Maintenance ---
    s.post(addr, "/v3/maintenance/alarm", r#"{"action":"GET"}"#, Exact)
        .await;
    s.post(
        addr,
        "/v3/maintenance/status",
        "{}",
        Drop(&[
            "version",
            "dbSize",
            "dbSizeInUse",
            "leader",
            "raftIndex",
            "raftTerm",
            "raftAppliedIndex",
        ]),
    )
    .await;
    s.post(addr, "/v3/maintenance/defragment", "{}", Exact)
        .await;
    s.post(addr, "/v3/maintenance/hash", "{}", Drop(&["hash"]))
        .await;
    s.post(
        addr,
        "/v3/maintenance/hashkv",
        r#"{"revision":"0"}"#,
        Drop(&["hash"]),
    )
    .await;
    s.stream(addr, "/v3/maintenance/snapshot", "{}", 1, ResultKeys)
        .await;
    s.post(
        addr,
        "/v3/maintenance/transfer-leadership",
        r#"{"targetID":"1"}"#,
        Exact,
    )
    .await;

    // --- Auth, while disabled ---
    s.post(addr, "/v3/auth/status", "{}", Exact).await;
    s.post(
        addr,
        "/v3/auth/authenticate",
        r#"{"name":"root","password":"pw"}"#,
        Exact,
    )
    .await;
    s.post(addr, "/v3/auth/enable", "{}", Exact).await;
    s.post(
        addr,
        "/v3/auth/user/add",
        r#"{"name":"alice","password":"pw"}"#,
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/auth/user/add",
        r#"{"name":"alice","password":"pw"}"#,
        Exact,
    )
    .await;
    s.post(addr, "/v3/auth/user/get", r#"{"name":"alice"}"#, Exact)
        .await;
    s.post(addr, "/v3/auth/user/list", "{}", Exact).await;
    s.post(
        addr,
        "/v3/auth/user/changepw",
        r#"{"name":"alice","password":"pw2"}"#,
        Exact,
    )
    .await;
    s.post(addr, "/v3/auth/role/add", r#"{"name":"reader"}"#, Exact)
        .await;
    s.post(
        addr,
        "/v3/auth/role/grant",
        &format!(
            r#"{{"name":"reader","perm":{{"permType":"READ","key":"{}","range_end":"{}"}}}}"#,
            k("t/"),
            k("t0")
        ),
        Exact,
    )
    .await;
    s.post(addr, "/v3/auth/role/get", r#"{"role":"reader"}"#, Exact)
        .await;
    s.post(addr, "/v3/auth/role/list", "{}", Exact).await;
    s.post(
        addr,
        "/v3/auth/user/grant",
        r#"{"user":"alice","role":"reader"}"#,
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/auth/user/grant",
        r#"{"user":"alice","role":"nope"}"#,
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/auth/user/revoke",
        r#"{"name":"alice","role":"reader"}"#,
        Exact,
    )
    .await;
    s.post(
        addr,
        "/v3/auth/role/revoke",
        &format!(
            r#"{{"role":"reader","key":"{}","range_end":"{}"}}"#,
            k("t/"),
            k("t0")
        ),
        Exact,
    )
    .await;
    s.post(addr, "/v3/auth/role/delete", r#"{"role":"reader"}"#, Exact)
        .await;
    s.post(addr, "/v3/auth/user/delete", r#"{"name":"alice"}"#, Exact)
        .await;
    s.post(addr, "/v3/auth/user/delete", r#"{"name":"alice"}"#, Exact)
        .await;
    s.post(addr, "/v3/auth/disable", "{}", Exact).await;

    // --- Plain HTTP endpoints ---
    s.get(addr, "/version", Drop(&["etcdserver"])).await;
    s.get(addr, "/health", Exact).await;

    // --- Bad input on every path: a wrong method, malformed JSON, bad
    // base64 (streams included) ---
    for p in PATHS {
        s.get(addr, &format!("/v3{p}"), Text).await;
    }
    for p in PATHS {
        let path = format!("/v3{p}");
        let r = post(addr, &path, r#"{"key":"#).await;
        s.row(
            format!("POST {path} (malformed JSON)"),
            normalize(CodeOnly, r.status, &r.body),
        );
    }
    for p in ["/kv/range", "/kv/put", "/lock/lock", "/election/leader"] {
        let path = format!("/v3{p}");
        let r = post(addr, &path, r#"{"key":"!!","name":"!!"}"#).await;
        s.row(
            format!("POST {path} (bad base64)"),
            normalize(CodeOnly, r.status, &r.body),
        );
    }
    s
}

/// (row label, target, why): differences the README documents.
const BY_DESIGN: &[(&str, &str, &str)] = &[
    (
        "POST /v3/cluster/member/list {}",
        "gateway",
        "a gateway lists itself (or every registered gateway), not the store's members",
    ),
    (
        "POST /v3/watch (malformed JSON)",
        "*",
        "a bad /v3/watch request is a 400 where etcd's gateway answers 500",
    ),
    (
        "POST /v3/lease/keepalive (malformed JSON)",
        "*",
        "a bad /v3/lease/keepalive request is a 400 where etcd's gateway answers 500",
    ),
    (
        "POST /v3/maintenance/snapshot {} (stream)",
        "*",
        "the first chunk's header names the backup's revision, as etcd 3.5's does (3.4 sends none)",
    ),
    (
        r#"POST /v3/cluster/member/update {"ID":<the learner>,"peerURLs":["http://127.0.0.1:2"]}"#,
        "*",
        "etcd 3.4's MemberUpdate turns a learner into a voter in its member list (a bug); Lookout keeps it a learner",
    ),
];

fn by_design(label: &str, target: &str) -> Option<&'static str> {
    let prefix_35 = ETCD_35_PATHS
        .iter()
        .any(|p| label.starts_with(&format!("POST /v3{p} ")) || label == format!("GET /v3{p}"));
    if label.starts_with("POST /v3alpha/") {
        return Some("etcd 3.4 no longer serves /v3alpha; Lookout keeps it for 3.2/3.3 clients");
    }
    if prefix_35 {
        return Some("an etcd 3.5 path: etcd 3.4 answers 404");
    }
    BY_DESIGN
        .iter()
        .find(|(l, t, _)| *l == label && (*t == "*" || target.starts_with(t)))
        .map(|(_, _, why)| *why)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_json_gateway_path_answers_like_etcd() {
    let etcd = EtcdServer::start().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = crate::support::start_store(dir_a.path(), None).await;
    let store2 = crate::support::start_store(dir_b.path(), None).await;
    let gw_store = TestGateway::start(&[&store2.endpoint]).await;
    let etcd2 = EtcdServer::start().await;
    let gw_etcd = TestGateway::start(&[&etcd2.endpoint]).await;

    let targets: Vec<(&str, String)> = vec![
        ("lookout store", store.endpoint.clone()),
        ("gateway over lookout store", gw_store.endpoint.clone()),
        ("gateway over etcd", gw_etcd.endpoint.clone()),
    ];
    let want = session(&etcd.endpoint).await;
    let mut got = BTreeMap::new();
    for (name, addr) in &targets {
        got.insert(*name, session(addr).await);
    }

    let mut table = String::from(
        "| request | etcd 3.4 | lookout store | gateway over lookout store | gateway over etcd |\n|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for (i, (label, theirs)) in want.rows.iter().enumerate() {
        let mut cells = vec![format!("`{}`", theirs.replace('|', "\\|"))];
        for (name, _) in &targets {
            let (l, ours) = &got[name].rows[i];
            assert_eq!(l, label, "{name}: row {i} out of step");
            if ours == theirs {
                cells.push("same".into());
            } else if let Some(why) = by_design(label, name) {
                cells.push(format!("by design ({why}): `{}`", ours.replace('|', "\\|")));
            } else {
                cells.push(format!("**DIFFERS**: `{}`", ours.replace('|', "\\|")));
                failures.push(format!(
                    "{name}: {label}\n  etcd:    {theirs}\n  lookout: {ours}"
                ));
            }
        }
        table.push_str(&format!(
            "| `{}` | {} |\n",
            label.replace('|', "\\|"),
            cells.join(" | ")
        ));
    }
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("json_gateway_table.md");
    std::fs::write(&out, &table).unwrap();
    eprintln!("{table}\n(written to {})", out.display());
    assert!(
        failures.is_empty(),
        "{} rows differ from etcd:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The server's own listing names exactly the paths this table covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_path_is_in_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::support::start_store(dir.path(), None).await;
    let r = call(&store.endpoint, "GET", "/", &[], "").await;
    let listed: Vec<String> = r.json()["api"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str()?.strip_prefix("POST /v3").map(String::from))
        .collect();
    let want: Vec<String> = PATHS.iter().map(|p| p.to_string()).collect();
    assert_eq!(listed, want);
}
