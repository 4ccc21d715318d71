//! Input and audit papercuts of issue 15 (secret values, audit names and filters, password
//! change and reset): steps of the real-browser flow in `web_browser` (see `Flow` there for the
//! state they start from). They leave `ada` signed in with the same password.

use fantoccini::{Client, Locator};

use crate::browser_support::{click, fill, html, shot, text_of, wait_text};
use crate::web_browser::Flow;
use crate::web_support::PASSWORD;

const NEW_PASSWORD: &str = "a-new-long-passphrase-17";
const BOB_PASSWORD: &str = "bobs-first-passphrase-9";
const BOB_RESET: &str = "bobs-reset-passphrase-42";

pub async fn steps(f: &Flow<'_>) {
    secret_with_nul(f).await;
    secret_for_an_unknown_service(f).await;
    audit_filters(f).await;
    password_change(f).await;
    invite_and_reset(f).await;
}

/// A NUL byte cannot be typed into a textarea: it is put there by script, as a paste would.
async fn secret_with_nul(f: &Flow<'_>) {
    let (b, url) = (f.b, &f.server.url);
    b.goto(&format!("{url}/projects/1/secrets")).await.unwrap();
    fill(b, "#new-secret input[name=key]", "HAS_NUL").await;
    b.execute(
        "document.querySelector('#new-secret textarea[name=value]').value = 'before\\u0000after'",
        vec![],
    )
    .await
    .unwrap();
    click(b, "#new-secret button[type=submit]").await;
    wait_text(b, "#new-secret", "NUL byte").await;
    let page = html(b).await;
    assert!(page.contains("HAS_NUL"), "the error names the key");
    shot(b, "30-secret-nul-refused").await;
    // Nothing was stored.
    b.goto(&format!("{url}/projects/1/secrets")).await.unwrap();
    let listed = text_of(b, "#secrets").await;
    assert!(
        !listed.contains("HAS_NUL"),
        "a refused secret is listed: {listed}"
    );
}

/// A service secret for a service the last release does not have: stored, with a warning.
async fn secret_for_an_unknown_service(f: &Flow<'_>) {
    let (b, url) = (f.b, &f.server.url);
    b.goto(&format!("{url}/projects/1/secrets")).await.unwrap();
    fill(b, "#new-secret input[name=key]", "WORKER_KEY").await;
    fill(b, "#new-secret textarea[name=value]", "worker-value").await;
    b.find(Locator::Css("#new-secret select[name=scope]"))
        .await
        .unwrap()
        .select_by_value("service")
        .await
        .unwrap();
    fill(b, "#new-secret input[name=service]", "worker").await;
    b.find(Locator::Css("#new-secret select[name=environment]"))
        .await
        .unwrap()
        .select_by_value("staging")
        .await
        .unwrap();
    click(b, "#new-secret button[type=submit]").await;
    wait_text(b, "[data-testid=secret-warning]", "worker").await;
    shot(b, "36-secret-unknown-service").await;
    // Stored all the same; removed again so the flow's deploys are unchanged.
    b.goto(&format!("{url}/projects/1/secrets")).await.unwrap();
    b.execute(
        "const row = [...document.querySelectorAll('#secrets tr')].find(r => r.textContent.includes('WORKER_KEY')); \
         row.querySelector('form[action$=\"/delete\"] button').click();",
        vec![],
    )
    .await
    .unwrap();
    wait_text(b, ".notice.ok", "deleted").await;
    assert!(!text_of(b, "#secrets").await.contains("WORKER_KEY"));
}

