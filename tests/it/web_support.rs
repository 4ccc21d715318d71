//! Helpers for the web UI tests: an in-process appliance whose public URL is its real address
//! (so the setup link, origin checks and OAuth callback all point at it), and a browser-like
//! HTTP client that keeps the session cookie and sends the CSRF token the pages carry.

#![allow(dead_code)]

use std::path::PathBuf;

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use stagely::app::App;
use stagely::config::{Config, Overrides};

pub const PASSWORD: &str = "correct horse battery staple";

/// An appliance in this process on 127.0.0.1:0 with `public_url` = its real URL.
pub struct WebServer {
    pub url: String,
    pub setup_link: Option<String>,
    pub dir: tempfile::TempDir,
    /// The running appliance's state (for counters a test reads, such as passwords checked).
    pub state: stagely::app::AppState,
    shutdown: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl WebServer {
    pub async fn start() -> WebServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> WebServer {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let overrides = Overrides {
            data_dir: Some(dir.path().join("data")),
            public_url: Some(url.clone()),
            ..Default::default()
        };
        let mut config = Config::load(None, Vec::new(), &overrides).unwrap();
        crate::common::use_test_store(&mut config, &dir.path().join("data"));
        tweak(&mut config);
        let app = App::start(config).unwrap();
        let setup_link = app.setup_link.clone();
        let shutdown = app.state.shutdown.clone();
        let state = app.state.clone();
        let task = tokio::spawn(app.serve(listener));
        WebServer {
            url,
            setup_link,
            dir,
            state,
            shutdown,
            task: Some(task),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn client(&self) -> WebClient {
        WebClient::new(&self.url)
    }

    /// Follow the setup link: the first admin, signed in.
    pub async fn admin(&self, username: &str) -> WebClient {
        let link = self
            .setup_link
            .clone()
            .expect("a fresh server prints a setup link");
        let token = link.split("token=").nth(1).unwrap().to_owned();
        let mut c = self.client();
        let (status, body) = c.get(&format!("/setup?token={token}")).await;
        assert_eq!(status, 200, "{body}");
        let (status, _, headers) = c
            .post_form_raw(
                "/setup",
                &[
                    ("token", token.as_str()),
                    ("username", username),
                    ("password", PASSWORD),
                    ("confirm", PASSWORD),
                ],
            )
            .await;
        assert_eq!(status, 303);
        assert_eq!(location(&headers), "/");
        c.refresh_csrf().await;
        c
    }

    /// Invite a user with `role` (as `admin`) and accept the invitation: that user, signed in.
    pub async fn user(&self, admin: &mut WebClient, username: &str, role: &str) -> WebClient {
        let (status, body) = admin.post_form("/users/invite", &[("role", role)]).await;
        assert_eq!(status, 201, "{body}");
        let token = between(&body, "/invite?token=", "<").expect("invite link on the page");
        let mut c = self.client();
        let (status, _, _) = c
            .post_form_raw(
                "/invite",
                &[
                    ("token", token.as_str()),
                    ("username", username),
                    ("password", PASSWORD),
                    ("confirm", PASSWORD),
                ],
            )
            .await;
        assert_eq!(status, 303);
        c.refresh_csrf().await;
        c
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

pub fn location(headers: &HeaderMap) -> String {
    headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// The text between `start` and the next `end`.
pub fn between(haystack: &str, start: &str, end: &str) -> Option<String> {
    let from = haystack.find(start)? + start.len();
    let len = haystack[from..].find(end)?;
    Some(haystack[from..from + len].to_owned())
}

/// A browser-like client: keeps cookies by name, never follows redirects.
pub struct WebClient {
    pub url: String,
    pub cookies: Vec<(String, String)>,
    pub csrf: String,
    http: reqwest::Client,
}

impl WebClient {
    pub fn new(url: &str) -> WebClient {
        WebClient {
            url: url.to_owned(),
            cookies: Vec::new(),
            csrf: String::new(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    pub fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let text = v.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (k, val) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            if !val.is_empty() && !text.contains("Max-Age=0") {
                self.cookies.push((k.to_owned(), val.to_owned()));
            }
        }
    }

    pub async fn request(
        &mut self,
        method: reqwest::Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
        extra: &[(&str, &str)],
    ) -> (u16, String, HeaderMap) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.url)
        };
        let mut req = self.http.request(method, url);
        if !self.cookies.is_empty() {
            req = req.header("cookie", self.cookie_header());
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        if let Some(form) = form {
            req = req.form(form);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        self.keep_cookies(&headers);
        (status, resp.text().await.unwrap_or_default(), headers)
    }

    pub async fn get(&mut self, path: &str) -> (u16, String) {
        let (s, b, _) = self.request(reqwest::Method::GET, path, None, &[]).await;
        (s, b)
    }

    /// POST a form as is (no CSRF token added).
    pub async fn post_form_raw(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String, HeaderMap) {
        self.request(reqwest::Method::POST, path, Some(form), &[]).await
    }

    /// POST a form with the session's CSRF token in `_csrf`, as the pages' forms do.
    pub async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String) {
        let csrf = self.csrf.clone();
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        fields.push(("_csrf", &csrf));
        let (s, b, _) = self
            .request(reqwest::Method::POST, path, Some(&fields), &[])
            .await;
        (s, b)
    }

    /// As [`Self::post_form`], answering the headers too (a redirect's `Location`).
    pub async fn post_form_headers(&mut self, path: &str, form: &[(&str, &str)]) -> (u16, String, HeaderMap) {
        let csrf = self.csrf.clone();
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        fields.push(("_csrf", &csrf));
        self.request(reqwest::Method::POST, path, Some(&fields), &[])
            .await
    }

    /// Read the CSRF token from a page (`hx-headers` on `<body>`).
    pub async fn refresh_csrf(&mut self) {
        let (status, body) = self.get("/account").await;
        assert_eq!(status, 200, "{body}");
        self.csrf = between(&body, "X-CSRF-Token&quot;:&quot;", "&quot;")
            .or_else(|| between(&body, r#"name="_csrf" value=""#, "\""))
            .expect("CSRF token on the page");
    }

    pub async fn sign_in(&mut self, username: &str, password: &str) -> (u16, String, HeaderMap) {
        let r = self
            .post_form_raw("/login", &[("username", username), ("password", password)])
            .await;
        if r.0 == 303 {
            self.refresh_csrf().await;
        }
        r
    }
}
