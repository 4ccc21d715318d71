//! A minimal HTTP/1.1 JSON client over one keep-alive loopback connection.
//!
//! Hand-written rather than a client crate so the loadgen adds no dependency to the package and so
//! the dispatch benchmark knows exactly when the request bytes were written. It speaks just what
//! the appliance answers: `Content-Length` or chunked bodies, JSON or text.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest any single request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body the client reads (a 10,000-agent listing is a few MB).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One answer: status, parsed body (a JSON string when it is not JSON) and when the request went out.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// Just before the request's first byte was written.
    pub sent_at: Instant,
    /// Once the whole answer was read.
    pub done_at: Instant,
}

pub struct Http {
    addr: SocketAddr,
    token: Option<String>,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Http {
        Http {
            addr,
            token: token.map(str::to_owned),
            conn: None,
        }
    }

    pub async fn get(&mut self, path: &str) -> Result<Answer> {
        self.request("GET", path, None).await
    }

    pub async fn post(&mut self, path: &str, body: &Value) -> Result<Answer> {
        self.request("POST", path, Some(body)).await
    }

    /// POST that must answer `expect`; returns the body.
    pub async fn post_ok(&mut self, path: &str, body: &Value, expect: u16) -> Result<Value> {
        let a = self.post(path, body).await?;
        if a.status != expect {
            bail!("POST {path}: expected {expect}, got {}: {}", a.status, a.body);
        }
        Ok(a.body)
    }

    /// Send one request, reusing the kept-alive connection; a stale one is reopened once.
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        let body = body.map(Value::to_string).unwrap_or_default();
        self.request_raw(method, path, &[], body.as_bytes()).await
    }

    /// A request with extra headers and these exact body bytes (a signed webhook).
    pub async fn request_raw(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if method != "GET" {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut head = head.into_bytes();
        head.extend_from_slice(body);
        let reused = self.conn.is_some();
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(&head)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) if reused && e.is::<Stale>() => {
                self.conn = None;
                tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(&head))
                    .await
                    .with_context(|| format!("{method} {path}: timed out"))?
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err(e.context(format!("{method} {path}")))
            }
            Err(_) => {
                self.conn = None;
                bail!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}")
            }
        }
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<Answer> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("cannot connect to {}", self.addr))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        let Some(conn) = self.conn.as_mut() else {
            bail!("no connection")
        };
        let sent_at = Instant::now();
        if conn.get_mut().write_all(request).await.is_err() {
            return Err(Stale.into());
        }
        let mut status_line = String::new();
        if conn.read_line(&mut status_line).await.unwrap_or(0) == 0 {
            return Err(Stale.into());
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line).await? == 0 {
                bail!("connection closed inside the headers");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let raw = if chunked {
            read_chunked(conn).await?
        } else if let Some(n) = length {
            if n > MAX_BODY {
                bail!("body of {n} bytes is too large");
            }
            let mut buf = vec![0; n];
            conn.read_exact(&mut buf).await?;
            buf
        } else {
            close = true;
            let mut buf = Vec::new();
            conn.take(MAX_BODY as u64).read_to_end(&mut buf).await?;
            buf
        };
        let done_at = Instant::now();
        if close {
            self.conn = None;
        }
        let text = String::from_utf8_lossy(&raw);
        let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()));
        Ok(Answer {
            status,
            body,
            sent_at,
            done_at,
        })
    }
}

/// The kept-alive connection was closed by the server before this request: retry on a new one.
#[derive(Debug, thiserror::Error)]
#[error("stale connection")]
struct Stale;

async fn read_chunked(conn: &mut BufReader<TcpStream>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut size_line = String::new();
        conn.read_line(&mut size_line).await?;
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
            .with_context(|| format!("bad chunk size {size_line:?}"))?;
        if out.len() + size > MAX_BODY {
            bail!("chunked body too large");
        }
        let start = out.len();
        out.resize(start + size, 0);
        conn.read_exact(&mut out[start..]).await?;
        let mut crlf = String::new();
        conn.read_line(&mut crlf).await?;
        if size == 0 {
            return Ok(out);
        }
    }
}

/// `host:port` out of `http://host:port`.
pub fn addr_of(url: &str) -> Result<SocketAddr> {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("not an http://IP:PORT URL: {url}"))
}
