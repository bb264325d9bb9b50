//! HTTP watches over loopback with a real client: NDJSON streams that stay
//! open across writes, SSE resume by Last-Event-ID, etcd's `/v3/watch`,
//! disconnects freeing the watcher, shutdown ending streams. Every case
//! runs against `lookout store` and against a gateway in front of one.

use std::time::Duration;

use lookout_testkit::wait_for;
use serde_json::{Value, json};

use crate::http_client::{Backend, Lines, b64, call, post};
use crate::on_both;

on_both! {
    ndjson_stays_open => ndjson_watch_stays_open_across_puts_and_deletes;
    progress_lines => idle_watch_writes_progress_lines_with_the_revision;
    sse_resume => sse_resume_gets_exactly_the_missed_events;
    compacted_start => compacted_start_is_cancelled_with_the_compact_revision;
    v3_watch => etcd_v3_watch_streams_result_lines;
    disconnects => disconnected_clients_are_freed;
    shutdown => shutdown_ends_open_streams;
}

/// Reads lines until `n` events arrived; returns them (control lines are
/// checked by the caller through `skip`).
async fn events(lines: &mut Lines, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    // Bounded: each line within STEP, at most n + 50 lines.
    for _ in 0..n + 50 {
        if out.len() == n {
            return out;
        }
        let j = lines.next_json().await;
        match j["type"].as_str() {
            Some("PUT" | "DELETE") => out.push(j),
            Some("PROGRESS" | "CREATED") => {}
            other => panic!("unexpected line {other:?}: {j}"),
        }
    }
    panic!("only {} of {n} events: {out:?}", out.len());
}

fn brief(e: &Value) -> (String, String, i64) {
    (
        e["type"].as_str().unwrap().to_string(),
        e["key"].as_str().unwrap().to_string(),
        e["mod_revision"].as_i64().unwrap(),
    )
}

async fn ndjson_watch_stays_open_across_puts_and_deletes(s: Backend) {
    let a = s.addr();
    call(a, "PUT", "/v1/kv/app/before", &[], "0").await; // rev 2
    let mut w = Lines::open(a, "GET", "/v1/watch/app/?prefix=true", &[], "").await;
    assert_eq!(w.status, 200);
    assert_eq!(
        w.headers.get("content-type").unwrap(),
        "application/x-ndjson"
    );
    let created = w.next_json().await;
    assert_eq!(created, json!({"type":"CREATED","revision":2}));

    // Writes through every door: /v1, /v3 JSON, a txn with two puts, a
    // prefix delete; a key outside the prefix is not seen.
    call(a, "PUT", "/v1/kv/app/x", &[], "1").await; // 3
    call(a, "PUT", "/v1/kv/other", &[], "no").await; // 4
    post(
        a,
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("app/y"), b64("2")),
    )
    .await; // 5
    post(
        a,
        "/v3/kv/txn",
        &format!(
            r#"{{"success":[{{"request_put":{{"key":"{}","value":"{}"}}}},{{"request_put":{{"key":"{}","value":"{}"}}}}]}}"#,
            b64("app/t1"),
            b64("t"),
            b64("app/t2"),
            b64("t")
        ),
    )
    .await; // 6
    call(a, "DELETE", "/v1/kv/app/x", &[], "").await; // 7
    call(a, "DELETE", "/v1/kv/app/?prefix=true", &[], "").await; // 8: before, y, t1, t2

    let got: Vec<_> = events(&mut w, 9).await.iter().map(brief).collect();
    let want: Vec<(String, String, i64)> = [
        ("PUT", "app/x", 3),
        ("PUT", "app/y", 5),
        ("PUT", "app/t1", 6),
        ("PUT", "app/t2", 6),
        ("DELETE", "app/x", 7),
        ("DELETE", "app/before", 8),
        ("DELETE", "app/t1", 8),
        ("DELETE", "app/t2", 8),
        ("DELETE", "app/y", 8),
    ]
    .iter()
    .map(|(t, k, r)| (t.to_string(), k.to_string(), *r))
    .collect();
    assert_eq!(got, want);
    // Still open: one more write arrives.
    call(a, "PUT", "/v1/kv/app/last", &[], "z").await;
    let last = events(&mut w, 1).await;
    assert_eq!(
        last[0],
        json!({"type":"PUT","key":"app/last","value":"z","create_revision":9,"mod_revision":9,"version":1})
    );
}

