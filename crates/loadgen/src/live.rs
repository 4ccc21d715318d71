//! The browser's side of a deployment's live log, `/ws/deployments/{id}`, as the htmx ws
//! extension sees it: a local account made once through the first-admin setup link the appliance
//! logs on its first start, a real sign-in (`POST /login`) for a session cookie, and a socket
//! opened with that cookie and a same-origin `Origin`. Its frames are HTML fragments; each line
//! carries `<span class="seq">N</span>`, which is what is counted here.
//!
//! Also the slow viewer (group `slow`): the same stream twice on a fresh appliance, once without a
//! viewer and once with one that opens the socket and then stops reading; the difference in the
//! appliance's peak RSS is what that viewer cost.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::agent::Ws;

/// Longest one HTTP exchange of the sign-in may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the socket may stay silent before the reader gives up.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);
/// The marker in front of each line's seq in a fragment.
const SEQ_MARK: &str = r#"<span class="seq">"#;

/// The browser user's name and password (kept in the fixture file; the password is random).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

/// Follow the setup link the appliance logged (a fresh data dir has no users): the first admin.
pub async fn create_first_admin(addr: SocketAddr, log: &Path) -> Result<Credentials> {
    let text = std::fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let token: String = text
        .rsplit_once("/setup?token=")
        .map(|(_, rest)| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "-_".contains(*c))
        })
        .context("the appliance logged no first-admin setup link (the data dir already has users?)")?
        .collect();
    let (status, _, _) = exchange(addr, "GET", &format!("/setup?token={token}"), None, None).await?;
    if status != 200 {
        bail!("GET /setup answered {status}");
    }
    let password = format!("bench-{:032x}", rand::random::<u128>());
    let username = "bench-viewer".to_owned();
    let form = [
        ("token", token.as_str()),
        ("username", &username),
        ("password", &password),
        ("confirm", &password),
    ];
    let (status, _, body) = exchange(addr, "POST", "/setup", Some(&form), None).await?;
    if status != 303 {
        bail!("POST /setup answered {status}: {body}");
    }
    Ok(Credentials { username, password })
}

/// A signed-in browser: its session cookie.
pub struct Browser {
    addr: SocketAddr,
    cookie: String,
}

/// Sign in with the form the login page posts; the session must then open `/account`.
pub async fn sign_in(addr: SocketAddr, who: &Credentials) -> Result<Browser> {
    let form = [("username", who.username.as_str()), ("password", &who.password)];
    let (status, cookies, _) = exchange(addr, "POST", "/login", Some(&form), None).await?;
    if status != 303 || cookies.is_empty() {
        bail!("POST /login answered {status} (cookies: {})", cookies.len());
    }
    let cookie = cookies.join("; ");
    let (status, _, _) = exchange(addr, "GET", "/account", None, Some(&cookie)).await?;
    if status != 200 {
        bail!("GET /account with the new session answered {status}");
    }
    Ok(Browser { addr, cookie })
}

impl Browser {
    /// Open the live log of deployment `id` and wait for its first frame (the cleared log, sent
    /// once the server is subscribed). `rcvbuf` shrinks the socket's receive buffer.
    pub async fn subscribe(&self, id: i64, rcvbuf: Option<u32>) -> Result<Ws> {
        let socket = TcpSocket::new_v4()?;
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size)?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let mut req = format!("ws://{}/ws/deployments/{id}", self.addr).into_client_request()?;
        req.headers_mut().insert("cookie", self.cookie.parse()?);
        req.headers_mut()
            .insert("origin", format!("http://{}", self.addr).parse()?);
        let (mut ws, _) = tokio::time::timeout(HTTP_TIMEOUT, tokio_tungstenite::client_async(req, stream))
            .await
            .context("the live-log handshake timed out")?
            .context("the live-log socket was refused")?;
        match tokio::time::timeout(SILENCE_LIMIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(r#"<pre class="log" id="log""#) => Ok(ws),
            other => bail!("expected the cleared log as the first frame, got {other:?}"),
        }
    }
}

