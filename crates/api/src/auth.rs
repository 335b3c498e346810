//! Bearer tokens with scopes.
//!
//! A token is `orch_<id>_<secret>`: the id is public (it names the token in
//! `orchestrator token list` and `revoke`), the secret is shown once at
//! creation and only its SHA-256 is stored. A request's secret is hashed and
//! compared with the stored hash in constant time. Scopes nest: `admin`
//! covers `write`, which covers `read`.
//!
//! Verified tokens are cached for [`CACHE_TTL`] so a busy client costs no
//! database read per request; a revocation therefore takes effect within
//! that time in every `serve` process.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use orch_core::Millis;
use orch_engine::Clock;
use orch_engine::store::{ApiToken, Store};
use sha2::{Digest, Sha256};

use crate::{ApiError, AppState, AuthMode};

/// How long a verified token is trusted without reading the store again.
pub const CACHE_TTL: Millis = 5_000;

/// What a token may do. Ordered: each scope covers those before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read runs, tasks, events, artifacts, workflows, the DLQ, metrics.
    Read,
    /// Also create, tick, cancel and answer runs, waive gates, replay dead letters.
    Write,
    /// Everything.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Parse a comma-separated list (`read,write`).
    pub fn parse_list(raw: &str) -> Result<Vec<Scope>, String> {
        let mut scopes: Vec<Scope> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Scope::from_str)
            .collect::<Result<_, _>>()?;
        if scopes.is_empty() {
            return Err("no scope given; use one or more of read, write, admin".into());
        }
        scopes.sort();
        scopes.dedup();
        Ok(scopes)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?}; scopes are read, write and admin"
            )),
        }
    }
}

/// A token just created: the full secret token (shown once) and its record.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// `orch_<id>_<secret>`: what a client sends as `Authorization: Bearer …`.
    pub token: String,
    pub record: ApiToken,
}

/// Make a new token (not yet stored).
pub fn generate(name: &str, scopes: &[Scope], now: Millis) -> NewToken {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    NewToken {
        token: format!("orch_{id}_{secret}"),
        record: ApiToken {
            id,
            name: name.to_string(),
            scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
            secret_hash: hash_secret(&secret),
            created_at: now,
            revoked_at: None,
        },
    }
}

/// SHA-256 of a secret, lowercase hex.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equality whose time depends only on the length, not on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Split `orch_<id>_<secret>` into id and secret (`None` if malformed).
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("orch_")?;
    let (id, secret) = rest.split_once('_')?;
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (ok(id) && ok(secret)).then_some((id, secret))
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's id; `None` when auth is disabled.
    pub token_id: Option<String>,
    /// The highest scope held.
    pub scope: Scope,
}

impl Principal {
    /// `Ok` if the caller holds `needed`, else 403 naming the scope.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this token has scope {}, this request needs {needed}; create one with `orchestrator token create --scope {needed}`",
                self.scope
            )))
        }
    }
}

