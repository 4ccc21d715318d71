//! Identity and access (issue 16) in the real browser: a protected environment whose deploys
//! wait for approval, the approval block and its self-approval refusal, the project's Members
//! section, and two-factor — enrolment with the server-rendered QR code, the recovery codes, the
//! second sign-in step. Steps of the flow in `web_browser` (see `Flow` there); they leave the
//! environment open again, and the admin with two-factor on (no later step signs in again).

use crate::browser_support::{click, fill, html, shot, text_of, wait_text};
use crate::web_browser::Flow;
use crate::web_support::PASSWORD;

fn totp(secret: &str) -> String {
    let t = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build()
        .unwrap();
    t.generate_current().to_string()
}

async fn open_details(f: &Flow<'_>) {
    f.b.execute(
        "document.querySelectorAll('details').forEach(d => d.open = true)",
        vec![],
    )
    .await
    .unwrap();
}

pub async fn steps(f: &Flow<'_>) {
    let (b, url) = (f.b, &f.server.url);

    // A protected environment that wants another person's approval: the admin's own deploy waits.
    b.goto(&format!("{url}/projects/1")).await.unwrap();
    open_details(f).await;
    let form = "#env-staging form[action$='/protection']";
    click(b, &format!("{form} input[name=protected]")).await;
    click(b, &format!("{form} input[name=require_approval]")).await;
    click(b, &format!("{form} button[type=submit]")).await;
    wait_text(b, "[data-testid=protected-staging]", "Protected").await;
    shot(b, "60-environment-protected").await;
    click(
        b,
        "#env-staging form[action='/projects/1/deploy'] button[type=submit]",
    )
    .await;
    wait_text(b, "[data-testid=approval]", "approv").await;
    wait_text(b, "main", "awaiting").await;
    html(b).await;
    shot(b, "61-deployment-awaiting-approval").await;
    // Its author is not offered Approve (the server refuses it anyway: `protected_envs`), and
    // withdraws it.
    wait_text(b, "[data-testid=approval-own]", "another person").await;
    assert!(text_of(b, "[data-testid=approve]").await.is_empty());
    shot(b, "62-approval-own-deployment").await;
    click(b, "form[action$='/reject'] button[type=submit]").await;
    wait_text(b, "main", "cancelled").await;
    // Open again, for the steps after these.
    b.goto(&format!("{url}/projects/1")).await.unwrap();
    open_details(f).await;
    click(b, &format!("{form} input[name=protected]")).await;
    click(b, &format!("{form} input[name=require_approval]")).await;
    click(b, &format!("{form} button[type=submit]")).await;
    b.goto(&format!("{url}/projects/1")).await.unwrap();
    assert!(
        text_of(b, "[data-testid=protected-staging]").await.is_empty(),
        "open again"
    );

    // The project's Members section (Settings tab).
    b.goto(&format!("{url}/projects/1/settings")).await.unwrap();
    wait_text(b, "main", "Members").await;
    html(b).await;
    shot(b, "63-project-members").await;

    // Two-factor: the QR code is drawn by the server, a code turns it on, the recovery codes
    // are shown once, and the next sign-in asks for a code (here: a recovery code).
    b.goto(&format!("{url}/account")).await.unwrap();
    click(b, "form[action='/account/2fa/start'] button[type=submit]").await;
    wait_text(b, "main", "Turn two-factor on").await;
    let secret = text_of(b, "[data-testid=totp-secret]").await;
    assert!(!secret.is_empty(), "the key is shown for manual entry");
    let page = html(b).await;
    assert!(
        page.contains("data:image/svg+xml;base64,"),
        "the QR code is inline"
    );
    shot(b, "64-two-factor-enrol").await;
    fill(
        b,
        "form[action='/account/2fa/confirm'] input[name=code]",
        &totp(&secret),
    )
    .await;
    click(b, "form[action='/account/2fa/confirm'] button[type=submit]").await;
    wait_text(b, "main", "Store these recovery codes now").await;
    let page = html(b).await;
    let recovery = page
        .split("<li><code>")
        .nth(1)
        .and_then(|s| s.split('<').next())
        .unwrap()
        .to_owned();
    shot(b, "65-two-factor-recovery-codes").await;
    click(b, "form[action='/logout'] button").await;
    wait_text(b, "h2", "Sign in").await;
    fill(b, "input[name=username]", "ada").await;
    fill(b, "input[name=password]", PASSWORD).await;
    click(b, "form[action='/login'] button[type=submit]").await;
    wait_text(b, "main", "code").await;
    shot(b, "66-two-factor-second-step").await;
    fill(b, "form[action='/login/2fa'] input[name=code]", &recovery).await;
    click(b, "form[action='/login/2fa'] button[type=submit]").await;
    wait_text(b, "h1", "Dashboard").await;
}
