//! The top manager's web port: a JSON API and a Prometheus endpoint over
//! the same query module the CLI reads through (nothing is computed twice),
//! behind a login against [`users::Users`] (Argon2id hashes): HTTP Basic
//! for tools, a form and a session cookie for browsers ([`sessions`]).
//!
//! Plain HTTP only on a loopback address; anywhere else the port speaks
//! HTTPS with the top manager's own certificate (the deployment's CA is
//! what a browser or Prometheus must trust). Bounded like every other port:
//! at most [`MAX_CONNECTIONS`] at once, a request's headers within
//! [`HEADER_TIMEOUT`], a TLS handshake within as long, and at most
//! [`PASSWORD_CHECKS`] Argon2 checks at once, so a flood of bad logins
//! costs a bounded share of the CPU, and at most [`MAX_STREAMS`] event
//! streams, so open pages cannot take every connection.
//!
//! | path | role | what |
//! |---|---|---|
//! | `GET /` | read-only | the page: topology, alarms, reports, modules, rules, live (sent to `/login` without a session) |
//! | `GET, POST /login`, `POST /logout` | none | the login form, a session cookie |
//! | `GET /metrics` | read-only | Prometheus text: the latest window of every series ([`metrics`]) |
//! | `GET /api/v1/status` | read-only | what `agad status --json` prints |
//! | `GET /api/v1/alarms` | read-only | `agad alarms --json`; query `domain`, `node`, `module`, `severity`, `area`, `since_ms`, `until_ms`, `active_only`, `limit` |
//! | `GET /api/v1/reports` | read-only | `agad report --json`; query `domain`, `node`, `module`, `metric`, `since_ms`, `until_ms`, `per_domain`, `limit` |
//! | `GET /api/v1/kb/stats` | read-only | `agad kb stats --json` |
//! | `GET /api/v1/modules` | read-only | every module in BGC: version, signer, hash, capabilities, size |
//! | `GET /api/v1/events` | read-only | live events (server-sent events): `alarm`, `station`, `status`, `reports`, `lagged` |
//! | `POST /api/v1/topology[?dry_run=true]` | admin | apply a topology file (the body, TOML), as `agad topology apply` |
//! | `POST /api/v1/modules` | admin | publish a signed bundle (the body, `.agad` bytes), as `agad module publish` |
//! | `POST /api/v1/kb` | admin | apply a rule set: `{"files": [["name.toml", "text"]], "dry_run": false}`, as `agad kb apply` |
//! | `POST /api/v1/acks` | admin | acknowledge an alarm: `{"alarm_id": "...", "comment": "..."}` |
//! | `GET /api/v1/openapi.json` | none | this API, described |

pub mod metrics;
pub mod sessions;
pub mod users;

use crate::Mor;
use crate::bases::BaseError;
use crate::query::{self, AlarmQuery, ReportQuery};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use users::{Role, Users};

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a client has to send a request's headers (and to finish a TLS
/// handshake).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Event streams (`/api/v1/events`) open at once: each holds a connection
/// for as long as its page is open, and they must leave room for the rest.
pub const MAX_STREAMS: usize = 64;
/// Argon2 password checks at once.
pub const PASSWORD_CHECKS: usize = 2;
/// Largest bundle `POST /api/v1/modules` takes (other bodies: axum's 2 MB).
const MAX_BUNDLE: usize = 64 << 20;
/// How far back `/metrics` looks for each series' latest window.
const METRICS_LOOKBACK: Duration = Duration::from_secs(3600);

/// Where and how the web port listens.
pub struct WebConfig {
    pub listen: SocketAddr,
    pub users: Users,
    /// `None`: plain HTTP (only allowed on a loopback address).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

struct Web {
    mor: Arc<Mor>,
    users: Users,
    checks: Semaphore,
    sessions: sessions::Sessions,
    /// Whether the port speaks HTTPS (the cookie is then `Secure`).
    https: bool,
    /// Event streams open at once ([`MAX_STREAMS`]).
    streams: Arc<Semaphore>,
}

/// Binds the web port now (so a taken port stops the start with a clear
/// error) and serves it until `shutdown`.
pub async fn bind(
    mor: Arc<Mor>,
    config: WebConfig,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    if config.tls.is_none() && !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "the web port {} is not on loopback: it needs HTTPS (give the top manager its certificate)",
            config.listen
        );
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("web port {}: {e}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        https = config.tls.is_some(),
        users = !config.users.is_empty(),
        "web port open"
    );
    let web = Arc::new(Web {
        mor,
        users: config.users,
        checks: Semaphore::new(PASSWORD_CHECKS),
        sessions: sessions::Sessions::default(),
        https: config.tls.is_some(),
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
    });
    let acceptor = config.tls.map(tokio_rustls::TlsAcceptor::from);
    Ok(tokio::spawn(serve(
        listener,
        router(web),
        acceptor,
        shutdown,
    )))
}

fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/login", get(login_form).post(log_in))
        .route("/logout", axum::routing::post(log_out))
        .route("/metrics", get(prometheus))
        .route("/api/v1/status", get(status))
        .route("/api/v1/alarms", get(alarms))
        .route("/api/v1/reports", get(reports))
        .route("/api/v1/kb/stats", get(kb_stats))
        .route(
            "/api/v1/modules",
            get(modules)
                .post(publish)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_BUNDLE)),
        )
        .route("/api/v1/topology", axum::routing::post(apply_topology))
        .route("/api/v1/kb", axum::routing::post(apply_rules))
        .route("/api/v1/acks", axum::routing::post(acknowledge))
        .route("/api/v1/events", get(events))
        .route("/api/v1/openapi.json", get(openapi))
        .with_state(web)
}

async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("web port: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let (app, tls) = (app.clone(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = match tls {
                None => {
                    http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await
                        }
                        _ => return,
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!("web connection ended: {e}");
            }
        });
    }
}

/// The caller's login name, if it holds `need` or more; else the answer
/// to give.
async fn login(web: &Arc<Web>, headers: &HeaderMap, need: Role) -> Result<String, Response> {
    let unauthorized = || {
        let mut r = (StatusCode::UNAUTHORIZED, "log in (HTTP Basic)\n").into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"agad\", charset=\"UTF-8\""),
        );
        r
    };
    let session = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(sessions::token)
        .and_then(|t| web.sessions.get(t));
    if let Some(session) = session {
        return if session.role >= need {
            Ok(session.name)
        } else {
            Err((StatusCode::FORBIDDEN, "this login may only read\n").into_response())
        };
    }
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok());
    let Some((name, password)) = credentials
        .as_deref()
        .and_then(|c| c.split_once(':'))
        .map(|(n, p)| (n.to_owned(), p.to_owned()))
    else {
        return Err(unauthorized());
    };
    let Ok(_permit) = web.checks.acquire().await else {
        return Err(unauthorized());
    };
    let me = web.clone();
    let role = tokio::task::spawn_blocking(move || {
        me.users
            .check(&name, &password)
            .map(|u| (u.name.clone(), u.role))
    })
    .await
    .ok()
    .flatten();
    match role {
        Some((name, role)) if role >= need => Ok(name),
        Some(_) => Err((StatusCode::FORBIDDEN, "this login may only read\n").into_response()),
        None => Err(unauthorized()),
    }
}

/// The page, built into the binary: nothing is fetched from elsewhere.
const PAGE: &str = include_str!("dashboard.html");

