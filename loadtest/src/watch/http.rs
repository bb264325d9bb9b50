//! One watcher per HTTP connection, reading a stream of JSON lines.
//!
//! Two wire shapes are understood, chosen with `--http-api`:
//!
//! - `lookout`: `GET /v1/watch/<prefix>?prefix=true&rev=N`, one JSON object
//!   per line: events `{"type":"PUT"|"DELETE","key":..,"value":..,
//!   "mod_revision":N,...}` with keys and values as text, a field that is
//!   not UTF-8 in base64 and flagged (`key_encoding` / `value_encoding`:
//!   `"base64"`); control lines `{"type":"CREATED"|"PROGRESS","revision":N}`
//!   and `{"type":"CANCELED","compact_revision":N,"cancel_reason":..}`.
//!   [`parse_line`] stays tolerant (nested `kv`, numbers as strings);
//! - `etcd`: etcd's own grpc-gateway, `POST /v3/watch` with a JSON
//!   `create_request`, answered by `{"result": WatchResponse}` lines with
//!   base64 keys and values.
//!
//! Everything HTTP-specific lives in this file; the checker and latency code
//! are shared with the gRPC watchers.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use lookout_testkit::checker::{WatchCheck, WatchEnd};
use serde_json::Value;

use super::{Group, Signals, StreamLimits, StreamOutcome, WatchTarget};
use crate::payload::{self, event_tag};
use crate::progress::Counters;

/// Which HTTP watch API the target serves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum HttpApi {
    /// `GET /v1/watch/<prefix>?prefix=true&rev=N`, NDJSON events.
    Lookout,
    /// etcd's grpc-gateway `POST /v3/watch`.
    Etcd,
}

/// One HTTP watcher's plan.
#[derive(Debug, Clone)]
pub struct HttpSpec {
    /// "host:port".
    pub addr: String,
    pub api: HttpApi,
    pub target: WatchTarget,
    pub start_rev: i64,
}

/// A decoded event from a JSON line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpEvent {
    pub is_delete: bool,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// What one JSON line said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Events(Vec<HttpEvent>),
    Created,
    Canceled {
        compact_revision: i64,
        reason: String,
    },
    Error(String),
    /// Progress, heartbeat, or a shape we do not know: ignored.
    Other,
}

/// Longest line accepted before the stream is treated as broken.
const MAX_LINE: usize = 64 << 20;

/// Runs one HTTP watcher until it reaches the target, the stop signal, or
/// its resume attempts run out.
pub async fn run_watcher(spec: HttpSpec, limits: StreamLimits, mut sig: Signals) -> StreamOutcome {
    let mut out = StreamOutcome::new(Group::Http, vec![WatchCheck::new(spec.start_rev)]);
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0;
    let started = std::time::Instant::now();
    let mut reached = false;
    let mut counted_ready = false;
    loop {
        if sig.stop.is_cancelled() {
            return out;
        }
        let rev = out.checks[0].next_rev();
        let opened = tokio::select! {
            _ = sig.stop.cancelled() => return out,
            r = tokio::time::timeout(limits.setup_timeout, open(&spec, rev)) => r,
        };
        let (body, driver) = match opened {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                out.note_error(&e);
                if !retry(&mut attempts, &mut backoff, &limits, &mut out, &e).await {
                    return out;
                }
                continue;
            }
            Err(_) => {
                let e = "opening the HTTP watch timed out".to_string();
                out.note_error(&e);
                if !retry(&mut attempts, &mut backoff, &limits, &mut out, &e).await {
                    return out;
                }
                continue;
            }
        };
        if !counted_ready {
            counted_ready = true;
            out.created = 1;
            out.ready_at = Some(std::time::Instant::now());
            Counters::add(&sig.counters.watchers_ready, 1);
        } else {
            Counters::add(&sig.counters.resumes, 1);
        }
        let res = read_stream(
            body,
            &spec,
            &limits,
            &mut sig,
            &mut out,
            started,
            &mut reached,
        )
        .await;
        driver.abort();
        match res {
            Ok(()) => return out,
            Err(e) => {
                out.note_error(&e);
                if !out.checks[0].is_open()
                    || !retry(&mut attempts, &mut backoff, &limits, &mut out, &e).await
                {
                    return out;
                }
            }
        }
    }
}

