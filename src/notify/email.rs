//! The email sender: SMTP with STARTTLS (lettre on tokio + rustls), a plain-text body with the
//! link back. The server's certificate is checked against the system roots plus, when set,
//! `notify.smtp_extra_ca_file` (a private relay's CA); verification is never turned off.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::http::{lines, title};
use super::{Notice, Target};

/// `[stagely] shop/staging deploy failed`.
pub fn subject(n: &Notice) -> String {
    format!("[stagely] {}", title(n))
}

pub fn body(n: &Notice) -> String {
    let mut text = format!("{}\n\n", title(n));
    for l in lines(n) {
        text.push_str(&l);
        text.push('\n');
    }
    text.push_str(&format!(
        "\n{}\n\n-- \nSent by Stagely. Change notifications on the project page.\n",
        n.url
    ));
    text
}

/// Send one notice. `Err` is a short text; the caller masks it with the channel's password.
pub async fn send(
    target: &Target,
    n: &Notice,
    extra_ca: Option<&[u8]>,
    timeout: Duration,
) -> Result<(), String> {
    let Target::Smtp {
        host,
        port,
        username,
        password,
        from,
        to,
        starttls,
    } = target
    else {
        return Err("not an email channel".into());
    };
    let from: Mailbox = from.parse().map_err(|_| "bad from address".to_owned())?;
    let mut message = Message::builder()
        .from(from)
        .subject(subject(n))
        .header(ContentType::TEXT_PLAIN);
    for addr in to {
        message = message.to(addr.parse().map_err(|_| "bad recipient address".to_owned())?);
    }
    let message = message
        .body(body(n))
        .map_err(|e| format!("cannot build the message: {e}"))?;
    let tls = if *starttls {
        let mut params = TlsParameters::builder(host.clone());
        if let Some(pem) = extra_ca {
            let cert = Certificate::from_pem(pem)
                .map_err(|_| "notify.smtp_extra_ca_file holds no PEM certificate".to_owned())?;
            params = params.add_root_certificate(cert);
        }
        Tls::Required(params.build().map_err(|e| format!("TLS setup: {e}"))?)
    } else {
        Tls::None
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
        .port(*port)
        .tls(tls)
        .timeout(Some(timeout));
    if let (Some(u), Some(p)) = (username, password) {
        transport = transport.credentials(Credentials::new(u.clone(), p.clone()));
    }
    let transport = transport.build();
    match tokio::time::timeout(timeout * 3, transport.send(message)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(smtp_error(&e)),
        Err(_) => Err("timed out".into()),
    }
}

/// A short text for an SMTP failure: the reply code when the server gave one.
fn smtp_error(e: &lettre::transport::smtp::Error) -> String {
    if let Some(code) = e.status() {
        let kind = if e.is_permanent() {
            "permanent"
        } else {
            "transient"
        };
        return format!("SMTP {kind} error {code}");
    }
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_tls() {
        return "TLS failed (is the server's certificate trusted? see notify.smtp_extra_ca_file)".into();
    }
    // lettre's texts name the cause (connection refused, no STARTTLS offered); never a password.
    let text = e.to_string();
    format!("SMTP: {}", text.chars().take(200).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_names_project_environment_and_outcome() {
        let n = Notice {
            event: "deploy.failed".into(),
            project: "shop".into(),
            environment: Some("staging".into()),
            url: "https://s.example/deployments/3".into(),
            ..Notice::default()
        };
        assert_eq!(subject(&n), "[stagely] shop/staging deploy failed");
        assert!(body(&n).contains("https://s.example/deployments/3"));
    }
}