/// Verifies bearer tokens against the store.
pub struct Authenticator {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mode: AuthMode,
    /// Token id -> (record, when it was read).
    cache: Mutex<HashMap<String, (ApiToken, Millis)>>,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, mode: AuthMode) -> Self {
        Authenticator {
            store,
            clock,
            mode,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Who sent these headers: 401 if the token is missing, malformed,
    /// unknown, revoked or wrong.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if self.mode == AuthMode::Disabled {
            return Ok(Principal {
                token_id: None,
                scope: Scope::Admin,
            });
        }
        let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(
                "missing bearer token: send `Authorization: Bearer orch_…`; create a token with `orchestrator token create --scope read`".into(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "malformed Authorization header: expected `Bearer orch_<id>_<secret>`".into(),
                )
            })?;
        let (id, secret) = split_token(token).ok_or_else(|| {
            ApiError::Unauthorized(
                "malformed token: expected `orch_<id>_<secret>` as printed by `orchestrator token create`".into(),
            )
        })?;
        let record = self.lookup(id).await?;
        let bad = || {
            ApiError::Unauthorized(
                "unknown or revoked token; create a new one with `orchestrator token create`"
                    .into(),
            )
        };
        let Some(record) = record else {
            return Err(bad());
        };
        let presented = hash_secret(secret);
        if !constant_time_eq(presented.as_bytes(), record.secret_hash.as_bytes())
            || record.revoked_at.is_some()
        {
            return Err(bad());
        }
        let scope = record
            .scopes
            .iter()
            .filter_map(|s| s.parse::<Scope>().ok())
            .max()
            .ok_or_else(bad)?;
        Ok(Principal {
            token_id: Some(record.id),
            scope,
        })
    }

    async fn lookup(&self, id: &str) -> Result<Option<ApiToken>, ApiError> {
        let now = self.clock.now_ms();
        if let Some((record, at)) = self.cache.lock().expect("token cache").get(id)
            && now - at < CACHE_TTL
        {
            return Ok(Some(record.clone()));
        }
        let record = self.store.get_token(id).await?;
        let mut cache = self.cache.lock().expect("token cache");
        match &record {
            Some(r) => {
                if cache.len() > 10_000 {
                    cache.retain(|_, (_, at)| now - *at < CACHE_TTL);
                }
                cache.insert(id.to_string(), (r.clone(), now));
            }
            None => {
                cache.remove(id);
            }
        }
        Ok(record)
    }
}

/// A scope a route needs, as a type: `Auth<Write>` in a handler's arguments.
pub trait RequiredScope: Send + Sync + 'static {
    const SCOPE: Scope;
}

/// Marker: the route needs `read`.
#[derive(Debug)]
pub struct Read;
/// Marker: the route needs `write`.
#[derive(Debug)]
pub struct Write;
/// Marker: the route needs `admin`.
#[derive(Debug)]
pub struct Admin;

impl RequiredScope for Read {
    const SCOPE: Scope = Scope::Read;
}
impl RequiredScope for Write {
    const SCOPE: Scope = Scope::Write;
}
impl RequiredScope for Admin {
    const SCOPE: Scope = Scope::Admin;
}

/// Extractor: the request carries a valid token holding scope `S` (or auth
/// is disabled). Rejects with 401 or 403 problem documents.
#[derive(Debug)]
pub struct Auth<S: RequiredScope>(pub Principal, PhantomData<S>);

impl<S: RequiredScope> FromRequestParts<AppState> for Auth<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = state.auth.authenticate(&parts.headers).await?;
        principal.require(S::SCOPE)?;
        Ok(Auth(principal, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_nest_and_reject_unknown_names() {
        assert_eq!(
            Scope::parse_list("write, read,write").unwrap(),
            vec![Scope::Read, Scope::Write]
        );
        assert!(Scope::parse_list("").is_err());
        let e = Scope::parse_list("read,root").unwrap_err();
        assert!(e.contains("root") && e.contains("admin"), "{e}");
        let p = Principal {
            token_id: None,
            scope: Scope::Write,
        };
        assert!(p.require(Scope::Read).is_ok());
        assert!(p.require(Scope::Write).is_ok());
        let err = p.require(Scope::Admin).unwrap_err();
        assert!(matches!(err, ApiError::Forbidden(_)));
        assert!(err.to_string().contains("--scope admin"));
    }

    #[test]
    fn generated_tokens_split_back_and_store_only_the_hash() {
        let t = generate("ci", &[Scope::Write, Scope::Read], 7);
        let (id, secret) = split_token(&t.token).expect("well-formed");
        assert_eq!(id, t.record.id);
        assert_eq!(t.record.secret_hash, hash_secret(secret));
        assert!(!t.record.secret_hash.contains(secret));
        assert_eq!(t.record.scopes, vec!["read", "write"]);
        assert_eq!(secret.len(), 64);
        let other = generate("ci", &[Scope::Read], 7);
        assert_ne!(other.record.id, t.record.id);
        assert_ne!(other.token, t.token);
    }

    #[test]
    fn malformed_tokens_do_not_split() {
        for bad in [
            "",
            "orch_",
            "orch__x",
            "orch_x_",
            "bearer",
            "orch_a_b c",
            "xorch_a_b",
        ] {
            assert!(split_token(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
