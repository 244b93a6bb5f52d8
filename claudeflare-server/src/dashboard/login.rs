//! The dashboard's login: an admin key typed once into a form, exchanged for a session cookie
//! (random, HttpOnly, SameSite=Strict; not the key), and the logout that ends the session.

use axum::Form;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::{DOCTYPE, Markup, html};

use crate::access::{Access, SESSION_COOKIE, SESSION_LIFETIME};
use crate::state::AppState;

/// A small page of one form (the dashboard's login, Claude Code's sign-in): `title` and `body`.
pub fn form_page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "claudeflare · " (title) }
                style { "body{font-family:system-ui,sans-serif;max-width:30rem;margin:4rem auto;padding:0 1rem}input,button{font:inherit;padding:.4rem;margin:.3rem 0;width:100%;box-sizing:border-box}.error{color:#b00020}.ok{color:#1b5e20}" }
            }
            body { (body) }
        }
    }
}

/// The login page, with `error` said above the form.
pub fn login_page(error: Option<&str>) -> Markup {
    form_page(
        "log in",
        html! {
                h1 { "claudeflare" }
                p { "This server needs an admin key. Create one with " code { "claudeflare-server keys add NAME --admin" } "." }
                @if let Some(error) = error { p.error role="alert" { (error) } }
                form method="post" action="/login" {
                    label for="key" { "Admin key" }
                    input id="key" name="key" type="password" autocomplete="current-password" required autofocus;
                    button type="submit" { "Log in" }
                }
        },
    )
}

/// `GET /login`.
pub async fn show() -> Html<String> {
    Html(login_page(None).into_string())
}

/// The form of `POST /login`.
#[derive(serde::Deserialize)]
pub struct LoginForm {
    key: String,
}

/// `POST /login`: an admin key gets a session cookie and goes to the dashboard.
pub async fn log_in(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let refused = |status: StatusCode, message: &str| {
        (status, Html(login_page(Some(message)).into_string())).into_response()
    };
    let Some(key) = state.access.find(form.key.trim()) else {
        return refused(
            StatusCode::UNAUTHORIZED,
            "That is not a key of this server.",
        );
    };
    if !key.admin {
        return refused(
            StatusCode::FORBIDDEN,
            "That key is not an admin key: it can use the proxy, not the dashboard.",
        );
    }
    let token = match state.access.start_session(&state.db, &key).await {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(%error, "could not store a dashboard login");
            return refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "The login could not be stored; try again in a moment.",
            );
        }
    };
    let cookie = Cookie::build((SESSION_COOKIE, token))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(SESSION_LIFETIME.as_secs()).unwrap_or(i64::MAX),
        ))
        .build();
    with_cookie(Redirect::to("/dashboard").into_response(), &cookie)
}

/// `POST /logout`: the session ends, and the cookie goes.
pub async fn log_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(token) = Access::session_token(&headers) {
        if let Err(error) = state.access.end_session(&state.db, &token).await {
            tracing::error!(%error, "could not end a dashboard login everywhere");
        }
    }
    let mut gone = Cookie::build((SESSION_COOKIE, "")).path("/").build();
    gone.make_removal();
    with_cookie(Redirect::to("/login").into_response(), &gone)
}

fn with_cookie(mut response: Response, cookie: &Cookie<'_>) -> Response {
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}
