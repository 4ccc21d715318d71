//! A TCP proxy on loopback between an agent and its appliance that the test steers: it passes
//! bytes through, **blackholes** the link (no byte moves either way, both sockets stay open:
//! what a dead route or a stuck middlebox looks like to both ends; nothing is dropped, so when the
//! link comes back what was in flight arrives, as TCP retransmission would deliver it) and
//! **cuts** it (both sides of every open connection closed at once). New connections are
//! accepted in any mode (and blackholed too while the link is).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Blackhole,
}

pub struct FaultProxy {
    /// What the agent dials (`http://127.0.0.1:<port>`).
    pub url: String,
    mode: watch::Sender<Mode>,
    /// Bumped by [`FaultProxy::cut`]: every connection open then is closed.
    cuts: watch::Sender<u64>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a free loopback port; each connection dials `upstream` (`http://host:port`, the
    /// address read again for every connection, so an appliance restarted on its port is found).
    pub async fn start(upstream: &str) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let (mode, _) = watch::channel(Mode::Pass);
        let (cuts, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let (mode_tx, cuts_tx, count) = (mode.clone(), cuts.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                let upstream = upstream.clone();
                let mode = mode_tx.subscribe();
                let mut cut = cuts_tx.subscribe();
                cut.borrow_and_update();
                tokio::spawn(async move {
                    // A refused upstream (the appliance is down) closes the client at once.
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    // Whichever ends first (a side closed, or a cut) ends the connection: every
                    // half is dropped here, so both sockets close.
                    tokio::select! {
                        () = pump(cr, sw, mode.clone()) => {}
                        () = pump(sr, cw, mode) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        FaultProxy {
            url,
            mode,
            cuts,
            accepted,
            task,
        }
    }

    /// Stop forwarding bytes both ways; the sockets stay open.
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }

    /// Forward again (what was held back flows first).
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// Close both sides of every open connection (the link itself keeps accepting).
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Copy `from` to `to` while the link passes: nothing is read, and nothing already read is
/// written, while it is blackholed. Returns when either side closes or fails.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if mode.wait_for(|m| *m == Mode::Pass).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if mode.wait_for(|m| *m == Mode::Pass).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The proxy itself, without an agent: bytes pass, stop while blackholed (both sockets open),
/// flow again after, and a cut closes the client's socket.
#[tokio::test]
async fn the_fault_proxy_passes_blackholes_and_cuts() {
    use std::time::Duration;
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", echo.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = FaultProxy::start(&upstream).await;
    let mut c = TcpStream::connect(proxy.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    c.write_all(b"one").await.unwrap();
    c.read_exact(&mut buf[..3]).await.unwrap();
    assert_eq!(&buf[..3], b"one", "pass-through");

    proxy.blackhole();
    c.write_all(b"two").await.unwrap();
    let held = tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf)).await;
    assert!(held.is_err(), "a byte crossed the blackhole: {held:?}");
    proxy.restore();
    c.read_exact(&mut buf[..3]).await.unwrap();
    assert_eq!(&buf[..3], b"two", "held bytes flow once the link is back");

    proxy.cut();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("a cut closes the client side")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed after a cut");
    assert_eq!(proxy.accepted(), 1);
}
