//! A loopback TCP proxy that a test can cut and resume, to disconnect a
//! client from a live server (real sockets, real bytes; only the link breaks).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Forwards `127.0.0.1:<port>` to a target address until dropped.
#[derive(Debug)]
pub struct TcpProxy {
    endpoint: String,
    open: Arc<AtomicBool>,
    /// Cancelled on every cut (and replaced by a fresh one): the connections
    /// forwarded before it close their sockets. The lock is held only to
    /// swap or clone the token, never across an await.
    cut: Arc<Mutex<CancellationToken>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on an ephemeral loopback port and forwards to `target`
    /// ("127.0.0.1:port").
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = listener.local_addr().expect("addr").to_string();
        let open = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let target = target.to_string();
        let accept = {
            let open = open.clone();
            let cut = cut.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !open.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let cut = cut.lock().clone();
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (mut c, mut s) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                            _ = cut.cancelled() => {}
                        }
                    });
                }
            })
        };
        Self {
            endpoint,
            open,
            cut,
            accept,
        }
    }

    /// "127.0.0.1:port" clients connect to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        std::mem::take(&mut *self.cut.lock()).cancel();
    }

    /// Accepts and forwards new connections again.
    pub fn resume(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