async fn idle_watch_writes_progress_lines_with_the_revision(s: Backend) {
    let a = s.addr();
    call(a, "PUT", "/v1/kv/elsewhere", &[], "x").await; // 2
    let path = "/v1/watch/quiet?progress_interval_ms=100";
    let mut w = Lines::open(a, "GET", path, &[], "").await;
    assert_eq!(w.next_json().await["type"], "CREATED");
    call(a, "PUT", "/v1/kv/elsewhere", &[], "y").await; // 3, not watched
    // Bounded: a progress line at revision 3 comes within a few intervals.
    let mut seen = Vec::new();
    for _ in 0..20 {
        let j = w.next_json().await;
        assert_eq!(j["type"], "PROGRESS", "{j}");
        seen.push(j["revision"].as_i64().unwrap());
        if seen.last() == Some(&3) {
            return;
        }
    }
    panic!("no progress at revision 3: {seen:?}");
}

async fn sse_resume_gets_exactly_the_missed_events(s: Backend) {
    let a = s.addr();
    let sse = [("accept", "text/event-stream")];
    let mut w = Lines::open(a, "GET", "/v1/watch/job/?prefix=true", &sse, "").await;
    assert_eq!(w.headers.get("content-type").unwrap(), "text/event-stream");
    let (id, created) = w.next_sse().await.unwrap();
    assert_eq!((id, created["type"].as_str()), (None, Some("CREATED")));

    call(a, "PUT", "/v1/kv/job/1", &[], "a").await; // 2
    // A txn: two events share revision 3, only the last carries the id.
    post(
        a,
        "/v3/kv/txn",
        &format!(
            r#"{{"success":[{{"request_put":{{"key":"{}","value":"{}"}}}},{{"request_put":{{"key":"{}","value":"{}"}}}}]}}"#,
            b64("job/2"),
            b64("b"),
            b64("job/3"),
            b64("c")
        ),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, e) = w.next_sse().await.unwrap();
        ids.push((id, e["key"].as_str().unwrap().to_string()));
    }
    assert_eq!(
        ids,
        vec![
            (Some(2), "job/1".to_string()),
            (None, "job/2".to_string()),
            (Some(3), "job/3".to_string()),
        ]
    );
    let last_id = 3;
    drop(w);
    wait_for(
        "the dropped stream to be freed",
        Duration::from_secs(10),
        || async { (s.http_watch_streams().await == 0).then_some(()) },
    )
    .await;

    // Missed while disconnected: a put, a delete, a put of another key.
    call(a, "PUT", "/v1/kv/job/4", &[], "d").await; // 4
    call(a, "DELETE", "/v1/kv/job/1", &[], "").await; // 5
    call(a, "PUT", "/v1/kv/job/2", &[], "b2").await; // 6

    let resume = [
        ("accept", "text/event-stream"),
        ("last-event-id", &*last_id.to_string()),
    ];
    let mut w = Lines::open(a, "GET", "/v1/watch/job/?prefix=true", &resume, "").await;
    assert_eq!(w.next_sse().await.unwrap().1["type"], "CREATED");
    let mut got = Vec::new();
    for _ in 0..3 {
        let (id, e) = w.next_sse().await.unwrap();
        got.push((id, brief(&e)));
    }
    assert_eq!(
        got,
        vec![
            (Some(4), ("PUT".into(), "job/4".into(), 4)),
            (Some(5), ("DELETE".into(), "job/1".into(), 5)),
            (Some(6), ("PUT".into(), "job/2".into(), 6)),
        ]
    );
    // Nothing else was queued: the next event is a fresh write.
    call(a, "PUT", "/v1/kv/job/5", &[], "e").await; // 7
    let (id, e) = w.next_sse().await.unwrap();
    assert_eq!(
        (id, brief(&e)),
        (Some(7), ("PUT".into(), "job/5".into(), 7))
    );

    // ?rev=N resumes the same way for NDJSON clients.
    let mut n = Lines::open(a, "GET", "/v1/watch/job/?prefix=true&rev=6", &[], "").await;
    let got: Vec<_> = events(&mut n, 2).await.iter().map(brief).collect();
    assert_eq!(
        got,
        vec![
            ("PUT".into(), "job/2".into(), 6),
            ("PUT".into(), "job/5".into(), 7)
        ]
    );
}

