//! Who may call what: bearer tokens (`rehearse_core::tokens`) checked in front of the gRPC
//! service (a tower layer, by method path) and the HTTP API (axum middleware, by route), through
//! one [`Gate`]. With `--auth off` (the default) every call passes; with `--auth required` a call
//! needs a token whose role may make it: 401 / `UNAUTHENTICATED` without a known token, 403 /
//! `PERMISSION_DENIED` for a role that may not.
//!
//! The gate's table (hash → name, role) is refreshed by the raft thread whenever the applied
//! tokens change, so a revoked token is refused on every node as soon as it applied the revoke.
//! Admin tokens from `--admin-token-file` are read at start and live outside the state (the first
//! admin, before any token exists). Secrets are never logged: only token names are.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rehearse_core::tokens::{self, Need, Role};

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one this cluster does not know (revoked, mistyped).
    Unauthenticated(String),
    /// A known token whose role may not make this call.
    Forbidden(String),
}

impl Denied {
    pub fn message(&self) -> &str {
        match self {
            Denied::Unauthenticated(m) | Denied::Forbidden(m) => m,
        }
    }

    /// Its row of the one error table (`crate::errors`).
    pub fn code(&self) -> crate::errors::Code {
        match self {
            Denied::Unauthenticated(_) => crate::errors::Code::Unauthenticated,
            Denied::Forbidden(_) => crate::errors::Code::Forbidden,
        }
    }
}

/// The caller, once let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, Default)]
struct Book {
    /// The applied index of the tokens this table was made from (`None`: not yet).
    changed_at: Option<u64>,
    by_hash: HashMap<String, (String, Role)>,
}

#[derive(Debug)]
pub struct Gate {
    required: bool,
    /// Hashes of the `--admin-token-file` secrets.
    bootstrap: Vec<String>,
    /// Workers connecting with a verified mTLS client certificate need no token for their calls.
    mtls: bool,
    /// Dashboard pages (GET, HTML) are served without a token (`--dashboard-open`).
    pub dashboard_open: bool,
    book: RwLock<Book>,
}

impl Gate {
    /// Every call passes (`--auth off`).
    pub fn off() -> Gate {
        Gate {
            required: false,
            bootstrap: Vec::new(),
            mtls: false,
            dashboard_open: true,
            book: RwLock::default(),
        }
    }

    /// Calls need tokens; `admin_secrets` are the contents of `--admin-token-file`, one per
    /// line; `mtls`: the server requires client certificates.
    pub fn required(admin_secrets: &str, mtls: bool, dashboard_open: bool) -> Gate {
        Gate {
            required: true,
            bootstrap: admin_secrets
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(tokens::hash)
                .collect(),
            mtls,
            dashboard_open,
            book: RwLock::default(),
        }
    }

    pub fn is_required(&self) -> bool {
        self.required
    }

    /// Takes the applied tokens when they changed (cheap when they did not: one comparison).
    pub fn refresh(&self, store: &rehearse_core::jobs::JobStore) {
        let at = store.tokens_changed_at();
        if self.book.read().is_ok_and(|b| b.changed_at == Some(at)) {
            return;
        }
        let by_hash = store
            .tokens()
            .values()
            .map(|t| (t.hash.clone(), (t.name.clone(), t.role)))
            .collect();
        if let Ok(mut book) = self.book.write() {
            *book = Book {
                changed_at: Some(at),
                by_hash,
            };
        }
    }

