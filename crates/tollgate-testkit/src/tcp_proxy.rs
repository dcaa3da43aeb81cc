//! A TCP proxy in front of a real server (PostgreSQL in the outage tests)
//! that a test can [`cut`](TcpProxy::cut) — every open connection is dropped
//! and new ones are refused, as when the server is stopped — and
//! [`restore`](TcpProxy::restore) on the same address.

use parking_lot::Mutex;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy. Dropping it stops it and drops its connections.
pub struct TcpProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    target: SocketAddr,
    /// Bumped by every cut: each connection ends when it moves.
    cuts: watch::Sender<u64>,
    /// The accept loop, while the proxy is up.
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl TcpProxy {
    /// Proxies `127.0.0.1:PORT` (a free port) to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (cuts, _) = watch::channel(0);
        let proxy = TcpProxy {
            addr,
            target,
            cuts,
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
        let (target, cuts) = (self.target, self.cuts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.changed() => {}
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
