//! Connection bounds: slow headers are cut off after
//! `header_read_timeout_ms` while `/health` keeps answering, idle
//! connections are closed after `idle_timeout_ms` (but a slow request in
//! flight is not), and connections beyond `max_connections` wait their turn.

use crate::gateway::{chat, setup};
use crate::support::App;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_core::clock::SystemClock;

fn addr(app: &App) -> String {
    app.url.trim_start_matches("http://").to_owned()
}

/// A client that sends half a request's headers and then nothing.
async fn slow_header_client(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    s
}

/// Waits until the server closes `s` (EOF or reset); returns how long it took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => continue, // a 408 or similar before the close
        }
    }
}

async fn health(url: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test]
async fn slow_header_connections_are_closed_and_health_keeps_answering() {
    let app = App::start_with(|c| c.header_read_timeout_ms = 400, Arc::new(SystemClock)).await;
    let a = addr(&app);
    let mut slow = Vec::new();
    for _ in 0..64 {
        slow.push(slow_header_client(&a).await);
    }
    let t = Instant::now();
    assert_eq!(health(&app.url).await, 200);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "health waited {:?}",
        t.elapsed()
    );
    for s in &mut slow {
        let took = closed_within(s, Duration::from_secs(5)).await;
        assert!(took.is_some(), "a slow-header connection was kept open");
    }
    assert_eq!(health(&app.url).await, 200);
}

#[tokio::test]
async fn idle_connections_are_closed_but_slow_requests_are_not() {
    let mut s = setup().await;
    let url = s.app.url.clone();
    // Restart with a short idle timeout and a long header timeout, so that
    // only the idle rule can close the connection.
    let running = s.app.running.take().expect("running");
    running.stop().await.expect("stop");
    let mut config = s.app.config.clone();
    config.idle_timeout_ms = 300;
    config.header_read_timeout_ms = 30_000;
    let running = tollgate_server::server::start(config, Arc::new(SystemClock))
        .await
        .expect("restart");
    s.app.url = format!("http://{}", running.addr);
    s.app.running = Some(running);
    assert_ne!(url, s.app.url);

    let mut c = TcpStream::connect(addr(&s.app)).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = closed_within(&mut c, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(took >= Duration::from_millis(200), "closed too early: {took:?}");

    // A request whose upstream takes longer than the idle timeout finishes.
    s.control.set_latency(Duration::from_millis(900));
    let r = s.app.chat_raw(&s.key, &[], &chat("@oai/gpt-4o")).await;
    assert_eq!(r.status(), 200);
    s.control.set_latency(Duration::ZERO);
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_their_turn() {
    let app = App::start_with(
        |c| {
            c.max_connections = 2;
            c.header_read_timeout_ms = 500;
        },
        Arc::new(SystemClock),
    )
    .await;
    let a = addr(&app);
    let _hold = [slow_header_client(&a).await, slow_header_client(&a).await];
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The third connection is accepted only once a slow one is cut off.
    let t = Instant::now();
    assert_eq!(health(&app.url).await, 200);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "the third connection was served at once ({waited:?}): no cap"
    );
}
