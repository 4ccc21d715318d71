//! The HTTP server loop: hyper's HTTP/1 connection with a header-read timeout, an idle timeout
//! and a cap on connections per client address, in place of `axum::serve` (which has none of
//! them, so a thousand half-sent requests held every descriptor: issue 12).
//!
//! A connection counts against its address for as long as it speaks HTTP: until it closes or is
//! upgraded to a WebSocket (an agent or a browser whose token or session was checked). Upgraded
//! connections are bounded elsewhere (the handshake budget, the sockets' own pings).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::config::HttpConfig;

/// The key a client address is counted under: the address itself for IPv4, its /64 for IPv6
/// (one host usually holds a whole /64, so counting single v6 addresses would limit nothing).
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Serve `router` on `listener` until `shutdown` resolves, then let in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let counts = Arc::new(PerAddress::new(limits.max_connections_per_ip));
    let header_timeout = Duration::from_secs(limits.header_timeout_secs);
    let idle_timeout = Duration::from_secs(limits.idle_timeout_secs);
    // Dropping the receiver tells every connection to finish gracefully; every connection
    // holds a clone of `close_rx`, so `close_tx.closed()` resolves when the last one is done.
    let (signal_tx, signal_rx) = watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        drop(signal_rx);
    });
    let (close_tx, close_rx) = watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = signal_tx.closed() => break,
        };
        let Some(slot) = counts.acquire(peer.ip()) else {
            // Closed at once: the cheapest answer, and it frees the descriptor.
            tracing::debug!(peer = %peer.ip(), "too many connections from this address: closed");
            continue;
        };
        // Small request/response exchanges (API calls, the agent's upgrade) should not wait for
        // Nagle; failing to set it costs latency only.
        let _ = stream.set_nodelay(true);
        let armed = Arc::new(AtomicBool::new(true));
        let io = TokioIo::new(IdleIo::new(stream, idle_timeout, armed.clone()));
        let service = router
            .clone()
            .map_request(move |mut req: axum::http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.map(axum::body::Body::new)
            });
        let service = TowerToHyperService::new(service);
        let signal_tx = signal_tx.clone();
        let close_rx = close_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = builder.serve_connection(io, service).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            let mut signal = std::pin::pin!(signal_tx.closed());
            let mut draining = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(peer = %peer.ip(), error = %e, "connection ended");
                        }
                        break;
                    }
                    () = &mut signal, if !draining => {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            // The HTTP part is over: closed, or handed to a WebSocket that has its own pings and
            // no longer counts against the address.
            armed.store(false, Ordering::Relaxed);
            drop(slot);
            drop(close_rx);
        });
    }
    drop(close_rx);
    drop(listener);
    close_tx.closed().await;
    Ok(())
}

/// Out of descriptors (EMFILE) and the like: wait a little for connections to close rather than
/// spin on accept. A client that reset before accept is no error.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind as K;
    if matches!(
        e.kind(),
        K::ConnectionRefused | K::ConnectionAborted | K::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// HTTP connections per address key, bounded by `cap`.
struct PerAddress {
    cap: u32,
    counts: Mutex<HashMap<IpAddr, u32>>,
}

impl PerAddress {
    fn new(cap: u32) -> PerAddress {
        PerAddress {
            cap,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let key = address_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            key,
        })
    }
}

/// One counted connection; uncounted when dropped (entries at zero are removed, so the map holds
/// only addresses with a live connection).
struct Slot {
    owner: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// A stream that fails with `TimedOut` once no byte has moved either way for `idle`, while
/// `armed`. hyper's header timeout covers a request's head; this covers the rest (a body that
/// stops arriving, a client that stops reading the answer).
struct IdleIo {
    inner: TcpStream,
    idle: Duration,
    armed: Arc<AtomicBool>,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl IdleIo {
    fn new(inner: TcpStream, idle: Duration, armed: Arc<AtomicBool>) -> IdleIo {
        let now = Instant::now();
        IdleIo {
            inner,
            idle,
            armed,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    /// After a `Pending` from the stream: an error once idle too long, else keep the timer set.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        while self.timer.as_mut().poll(cx).is_ready() {
            if !self.armed.load(Ordering::Relaxed) {
                // Upgraded: never time out (the finished timer does not wake us again).
                return Poll::Pending;
            }
            let deadline = self.last + self.idle;
            if deadline <= Instant::now() {
                return Poll::Ready(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "idle HTTP connection",
                ));
            }
            // Bytes moved since the timer was set: wait out the rest from the last of them.
            self.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }

    fn moved(&mut self) {
        self.last = Instant::now();
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.moved();
                Poll::Ready(r)
            }
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                this.moved();
                Poll::Ready(r)
            }
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.moved();
                Poll::Ready(r)
            }
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raise the soft descriptor limit to the hard one (each agent holds a socket; the usual soft
/// default of 1,024 caps the fleet near a thousand) and log both. Returns `(soft, hard)` after.
pub fn raise_descriptor_limit() -> (Option<u64>, Option<u64>) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    // An unlimited hard limit cannot be the soft one for descriptors (the kernel caps it at
    // nr_open): ask for a large finite number instead.
    let target = before.maximum.unwrap_or(1 << 20);
    if before.current.is_some_and(|soft| soft < target) {
        let wanted = rustix::process::Rlimit {
            current: Some(target),
            maximum: before.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, wanted) {
            tracing::warn!(error = %e, soft = ?before.current, hard = ?before.maximum, "cannot raise the open-files limit");
        }
    }
    let after = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    tracing::info!(
        soft = %show(after.current),
        hard = %show(after.maximum),
        soft_before = %show(before.current),
        "open-files limit (each agent holds one)"
    );
    (after.current, after.maximum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), IpAddr::V4([10, 0, 0, 1].into()));
    }

    #[test]
    fn per_address_cap_frees_on_drop() {
        let counts = Arc::new(PerAddress::new(2));
        let ip = IpAddr::V4([10, 0, 0, 1].into());
        let other = IpAddr::V4([10, 0, 0, 2].into());
        let first = counts.acquire(ip);
        let second = counts.acquire(ip);
        assert!(first.is_some() && second.is_some());
        assert!(counts.acquire(ip).is_none(), "a third is over the cap");
        assert!(counts.acquire(other).is_some(), "another address is not affected");
        drop(first);
        let third = counts.acquire(ip);
        assert!(third.is_some(), "a closed connection frees its place");
        drop((second, third));
        assert!(
            counts.counts.lock().unwrap().is_empty(),
            "addresses without a connection are not kept"
        );
    }
}
