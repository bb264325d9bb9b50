//! `v3lockpb.Lock` as etcd 3.4 serves it (`v3lock` over
//! `concurrency.Mutex`): the lock `name` is held by the key under `name/`
//! with the lowest create revision; each caller's key is `name/<lease hex>`.

use bytes::Bytes;
use lookout_proto::pb::TxnRequest;
use lookout_proto::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_client::LockClient,
    lock_server::Lock,
};
use tonic::{Request, Response, Status};

use super::{
    Cleanup, Client, candidate_key, created_at, delete_txn, first_created, key_prefix, op_get,
    op_put, op_range, range_kvs,
};
use crate::api::EtcdApi;

/// The Lock service over one backend.
#[derive(Debug, Clone)]
pub struct LockService<A> {
    client: Client<A>,
}

impl<A: EtcdApi> LockService<A> {
    pub fn new(api: A) -> Self {
        Self {
            client: Client::new(api),
        }
    }

    async fn acquire(&self, req: LockRequest) -> Result<LockResponse, Status> {
        let c = &self.client;
        let lease = c.session(req.lease).await?;
        let prefix = key_prefix(&req.name);
        let my_key = candidate_key(&prefix, lease);
        // Join the queue unless this lease already did (then keep its
        // place), and learn the current owner in the same revision.
        let txn = TxnRequest {
            compare: vec![created_at(&my_key, 0)],
            success: vec![
                op_put(&my_key, Bytes::new(), lease),
                op_range(first_created(&prefix)),
            ],
            failure: vec![op_get(&my_key), op_range(first_created(&prefix))],
        };
        let cleanup = Cleanup::new(c, delete_txn(&my_key));
        let resp = c.txn(txn).await?;
        let header = resp.header.unwrap_or_default();
        let my_rev = if resp.succeeded {
            header.revision
        } else {
            range_kvs(&resp, 0)
                .first()
                .map_or(header.revision, |kv| kv.create_revision)
        };
        let owner = range_kvs(&resp, 1);
        if owner.is_empty() || owner[0].create_revision == my_rev {
            cleanup.disarm();
            return Ok(LockResponse {
                header: Some(header),
                key: my_key,
            });
        }
        // Queued: wait for every earlier waiter. Giving up (the client
        // cancels, the wait fails) removes our key, as etcd's Unlock does.
        let header = c.wait_deletes(&prefix, my_rev - 1).await?;
        cleanup.disarm();
        Ok(LockResponse {
            header: Some(header),
            key: my_key,
        })
    }
}

#[tonic::async_trait]
impl<A: EtcdApi> Lock for LockService<A> {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let api = self.client.api();
        if let Some(ch) = api.concurrency_upstream(&request.get_ref().name).await? {
            let mut r = LockClient::new(ch)
                .lock(request.into_inner())
                .await?
                .into_inner();
            api.restamp(&mut r.header);
            return Ok(Response::new(r));
        }
        self.acquire(request.into_inner()).await.map(Response::new)
    }

    /// A Delete of the key, which every backend forwards or applies.
    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let r = self.client.delete(request.into_inner().key).await?;
        Ok(Response::new(UnlockResponse { header: r.header }))
    }
}