async fn retry(
    attempts: &mut u32,
    backoff: &mut Duration,
    limits: &StreamLimits,
    out: &mut StreamOutcome,
    e: &str,
) -> bool {
    *attempts += 1;
    if *attempts > limits.max_resumes {
        out.checks[0].set_end(WatchEnd::Lost {
            reason: e.to_string(),
        });
        return false;
    }
    out.resumes += 1;
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    true
}

type Body = hyper::body::Incoming;

async fn open(spec: &HttpSpec, rev: i64) -> Result<(Body, tokio::task::JoinHandle<()>), String> {
    let tcp = tokio::net::TcpStream::connect(&spec.addr)
        .await
        .map_err(|e| format!("connect {}: {e}", spec.addr))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    // The connection future does the socket I/O; it ends with the body.
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = request(spec, rev)?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http request: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect())
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(200)
                    .collect::<String>()
            })
            .unwrap_or_default();
        driver.abort();
        return Err(format!("HTTP {status}: {body}"));
    }
    Ok((resp.into_body(), driver))
}

/// The request that opens a watch from `rev`.
///
/// # Errors
/// A message when the request cannot be built (bad address).
pub fn request(spec: &HttpSpec, rev: i64) -> Result<http::Request<Full<Bytes>>, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let builder = http::Request::builder().header(http::header::HOST, &spec.addr);
    let req = match spec.api {
        HttpApi::Lookout => builder
            .method(http::Method::GET)
            .uri(format!(
                "/v1/watch/{}?prefix=true&rev={rev}",
                percent_encode_path(&spec.target.key)
            ))
            .header(http::header::ACCEPT, "application/x-ndjson")
            .body(Full::new(Bytes::new())),
        HttpApi::Etcd => {
            let body = serde_json::json!({
                "create_request": {
                    "key": b64.encode(&spec.target.key),
                    "range_end": b64.encode(&spec.target.range_end),
                    "start_revision": rev.to_string(),
                }
            });
            builder
                .method(http::Method::POST)
                .uri("/v3/watch")
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
        }
    };
    req.map_err(|e| format!("building the HTTP request: {e}"))
}

/// Escapes a key for a URL path, keeping `/` and unreserved characters.
pub fn percent_encode_path(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len());
    for &b in key {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

async fn read_stream(
    mut body: Body,
    spec: &HttpSpec,
    limits: &StreamLimits,
    sig: &mut Signals,
    out: &mut StreamOutcome,
    started: std::time::Instant,
    reached: &mut bool,
) -> Result<(), String> {
    let mut buf: Vec<u8> = Vec::new();
    let mut target = *sig.target.borrow();
    let mut done_counted = false;
    loop {
        let check = &out.checks[0];
        if !check.is_open() || check.last_rev() >= target {
            if !done_counted {
                Counters::add(&sig.counters.watchers_done, 1);
            }
            return Ok(());
        }
        let frame = tokio::select! {
            biased;
            _ = sig.stop.cancelled() => return Ok(()),
            t = super::next_value(&mut sig.target) => {
                target = t;
                continue;
            }
            f = body.frame() => f,
        };
        let data = match frame {
            None => return Err("server ended the HTTP watch stream".into()),
            Some(Err(e)) => return Err(format!("reading the HTTP watch stream: {e}")),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers
            },
        };
        buf.extend_from_slice(&data);
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_line(line, spec.api, &spec.target.key) {
                Line::Events(evs) => {
                    let now = payload::now_unix_ns();
                    let check = &mut out.checks[0];
                    for ev in &evs {
                        check.observe(ev.mod_revision, event_tag(ev.is_delete, &ev.key, &ev.value));
                        if let Some(s) = payload::decode(&ev.value)
                            && s.sent_unix_ns >= limits.live_from_unix_ns
                        {
                            out.latency.record_ns(now.saturating_sub(s.sent_unix_ns));
                        }
                    }
                    Counters::add(&sig.counters.events, evs.len() as u64);
                    if let Some(r) = limits.reach_rev
                        && !*reached
                        && check.last_rev() >= r
                    {
                        *reached = true;
                        out.reach.record_ns(started.elapsed().as_nanos() as u64);
                    }
                }
                Line::Canceled {
                    compact_revision,
                    reason,
                } => {
                    let end = if compact_revision > 0 {
                        WatchEnd::CompactCancelled { compact_revision }
                    } else {
                        WatchEnd::Cancelled { reason }
                    };
                    out.checks[0].set_end(end);
                    done_counted = true;
                    Counters::add(&sig.counters.watchers_done, 1);
                }
                Line::Error(e) => return Err(format!("server error line: {e}")),
                Line::Created | Line::Other => {}
            }
        }
        buf.drain(..start);
        if buf.len() > MAX_LINE {
            return Err(format!("a JSON line longer than {MAX_LINE} bytes"));
        }
    }
}