async fn audit_filters(f: &Flow<'_>) {
    let (b, url) = (f.b, &f.server.url);
    b.goto(&format!("{url}/audit")).await.unwrap();
    b.find(Locator::Css("#audit-filter select[name=project]"))
        .await
        .unwrap()
        .select_by_value("1")
        .await
        .unwrap();
    fill(b, "#audit-filter input[name=actor]", "ada").await;
    click(b, "#audit-filter button[type=submit]").await;
    wait_text(b, "#audit-filter", "Show all").await;
    let table = wait_text(b, "#audit", "secret").await;
    // The entries name their objects as they were (the project `shop`, its secret keys).
    assert!(table.contains("shop") && table.contains("DB_PASSWORD"), "{table}");
    let rows = b.find_all(Locator::Css("#audit tbody tr")).await.unwrap();
    assert!(!rows.is_empty());
    for row in rows {
        let who = row
            .find(Locator::Css("td:nth-child(2)"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(who.contains("ada"), "a filtered row by someone else: {who}");
    }
    html(b).await;
    shot(b, "31-audit-filtered").await;
    // Someone who did nothing: no entries.
    fill(b, "#audit-filter input[name=actor]", "nobody-did-this").await;
    click(b, "#audit-filter button[type=submit]").await;
    wait_text(b, "main", "No entries match").await;
}

async fn sign_out(b: &Client) {
    click(b, "form[action='/logout'] button").await;
    wait_text(b, "h2", "Sign in").await;
}

async fn sign_in(b: &Client, url: &str, user: &str, password: &str) {
    b.goto(&format!("{url}/login")).await.unwrap();
    fill(b, "input[name=username]", user).await;
    fill(b, "input[name=password]", password).await;
    click(b, "form[action='/login'] button[type=submit]").await;
    wait_text(b, "h1", "Dashboard").await;
}

async fn change_password(b: &Client, url: &str, current: &str, new: &str) {
    b.goto(&format!("{url}/account")).await.unwrap();
    fill(b, "#password input[name=current_password]", current).await;
    fill(b, "#password input[name=password]", new).await;
    fill(b, "#password input[name=confirm]", new).await;
    click(b, "#password button[type=submit]").await;
}

async fn password_change(f: &Flow<'_>) {
    let (b, url) = (f.b, &f.server.url);
    // A wrong current password is refused and changes nothing.
    change_password(b, url, "not-the-current-one", NEW_PASSWORD).await;
    wait_text(b, "#current_password-error", "current password is wrong").await;
    shot(b, "32-password-wrong-current").await;
    change_password(b, url, PASSWORD, NEW_PASSWORD).await;
    wait_text(b, ".notice.ok", "password").await;
    shot(b, "33-password-changed").await;
    // The new one signs in; the old one no longer does.
    sign_out(b).await;
    fill(b, "input[name=username]", "ada").await;
    fill(b, "input[name=password]", PASSWORD).await;
    click(b, "form[action='/login'] button[type=submit]").await;
    wait_text(b, ".notice.error", "Wrong username or password").await;
    sign_in(b, url, "ada", NEW_PASSWORD).await;
    // Back to the flow's password.
    change_password(b, url, NEW_PASSWORD, PASSWORD).await;
    wait_text(b, ".notice.ok", "password").await;
}

/// A second person joins by invitation; the admin issues them a reset link, which they use.
async fn invite_and_reset(f: &Flow<'_>) {
    let (b, url) = (f.b, &f.server.url);
    b.goto(&format!("{url}/users")).await.unwrap();
    click(b, "form[action='/users/invite'] button[type=submit]").await;
    let invite = wait_text(b, "#invite-link", "/invite?token=")
        .await
        .trim()
        .to_owned();
    sign_out(b).await;
    b.goto(&invite).await.unwrap();
    fill(b, "input[name=username]", "bob").await;
    fill(b, "input[name=password]", BOB_PASSWORD).await;
    fill(b, "input[name=confirm]", BOB_PASSWORD).await;
    click(b, "button[type=submit]").await;
    wait_text(b, "h1", "Dashboard").await;
    sign_out(b).await;

    sign_in(b, url, "ada", PASSWORD).await;
    b.goto(&format!("{url}/users")).await.unwrap();
    b.execute(
        "const row = [...document.querySelectorAll('tr')].find(r => r.textContent.includes('bob')); \
         row.querySelector('form[action$=\"/reset\"] button[type=submit]').click();",
        vec![],
    )
    .await
    .unwrap();
    let reset = wait_text(b, "#reset-link", "/reset?token=")
        .await
        .trim()
        .to_owned();
    html(b).await;
    shot(b, "34-reset-link").await;
    sign_out(b).await;

    b.goto(&reset).await.unwrap();
    wait_text(b, "main", "bob").await;
    shot(b, "35-reset-form").await;
    fill(b, "input[name=password]", BOB_RESET).await;
    fill(b, "input[name=confirm]", BOB_RESET).await;
    click(b, "button[type=submit]").await;
    wait_text(b, "h1", "Dashboard").await;
    sign_out(b).await;
    // The link was single use; bob's new password signs in, the first one no longer does.
    b.goto(&reset).await.unwrap();
    let used = html(b).await;
    assert!(
        !used.contains("name=\"confirm\""),
        "a used reset link still offers the form"
    );
    sign_in(b, url, "bob", BOB_RESET).await;
    sign_out(b).await;
    sign_in(b, url, "ada", PASSWORD).await;
}