async fn page(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Err(r) = login(&web, &headers, Role::ReadOnly).await {
        // A browser without a session goes to the form.
        return if r.status() == StatusCode::UNAUTHORIZED {
            axum::response::Redirect::to("/login").into_response()
        } else {
            r
        };
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything the page uses is its own: no script or style from
            // elsewhere may run in it.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

/// The login form (`?failed` after a wrong password).
async fn login_form(Query(q): Query<std::collections::HashMap<String, String>>) -> Response {
    let failed = if q.contains_key("failed") {
        "<p class=\"error\">Wrong name or password.</p>"
    } else {
        ""
    };
    axum::response::Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>AGAD — log in</title>\
         <style>body{{font:14px system-ui,sans-serif;display:grid;place-items:center;height:90vh;background:#f6f7f9}}\
         form{{background:#fff;padding:1.5em 2em;border:1px solid #d5d9e0}}label{{display:block;margin:.6em 0}}\
         .error{{color:#c8322f}}</style></head><body><form method=\"post\" action=\"/login\">\
         <h1>AGAD</h1>{failed}<label>Name <input name=\"name\" autocomplete=\"username\" autofocus></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\"></label>\
         <button>Log in</button></form></body></html>"
    ))
    .into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

async fn log_in(State(web): State<Arc<Web>>, axum::Form(form): axum::Form<LoginForm>) -> Response {
    let Ok(_permit) = web.checks.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let me = web.clone();
    let user = tokio::task::spawn_blocking(move || {
        me.users
            .check(&form.name, &form.password)
            .map(|u| (u.name.clone(), u.role))
    })
    .await
    .ok()
    .flatten();
    let Some((name, role)) = user else {
        return axum::response::Redirect::to("/login?failed").into_response();
    };
    let Some(token) = web.sessions.open(&name, role) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "too many sessions\n").into_response();
    };
    tracing::info!(user = %name, "logged in to the web page");
    let cookie = format!(
        "{}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        sessions::COOKIE,
        sessions::LIFETIME.as_secs(),
        if web.https { "; Secure" } else { "" }
    );
    let mut response = axum::response::Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn log_out(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Some(token) = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(sessions::token)
    {
        web.sessions.close(token);
    }
    let mut response = axum::response::Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("agad_session=; Path=/; Max-Age=0"),
    );
    response
}

/// Runs a blocking query (sled) and answers it as JSON.
async fn json<T: Serialize + Send + 'static>(
    query: impl FnOnce() -> Result<T, BaseError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(query).await {
        Ok(Ok(value)) => axum::Json(value).into_response(),
        Ok(Err(e)) => error(&e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn error(e: &BaseError) -> Response {
    let status = match e {
        BaseError::Unknown(_) => StatusCode::NOT_FOUND,
        BaseError::Refused(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(serde_json::json!({ "error": e.to_string() })),
    )
        .into_response()
}

async fn prometheus(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Err(r) = login(&web, &headers, Role::ReadOnly).await {
        return r;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let query = ReportQuery {
        since_ms: Some(now.saturating_sub(METRICS_LOOKBACK.as_millis() as u64)),
        ..ReportQuery::default()
    };
    let mor = web.mor.clone();
    match tokio::task::spawn_blocking(move || query::reports(&mor.bases, &query)).await {
        Ok(Ok(rows)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            metrics::exposition(&rows.rows),
        )
            .into_response(),
        Ok(Err(e)) => error(&e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn status(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Err(r) = login(&web, &headers, Role::ReadOnly).await {
        return r;
    }
    let mor = web.mor.clone();
    json(move || query::status(&mor)).await
}

async fn alarms(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<AlarmQuery>,
) -> Response {
    if let Err(r) = login(&web, &headers, Role::ReadOnly).await {
        return r;
    }
    let mor = web.mor.clone();
    json(move || query::alarms(&mor, &q)).await
}

async fn reports(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<ReportQuery>,
) -> Response {
    if let Err(r) = login(&web, &headers, Role::ReadOnly).await {
        return r;
    }
    let mor = web.mor.clone();
    json(move || query::reports(&mor.bases, &q)).await
}

async fn kb_stats(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Err(r) = login(&web, &headers, Role::ReadOnly).await {
        return r;
    }
    let mor = web.mor.clone();
    json(move || query::kb_stats(&mor.bases)).await
}

async fn modules(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if let Err(r) = login(&web, &headers, Role::ReadOnly).await {
        return r;
    }
    let mor = web.mor.clone();
    json(move || query::modules(&mor.bases)).await
}

/// Runs a change as the admin socket does (one code path for the CLI and
/// the API): the answer, 400 when refused.
async fn change(
    web: &Arc<Web>,
    by: String,
    what: &'static str,
    request: crate::admin::Request,
) -> Response {
    let mor = web.mor.clone();
    match tokio::task::spawn_blocking(move || crate::admin::handle(&mor, request)).await {
        Ok(crate::admin::Answer::Error(e)) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": e })),
        )
            .into_response(),
        Ok(answer) => {
            tracing::info!(user = %by, %what, "change made through the web port");
            axum::Json(answer).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct DryRun {
    dry_run: bool,
}

async fn apply_topology(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Query(q): Query<DryRun>,
    text: String,
) -> Response {
    let by = match login(&web, &headers, Role::Admin).await {
        Ok(by) => by,
        Err(r) => return r,
    };
    let request = crate::admin::Request::TopologyApply {
        file: "topology.toml".into(),
        text,
        dry_run: q.dry_run,
    };
    change(&web, by, "topology apply", request).await
}

async fn publish(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Response {
    let by = match login(&web, &headers, Role::Admin).await {
        Ok(by) => by,
        Err(r) => return r,
    };
    let request = crate::admin::Request::Publish {
        bundle_hex: hex::encode(&bytes),
    };
    change(&web, by, "module publish", request).await
}

#[derive(serde::Deserialize)]
struct RulesRequest {
    files: Vec<(String, String)>,
    #[serde(default)]
    dry_run: bool,
}

async fn apply_rules(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    axum::Json(rules): axum::Json<RulesRequest>,
) -> Response {
    let by = match login(&web, &headers, Role::Admin).await {
        Ok(by) => by,
        Err(r) => return r,
    };
    let request = crate::admin::Request::KbApply {
        files: rules.files,
        dry_run: rules.dry_run,
    };
    change(&web, by, "kb apply", request).await
}

/// How often an idle event stream gets a comment line, so proxies and
/// clients see it is alive.
const EVENTS_KEEPALIVE: Duration = Duration::from_secs(15);

/// Live events for pages and tools, as they happen at the top manager:
/// `alarm` (an alarm BIG stored, as JSON), `station` (a station connected,
/// went quiet, or left), `status` (a station said what changed below it:
/// a node's state, its modules), `reports` (a station's reports stored),
/// `deployment` (a domain's nodes moved on in running a deployment) and
/// `lagged` (this client fell behind and missed events: read the API
/// again). Each client has a bounded queue (the stations' event channel);
/// a slow one misses events, it never holds the manager up.
async fn events(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    use agad_net::children::ChildEvent;
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    if let Err(r) = login(&web, &headers, Role::ReadOnly).await {
        return r;
    }
    let Ok(permit) = web.streams.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STREAMS} event streams are open already\n"),
        )
            .into_response();
    };
    let receiver = web.mor.stations.subscribe();
    // The permit lives as long as the stream.
    let stream =
        futures_util::stream::unfold((receiver, permit), |(mut receiver, permit)| async move {
            loop {
                let event = match receiver.recv().await {
                    Ok(ChildEvent::AlarmStored { alarm, .. }) => Event::default()
                        .event("alarm")
                        .json_data(&*alarm)
                        .unwrap_or_default(),
                    Ok(ChildEvent::ReportsStored { child, count }) => {
                        Event::default().event("reports").data(
                            serde_json::json!({ "station": child.name, "count": count })
                                .to_string(),
                        )
                    }
                    Ok(
                        ChildEvent::Connected(child)
                        | ChildEvent::Suspect { child, .. }
                        | ChildEvent::Stale { child, .. }
                        | ChildEvent::Disconnected { child, .. },
                    ) => Event::default()
                        .event("station")
                        .data(serde_json::json!({ "station": child.name }).to_string()),
                    // A keep-alive that says what changed below a station
                    // (a node's state, its modules).
                    Ok(ChildEvent::KeepAlive { child, components }) if !components.is_empty() => {
                        Event::default()
                            .event("status")
                            .data(serde_json::json!({ "station": child.name }).to_string())
                    }
                    Ok(ChildEvent::KeepAlive { .. }) => continue,
                    Ok(ChildEvent::DeployProgress { child, progress }) => {
                        Event::default().event("deployment").data(
                            serde_json::json!({ "station": child.name, "progress": *progress })
                                .to_string(),
                        )
                    }
                    Err(RecvError::Lagged(missed)) => {
                        Event::default().event("lagged").data(missed.to_string())
                    }
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok::<_, std::convert::Infallible>(event), (receiver, permit)));
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(EVENTS_KEEPALIVE))
        .into_response()
}

/// What `POST /api/v1/acks` takes.
#[derive(serde::Deserialize)]
struct AckRequest {
    alarm_id: String,
    #[serde(default)]
    comment: String,
}

/// Longest comment kept with an acknowledgement.
const MAX_COMMENT: usize = 1024;

async fn acknowledge(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    axum::Json(request): axum::Json<AckRequest>,
) -> Response {
    let by = match login(&web, &headers, Role::Admin).await {
        Ok(name) => name,
        Err(r) => return r,
    };
    let ack = crate::bases::big::Ack {
        by,
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        comment: agad_protocol::text::excerpt(&request.comment, MAX_COMMENT),
    };
    let mor = web.mor.clone();
    let id = request.alarm_id.clone();
    let stored = ack.clone();
    match tokio::task::spawn_blocking(move || mor.bases.big.record_ack(&id, &stored)).await {
        Ok(Ok(true)) => {
            tracing::info!(alarm = %agad_protocol::text::excerpt(&request.alarm_id, 200), by = %ack.by, "alarm acknowledged");
            axum::Json(ack).into_response()
        }
        Ok(Ok(false)) => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": "no such alarm in BIG" })),
        )
            .into_response(),
        Ok(Err(e)) => error(&e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The API, described (OpenAPI 3.1); served without a login so tools can
/// read it before they have one.
async fn openapi() -> Response {
    let read = |summary: &str, params: &[&str]| {
        serde_json::json!({
            "get": {
                "summary": summary,
                "security": [{ "basic": [] }],
                "parameters": params.iter().map(|p| serde_json::json!({
                    "name": p, "in": "query", "required": false, "schema": { "type": "string" }
                })).collect::<Vec<_>>(),
                "responses": {
                    "200": { "description": "OK" },
                    "401": { "description": "no or wrong login" },
                    "404": { "description": "an unknown domain or node" }
                }
            }
        })
    };
    let write = |summary: &str, media: &str| {
        serde_json::json!({
            "summary": summary,
            "security": [{ "basic": [] }],
            "requestBody": { "content": { media: {} } },
            "responses": {
                "200": { "description": "the change, or the difference of a dry run" },
                "400": { "description": "refused, with every error" },
                "401": { "description": "no or wrong login" },
                "403": { "description": "a read-only login" }
            }
        })
    };
    let doc = serde_json::json!({
        "openapi": "3.1.0",
        "info": { "title": "AGAD top manager", "version": env!("CARGO_PKG_VERSION") },
        "components": { "securitySchemes": { "basic": { "type": "http", "scheme": "basic" } } },
        "paths": {
            "/metrics": read("Prometheus exposition of the latest consolidated window of every series", &[]),
            "/api/v1/status": read("Domains, stations, nodes, modules, links and the deployment's progress", &[]),
            "/api/v1/alarms": read("Alarms from BIG with their knowledge-base cases", &["domain", "node", "module", "module_version", "severity", "area", "since_ms", "until_ms", "active_only", "limit"]),
            "/api/v1/reports": read("Consolidated reports from BIG", &["domain", "node", "module", "module_version", "metric", "since_ms", "until_ms", "per_domain", "limit"]),
            "/api/v1/kb/stats": read("How often each knowledge-base rule helped", &[]),
            "/api/v1/modules": {
                "get": read("Every module published in BGC", &[])["get"],
                "post": write("Publish a signed bundle (the body: .agad bytes)", "application/octet-stream"),
            },
            "/api/v1/topology": { "post": write("Apply a topology file (the body: TOML; ?dry_run=true shows the difference only)", "text/plain") },
            "/api/v1/kb": { "post": write("Apply a rule set: {\"files\": [[name, text]], \"dry_run\": bool}", "application/json") },
            "/api/v1/events": read("Live events (text/event-stream): alarm, station, reports, lagged", &[]),
            "/api/v1/acks": {
                "post": {
                    "summary": "Acknowledge an alarm (admin)",
                    "security": [{ "basic": [] }],
                    "requestBody": { "content": { "application/json": { "schema": {
                        "type": "object",
                        "required": ["alarm_id"],
                        "properties": { "alarm_id": { "type": "string" }, "comment": { "type": "string" } }
                    } } } },
                    "responses": {
                        "200": { "description": "the acknowledgement stored" },
                        "401": { "description": "no or wrong login" },
                        "403": { "description": "a read-only login" },
                        "404": { "description": "no such alarm" }
                    }
                }
            },
        }
    });
    axum::Json(doc).into_response()
}
