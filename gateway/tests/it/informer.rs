//! A third-party client (the `etcd-client` crate) runs the informer
//! pattern through the gateway: list a prefix, watch from its revision + 1
//! while others write, and end with exactly the store's state.

use std::sync::Arc;

use bytes::Bytes;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use lookout_proto::mvccpb::{self, KeyValue};
use lookout_proto::pb::{RangeRequest, WatchResponse};
use lookout_testkit::EtcdServer;
use lookout_testkit::checker::{StoreHistory, WatcherLog, check_list_then_watch, check_watcher};
use parking_lot::Mutex;

use crate::harness::*;

fn to_kv(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: Bytes::copy_from_slice(kv.key()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        value: Bytes::copy_from_slice(kv.value()),
        lease: kv.lease(),
    }
}

/// The etcd-client response as the checker's wire type.
fn to_response(r: &etcd_client::WatchResponse) -> WatchResponse {
    WatchResponse {
        header: r.header().map(|h| lookout_proto::pb::ResponseHeader {
            revision: h.revision(),
            ..Default::default()
        }),
        watch_id: r.watch_id(),
        created: r.created(),
        canceled: r.canceled(),
        compact_revision: r.compact_revision(),
        events: r
            .events()
            .iter()
            .map(|e| mvccpb::Event {
                r#type: match e.event_type() {
                    EventType::Put => mvccpb::event::EventType::Put as i32,
                    EventType::Delete => mvccpb::event::EventType::Delete as i32,
                },
                kv: e.kv().map(to_kv),
                prev_kv: e.prev_kv().map(to_kv),
            })
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_client_informer_through_the_gateway() {
    let etcd = EtcdServer::start().await;
    let mut direct = kv(&etcd.endpoint).await;
    churn(&mut direct, "inf/", 60, 30, 21).await;
    let gw = TestGateway::start(&[&etcd.endpoint]).await;
    let mut client = Client::connect([gw.endpoint.as_str()], None)
        .await
        .expect("connect");

    // The gateway presents itself as the cluster, so the client balances
    // across gateways, never onto the store.
    let members = client.member_list().await.expect("member list");
    assert_eq!(members.members().len(), 1);
    assert_eq!(
        members.members()[0].client_urls(),
        [format!("http://{}", gw.endpoint)]
    );
    let status = client.status().await.expect("status");
    assert_eq!(
        status.header().unwrap().member_id(),
        members.members()[0].id()
    );

    // List, then watch from the list's revision + 1.
    let list = client
        .get("inf/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("list");
    let list_rev = list.header().unwrap().revision();
    let listed: Vec<KeyValue> = list.kvs().iter().map(to_kv).collect();
    assert!(!listed.is_empty());
    let req = prefix_watch("inf/", list_rev + 1);
    let log = Arc::new(Mutex::new(WatcherLog::new(&req)));
    let mut stream = client
        .watch(
            "inf/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(list_rev + 1),
            ),
        )
        .await
        .expect("watch");
    let sink = log.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(r)) = stream.message().await {
            sink.lock().record(&to_response(&r));
        }
    });

    // Concurrent writers: one on the store directly, one through the
    // gateway with the same third-party client.
    let ep = etcd.endpoint.clone();
    let direct_writer = tokio::spawn(async move {
        let mut c = kv(&ep).await;
        churn(&mut c, "inf/", 200, 30, 22).await
    });
    let mut writer = Client::connect([gw.endpoint.as_str()], None).await.unwrap();
    let mut via_rev = 0;
    for i in 0..100 {
        let key = format!("inf/gw-{:02}", i % 17);
        let r = if i % 7 == 6 {
            writer
                .delete(key, None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision()
        } else {
            writer
                .put(key, format!("g{i}"), None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision()
        };
        via_rev = via_rev.max(r);
    }
    let through = direct_writer.await.unwrap().max(via_rev);

    lookout_testkit::wait_for("informer caught up", WAIT, || {
        let last = log.lock().last_revision();
        async move { last.is_some_and(|r| r >= through).then_some(()) }
    })
    .await;
    reader.abort();
    let history = StoreHistory::fetch(&etcd.endpoint, list_rev, through, WAIT).await;
    let log = log.lock().clone();
    check_watcher(&history, &log, through).expect("no gap, no duplicate");
    check_list_then_watch(&history, list_rev, &listed, &log, through)
        .expect("list + events == store at every revision");

    // And the informer's final view is the store's, key for key.
    let mut state: std::collections::BTreeMap<Bytes, KeyValue> =
        listed.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
    for e in &log.events {
        let kv = e.kv.clone().unwrap();
        if e.r#type == mvccpb::event::EventType::Delete as i32 {
            state.remove(&kv.key);
        } else {
            state.insert(kv.key.clone(), kv);
        }
    }
    let store = direct
        .range(RangeRequest {
            key: b("inf/"),
            range_end: b("inf0"),
            revision: through,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kvs;
    assert_eq!(state.into_values().collect::<Vec<_>>(), store);
}
