//! The readable `/v1/kv` API and the shared port, over loopback with a real
//! HTTP client against an in-process `lookout store`.

use lookout_gateway::http::HttpConfig;
use lookout_proto::pb::{RangeRequest, kv_client::KvClient};

use crate::http_client::{Backend, TestStore, b64_bytes, call, post};
use crate::on_both;

on_both! {
    kv_round_trip => put_get_list_delete_with_text_and_binary;
    shared_port => grpc_and_http_share_the_port;
}

async fn put_get_list_delete_with_text_and_binary(s: Backend) {
    let a = s.addr();

    let r = call(a, "PUT", "/v1/kv/app/a", &[], "hello").await;
    assert_eq!((r.status, r.json()["revision"].as_i64()), (200, Some(2)));
    // A key with a space and a non-UTF-8 byte, percent-encoded in the path.
    let r = call(
        a,
        "PUT",
        "/v1/kv/app/b%20%FF?prev_kv=true",
        &[],
        &b"\xff\x00"[..],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().get("prev_kv").is_none());
    let r = call(a, "PUT", "/v1/kv/app/a?prev_kv=true", &[], "again").await;
    assert_eq!(r.json()["prev_kv"]["value"], "hello");

    // Raw value with metadata in headers.
    let r = call(a, "GET", "/v1/kv/app/a", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "again");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-lookout-revision"), Some("4"));
    assert_eq!(r.header("x-lookout-mod-revision"), Some("4"));
    assert_eq!(r.header("x-lookout-create-revision"), Some("2"));
    assert_eq!(r.header("x-lookout-version"), Some("2"));

    // JSON with metadata on request.
    let r = call(
        a,
        "GET",
        "/v1/kv/app/a",
        &[("accept", "application/json")],
        "",
    )
    .await;
    assert_eq!(
        r.json(),
        serde_json::json!({"revision":4,"kv":{"key":"app/a","value":"again","create_revision":2,"mod_revision":4,"version":2}})
    );

    // Prefix listing: the binary key and value come back base64, flagged.
    let r = call(a, "GET", "/v1/kv/app/?prefix=true", &[], "").await;
    let j = r.json();
    assert_eq!(
        (j["count"].as_i64(), j["more"].as_bool()),
        (Some(2), Some(false))
    );
    let b = &j["kvs"][1];
    assert_eq!(b["key"], b64_bytes(b"app/b \xff"));
    assert_eq!(b["key_encoding"], "base64");
    assert_eq!(b["value"], b64_bytes(b"\xff\x00"));
    assert_eq!(b["value_encoding"], "base64");
    assert_eq!(j["kvs"][0]["key"], "app/a");
    assert!(j["kvs"][0].get("key_encoding").is_none());

    let r = call(
        a,
        "GET",
        "/v1/kv/app/?prefix=true&keys_only=true&limit=1",
        &[],
        "",
    )
    .await;
    let j = r.json();
    assert_eq!(j["more"], true);
    assert_eq!(j["kvs"].as_array().unwrap().len(), 1);
    assert!(j["kvs"][0].get("value").is_none());

    let r = call(a, "GET", "/v1/kv/app/?prefix=true&count_only=true", &[], "").await;
    assert_eq!(r.json()["count"], 2);

    // An old revision, like etcdctl get --rev.
    let r = call(a, "GET", "/v1/kv/app/a?rev=2", &[], "").await;
    assert_eq!(r.text(), "hello");

    let r = call(a, "DELETE", "/v1/kv/app/?prefix=true&prev_kv=true", &[], "").await;
    let j = r.json();
    assert_eq!(
        (j["revision"].as_i64(), j["deleted"].as_i64()),
        (Some(5), Some(2))
    );
    assert_eq!(j["prev_kvs"][0]["value"], "again");

    let r = call(a, "GET", "/v1/kv/app/a", &[], "").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        serde_json::json!({"error":"etcdserver: key not found","code":5})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_json_errors_with_etcds_statuses() {
    let http = HttpConfig {
        max_request_bytes: 4096,
        ..Default::default()
    };
    let s = TestStore::start_with(http, |c| c.max_request_bytes = 4096).await;
    let a = &s.addr;

    // Bad JSON and bad base64: 400, code 3, the field named.
    let r = post(a, "/v3/kv/range", r#"{"key":"!!"}"#).await;
    assert_eq!(r.status, 400);
    let j = r.json();
    assert_eq!(j["code"], 3);
    assert!(
        j["error"].as_str().unwrap().contains(r#"field "key""#),
        "{j}"
    );
    assert_eq!(j["error"], j["message"]);
    let r = post(
        a,
        "/v3/kv/txn",
        r#"{"success":[{"request_put":{"key":"YQ==","lease":"x"}}]}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains(r#"field "success[0].request_put.lease""#),
        "{}",
        r.text()
    );
    let r = post(a, "/v3/kv/put", r#"{"key":"#).await;
    assert_eq!((r.status, r.json()["code"].as_i64()), (400, Some(3)));

    // The store's own errors keep etcd's message and status.
    let r = post(a, "/v3/kv/range", r#"{"key":""}"#).await;
    assert_eq!(
        (r.status, r.json()),
        (
            400,
            serde_json::json!({"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3})
        )
    );
    let r = post(a, "/v3/lease/revoke", r#"{"ID":"42"}"#).await;
    assert_eq!((r.status, r.json()["code"].as_i64()), (404, Some(5)));
    let r = post(a, "/v3/lease/grant", r#"{"ID":"7","TTL":"30"}"#).await;
    assert_eq!(r.status, 200);
    let r = post(a, "/v3/lease/grant", r#"{"ID":"7","TTL":"30"}"#).await;
    assert_eq!((r.status, r.json()["code"].as_i64()), (412, Some(9)));

    // A value a little over the store's limit: the store's error; far over
    // the body limit: 413 before anything is parsed.
    let r = call(a, "PUT", "/v1/kv/big", &[], vec![b'x'; 5000]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "etcdserver: request is too large");
    let r = call(a, "PUT", "/v1/kv/big", &[], vec![b'x'; 200_000]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["code"], 3);
    let big = format!(r#"{{"key":"YQ==","value":"{}"}}"#, "A".repeat(200_000));
    let r = post(a, "/v3/kv/put", &big).await;
    assert_eq!(r.status, 413);

    // Query parameters are checked by name.
    let r = call(a, "GET", "/v1/kv/a?prefx=true", &[], "").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("prefx"));
    let r = call(a, "GET", "/v1/kv/a?rev=abc", &[], "").await;
    assert!(r.json()["error"].as_str().unwrap().contains(r#""rev""#));
    let r = call(a, "GET", "/v1/kv/", &[], "").await;
    assert_eq!(r.status, 400);
    let r = call(a, "PUT", "/v1/kv/a?lease=99", &[], "v").await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("etcdserver: requested lease not found"))
    );

    // Wrong method, unknown path.
    let r = call(a, "GET", "/v3/kv/range", &[], "").await;
    assert_eq!(r.status, 405);
    let r = call(a, "POST", "/v1/kv/a", &[], "").await;
    assert_eq!(r.status, 405);
    let r = call(a, "GET", "/v2/keys/foo", &[], "").await;
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["code"], 5);
    let api: Vec<&str> = j["api"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(api.contains(&"POST /v3/kv/range"), "{j}");
    assert!(api.iter().any(|p| p.starts_with("GET /v1/watch/")), "{j}");
    let r = call(a, "GET", "/", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["api"], j["api"]);
    // CORS preflight, as etcd's gateway answers it, but without etcd's
    // default `*` origin: no `--cors`, no CORS header.
    let r = call(a, "OPTIONS", "/v3/kv/range", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

async fn grpc_and_http_share_the_port(s: Backend) {
    let r = call(s.addr(), "PUT", "/v1/kv/shared", &[], "over http").await;
    assert_eq!(r.status, 200);
    // An HTTP/2 gRPC client on the same listener reads what HTTP wrote.
    let mut kv = KvClient::connect(format!("http://{}", s.addr()))
        .await
        .expect("grpc connect");
    let got = kv
        .range(RangeRequest {
            key: "shared".into(),
            ..Default::default()
        })
        .await
        .expect("grpc range")
        .into_inner();
    assert_eq!(got.kvs[0].value.as_ref(), b"over http");
    // An unknown gRPC method is gRPC's Unimplemented, not an HTTP 404 page.
    let mut raw = tonic::client::Grpc::new(
        tonic::transport::Channel::from_shared(format!("http://{}", s.addr()))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    raw.ready().await.unwrap();
    let err = raw
        .unary::<RangeRequest, lookout_proto::pb::RangeResponse, _>(
            tonic::Request::new(RangeRequest::default()),
            http::uri::PathAndQuery::from_static("/etcdserverpb.Nope/Range"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
}
