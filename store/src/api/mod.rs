//! HTTP: the management API ([`management_app`]) and the gateway lookup API
//! ([`gateway_app`]), on separate listeners, sharing one [`AppState`].

pub mod access_keys;
pub mod alerts;
pub mod api_keys;
pub mod audit;
pub mod billing;
pub mod configs;
pub mod extract;
pub mod gateway;
pub mod principal;
pub mod provider_keys;
pub mod providers;
pub mod usage;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use self::principal::{Principal, Role, SessionCredential};
use crate::error::{ApiError, StoreResult};
use crate::ids::{is_management_token, now_ms, secret_eq};
use crate::storage::{PageRequest, Store, API_KEY_TOUCH_MS};

/// Largest accepted request body (bytes).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The OpenAPI document of the management API (kept in the repository).
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// Largest `POST /v1/usage` body (bytes).
pub const USAGE_BODY_LIMIT: usize = 1024 * 1024;

/// Outcomes of `POST /v1/reserve`, as counted in `/metrics`.
pub const RESERVE_OUTCOMES: [&str; 5] = ["ok", "refused_key", "refused_configuration", "refused_credits", "error"];

/// (listener, route template, status).
type HttpKey = (&'static str, Arc<str>, u16);

#[derive(Default, Debug)]
pub struct Stats {
    pub lookups: AtomicU64,
    pub changes: AtomicU64,
    pub reserves: AtomicU64,
    /// Rate-limit leases granted or refused (`POST /v1/lease`).
    pub leases: AtomicU64,
    /// Usage records stored (duplicates not counted).
    pub usage_records: AtomicU64,
    reserve_outcomes: [AtomicU64; 5],
    /// (listener, route template, status) → requests. No label carries a
    /// secret: routes are templates, never raw paths.
    http: Mutex<BTreeMap<HttpKey, u64>>,
}

impl Stats {
    pub fn count_reserve(&self, outcome: &str) {
        if let Some(i) = RESERVE_OUTCOMES.iter().position(|o| *o == outcome) {
            if let Some(c) = self.reserve_outcomes.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn count_http(&self, listener: &'static str, route: Arc<str>, status: u16) {
        if let Ok(mut m) = self.http.lock() {
            *m.entry((listener, route, status)).or_insert(0) += 1;
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// The bootstrap admin token (`KEYGATE_ADMIN_TOKEN`).
    admin_token: Arc<str>,
    gateway_token: Arc<str>,
    pub stats: Arc<Stats>,
    /// The web console's settings; without them `/console` is not served.
    pub console: Option<Arc<crate::console::Config>>,
    /// Wakes the alert delivery worker (`crate::webhooks`) when usage was
    /// ingested: settling may have queued deliveries.
    pub alerts: Arc<tokio::sync::Notify>,
    /// The admin token's fingerprint under the console's key: what a console
    /// session opened with the admin token holds ([`SessionCredential`]).
    bootstrap_fingerprint: Option<Arc<str>>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, admin_token: &str, gateway_token: &str) -> Self {
        AppState {
            store,
            admin_token: admin_token.into(),
            gateway_token: gateway_token.into(),
            stats: Arc::default(),
            console: None,
            alerts: Arc::default(),
            bootstrap_fingerprint: None,
        }
    }

    /// Serves the web console at `/console` on the management listener.
    pub fn with_console(mut self, console: crate::console::Config) -> Self {
        self.bootstrap_fingerprint = Some(console.fingerprint(&self.admin_token).into());
        self.console = Some(Arc::new(console));
        self
    }

    /// Who holds `token` on the management API: the bootstrap admin token
    /// (constant-time compare), or a management key (`kgm_…`, found by its
    /// digest, read afresh on every call: a deleted or rotated key stops
    /// working as soon as that change commits). `None`: nobody (an access
    /// key, the gateway token, anything else). A key's use is recorded at
    /// most once a minute ([`API_KEY_TOUCH_MS`]). The console signs a user
    /// in with this, then records it with [`audit::record_console_login`].
    pub async fn authenticate(&self, token: &str) -> Result<Option<Principal>, ApiError> {
        if secret_eq(token, &self.admin_token) {
            return Ok(Some(Principal::bootstrap()));
        }
        if !is_management_token(token) {
            return Ok(None);
        }
        self.authenticate_key(keygate_proto::token::digest(token)).await
    }

    /// Who holds the credential of a console session ([`SessionCredential`]),
    /// judged as [`AppState::authenticate`] judges the credential itself, and
    /// as afresh: the admin token by its fingerprint (constant-time compare;
    /// a store started with another admin token refuses it), a management
    /// key by its token's digest, read from the database on every call.
    pub async fn authenticate_session(&self, credential: &SessionCredential) -> Result<Option<Principal>, ApiError> {
        match credential {
            SessionCredential::Bootstrap(fingerprint) => Ok(self
                .bootstrap_fingerprint
                .as_deref()
                .is_some_and(|mine| secret_eq(fingerprint, mine))
                .then(Principal::bootstrap)),
            SessionCredential::Key(digest) => self.authenticate_key(digest.clone()).await,
        }
    }

    /// The management key whose token has `digest`, its use recorded at most
    /// once a minute.
    async fn authenticate_key(&self, digest: String) -> Result<Option<Principal>, ApiError> {
        let Some(key) = run(self, move |s| s.api_key_by_digest(&digest)).await? else {
            return Ok(None);
        };
        let now = now_ms();
        if key.last_used_ms.is_none_or(|t| now.saturating_sub(t) >= API_KEY_TOUCH_MS) {
            let id = key.id.clone();
            if let Err(e) = run(self, move |s| s.touch_api_key(&id, now)).await {
                tracing::warn!(error = ?e, "could not record a management key's use");
            }
        }
        Ok(Some(Principal { actor: key.id, name: key.name, role: key.role }))
    }
}

/// Runs a storage call on the blocking pool.
pub async fn run<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
{
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::Internal(format!("storage task failed: {e}")))?
        .map_err(ApiError::from)
}

// ------------------------------------------------------------ route table

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum M {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl M {
    pub fn as_str(self) -> &'static str {
        match self {
            M::Get => "get",
            M::Post => "post",
            M::Put => "put",
            M::Patch => "patch",
            M::Delete => "delete",
        }
    }

    /// The method of a request (`HEAD` is served as `GET`).
    pub fn of(method: &axum::http::Method) -> Option<M> {
        use axum::http::Method;
        match *method {
            Method::GET | Method::HEAD => Some(M::Get),
            Method::POST => Some(M::Post),
            Method::PUT => Some(M::Put),
            Method::PATCH => Some(M::Patch),
            Method::DELETE => Some(M::Delete),
            _ => None,
        }
    }

    fn filter(self) -> MethodFilter {
        match self {
            M::Get => MethodFilter::GET,
            M::Post => MethodFilter::POST,
            M::Put => MethodFilter::PUT,
            M::Patch => MethodFilter::PATCH,
            M::Delete => MethodFilter::DELETE,
        }
    }
}

/// Builds a router while recording its (method, path) table, so a test can
/// check the OpenAPI document against what is really served.
pub struct Routes {
    public: Router<AppState>,
    protected: Router<AppState>,
    /// Every route served.
    pub table: Vec<(M, &'static str)>,
    /// The routes of `table` served without authentication.
    pub open_table: Vec<(M, &'static str)>,
}

impl Routes {
    fn new() -> Self {
        Routes { public: Router::new(), protected: Router::new(), table: Vec::new(), open_table: Vec::new() }
    }

    /// A route that needs the listener's bearer token.
    fn auth<H, T>(mut self, m: M, path: &'static str, h: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.protected = self.protected.route(path, on(m.filter(), h));
        self.table.push((m, path));
        self
    }

    /// A route that needs the listener's bearer token and takes bodies up to `limit` bytes.
    fn auth_limit<H, T>(mut self, m: M, path: &'static str, limit: usize, h: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.protected = self.protected.route(path, on(m.filter(), h).layer(DefaultBodyLimit::max(limit)));
        self.table.push((m, path));
        self
    }

    /// A route without authentication.
    fn open<H, T>(mut self, m: M, path: &'static str, h: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.public = self.public.route(path, on(m.filter(), h));
        self.table.push((m, path));
        self.open_table.push((m, path));
        self
    }

    fn finish(self, state: AppState, guard: Guard) -> Router {
        let listener = match guard {
            Guard::Admin => "management",
            Guard::Gateway => "gateway",
        };
        let protected = match guard {
            Guard::Admin => self.protected.route_layer(from_fn_with_state(state.clone(), require_management)),
            Guard::Gateway => self.protected.route_layer(from_fn_with_state(state.clone(), require_gateway)),
        };
        let protected = protected.route_layer(from_fn(tag_route));
        let public = self.public.route_layer(from_fn(tag_route));
        public
            .merge(protected)
            .fallback(no_route)
            .method_not_allowed_fallback(wrong_method)
            .layer(DefaultBodyLimit::max(BODY_LIMIT))
            .layer(from_fn_with_state((state.stats.clone(), listener), log_requests))
            .with_state(state)
    }
}

/// Which bearer token a listener's protected routes accept.
#[derive(Debug, Clone, Copy)]
enum Guard {
    Admin,
    Gateway,
}

/// The role each protected route of the management API needs: the one place
/// where roles are decided. `viewer`: every GET; `operator`: a viewer's, and
/// the writes on access keys and access-key configurations; `admin`:
/// everything. A route not listed here needs `admin` ([`required_role`]),
/// and `every_management_route_has_a_role_rule` fails until it is listed.
pub const ROUTE_ROLES: &[(M, &str, Role)] = &[
    (M::Get, "/whoami", Role::Viewer),
    (M::Get, "/access-keys", Role::Viewer),
    (M::Post, "/access-keys", Role::Operator),
    (M::Get, "/access-keys/{id}", Role::Viewer),
    (M::Patch, "/access-keys/{id}", Role::Operator),
    (M::Delete, "/access-keys/{id}", Role::Operator),
    (M::Post, "/access-keys/{id}/rotate", Role::Operator),
    (M::Get, "/access-key-configurations", Role::Viewer),
    (M::Post, "/access-key-configurations", Role::Operator),
    (M::Get, "/access-key-configurations/{id}", Role::Viewer),
    (M::Patch, "/access-key-configurations/{id}", Role::Operator),
    (M::Delete, "/access-key-configurations/{id}", Role::Operator),
    (M::Get, "/provider-keys", Role::Viewer),
    (M::Post, "/provider-keys", Role::Admin),
    (M::Get, "/provider-keys/{id}", Role::Viewer),
    (M::Patch, "/provider-keys/{id}", Role::Admin),
    (M::Delete, "/provider-keys/{id}", Role::Admin),
    (M::Post, "/provider-keys/{id}/rotate", Role::Admin),
    (M::Get, "/providers", Role::Viewer),
    (M::Post, "/providers", Role::Admin),
    (M::Get, "/providers/{id}", Role::Viewer),
    (M::Patch, "/providers/{id}", Role::Admin),
    (M::Delete, "/providers/{id}", Role::Admin),
    (M::Get, "/usage", Role::Viewer),
    (M::Get, "/usage/summary", Role::Viewer),
    (M::Get, "/credits", Role::Viewer),
    (M::Post, "/credits", Role::Admin),
    (M::Patch, "/credits", Role::Admin),
    (M::Get, "/prices", Role::Viewer),
    (M::Put, "/prices/{provider}/{model}", Role::Admin),
    (M::Delete, "/prices/{provider}/{model}", Role::Admin),
    (M::Get, "/alert-webhooks", Role::Viewer),
    (M::Post, "/alert-webhooks", Role::Admin),
    (M::Get, "/alert-webhooks/{id}", Role::Viewer),
    (M::Patch, "/alert-webhooks/{id}", Role::Admin),
    (M::Delete, "/alert-webhooks/{id}", Role::Admin),
    (M::Get, "/alert-webhooks/{id}/deliveries", Role::Viewer),
    (M::Get, "/api-keys", Role::Viewer),
    (M::Post, "/api-keys", Role::Admin),
    (M::Get, "/api-keys/{id}", Role::Viewer),
    (M::Patch, "/api-keys/{id}", Role::Admin),
    (M::Delete, "/api-keys/{id}", Role::Admin),
    (M::Post, "/api-keys/{id}/rotate", Role::Admin),
    (M::Get, "/audit-log", Role::Viewer),
];

/// The role a management route needs: its rule in [`ROUTE_ROLES`], else
/// `admin` (a new route is admin-only until it is given a rule).
pub fn required_role(m: M, path: &str) -> Role {
    ROUTE_ROLES.iter().find(|(rm, rp, _)| *rm == m && *rp == path).map_or(Role::Admin, |(_, _, r)| *r)
}

/// Every route of the management API.
pub fn management_routes() -> Routes {
    Routes::new()
        .open(M::Get, "/healthz", healthz)
        .open(M::Get, "/openapi.json", openapi)
        .open(M::Get, "/metrics", metrics)
        .auth(M::Get, "/whoami", api_keys::whoami)
        .auth(M::Get, "/access-keys", access_keys::list)
        .auth(M::Post, "/access-keys", access_keys::create)
        .auth(M::Get, "/access-keys/{id}", access_keys::get)
        .auth(M::Patch, "/access-keys/{id}", access_keys::update)
        .auth(M::Delete, "/access-keys/{id}", access_keys::delete)
        .auth(M::Post, "/access-keys/{id}/rotate", access_keys::rotate)
        .auth(M::Get, "/provider-keys", provider_keys::list)
        .auth(M::Post, "/provider-keys", provider_keys::create)
        .auth(M::Get, "/provider-keys/{id}", provider_keys::get)
        .auth(M::Patch, "/provider-keys/{id}", provider_keys::update)
        .auth(M::Delete, "/provider-keys/{id}", provider_keys::delete)
        .auth(M::Post, "/provider-keys/{id}/rotate", provider_keys::rotate)
        .auth(M::Get, "/access-key-configurations", configs::list)
        .auth(M::Post, "/access-key-configurations", configs::create)
        .auth(M::Get, "/access-key-configurations/{id}", configs::get)
        .auth(M::Patch, "/access-key-configurations/{id}", configs::update)
        .auth(M::Delete, "/access-key-configurations/{id}", configs::delete)
        .auth(M::Get, "/providers", providers::list)
        .auth(M::Post, "/providers", providers::create)
        .auth(M::Get, "/providers/{id}", providers::get)
        .auth(M::Patch, "/providers/{id}", providers::update)
        .auth(M::Delete, "/providers/{id}", providers::delete)
        .auth(M::Get, "/usage", usage::list)
        .auth(M::Get, "/usage/summary", usage::summary)
        .auth(M::Get, "/credits", billing::get_credits)
        .auth(M::Post, "/credits", billing::add_credits)
        .auth(M::Patch, "/credits", billing::patch_credits)
        .auth(M::Get, "/prices", billing::list_prices)
        .auth(M::Put, "/prices/{provider}/{model}", billing::put_price)
        .auth(M::Delete, "/prices/{provider}/{model}", billing::delete_price)
        .auth(M::Get, "/alert-webhooks", alerts::list)
        .auth(M::Post, "/alert-webhooks", alerts::create)
        .auth(M::Get, "/alert-webhooks/{id}", alerts::get)
        .auth(M::Patch, "/alert-webhooks/{id}", alerts::update)
        .auth(M::Delete, "/alert-webhooks/{id}", alerts::delete)
        .auth(M::Get, "/alert-webhooks/{id}/deliveries", alerts::deliveries)
        .auth(M::Get, "/api-keys", api_keys::list)
        .auth(M::Post, "/api-keys", api_keys::create)
        .auth(M::Get, "/api-keys/{id}", api_keys::get)
        .auth(M::Patch, "/api-keys/{id}", api_keys::update)
        .auth(M::Delete, "/api-keys/{id}", api_keys::delete)
        .auth(M::Post, "/api-keys/{id}/rotate", api_keys::rotate)
        .auth(M::Get, "/audit-log", audit::list)
}

/// Every route of the gateway listener.
pub fn gateway_routes() -> Routes {
    Routes::new()
        .open(M::Get, "/healthz", healthz)
        .open(M::Get, "/v1/stats", gateway::stats)
        .auth(M::Get, "/v1/lookup/{digest}", gateway::lookup)
        .auth(M::Get, "/v1/self/{digest}", gateway::self_check)
        .auth(M::Get, "/v1/changes", gateway::changes)
        .auth(M::Post, "/v1/reserve", gateway::reserve)
        .auth(M::Post, "/v1/lease", gateway::lease)
        .auth_limit(M::Post, "/v1/usage", USAGE_BODY_LIMIT, gateway::usage)
}

/// The management API (the bootstrap admin token and management keys, by role).
pub fn management_app(state: AppState) -> Router {
    let api = management_routes().finish(state.clone(), Guard::Admin);
    match &state.console {
        Some(cfg) => crate::console::app(cfg.clone(), api, state.clone()),
        None => api,
    }
}

/// The gateway lookup API (gateway token).
pub fn gateway_app(state: AppState) -> Router {
    gateway_routes().finish(state, Guard::Gateway)
}

// ------------------------------------------------------------ middleware

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Constant-time check of the gateway listener's bearer token: the gateway
/// token only (never the admin token, a management key or an access key).
async fn require_gateway(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match bearer(&req) {
        Some(t) if secret_eq(t, &state.gateway_token) => next.run(req).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

/// Authenticates a management call ([`AppState::authenticate`], or for a
/// console session's call [`AppState::authenticate_session`]: 401 when
/// nobody holds the credential), checks the caller's role against the route's
/// rule (403 `insufficient_role`), and hands the [`Principal`] to the
/// handler as a request extension (replacing any the request carried).
async fn require_management(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // A console session's call carries its credential as an extension (never
    // a header: no client can send one); any other call, a bearer token.
    let authenticated = match req.extensions().get::<SessionCredential>().cloned() {
        Some(credential) => state.authenticate_session(&credential).await,
        None => match bearer(&req).map(str::to_owned) {
            Some(token) => state.authenticate(&token).await,
            None => return ApiError::Unauthorized.into_response(),
        },
    };
    let principal = match authenticated {
        Ok(Some(p)) => p,
        Ok(None) => return ApiError::Unauthorized.into_response(),
        Err(e) => return e.into_response(),
    };
    let required = match (M::of(req.method()), req.extensions().get::<MatchedPath>()) {
        (Some(m), Some(path)) => required_role(m, path.as_str()),
        _ => Role::Admin,
    };
    if !principal.may(required) {
        return ApiError::InsufficientRole { required, role: principal.role }.into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// The route template a response came from, for the request log.
#[derive(Clone)]
struct RouteTemplate(Arc<str>);

pub(crate) async fn tag_route(path: MatchedPath, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(RouteTemplate(path.as_str().into()));
    resp
}

/// Logs and counts method, route template (never the raw path: it may hold a
/// digest) and status.
pub(crate) async fn log_requests(
    State((stats, listener)): State<(Arc<Stats>, &'static str)>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    let route = resp.extensions().get::<RouteTemplate>().map(|t| t.0.clone());
    stats.count_http(listener, route.clone().unwrap_or_else(|| "none".into()), resp.status().as_u16());
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    let route = route.as_deref().unwrap_or("<no route>");
    let status = resp.status().as_u16();
    // Envoy polls the gateway listener several times a second per worker:
    // its routine calls log at debug, everything else (and any error) at info.
    if route.starts_with("/v1/") && status < 400 {
        tracing::debug!(method = %method, route, status, micros, "request");
    } else {
        tracing::info!(method = %method, route, status, micros, "request");
    }
    resp
}

async fn no_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn wrong_method() -> ApiError {
    ApiError::MethodNotAllowed
}

// ------------------------------------------------------------ shared handlers

async fn healthz(State(state): State<AppState>) -> Response {
    match run(&state, |s| s.ping()).await {
        Ok(()) => Json(json!({ "status": "ok" })).into_response(),
        Err(e) => {
            tracing::error!(error = ?e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable" }))).into_response()
        }
    }
}

/// Prometheus text format. Served without authentication on the management
/// listener (which binds to loopback unless `KEYGATE_BIND` says otherwise).
async fn metrics(State(state): State<AppState>) -> Response {
    let gauges = match run(&state, |s| s.gauges()).await {
        Ok(g) => g,
        Err(e) => return e.into_response(),
    };
    let st = &state.stats;
    let mut out = String::new();
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let _ =
        writeln!(out, "# HELP keygate_store_http_requests_total HTTP requests by listener, route template and status.");
    let _ = writeln!(out, "# TYPE keygate_store_http_requests_total counter");
    if let Ok(m) = st.http.lock() {
        for ((listener, route, status), n) in m.iter() {
            let _ = writeln!(
                out,
                "keygate_store_http_requests_total{{listener=\"{listener}\",route=\"{}\",status=\"{status}\"}} {n}",
                esc(route)
            );
        }
    }
    let _ = writeln!(out, "# HELP keygate_store_lookups_total Lookup requests from the gateway.");
    let _ = writeln!(out, "# TYPE keygate_store_lookups_total counter");
    let _ = writeln!(out, "keygate_store_lookups_total {}", st.lookups.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP keygate_store_reserves_total Reservation requests by outcome.");
    let _ = writeln!(out, "# TYPE keygate_store_reserves_total counter");
    for (outcome, c) in RESERVE_OUTCOMES.iter().zip(st.reserve_outcomes.iter()) {
        let _ = writeln!(out, "keygate_store_reserves_total{{outcome=\"{outcome}\"}} {}", c.load(Ordering::Relaxed));
    }
    let _ = writeln!(out, "# HELP keygate_store_usage_records_total Usage records stored (duplicates not counted).");
    let _ = writeln!(out, "# TYPE keygate_store_usage_records_total counter");
    let _ = writeln!(out, "keygate_store_usage_records_total {}", st.usage_records.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP keygate_store_access_keys Access keys in the store.");
    let _ = writeln!(out, "# TYPE keygate_store_access_keys gauge");
    let _ = writeln!(out, "keygate_store_access_keys {}", gauges.access_keys);
    let _ = writeln!(out, "# HELP keygate_store_version Store-wide change counter.");
    let _ = writeln!(out, "# TYPE keygate_store_version gauge");
    let _ = writeln!(out, "keygate_store_version {}", gauges.version);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}

/// A list answer: `{<key>: [...], "uri": base, "nextPageUri": ...}`.
pub struct PageBody<T> {
    key: &'static str,
    items: Vec<T>,
    uri: Cow<'static, str>,
    next: Option<String>,
}

impl<T> PageBody<T> {
    /// Appends `&extra` (already encoded) to the next-page link, so that it
    /// keeps the filters of the first request.
    pub fn with_query(mut self, extra: &str) -> Self {
        if let Some(n) = &mut self.next {
            if !extra.is_empty() {
                n.push('&');
                n.push_str(extra);
            }
        }
        self
    }
}

impl<T: Serialize> Serialize for PageBody<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry(self.key, &self.items)?;
        m.serialize_entry("uri", &self.uri)?;
        m.serialize_entry("nextPageUri", &self.next)?;
        m.end()
    }
}

/// Shapes a list answer. `items` holds up to `limit + 1` entries (the extra
/// one only says that there is a next page).
pub fn page_response<T: Serialize>(
    key: &'static str,
    base: impl Into<Cow<'static, str>>,
    mut items: Vec<T>,
    page: &PageRequest,
    id_of: impl Fn(&T) -> &str,
) -> Result<Json<PageBody<T>>, ApiError> {
    let base = base.into();
    let more = items.len() > page.limit;
    items.truncate(page.limit);
    let next = match (more, items.last()) {
        (true, Some(last)) => Some(format!("{base}?limit={}&beforeId={}", page.limit, id_of(last))),
        _ => None,
    };
    Ok(Json(PageBody { key, items, uri: base, next }))
}