/// Parses one JSON line of either API shape. `prefix` helps decide whether
/// a key is text or base64.
pub fn parse_line(line: &[u8], api: HttpApi, prefix: &[u8]) -> Line {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return Line::Error(format!("not JSON ({e}): {}", String::from_utf8_lossy(line))),
    };
    if let Some(err) = v.get("error") {
        return Line::Error(err.to_string());
    }
    let obj = v.get("result").unwrap_or(&v);
    let base64_hint =
        api == HttpApi::Etcd || obj.get("encoding").and_then(Value::as_str) == Some("base64");
    let mut events = Vec::new();
    if let Some(list) = obj.get("events").and_then(Value::as_array) {
        for e in list {
            if let Some(ev) = parse_event(e, base64_hint, prefix) {
                events.push(ev);
            }
        }
    } else if let Some(kv) = obj.get("kv").or(Some(obj))
        && kv.get("key").is_some()
        && revision_of(kv).is_some()
        && let Some(ev) = parse_event(obj, base64_hint, prefix)
    {
        events.push(ev);
    }
    if !events.is_empty() {
        return Line::Events(events);
    }
    let typ = obj.get("type").and_then(Value::as_str);
    if obj.get("canceled").and_then(Value::as_bool) == Some(true)
        || typ.is_some_and(|t| t.eq_ignore_ascii_case("canceled"))
    {
        return Line::Canceled {
            compact_revision: obj.get("compact_revision").and_then(as_i64).unwrap_or(0),
            reason: obj
                .get("cancel_reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        };
    }
    if obj.get("created").and_then(Value::as_bool) == Some(true)
        || typ.is_some_and(|t| t.eq_ignore_ascii_case("created"))
    {
        return Line::Created;
    }
    Line::Other
}

fn parse_event(e: &Value, base64_hint: bool, prefix: &[u8]) -> Option<HttpEvent> {
    let kv = e.get("kv").unwrap_or(e);
    let is_delete = match e.get("type") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("delete"),
        Some(Value::Number(n)) => n.as_i64() == Some(1),
        Some(_) => false,
    };
    // Lookout flags each field it had to base64 (`key_encoding`,
    // `value_encoding`); text fields stay text.
    let flagged = |f: &str| kv.get(f).and_then(Value::as_str) == Some("base64");
    let key = bytes_of(
        kv.get("key")?,
        base64_hint || flagged("key_encoding"),
        |k| k.starts_with(prefix),
    )?;
    let value = match kv.get("value") {
        Some(v) => bytes_of(v, base64_hint || flagged("value_encoding"), |v| {
            payload::decode(v).is_some()
        })?,
        None => Vec::new(),
    };
    Some(HttpEvent {
        is_delete,
        key,
        value,
        mod_revision: revision_of(kv)?,
    })
}

fn revision_of(kv: &Value) -> Option<i64> {
    ["mod_revision", "modRevision", "revision"]
        .iter()
        .find_map(|f| kv.get(*f).and_then(as_i64))
}

fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Text or base64: the hint decides first; without it, text is kept unless
/// only its base64 decoding `looks_right`.
fn bytes_of(v: &Value, base64_hint: bool, looks_right: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let s = v.as_str()?;
    let b64 = base64::engine::general_purpose::STANDARD;
    if base64_hint {
        return b64.decode(s).ok();
    }
    let raw = s.as_bytes().to_vec();
    if looks_right(&raw) {
        return Some(raw);
    }
    match b64.decode(s) {
        Ok(d) if looks_right(&d) => Some(d),
        _ => Some(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lookout_ndjson_event() {
        let v = payload::encode_at(3, 5, 40);
        let line = format!(
            r#"{{"type":"PUT","key":"p/k1","value":"{}","mod_revision":17}}"#,
            String::from_utf8_lossy(&v)
        );
        match parse_line(line.as_bytes(), HttpApi::Lookout, b"p/") {
            Line::Events(e) => {
                assert_eq!(e.len(), 1);
                assert_eq!(e[0].key, b"p/k1");
                assert_eq!(e[0].value, v.to_vec());
                assert_eq!((e[0].mod_revision, e[0].is_delete), (17, false));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_etcd_gateway_result() {
        let b = base64::engine::general_purpose::STANDARD;
        let line = format!(
            r#"{{"result":{{"header":{{"revision":"9"}},"events":[{{"kv":{{"key":"{}","value":"{}","mod_revision":"9"}}}},{{"type":"DELETE","kv":{{"key":"{}","mod_revision":"10"}}}}]}}}}"#,
            b.encode("p/a"),
            b.encode("x"),
            b.encode("p/b")
        );
        match parse_line(line.as_bytes(), HttpApi::Etcd, b"p/") {
            Line::Events(e) => {
                assert_eq!(e[0].key, b"p/a");
                assert_eq!(e[0].value, b"x");
                assert_eq!((e[1].mod_revision, e[1].is_delete), (10, true));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_line(br#"{"result":{"created":true}}"#, HttpApi::Etcd, b"p/"),
            Line::Created
        );
        assert_eq!(
            parse_line(
                br#"{"result":{"canceled":true,"compact_revision":"5"}}"#,
                HttpApi::Etcd,
                b"p/"
            ),
            Line::Canceled {
                compact_revision: 5,
                reason: String::new()
            }
        );
        assert!(matches!(
            parse_line(b"nope", HttpApi::Etcd, b"p/"),
            Line::Error(_)
        ));
    }

    #[test]
    fn lookout_base64_values_are_recognised() {
        let b = base64::engine::general_purpose::STANDARD;
        let v = payload::encode_at(1, 2, 30);
        let line = format!(
            r#"{{"type":"put","kv":{{"key":"{}","value":"{}","mod_revision":"4"}}}}"#,
            b.encode("p/k"),
            b.encode(&v)
        );
        match parse_line(line.as_bytes(), HttpApi::Lookout, b"p/") {
            Line::Events(e) => {
                assert_eq!(e[0].key, b"p/k");
                assert_eq!(e[0].value, v.to_vec());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lookout_flags_and_control_lines() {
        let b = base64::engine::general_purpose::STANDARD;
        let v = payload::encode_at(2, 3, 30);
        // A text key beside a flagged binary-looking value.
        let line = format!(
            r#"{{"type":"PUT","key":"p/k","value":"{}","value_encoding":"base64","mod_revision":8}}"#,
            b.encode(&v)
        );
        match parse_line(line.as_bytes(), HttpApi::Lookout, b"p/") {
            Line::Events(e) => {
                assert_eq!(e[0].key, b"p/k");
                assert_eq!(e[0].value, v.to_vec());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_line(
                br#"{"type":"CANCELED","compact_revision":5}"#,
                HttpApi::Lookout,
                b"p/"
            ),
            Line::Canceled {
                compact_revision: 5,
                reason: String::new()
            }
        );
        assert_eq!(
            parse_line(
                br#"{"type":"CREATED","revision":3}"#,
                HttpApi::Lookout,
                b"p/"
            ),
            Line::Created
        );
        assert_eq!(
            parse_line(
                br#"{"type":"PROGRESS","revision":9}"#,
                HttpApi::Lookout,
                b"p/"
            ),
            Line::Other
        );
    }

    #[test]
    fn encodes_path() {
        assert_eq!(percent_encode_path(b"a/b c?"), "a/b%20c%3F");
    }
}
