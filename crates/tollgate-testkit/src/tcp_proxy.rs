//! A TCP proxy in front of a real server (PostgreSQL in the outage tests)
//! that a test can [`cut`](TcpProxy::cut) — every open connection is dropped
//! and new ones are refused, as when the server is stopped — and
//! [`restore`](TcpProxy::restore) on the same address. It can also
//! [`strand`](TcpProxy::strand) its connections: the client's side is
//! dropped while the server's is kept open and silent, as when a network
//! fails without either end closing: the server still believes in the
//! session (and whatever it holds) until the proxy lets go.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy. Dropping it stops it and drops its connections.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where new connections go.
    target: Arc<Mutex<SocketAddr>>,
    /// Bumped by every cut: each connection ends when it moves.
    cuts: watch::Sender<u64>,
    /// Bumped by every strand: each connection drops its client side and
    /// leaves its server side in `stranded`.
    strands: watch::Sender<u64>,
    /// Server sides of stranded connections, open until
    /// [`TcpProxy::release_stranded`] or the proxy is dropped.
    stranded: Arc<Mutex<Vec<TcpStream>>>,
    /// The accept loop, while the proxy is up.
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl TcpProxy {
    /// Proxies `127.0.0.1:PORT` (a free port) to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (cuts, _) = watch::channel(0);
        let (strands, _) = watch::channel(0);
        let proxy = TcpProxy {
            addr,
            target: Arc::new(Mutex::new(target)),
            cuts,
            strands,
            stranded: Arc::new(Mutex::new(Vec::new())),
            acceptor: Mutex::new(None),
        };
        proxy.accept_on(listener);
        Ok(proxy)
    }

    /// A proxy in front of the server of `url` (`scheme://[user@]host[:port]/…`,
    /// port 5432 when absent), and `url` pointed at it.
    pub async fn for_url(url: &str) -> std::io::Result<(TcpProxy, String)> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let auth = rest.split('/').next().unwrap_or(rest);
        let host_port = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
        let host_port = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        let target = tokio::net::lookup_host(host_port.as_str())
            .await?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, host_port.clone()))?;
        let proxy = TcpProxy::start(target).await?;
        let through = proxy.url_through(url);
        Ok((proxy, through))
    }

    /// `url` (`scheme://user@host:port/rest`) with its host and port
    /// replaced by the proxy's.
    pub fn url_through(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (auth, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let user = auth.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
        format!("{scheme}://{user}{}/{path}", self.addr)
    }

    fn accept_on(&self, listener: TcpListener) {
        let (target, cuts, strands) = (self.target.clone(), self.cuts.clone(), self.strands.clone());
        let stranded = self.stranded.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                let mut strand = strands.subscribe();
                let stranded = stranded.clone();
                let target = *target.lock();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    let keep = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => false,
                        _ = cut.changed() => false,
                        _ = strand.changed() => true,
                    };
                    if keep {
                        drop(client);
                        stranded.lock().push(upstream);
                    }
                });
            }
        });
        *self.acceptor.lock() = Some(task);
    }

    /// Drops every open connection and refuses new ones (the port is
    /// closed) until [`TcpProxy::restore`].
    pub async fn cut(&self) {
        let task = self.acceptor.lock().take();
        if let Some(task) = task {
            task.abort();
            // The listener is closed once the aborted task is gone.
            let _ = task.await;
        }
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Sends new connections to `target` from now on, as a failover moves a
    /// service's address to another server (open connections stay where
    /// they are: [`TcpProxy::cut`] ends them, or their server's end does).
    pub fn retarget(&self, target: SocketAddr) {
        *self.target.lock() = target;
    }

    /// Drops the client side of every open connection and keeps its server
    /// side open, sending nothing, until [`TcpProxy::release_stranded`]
    /// (the server notices nothing). New connections are accepted as usual.
    pub fn strand(&self) {
        self.strands.send_modify(|n| *n += 1);
    }

    /// How many server sides [`TcpProxy::strand`] holds open.
    pub fn stranded(&self) -> usize {
        self.stranded.lock().len()
    }

    /// Closes the server sides that [`TcpProxy::strand`] kept open.
    pub fn release_stranded(&self) {
        self.stranded.lock().clear();
    }

    /// Accepts connections again, on the same address.
    pub async fn restore(&self) -> std::io::Result<()> {
        if self.acceptor.lock().is_some() {
            return Ok(());
        }
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.accept_on(listener);
        Ok(())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.acceptor.lock().take() {
            task.abort();
        }
        self.cuts.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server.
    async fn echo() -> SocketAddr {
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<[u8; 4]> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn retarget_sends_new_connections_elsewhere() {
        let first = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let proxy = TcpProxy::start(first.local_addr().unwrap()).await.unwrap();
        let _open = TcpStream::connect(proxy.addr).await.unwrap();
        first.accept().await.unwrap();
        proxy.retarget(echo().await);
        let mut moved = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(&round_trip(&mut moved).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn cut_drops_and_refuses_restore_accepts_again() {
        let proxy = TcpProxy::start(echo().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(&round_trip(&mut open).await.unwrap(), b"ping");

        proxy.cut().await;
        assert!(round_trip(&mut open).await.is_err(), "an open connection is dropped");
        let refused = TcpStream::connect(proxy.addr).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

        proxy.restore().await.unwrap();
        proxy.restore().await.unwrap();
        let mut fresh = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(&round_trip(&mut fresh).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn strand_drops_the_client_side_and_keeps_the_server_side() {
        // A server that reports when a connection of its closes.
        let l = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let target = l.local_addr().unwrap();
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = closed_tx.send(());
                });
            }
        });
        let proxy = TcpProxy::start(target).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(&round_trip(&mut open).await.unwrap(), b"ping");

        proxy.strand();
        assert!(round_trip(&mut open).await.is_err(), "the client side is dropped");
        while proxy.stranded() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let waited = tokio::time::timeout(std::time::Duration::from_millis(300), closed.recv()).await;
        assert!(waited.is_err(), "the server side stays open");
        let mut fresh = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(&round_trip(&mut fresh).await.unwrap(), b"ping", "new connections pass");

        proxy.release_stranded();
        assert_eq!(proxy.stranded(), 0);
        tokio::time::timeout(std::time::Duration::from_secs(2), closed.recv())
            .await
            .expect("the server side closes once released");
    }

    #[test]
    fn urls_are_pointed_at_the_proxy() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let proxy = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await.unwrap();
            let port = proxy.addr.port();
            assert_eq!(
                proxy.url_through("postgres://postgres@127.0.0.1:5432/db_1"),
                format!("postgres://postgres@127.0.0.1:{port}/db_1")
            );
            assert_eq!(
                proxy.url_through("postgres://u:p@h/x"),
                format!("postgres://u:p@127.0.0.1:{port}/x")
            );
        });
    }
}
