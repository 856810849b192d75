//! The HTTP side of [`crate::auth`]: one middleware in front of every route. What a request
//! needs comes from its path and method ([`need`]); the token comes from `Authorization: Bearer`
//! or, for the dashboard, from the `rehearse_token` cookie that `/login` sets. A dashboard page
//! asked for without a usable token redirects to `/login`; the API answers 401/403 in the one
//! error shape.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use rehearse_core::tokens::Need;

use super::HttpError;
use crate::auth::Gate;

/// The dashboard's cookie.
pub const COOKIE: &str = "rehearse_token";

/// The dashboard's HTML pages.
fn is_page(path: &str) -> bool {
    path == "/"
        || path == "/fleet"
        || ["/drills/", "/jobs/", "/exercises/"]
            .iter()
            .any(|p| path.starts_with(p))
}

/// What a request needs: open for health, the OpenAPI document, Swagger UI and the login page;
/// `read` for GETs (the API, the dashboard, `/metrics`); `operate` for changes.
pub fn need(method: &Method, path: &str, dashboard_open: bool) -> Need {
    if matches!(path, "/healthz" | "/readyz" | "/openapi.json" | "/login")
        || path == "/docs"
        || path.starts_with("/docs/")
    {
        return Need::Open;
    }
    if *method == Method::GET || *method == Method::HEAD {
        if dashboard_open && is_page(path) {
            return Need::Open;
        }
        return Need::Read;
    }
    Need::Operate
}

/// The token as an `Authorization` value: the header, or the dashboard's cookie.
fn authorization(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| format!("Bearer {v}"))
}

pub async fn middleware(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    if !gate.is_required() {
        return next.run(req).await;
    }
    let path = req.uri().path().to_owned();
    let need = need(req.method(), &path, gate.dashboard_open);
    match gate.check(authorization(req.headers()).as_deref(), need, false) {
        Ok(_) => next.run(req).await,
        Err(_) if *req.method() == Method::GET && is_page(&path) => {
            Redirect::to("/login").into_response()
        }
        Err(denied) => HttpError::new(denied.code(), denied.message()).into_response(),
    }
}

const LOGIN: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · Rehearse</title>
<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;color:#222}
input{width:100%;padding:.4rem;margin:.4rem 0;font-family:monospace}button{padding:.4rem 1rem}
.err{color:#b71c1c}</style></head>
<body><h1>Rehearse</h1><p>This coordinator requires a token. Paste one with the role
<code>read</code> or more (<code>rehearse token create --name me --role read</code>).</p>
{error}<form method="post" action="/login"><input name="token" type="password" autocomplete="off"
placeholder="rh_…" autofocus><button type="submit">Sign in</button></form></body></html>"#;

/// The sign-in form.
pub async fn login_page() -> Html<String> {
    Html(LOGIN.replace("{error}", ""))
}

/// Checks the token posted by the form; a good one is kept in an HttpOnly cookie.
pub async fn login(State(gate): State<Arc<Gate>>, body: axum::body::Bytes) -> Response {
    let token = form_value(&body, "token").unwrap_or_default();
    let token = token.trim();
    match gate.check(Some(&format!("Bearer {token}")), Need::Read, false) {
        Ok(_) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_owned()),
                (
                    header::SET_COOKIE,
                    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
                ),
            ],
        )
            .into_response(),
        Err(denied) => (
            StatusCode::UNAUTHORIZED,
            Html(LOGIN.replace(
                "{error}",
                &format!(
                    "<p class=\"err\">{}</p>",
                    denied
                        .message()
                        .replace('&', "&amp;")
                        .replace('<', "&lt;")
                        .replace('>', "&gt;")
                ),
            )),
        )
            .into_response(),
    }
}

/// One field of an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8], key: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_they_change() {
        assert_eq!(need(&Method::GET, "/healthz", false), Need::Open);
        assert_eq!(need(&Method::GET, "/openapi.json", false), Need::Open);
        assert_eq!(need(&Method::GET, "/docs/index.html", false), Need::Open);
        assert_eq!(need(&Method::GET, "/v1/jobs/x", false), Need::Read);
        assert_eq!(
            need(&Method::POST, "/v1/verifications", false),
            Need::Operate
        );
        assert_eq!(need(&Method::GET, "/", false), Need::Read);
        assert_eq!(need(&Method::GET, "/", true), Need::Open);
        assert_eq!(need(&Method::GET, "/v1/drills", true), Need::Read);
        assert_eq!(need(&Method::GET, "/metrics", true), Need::Read);
    }

    #[test]
    fn tokens_come_from_the_header_or_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(authorization(&h), None);
        h.insert(
            header::COOKIE,
            "a=b; rehearse_token=rh_x".parse().expect("hv"),
        );
        assert_eq!(authorization(&h).as_deref(), Some("Bearer rh_x"));
        h.insert(header::AUTHORIZATION, "Bearer rh_y".parse().expect("hv"));
        assert_eq!(authorization(&h).as_deref(), Some("Bearer rh_y"));
        assert_eq!(
            form_value(b"x=1&token=rh_a%2Bb+c", "token").as_deref(),
            Some("rh_a+b c")
        );
        assert_eq!(form_value(b"token=%4", "token").as_deref(), Some("%4"));
    }
}