async fn compacted_start_is_cancelled_with_the_compact_revision(s: Backend) {
    let a = s.addr();
    for i in 0..4 {
        call(a, "PUT", "/v1/kv/c", &[], i.to_string()).await; // 2..5
    }
    let r = post(a, "/v3/kv/compaction", r#"{"revision":"4"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut w = Lines::open(a, "GET", "/v1/watch/c?rev=2", &[], "").await;
    let mut lines = Vec::new();
    // Bounded: the stream ends after the cancel.
    for _ in 0..5 {
        match w.next_line().await {
            Some(l) => lines.push(serde_json::from_str::<Value>(&l).unwrap()),
            None => break,
        }
    }
    let cancel = lines.last().expect("a cancel line");
    assert_eq!(cancel["type"], "CANCELED", "{lines:?}");
    assert_eq!(cancel["compact_revision"], 4, "{lines:?}");
}

async fn etcd_v3_watch_streams_result_lines(s: Backend) {
    let a = s.addr();
    let body = format!(
        r#"{{"create_request":{{"key":"{}","range_end":"{}","prev_kv":true}}}}"#,
        b64("p/"),
        b64("p0")
    );
    let mut w = Lines::open(a, "POST", "/v3/watch", &[], body).await;
    assert_eq!(w.status, 200);
    let created = w.next_json().await;
    assert_eq!(created["result"]["created"], true, "{created}");
    assert_eq!(created["result"]["header"]["revision"], "1");
    call(a, "PUT", "/v1/kv/p/a", &[], "1").await;
    call(a, "PUT", "/v1/kv/p/a", &[], "2").await;
    call(a, "DELETE", "/v1/kv/p/a", &[], "").await;
    let mut evs = Vec::new();
    for _ in 0..3 {
        let j = w.next_json().await;
        evs.extend(j["result"]["events"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(
        evs[0],
        json!({"kv":{"key":b64("p/a"),"create_revision":"2","mod_revision":"2","version":"1","value":b64("1")}})
    );
    assert_eq!(evs[1]["prev_kv"]["value"], b64("1"));
    assert_eq!(evs[2]["type"], "DELETE");
    assert_eq!(evs[2]["kv"], json!({"key":b64("p/a"),"mod_revision":"4"}));

    // A bad first request is a 400 before any stream.
    let r = post(a, "/v3/watch", r#"{"create_request":{"key":"!!"}}"#).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("create_request.key")
    );
}

async fn disconnected_clients_are_freed(s: Backend) {
    let a = s.addr();
    call(a, "PUT", "/v1/kv/warm", &[], "up").await;
    // What watches hold below HTTP (cache watchers, or the store's stream
    // tasks), once nothing else is moving.
    let baseline = wait_for("a steady baseline", Duration::from_secs(10), || async {
        let n = s.watch_load().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        (s.watch_load().await == n).then_some(n)
    })
    .await;
    let mut streams = Vec::new();
    for i in 0..10 {
        let mut w = Lines::open(a, "GET", &format!("/v1/watch/d/{i}"), &[], "").await;
        assert_eq!(w.next_json().await["type"], "CREATED");
        streams.push(w);
        let body = format!(
            r#"{{"create_request":{{"key":"{}"}}}}"#,
            b64(&format!("d/{i}"))
        );
        let mut v3 = Lines::open(a, "POST", "/v3/watch", &[], body).await;
        assert_eq!(v3.next_json().await["result"]["created"], true);
        streams.push(v3);
    }
    assert_eq!(s.http_watch_streams().await, 20);
    let held = s.watch_load().await;
    assert!(held >= baseline + 20, "{held} vs {baseline}");
    // Mid-stream: one event delivered, then every client hangs up.
    call(a, "PUT", "/v1/kv/d/0", &[], "x").await;
    assert_eq!(events(&mut streams[0], 1).await[0]["key"], "d/0");
    drop(streams);
    wait_for(
        "all 20 HTTP watch streams freed",
        Duration::from_secs(10),
        || async { (s.http_watch_streams().await == 0).then_some(()) },
    )
    .await;
    // Freed below HTTP too: the watchers, not only the sockets.
    wait_for(
        "the backend's watchers freed",
        Duration::from_secs(10),
        || async { (s.watch_load().await <= baseline).then_some(()) },
    )
    .await;
    let r = call(a, "PUT", "/v1/kv/d/0", &[], "y").await;
    assert_eq!(r.status, 200);
}

async fn shutdown_ends_open_streams(s: Backend) {
    let a = s.addr().to_string();
    let mut w = Lines::open(&a, "GET", "/v1/watch/k", &[], "").await;
    assert_eq!(w.next_json().await["type"], "CREATED");
    let mut v3 = Lines::open(
        &a,
        "POST",
        "/v3/watch",
        &[],
        format!(r#"{{"create_request":{{"key":"{}"}}}}"#, b64("k")),
    )
    .await;
    assert!(v3.next_json().await["result"]["created"].as_bool().unwrap());
    let stopping = tokio::spawn(s.stop());
    assert_eq!(w.next_line().await, None);
    assert_eq!(v3.next_line().await, None);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("server stopped in time")
        .expect("stop task");
}
