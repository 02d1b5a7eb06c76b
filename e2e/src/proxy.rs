//! A TCP pass-through between one client and the API server that a test can stall, to make a
//! network partition for that client alone: while stalled it forwards no byte in either
//! direction and connects nothing new, so requests hang the way they do when packets are
//! dropped (no error, no reset). Bytes held back are never delivered: a stall lasts until
//! the proxy is dropped, as a partition outlives the process that was cut off.
//!
//! TLS passes through untouched; the API server's certificate names 127.0.0.1, so a
//! kubeconfig that points at the proxy's port verifies as it would at the server's.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy; stops (closing every connection) when dropped.
pub struct StallProxy {
    addr: SocketAddr,
    stalled: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StallProxy {
    /// Listens on a free 127.0.0.1 port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stalled, watch_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let stalled = watch_rx.clone();
                connections.spawn(async move {
                    if wait_unstalled(&stalled).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        () = pump(cr, sw, stalled.clone()) => {}
                        () = pump(sr, cw, stalled) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            stalled,
            task,
        })
    }

    /// `https://127.0.0.1:<port>`, for a kubeconfig's `server`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops forwarding, for good (see the module docs).
    pub fn stall(&self) {
        let _ = self.stalled.send(true);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// Waits while stalled; an error when the proxy is gone.
async fn wait_unstalled(stalled: &watch::Receiver<bool>) -> Result<(), ()> {
    let mut rx = stalled.clone();
    rx.wait_for(|s| !*s).await.map(|_| ()).map_err(|_| ())
}

/// Copies `from` to `to` until either side closes. Data read while stalled is held, never
/// written.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if wait_unstalled(&stalled).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if wait_unstalled(&stalled).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