/// What a subscriber received.
#[derive(Debug, Default)]
pub struct Tally {
    /// Lines whose seq was above every seq before it.
    pub lines: u64,
    /// Lines whose seq was not above the last one (sent twice or out of order).
    pub repeated: u64,
    /// Seqs skipped between two received lines.
    pub gaps: u64,
    pub messages: u64,
    /// Messages that carried more than one line: stored lines sent in one fragment (a resync).
    pub batches: u64,
    pub bytes: u64,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
    pub last_seq: Option<u64>,
    /// The deployment's outcome was shown.
    pub outcome: bool,
    /// How the stream ended: "normal close", "close <code>", "EOF", an error, or a limit.
    pub end: String,
}

impl Tally {
    fn take(&mut self, text: &str, at: Instant) {
        self.messages += 1;
        self.bytes += text.len() as u64;
        let mut here = 0;
        for part in text.split(SEQ_MARK).skip(1) {
            let Some(seq) = part.split('<').next().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            here += 1;
            match self.last_seq {
                Some(last) if seq <= last => self.repeated += 1,
                last => {
                    self.gaps += seq - last.map_or(0, |l| l + 1);
                    self.lines += 1;
                    self.last_seq = Some(seq);
                    self.first.get_or_insert(at);
                    self.last = Some(at);
                }
            }
        }
        self.batches += u64::from(here > 1);
        self.outcome |= text.contains(r#"id="deploy-status""#);
    }
}

/// Read every frame until the server closes the socket, silence, `limit`, or `max_messages`.
pub async fn read_all(ws: &mut Ws, limit: Duration, max_messages: u64) -> Tally {
    let mut t = Tally::default();
    let deadline = tokio::time::Instant::now() + limit;
    while t.messages < max_messages {
        let wait = SILENCE_LIMIT.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => t.take(text.as_str(), Instant::now()),
            Ok(Some(Ok(Message::Close(frame)))) => {
                t.end = match frame {
                    Some(f) if u16::from(f.code) != 1000 => format!("close {}", u16::from(f.code)),
                    _ => "normal close".into(),
                };
                return t;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                t.end = format!("error: {e}");
                return t;
            }
            Ok(None) => {
                t.end = "EOF without a close frame".into();
                return t;
            }
            Err(_) => {
                t.end = format!("no frame for {wait:?} (limit {limit:?})");
                return t;
            }
        }
    }
    t.end = format!("stopped after {max_messages} messages");
    t
}

/// The appliance's highest VmRSS while a stream runs, sampled every 10 ms from `/proc`.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Sampler {
    pub fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            // Bounded: stopped by the caller, never longer than 10 minutes.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                peak = peak.max(crate::server::rss_kb(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak.max(crate::server::rss_kb(pid).unwrap_or(0))
        });
        Sampler { stop, task }
    }

    pub async fn peak_kb(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), with an optional form body;
/// returns status, the `name=value` of each Set-Cookie, and the body.
async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    form: Option<&[(&str, &str)]>,
    cookie: Option<&str>,
) -> Result<(u16, Vec<String>, String)> {
    let body = form
        .map(|f| {
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(f)
                .finish()
        })
        .unwrap_or_default();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        head.push_str(&format!("Cookie: {c}\r\n"));
    }
    if form.is_some() {
        head.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    let request = format!("{head}\r\n{body}");
    let answer = tokio::time::timeout(HTTP_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(16 * 1024 * 1024).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    })
    .await
    .with_context(|| format!("{method} {path}: no answer within {HTTP_TIMEOUT:?}"))?
    .with_context(|| format!("{method} {path}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {path}: bad answer {head:?}"))?;
    let cookies = head
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie").then_some(value)
        })
        .filter_map(|v| v.split(';').next().map(|p| p.trim().to_owned()))
        .filter(|p| p.split_once('=').is_some_and(|(_, v)| !v.is_empty()))
        .collect();
    Ok((status, cookies, body.to_owned()))
}
