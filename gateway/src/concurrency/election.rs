//! `v3electionpb.Election` as etcd 3.4 serves it (`v3election` over
//! `concurrency.Election`): candidates of `name` are keys under `name/`,
//! the leader is the one with the lowest create revision and its value is
//! the leader's proclamation.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use lookout_proto::mvccpb::event::EventType;
use lookout_proto::pb::{ResponseHeader, TxnRequest};
use lookout_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_client::ElectionClient,
    election_server::Election,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{
    Cleanup, Client, candidate_key, created_at, delete_txn, key_prefix, op_delete, op_get, op_put,
    range_kvs,
};
use crate::api::{CallMeta, EtcdApi, WatchEvent};
use crate::error::{missing_leader, no_leader, not_leader};

/// The Election service over one backend.
#[derive(Debug, Clone)]
pub struct ElectionService<A> {
    client: Client<A>,
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

impl<A: EtcdApi> ElectionService<A> {
    pub fn new(api: A) -> Self {
        Self {
            client: Client::new(api),
        }
    }

    async fn campaign(
        &self,
        meta: CallMeta,
        req: CampaignRequest,
    ) -> Result<CampaignResponse, Status> {
        let c = &self.client.with(meta);
        let lease = c.session(req.lease).await?;
        let prefix = key_prefix(&req.name);
        let key = candidate_key(&prefix, lease);
        let txn = TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![op_put(&key, req.value.clone(), lease)],
            failure: vec![op_get(&key)],
        };
        // Armed before the write (see `Cleanup`); after it, a resign of
        // exactly this candidacy.
        let mut resign = Cleanup::new(c, delete_txn(&key));
        let resp = c.txn(txn).await?;
        let header = resp.header.unwrap_or_default();
        let mut rev = header.revision;
        if !resp.succeeded {
            let current = range_kvs(&resp, 0).first().cloned().unwrap_or_default();
            rev = current.create_revision;
            if current.value != req.value {
                // Already a candidate with another value: proclaim the new
                // one, resigning if that fails.
                if let Err(e) = proclaim(c, &key, rev, lease, req.value.clone()).await {
                    resign.set(resign_txn(&key, rev));
                    return Err(e);
                }
            }
        }
        // Abandoning the campaign (the client cancels) resigns, as etcd's
        // does; any other failure of the wait leaves the key.
        resign.set(resign_txn(&key, rev));
        let wait = c.wait_deletes(&prefix, rev - 1).await;
        resign.disarm();
        wait?;
        Ok(CampaignResponse {
            header: Some(header),
            leader: Some(LeaderKey {
                name: req.name,
                key,
                rev,
                lease,
            }),
        })
    }

    async fn proclaim(
        &self,
        meta: CallMeta,
        req: ProclaimRequest,
    ) -> Result<ProclaimResponse, Status> {
        let c = &self.client.with(meta);
        let leader = req.leader.ok_or_else(missing_leader)?;
        let lease = c.session(leader.lease).await?;
        let header = proclaim(c, &leader.key, leader.rev, lease, req.value).await?;
        Ok(ProclaimResponse {
            header: Some(header),
        })
    }

    async fn leader(&self, meta: CallMeta, req: LeaderRequest) -> Result<LeaderResponse, Status> {
        let resp = self
            .client
            .with(meta)
            .first_created(&key_prefix(&req.name))
            .await?;
        let kv = resp.kvs.into_iter().next().ok_or_else(no_leader)?;
        Ok(LeaderResponse {
            header: resp.header,
            kv: Some(kv),
        })
    }

    async fn resign(&self, meta: CallMeta, req: ResignRequest) -> Result<ResignResponse, Status> {
        let c = &self.client.with(meta);
        let leader = req.leader.ok_or_else(missing_leader)?;
        c.session(leader.lease).await?;
        // Not the leader any more (or never): nothing is deleted and the
        // call still succeeds, as etcd's.
        let resp = c.txn(resign_txn(&leader.key, leader.rev)).await?;
        Ok(ResignResponse {
            header: resp.header,
        })
    }
}

/// Delete `key` if it is still the candidate created at `rev`.
fn resign_txn(key: &Bytes, rev: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![created_at(key, rev)],
        success: vec![op_delete(key)],
        failure: vec![],
    }
}

