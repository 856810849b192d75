//! The HTTP/JSON API (`rehearse coordinator --http-listen ADDR`): axum routes over the same
//! [`NodeHandle`] the gRPC service calls, errors through the one table in [`crate::errors`], and
//! an OpenAPI 3.1 document generated from the handlers (`/openapi.json`, Swagger UI at `/docs`,
//! vendored into the binary).
//!
//! - `jobs`: `POST /v1/verifications` (a plan as TOML or JSON, `?wait=` long-poll),
//!   `GET /v1/jobs/{id}` (`?wait=`), `GET /v1/jobs?state=`, `POST /v1/jobs/{id}/cancel`.
//! - `drills`: list, get, history, apply, pause, resume, run, delete.
//! - `exercises`: list, get, start, approve (a gate), abort.
//! - `fleet`: `GET /v1/workers`, `GET /v1/cluster`.
//! - `auth`: with `--auth required`, every route but `/healthz`, `/readyz`, `/openapi.json`,
//!   `/docs` and `/login` needs a bearer token (or the dashboard's cookie, set by `/login`).
//! - `/healthz` (the process serves), `/readyz` (this node knows a leader), `/metrics`
//!   (Prometheus, this node's own; see [`crate::metrics`]).
//! - `dashboard`: the HTML pages (`/`, `/drills/{name}`, `/jobs/{id}`, `/exercises/{id}`,
//!   `/fleet`).
//!
//! A follower does not serve reads or writes itself: it answers `307 Temporary Redirect` to the
//! leader's `--http-advertise` address (which each node sends with its raft traffic; used only
//! for this redirect, never to route raft), so a client that follows redirects (`curl -L`) lands
//! on the leader with its method and body. Without a known leader address the answer is `503`
//! with the code `not_leader`.

mod auth;
mod dashboard;
mod drills;
mod error;
mod exercises;
mod fleet;
mod jobs;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::handle::NodeHandle;
pub use error::{ErrorBody, HttpError};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub node: NodeHandle,
    /// What `/metrics` shows.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Who may call what (see [`crate::auth`]).
    pub gate: std::sync::Arc<crate::auth::Gate>,
    /// Signs evidence exports (`GET /v1/evidence`).
    pub evidence_key: Option<std::sync::Arc<crate::evidence::Signer>>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rehearse",
        description = "Prove that backups restore: verifications on demand, scheduled drills, the fleet."
    ),
    tags(
        (name = "jobs", description = "Verifications: submit a plan, wait for its verdict"),
        (name = "drills", description = "Scheduled drills and their history"),
        (name = "exercises", description = "DR exercises: application groups recovered in order, on one clock"),
        (name = "fleet", description = "Workers and the coordinator cluster"),
    )
)]
struct ApiDoc;

/// With `--auth required` every operation takes a bearer token and may answer 401 or 403 in the
/// error shape: the document says so (a `bearer` scheme, both answers on every operation).
/// Applied to the document once the routes are in it.
struct Auth;

impl utoipa::Modify for Auth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
        };
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        doc.components
            .get_or_insert_with(utoipa::openapi::Components::new)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        doc.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (code, what) in [
                    (
                        "401",
                        "No token, or one the cluster does not know (--auth required)",
                    ),
                    ("403", "The token's role may not make this call"),
                ] {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(what)
                                    .content(
                                        "application/json",
                                        ContentBuilder::new()
                                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                                            .build(),
                                    )
                                    .build(),
                            )
                        });
                }
            }
        }
    }
}

/// The routes and the OpenAPI document they generate.
pub fn router(state: AppState) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::submit))
        .routes(routes!(jobs::list))
        .routes(routes!(jobs::get_job))
        .routes(routes!(jobs::cancel))
        .routes(routes!(drills::list, drills::apply))
        .routes(routes!(drills::get_drill, drills::delete))
        .routes(routes!(drills::history))
        .routes(routes!(drills::pause))
        .routes(routes!(drills::resume))
        .routes(routes!(drills::run))
        .routes(routes!(exercises::list, exercises::start))
        .routes(routes!(exercises::get_exercise))
        .routes(routes!(exercises::approve))
        .routes(routes!(exercises::abort))
        .routes(routes!(fleet::workers))
        .routes(routes!(fleet::cluster))
        .with_state(state.clone())
        .split_for_parts();
    let mut doc = doc;
    utoipa::Modify::modify(&Auth, &mut doc);
    let doc = Arc::new(doc);
    let json = {
        let doc = doc.clone();
        move || {
            let doc = doc.clone();
            async move { axum::Json(doc.as_ref().clone()) }
        }
    };
    api.route("/openapi.json", get(json))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/docs/openapi.json", (*doc).clone()))
        .route("/", get(dashboard::overview).with_state(state.clone()))
        .route(
            "/drills/{name}",
            get(dashboard::drill).with_state(state.clone()),
        )
        .route("/jobs/{id}", get(dashboard::job).with_state(state.clone()))
        .route(
            "/exercises/{id}",
            get(dashboard::exercise).with_state(state.clone()),
        )
        .route("/fleet", get(dashboard::fleet).with_state(state.clone()))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics).with_state(state.clone()))
        .route("/readyz", get(ready).with_state(state.clone()))
        .route(
            "/login",
            get(auth::login_page)
                .post(auth::login)
                .with_state(state.gate.clone()),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.gate.clone(),
            auth::middleware,
        ))
}

/// Prometheus' scrape: this node's metrics in the OpenMetrics text format (every node answers
/// for itself, leader or not).
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Ready when this node knows a leader (a follower redirects to it; alone it cannot answer).
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.node.status().await {
        Ok(s) if s.leader != 0 => (StatusCode::OK, format!("ready: leader {}\n", s.leader)),
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader yet\n".to_owned(),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// Serves until `stop`; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state).into_make_service())
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// Binds the HTTP listener (before serving, so a taken port is a start-up error).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