    /// Lets a call that needs `need` in, given the `Authorization` header's value (and whether
    /// the connection came with a verified client certificate).
    pub fn check(
        &self,
        authorization: Option<&str>,
        need: Need,
        client_cert: bool,
    ) -> Result<Option<Caller>, Denied> {
        if !self.required || need == Need::Open {
            return Ok(None);
        }
        let secret = authorization.and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
        let Some(secret) = secret.map(str::trim).filter(|s| !s.is_empty()) else {
            if need == Need::Worker && self.mtls && client_cert {
                return Ok(Some(Caller {
                    name: "mtls-client".into(),
                    role: Role::Worker,
                }));
            }
            return Err(Denied::Unauthenticated(format!(
                "this coordinator requires a token (Authorization: Bearer …; --token or REHEARSE_TOKEN) with a role that may {}",
                need.as_str()
            )));
        };
        let hash = tokens::hash(secret);
        let caller = if self.bootstrap.contains(&hash) {
            Caller {
                name: "admin-token-file".into(),
                role: Role::Admin,
            }
        } else {
            let book = self
                .book
                .read()
                .map_err(|_| Denied::Unauthenticated("token table unavailable".into()))?;
            match book.by_hash.get(&hash) {
                Some((name, role)) => Caller {
                    name: name.clone(),
                    role: *role,
                },
                None => {
                    return Err(Denied::Unauthenticated(
                        "unknown token (revoked, or never created here)".into(),
                    ));
                }
            }
        };
        if caller.role.may(need) {
            Ok(Some(caller))
        } else {
            Err(Denied::Forbidden(format!(
                "token {:?} has role {}, this call needs {}",
                caller.name,
                caller.role,
                need.as_str()
            )))
        }
    }
}

/// The gRPC side: a tower layer in front of every service of the server.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    pub gate: Arc<Gate>,
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;

    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    gate: Arc<Gate>,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let need = tokens::need_grpc(req.uri().path());
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let client_cert = req
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .is_some_and(|c| !c.is_empty());
        match self.gate.check(authorization, need, client_cert) {
            Ok(_) => Box::pin(self.inner.call(req)),
            Err(denied) => {
                let status = tonic::Status::new(denied.code().grpc(), denied.message());
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(name: &str, role: Role, secret: &str) -> rehearse_core::jobs::JobStore {
        let mut s = rehearse_core::jobs::JobStore::default();
        s.apply(
            1,
            &rehearse_core::jobs::Command::SetVersion {
                version: rehearse_core::codec::CURRENT,
            },
        );
        s.apply(
            2,
            &rehearse_core::jobs::Command::CreateToken(rehearse_core::tokens::Token {
                name: name.into(),
                role,
                hash: tokens::hash(secret),
                created_at_ms: 0,
            }),
        );
        s
    }

    #[test]
    fn off_lets_everything_in_and_required_checks_roles() {
        assert_eq!(Gate::off().check(None, Need::Admin, false), Ok(None));
        let gate = Gate::required("rh_admin\n", false, false);
        gate.refresh(&store_with("ci", Role::Operate, "rh_ci"));
        assert!(matches!(
            gate.check(None, Need::Read, false),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            gate.check(Some("Bearer rh_nope"), Need::Read, false),
            Err(Denied::Unauthenticated(_))
        ));
        assert_eq!(
            gate.check(Some("Bearer rh_ci"), Need::Operate, false)
                .map(|c| c.map(|c| c.name)),
            Ok(Some("ci".into()))
        );
        assert!(matches!(
            gate.check(Some("Bearer rh_ci"), Need::Admin, false),
            Err(Denied::Forbidden(m)) if m.contains("\"ci\" has role operate")
        ));
        assert!(
            gate.check(Some("Bearer rh_admin"), Need::Admin, false)
                .is_ok()
        );
        assert_eq!(gate.check(None, Need::Open, false), Ok(None));
    }

    #[test]
    fn a_revoked_token_is_refused_after_the_refresh_and_mtls_workers_pass() {
        let gate = Gate::required("", true, false);
        let mut store = store_with("w", Role::Worker, "rh_w");
        gate.refresh(&store);
        assert!(gate.check(Some("Bearer rh_w"), Need::Worker, false).is_ok());
        store.apply(
            3,
            &rehearse_core::jobs::Command::RevokeToken {
                name: "w".into(),
                at_ms: 0,
            },
        );
        gate.refresh(&store);
        assert!(
            gate.check(Some("Bearer rh_w"), Need::Worker, false)
                .is_err()
        );
        // A verified client certificate stands for a worker, for worker calls only.
        assert!(gate.check(None, Need::Worker, true).is_ok());
        assert!(gate.check(None, Need::Read, true).is_err());
    }
}