/// Sets the leader's value if `key` is still the candidate created at
/// `rev`; else etcd's "not leader".
async fn proclaim<A: EtcdApi>(
    c: &Client<A>,
    key: &Bytes,
    rev: i64,
    lease: i64,
    value: Bytes,
) -> Result<ResponseHeader, Status> {
    let resp = c
        .txn(TxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![op_put(key, value, lease)],
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        return Err(not_leader());
    }
    Ok(resp.header.unwrap_or_default())
}

/// Streams the leader of `prefix`'s election and every change to it until
/// the client goes away or a watch fails (the stream then ends, as etcd's
/// does, without an error).
async fn observe<A: EtcdApi>(
    c: Client<A>,
    prefix: Bytes,
    tx: mpsc::Sender<Result<LeaderResponse, Status>>,
) {
    loop {
        let Ok(resp) = c.first_created(&prefix).await else {
            return;
        };
        let (header, kv) = match resp.kvs.into_iter().next() {
            Some(kv) => (resp.header.unwrap_or_default(), kv),
            None => {
                // No leader yet: the first PUT under the prefix is one.
                let rev = resp.header.map_or(0, |h| h.revision);
                let Ok(mut replies) = c
                    .watch(
                        prefix.clone(),
                        lookout_cache::prefix_end(&prefix)
                            .unwrap_or_else(|| Bytes::from_static(b"\0")),
                        rev,
                    )
                    .await
                else {
                    return;
                };
                let mut found = None;
                while found.is_none() {
                    let Some(Ok(reply)) = replies.next().await else {
                        return;
                    };
                    if reply.head.canceled {
                        return;
                    }
                    for ev in &reply.events {
                        let ev = ev.to_event(false);
                        if ev.r#type == EventType::Put as i32 {
                            let kv = ev.kv.unwrap_or_default();
                            let mut h = reply.head.header.unwrap_or_default();
                            h.revision = kv.mod_revision;
                            found = Some((h, kv));
                            break;
                        }
                    }
                }
                found.expect("set before the loop ends")
            }
        };
        let from = header.revision + 1;
        let key = kv.key.clone();
        if tx
            .send(Ok(LeaderResponse {
                header: Some(header),
                kv: Some(kv),
            }))
            .await
            .is_err()
        {
            return;
        }
        // The leader's changes until it is deleted; then look again.
        let Ok(mut replies) = c.watch(key, Bytes::new(), from).await else {
            return;
        };
        'leader: loop {
            let Some(Ok(reply)) = replies.next().await else {
                return;
            };
            if reply.head.canceled {
                return;
            }
            for ev in &reply.events {
                let ev = ev.to_event(false);
                if ev.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                let r = LeaderResponse {
                    header: reply.head.header,
                    kv: ev.kv,
                };
                if tx.send(Ok(r)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl<A: EtcdApi> Election for ElectionService<A> {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let api = self.client.api();
        let meta = CallMeta::of(&request);
        if let Some(ch) = api
            .concurrency_upstream(&request.get_ref().name, &meta)
            .await?
        {
            let mut r = ElectionClient::new(ch)
                .campaign(request.into_inner())
                .await?
                .into_inner();
            api.restamp(&mut r.header);
            return Ok(Response::new(r));
        }
        self.campaign(meta, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let meta = CallMeta::of(&request);
        ElectionService::proclaim(self, meta, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let meta = CallMeta::of(&request);
        ElectionService::leader(self, meta, request.into_inner())
            .await
            .map(Response::new)
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let api = self.client.api().clone();
        let meta = CallMeta::of(&request);
        let name = request.into_inner().name;
        if let Some(ch) = api.concurrency_upstream(&name, &meta).await? {
            let up = ElectionClient::new(ch)
                .observe(LeaderRequest { name })
                .await?
                .into_inner();
            let s = up.map(move |r| {
                r.map(|mut r| {
                    api.restamp(&mut r.header);
                    r
                })
            });
            return Ok(Response::new(Box::pin(s)));
        }
        let (tx, rx) = mpsc::channel(16);
        let client = self.client.with(meta);
        let prefix = key_prefix(&name);
        tokio::spawn(async move {
            // A client that goes away ends the task even while it waits
            // on a watch.
            tokio::select! {
                _ = observe(client, prefix, tx.clone()) => {}
                _ = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let meta = CallMeta::of(&request);
        ElectionService::resign(self, meta, request.into_inner())
            .await
            .map(Response::new)
    }
}
