//! An emulator of the Entra ID token endpoint, of the Microsoft Graph v1.0
//! endpoints and of the Azure Resource Manager role assignment endpoints
//! teamaccess-operator uses, over HTTPS with a CA of its own.
//!
//! It answers as the real services document: OAuth2 client-credentials tokens for a
//! client secret or a federated assertion, an App Service style managed-identity
//! endpoint, `GET /v1.0/groups` with `$filter` / `$select` / `$top` and
//! `@odata.nextLink` paging, `GET /v1.0/groups/{id}`, `GET /v1.0/users/{id|upn}`,
//! `POST /v1.0/$batch` (at most 20 requests, each with its own status), Graph's
//! error body and codes, and bearer tokens that are checked. Tests inject faults
//! (throttling and outages, with or without Retry-After, for a whole request or
//! per `$batch` item; other item errors; 403; latency) and read counters.
//!
//! ARM (`arm`) listens on a second port: its own origin and token audience, so a
//! Graph token presented to ARM is refused, and the reverse.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Form, Json, Router,
    body::Bytes,
    extract::{OriginalUri, Path as UrlPath, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use teamaccess_operator::directory::file_format::{DirectoryFile, GroupRecord, UserRecord};

pub mod arm;
pub mod members;
pub mod odata;

pub use arm::RoleAssignment;

/// The tenant, application and secrets the emulator accepts.
pub const TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "3b1f8e5a-2c4d-4e6f-8a9b-0c1d2e3f4a5b";
pub const CLIENT_SECRET: &str = "emulator-client-secret";
/// The projected ServiceAccount token Workload Identity presents as its assertion.
pub const FEDERATED_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.emulator-federated-token.signature";
/// The secret header of the App Service managed-identity endpoint.
pub const IDENTITY_HEADER: &str = "emulator-identity-header";

const GROUP_PROPERTIES: &[&str] = &[
    "id",
    "displayName",
    "mailNickname",
    "securityEnabled",
    "mailEnabled",
    "description",
    "isAssignableToRole",
    "onPremisesSyncEnabled",
];
const USER_PROPERTIES: &[&str] = &["id", "userPrincipalName", "displayName", "userType", "mail"];
const MAX_BATCH: usize = 20;

/// Faults to inject, set by tests or through `POST /_emulator/faults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    /// The next N Graph lookups (a request, or an item of a batch) get 429.
    pub throttle_next: u32,
    /// Every Graph request gets 429 for this many seconds from now.
    pub throttle_for_secs: u64,
    /// Retry-After sent with 429 and 503 (seconds).
    pub retry_after_secs: u64,
    /// Send 429 and 503 without Retry-After (Graph does not always send one).
    pub omit_retry_after: bool,
    /// During a storm or an outage, answer a `$batch` with 200 and give each item
    /// its own 429 or 503, as Graph throttles the sub-requests of a batch one by one.
    pub per_item: bool,
    /// The next N lookups (a request, or an item of a batch) fail with `fail_status`.
    pub fail_next: u32,
    /// The status of those failures: 500, 502, 503, 504, 403, 400, ...
    pub fail_status: u16,
    /// Every Graph request gets a bare 404 without Graph's error body, as a web
    /// server does when the configured endpoint is not a Graph root.
    pub not_graph: bool,
    /// `@odata.nextLink` points at this origin instead of the emulator's own
    /// (a client must not send its token there).
    pub next_link_origin: Option<String>,
    /// Every Graph request gets 503 for this many seconds from now.
    pub outage_for_secs: u64,
    /// Every Graph request gets 403 Authorization_RequestDenied.
    pub forbidden: bool,
    /// Added to every Graph and ARM request.
    pub latency_ms: u64,
    /// Every ARM request gets 429 (with Retry-After) for this many seconds from now.
    pub arm_throttle_for_secs: u64,
    /// Every ARM request gets 503 for this many seconds from now.
    pub arm_outage_for_secs: u64,
    /// ARM writes (PUT, DELETE) get 403 AuthorizationFailed.
    pub arm_forbidden: bool,
    /// The next N role assignment PUTs get 400 PrincipalNotFound.
    pub arm_principal_not_found_next: u32,
    /// Groups added to the directory less than this long ago are unknown to ARM
    /// (replication), unless a PUT names principalType.
    pub arm_replication_delay_secs: u64,
    /// Role assignments per page of a list (default 50).
    pub arm_page_size: usize,
    /// Member entries per page of a group delta round (default 100).
    pub delta_page_size: usize,
}

#[derive(Debug, Default)]
struct ActiveFaults {
    throttle_next: u32,
    throttle_until: Option<Instant>,
    outage_until: Option<Instant>,
    /// None: 429 and 503 carry no Retry-After.
    retry_after_secs: Option<u64>,
    per_item: bool,
    fail_next: u32,
    fail_status: u16,
    not_graph: bool,
    next_link_origin: Option<String>,
    forbidden: bool,
    latency: Duration,
    delta_page_size: usize,
}

/// Request counters.
#[derive(Debug, Default)]
struct Counters {
    graph_requests: AtomicU64,
    batch_requests: AtomicU64,
    lookups: AtomicU64,
    throttled: AtomicU64,
    token_requests: AtomicU64,
    arm_requests: AtomicU64,
    arm_writes: AtomicU64,
    arm_throttled: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// HTTP requests to /v1.0 (a $batch counts once).
    pub graph_requests: u64,
    pub batch_requests: u64,
    /// Lookups answered: plain requests plus batch items.
    pub lookups: u64,
    /// 429 answers, for requests and batch items.
    pub throttled: u64,
    pub token_requests: u64,
    /// HTTP requests to ARM, answered or refused.
    pub arm_requests: u64,
    /// Role assignments created or deleted.
    pub arm_writes: u64,
    /// ARM 429 answers.
    pub arm_throttled: u64,
}

/// Whom a token was issued for: its audience.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Audience {
    Graph,
    Arm,
}

struct Shared {
    /// Graph root and Entra ID authority.
    base_url: String,
    /// The ARM root.
    arm_url: String,
    directory: RwLock<DirectoryFile>,
    faults: Mutex<ActiveFaults>,
    counters: Counters,
    tokens: Mutex<HashMap<String, Audience>>,
    arm: Mutex<arm::ArmState>,
    /// Membership changes and delta states; locked after `directory`.
    members: Mutex<members::Tracker>,
}

/// A running emulator; it stops when dropped.
pub struct Emulator {
    shared: Arc<Shared>,
    ca_path: PathBuf,
    handle: axum_server::Handle<SocketAddr>,
    arm_handle: axum_server::Handle<SocketAddr>,
}

impl Emulator {
    /// Starts on a free loopback port. The CA certificate is written to
    /// `<dir>/ca.crt`, for `--ca-file`.
    pub async fn start(directory: DirectoryFile, dir: &Path) -> std::io::Result<Self> {
        Self::start_on(directory, dir, std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// Starts on a free port of `address` (the local node's IP, so that pods reach
    /// it); its certificate names that address, and its URLs use it.
    pub async fn start_on(directory: DirectoryFile, dir: &Path, address: std::net::IpAddr) -> std::io::Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        std::fs::create_dir_all(dir)?;
        let tls = tls_material(address).map_err(std::io::Error::other)?;
        let ca_path = dir.join("ca.crt");
        std::fs::write(&ca_path, &tls.ca_pem)?;

        let listener = std::net::TcpListener::bind((address, 0))?;
        listener.set_nonblocking(true)?;
        let arm_listener = std::net::TcpListener::bind((address, 0))?;
        arm_listener.set_nonblocking(true)?;
        let origin = |l: &std::net::TcpListener| l.local_addr().map(|a| format!("https://{a}"));
        let shared = Arc::new(Shared {
            base_url: origin(&listener)?,
            arm_url: origin(&arm_listener)?,
            directory: RwLock::new(directory),
            faults: Mutex::default(),
            counters: Counters::default(),
            tokens: Mutex::default(),
            arm: Mutex::default(),
            members: Mutex::default(),
        });
        let config =
            axum_server::tls_rustls::RustlsConfig::from_pem(tls.cert_pem.into_bytes(), tls.key_pem.into_bytes())
                .await?;
        let handle = serve(listener, config.clone(), router(shared.clone()))?;
        let arm_handle = serve(arm_listener, config, arm::router(shared.clone()))?;
        Ok(Self { shared, ca_path, handle, arm_handle })
    }

    /// The base URL: both the authority host and the Graph root.
    pub fn url(&self) -> &str {
        &self.shared.base_url
    }

    /// The Azure Resource Manager root (`--arm-endpoint`).
    pub fn arm_url(&self) -> &str {
        &self.shared.arm_url
    }

    /// Role assignments as ARM holds them now.
    pub fn role_assignments(&self) -> Vec<RoleAssignment> {
        self.shared.arm.lock().unwrap().assignments.clone()
    }

    /// Adds a role assignment made by someone else.
    pub fn add_role_assignment(&self, assignment: RoleAssignment) {
        self.shared.arm.lock().unwrap().assignments.push(assignment);
    }

    /// Every ARM request received since the last call, oldest first.
    pub fn take_arm_requests(&self) -> Vec<arm::ArmRequest> {
        std::mem::take(&mut self.shared.arm.lock().unwrap().log)
    }

    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    pub fn set_directory(&self, directory: DirectoryFile) {
        self.shared.set_directory(directory);
    }

    pub fn directory(&self) -> DirectoryFile {
        self.shared.directory.read().unwrap().clone()
    }

    /// Makes `member` (a user, service principal or group objectId) a direct
    /// member of `group`; with `until`, only for that long, as PIM for Groups
    /// gives a membership with an end time. False when either is unknown.
    pub fn add_member(&self, group: &str, member: &str, until: Option<Duration>) -> bool {
        self.shared.change_member(group, member, true, until.map(|d| Instant::now() + d))
    }

    /// Removes `member` from `group`'s direct members.
    pub fn remove_member(&self, group: &str, member: &str) -> bool {
        self.shared.change_member(group, member, false, None)
    }

    /// Forgets every delta state, as the service does after a while: the next
    /// deltaLink gets 410 syncStateNotFound.
    pub fn expire_delta_states(&self) {
        self.shared.members.lock().unwrap().expire_states();
    }

    pub fn set_faults(&self, faults: &Faults) {
        self.shared.set_faults(faults);
    }

    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.handle.shutdown();
        self.arm_handle.shutdown();
    }
}

fn serve(
    listener: std::net::TcpListener,
    config: axum_server::tls_rustls::RustlsConfig,
    app: Router,
) -> std::io::Result<axum_server::Handle<SocketAddr>> {
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, config)?.handle(handle.clone());
    tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            eprintln!("azure emulator stopped: {e}");
        }
    });
    Ok(handle)
}

impl Shared {
    /// Replaces the directory; groups and users that were not in it before count
    /// as created now (ARM sees them after the replication delay).
    fn set_directory(&self, directory: DirectoryFile) {
        let now = Instant::now();
        let mut dir = self.directory.write().unwrap();
        let known: HashSet<String> = dir
            .groups
            .iter()
            .map(|g| g.object_id.to_ascii_lowercase())
            .chain(dir.users.iter().map(|u| u.object_id.to_ascii_lowercase()))
            .collect();
        let mut arm = self.arm.lock().unwrap();
        for id in directory
            .groups
            .iter()
            .map(|g| g.object_id.to_ascii_lowercase())
            .chain(directory.users.iter().map(|u| u.object_id.to_ascii_lowercase()))
        {
            if !known.contains(&id) {
                arm.first_seen.insert(id, now);
            }
        }
        self.members.lock().unwrap().record_diff(&dir, &directory);
        *dir = directory;
    }

    /// Adds or removes a direct membership, and logs it for delta queries.
    fn change_member(&self, group: &str, member: &str, add: bool, until: Option<Instant>) -> bool {
        let mut dir = self.directory.write().unwrap();
        if !dir.groups.iter().any(|g| g.object_id.eq_ignore_ascii_case(group)) {
            return false;
        }
        let DirectoryFile { users, service_principals, groups } = &mut *dir;
        let found = users
            .iter_mut()
            .find(|u| u.object_id.eq_ignore_ascii_case(member))
            .map(|u| (&mut u.member_of, members::MemberKind::User))
            .or_else(|| {
                service_principals
                    .iter_mut()
                    .find(|p| p.object_id.eq_ignore_ascii_case(member))
                    .map(|p| (&mut p.member_of, members::MemberKind::ServicePrincipal))
            })
            .or_else(|| {
                groups
                    .iter_mut()
                    .find(|g| g.object_id.eq_ignore_ascii_case(member))
                    .map(|g| (&mut g.member_of, members::MemberKind::Group))
            });
        let Some((member_of, kind)) = found else { return false };
        let had = member_of.iter().any(|g| g.eq_ignore_ascii_case(group));
        if add && !had {
            member_of.push(group.to_lowercase());
        } else if !add && had {
            member_of.retain(|g| !g.eq_ignore_ascii_case(group));
        }
        let mut tracker = self.members.lock().unwrap();
        if add != had {
            let member = members::Member { kind, object_id: member.to_lowercase() };
            tracker.record(group, member, add);
        }
        tracker.timed.retain(|t| !(t.group.eq_ignore_ascii_case(group) && t.member.eq_ignore_ascii_case(member)));
        if let Some(until) = until {
            tracker.timed.push(members::Timed { group: group.to_lowercase(), member: member.to_lowercase(), until });
        }
        true
    }

    /// Ends the time-bound memberships whose end has come.
    fn end_timed_memberships(&self) {
        let now = Instant::now();
        let ended: Vec<members::Timed> = {
            let tracker = self.members.lock().unwrap();
            tracker.timed.iter().filter(|t| t.until <= now).cloned().collect()
        };
        for t in ended {
            self.change_member(&t.group, &t.member, false, None);
        }
    }

    /// Whether ARM's view of the directory has `principal_id` yet.
    fn principal_replicated(&self, principal_id: &str) -> bool {
        let id = principal_id.to_ascii_lowercase();
        let dir = self.directory.read().unwrap();
        let exists = dir.groups.iter().any(|g| g.object_id.eq_ignore_ascii_case(&id))
            || dir.users.iter().any(|u| u.object_id.eq_ignore_ascii_case(&id));
        let arm = self.arm.lock().unwrap();
        let delay = arm.faults.replication_delay;
        exists && arm.first_seen.get(&id).is_none_or(|seen| seen.elapsed() >= delay)
    }

    fn set_faults(&self, f: &Faults) {
        let now = Instant::now();
        let for_secs = |secs: u64| (secs > 0).then(|| now + Duration::from_secs(secs));
        // Graph and ARM send the same Retry-After (at least 1 s) unless told to omit it.
        let retry_after_secs =
            (!f.omit_retry_after).then_some(if f.retry_after_secs == 0 { 1 } else { f.retry_after_secs });
        *self.faults.lock().unwrap() = ActiveFaults {
            throttle_next: f.throttle_next,
            throttle_until: for_secs(f.throttle_for_secs),
            outage_until: for_secs(f.outage_for_secs),
            retry_after_secs,
            per_item: f.per_item,
            fail_next: f.fail_next,
            fail_status: if f.fail_status == 0 { 500 } else { f.fail_status },
            not_graph: f.not_graph,
            next_link_origin: f.next_link_origin.clone(),
            forbidden: f.forbidden,
            latency: Duration::from_millis(f.latency_ms),
            delta_page_size: f.delta_page_size,
        };
        self.arm.lock().unwrap().faults = arm::ArmFaults {
            throttle_until: for_secs(f.arm_throttle_for_secs),
            outage_until: for_secs(f.arm_outage_for_secs),
            retry_after_secs,
            forbidden: f.arm_forbidden,
            principal_not_found_next: f.arm_principal_not_found_next,
            replication_delay: Duration::from_secs(f.arm_replication_delay_secs),
            page_size: f.arm_page_size,
        };
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            graph_requests: c.graph_requests.load(Ordering::Relaxed),
            batch_requests: c.batch_requests.load(Ordering::Relaxed),
            lookups: c.lookups.load(Ordering::Relaxed),
            throttled: c.throttled.load(Ordering::Relaxed),
            token_requests: c.token_requests.load(Ordering::Relaxed),
            arm_requests: c.arm_requests.load(Ordering::Relaxed),
            arm_writes: c.arm_writes.load(Ordering::Relaxed),
            arm_throttled: c.arm_throttled.load(Ordering::Relaxed),
        }
    }

    fn reset_stats(&self) {
        let c = &self.counters;
        for counter in [
            &c.graph_requests,
            &c.batch_requests,
            &c.lookups,
            &c.throttled,
            &c.token_requests,
            &c.arm_requests,
            &c.arm_writes,
            &c.arm_throttled,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// A fault that answers a whole HTTP request, before any lookup. With
    /// `per_item`, a storm or an outage answers each item of a batch instead.
    fn request_fault(&self, batch: bool) -> Option<GraphReply> {
        let f = self.faults.lock().unwrap();
        if f.not_graph {
            return Some(GraphReply { status: 404, retry_after: None, body: Value::Null });
        }
        if !(batch && f.per_item)
            && let Some(reply) = self.storm_or_outage(&f)
        {
            return Some(reply);
        }
        if f.forbidden {
            return Some(GraphReply::error(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ));
        }
        None
    }

    /// The 503 of an outage or the 429 of a storm, while one lasts.
    fn storm_or_outage(&self, f: &ActiveFaults) -> Option<GraphReply> {
        let now = Instant::now();
        if f.outage_until.is_some_and(|t| now < t) {
            return Some(
                GraphReply::error(503, "serviceNotAvailable", "Service Unavailable").retry_after(f.retry_after_secs),
            );
        }
        if f.throttle_until.is_some_and(|t| now < t) {
            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
            return Some(throttled(f.retry_after_secs));
        }
        None
    }

    /// A fault that answers one lookup (a request or a batch item).
    fn lookup_fault(&self, in_batch: bool) -> Option<GraphReply> {
        let mut f = self.faults.lock().unwrap();
        if in_batch
            && f.per_item
            && let Some(reply) = self.storm_or_outage(&f)
        {
            return Some(reply);
        }
        if f.throttle_next > 0 {
            f.throttle_next -= 1;
            self.counters.throttled.fetch_add(1, Ordering::Relaxed);
            return Some(throttled(f.retry_after_secs));
        }
        if f.fail_next > 0 {
            f.fail_next -= 1;
            let status = f.fail_status;
            let (code, message) = match status {
                400 => ("BadRequest", "Invalid request."),
                403 => ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
                502 => ("badGateway", "Bad Gateway"),
                503 => ("serviceNotAvailable", "Service Unavailable"),
                504 => ("gatewayTimeout", "Gateway Timeout"),
                _ => ("generalException", "An internal server error occurred."),
            };
            let reply = GraphReply::error(status, code, message);
            return Some(if status == 503 { reply.retry_after(f.retry_after_secs) } else { reply });
        }
        None
    }

    fn latency(&self) -> Duration {
        self.faults.lock().unwrap().latency
    }

    fn check_bearer(&self, headers: &HeaderMap) -> Option<GraphReply> {
        let token =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match token.map(|t| self.tokens.lock().unwrap().get(t).copied()) {
            None => Some(GraphReply::error(401, "InvalidAuthenticationToken", "Access token is empty.")),
            Some(None) => {
                Some(GraphReply::error(401, "InvalidAuthenticationToken", "Access token validation failure."))
            }
            Some(Some(Audience::Arm)) => Some(GraphReply::error(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience.",
            )),
            Some(Some(Audience::Graph)) => None,
        }
    }

    fn issue_token(&self, audience: Audience) -> String {
        let token = format!("emu.{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        self.tokens.lock().unwrap().insert(token.clone(), audience);
        token
    }

    /// The audience a token scope (`<resource>/.default`) or a managed-identity
    /// resource names, if it is one the emulator serves.
    fn audience(&self, resource: &str) -> Option<Audience> {
        let resource = resource.strip_suffix("/.default").unwrap_or(resource).trim_end_matches('/');
        if resource == self.base_url {
            Some(Audience::Graph)
        } else if resource == self.arm_url {
            Some(Audience::Arm)
        } else {
            None
        }
    }

    /// Answers one GET on the Graph v1.0 tree; `path` is below /v1.0, `query` raw.
    fn lookup(&self, path: &str, query: &str, in_batch: bool) -> GraphReply {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = self.lookup_fault(in_batch) {
            return reply;
        }
        let params = match parse_query(query) {
            Ok(p) => p,
            Err(msg) => return GraphReply::error(400, "Request_BadRequest", &msg),
        };
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect();
        self.end_timed_memberships();
        let directory = self.directory.read().unwrap();
        match segments.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["groups"] => self.list_groups(&directory, &params, path),
            ["groups", "delta"] => {
                let page_entries = match self.faults.lock().unwrap().delta_page_size {
                    0 => 100,
                    n => n,
                };
                let base = format!("{}/v1.0", self.base_url);
                match self.members.lock().unwrap().delta(&directory, &params, &base, page_entries) {
                    Ok(body) => GraphReply::ok(body),
                    Err((status, code, message)) => GraphReply::error(status, code, &message),
                }
            }
            ["groups", id, "transitiveMembers"] => {
                if !directory.groups.iter().any(|g| g.object_id.eq_ignore_ascii_case(id)) {
                    return not_found(id);
                }
                let everyone = directory.transitive_members(id);
                self.page_of_members(&directory, everyone, &params, path)
            }
            ["groups", id] => match directory.groups.iter().find(|g| g.object_id.eq_ignore_ascii_case(id)) {
                Some(g) => select(group_json(g), &params, GROUP_PROPERTIES, "group"),
                None if !is_guid(id) => {
                    GraphReply::error(400, "Request_BadRequest", &format!("Invalid object identifier '{id}'."))
                }
                None => not_found(id),
            },
            ["users", key] => {
                let user = directory
                    .users
                    .iter()
                    .find(|u| u.object_id.eq_ignore_ascii_case(key) || u.user_principal_name.eq_ignore_ascii_case(key));
                match user {
                    Some(u) => select(user_json(u), &params, USER_PROPERTIES, "user"),
                    None => not_found(key),
                }
            }
            _ => {
                GraphReply::error(400, "BadRequest", &format!("Resource not found for the segment '{}'.", segments[0]))
            }
        }
    }

    /// The link to the page that starts at `skip`: the same query with a
    /// `$skiptoken`, on the emulator (or on the origin a fault names).
    fn next_link(&self, params: &HashMap<String, String>, path: &str, skip: usize) -> String {
        let mut next: Vec<String> = params
            .iter()
            .filter(|(k, _)| k.as_str() != "$skiptoken")
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        next.sort();
        next.push(format!("$skiptoken=emu{skip}"));
        let origin = self.faults.lock().unwrap().next_link_origin.clone().unwrap_or_else(|| self.base_url.clone());
        format!("{origin}/v1.0/{}?{}", path.trim_matches('/'), next.join("&"))
    }

    /// A page of directory objects (users, service principals, groups) with
    /// `$top` (default 100, at most 999) and a nextLink for the rest.
    fn page_of_members(
        &self,
        directory: &DirectoryFile,
        everyone: Vec<members::Member>,
        params: &HashMap<String, String>,
        path: &str,
    ) -> GraphReply {
        let (top, skip) = match page_of(params) {
            Ok(page) => page,
            Err(reply) => return reply,
        };
        let values: Vec<Value> =
            everyone.iter().skip(skip).take(top).filter_map(|m| directory_object(directory, m)).collect();
        let mut body =
            json!({"@odata.context": format!("{}/v1.0/$metadata#directoryObjects", self.base_url), "value": values});
        if skip + top < everyone.len() {
            body["@odata.nextLink"] = json!(self.next_link(params, path, skip + top));
        }
        GraphReply::ok(body)
    }

    /// `POST /directoryObjects/getByIds`: the objects of up to 1,000 ids, of
    /// the given types; ids not found are left out.
    fn get_by_ids(&self, body: &[u8]) -> GraphReply {
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = self.lookup_fault(false) {
            return reply;
        }
        self.end_timed_memberships();
        let Ok(request) = serde_json::from_slice::<GetByIds>(body) else {
            return GraphReply::error(400, "Request_BadRequest", "Unable to read the request body.");
        };
        if request.ids.len() > 1000 {
            return GraphReply::error(400, "Request_BadRequest", "Too many ids: at most 1000 are supported.");
        }
        let directory = self.directory.read().unwrap();
        let wanted =
            |t: &str| request.types.as_ref().is_none_or(|types| types.iter().any(|w| w.eq_ignore_ascii_case(t)));
        // One pass over the directory, then a lookup per id: a tenant of tens of
        // thousands of users answers 1,000 ids at once.
        let mut objects: HashMap<String, Value> = HashMap::new();
        if wanted("user") {
            objects.extend(directory.users.iter().map(|u| (u.object_id.to_lowercase(), typed(user_json(u), "user"))));
        }
        if wanted("servicePrincipal") {
            objects.extend(directory.service_principals.iter().map(|p| {
                let sp = json!({"id": p.object_id, "displayName": p.display_name});
                (p.object_id.to_lowercase(), typed(sp, "servicePrincipal"))
            }));
        }
        if wanted("group") {
            objects
                .extend(directory.groups.iter().map(|g| (g.object_id.to_lowercase(), typed(group_json(g), "group"))));
        }
        let values: Vec<Value> = request.ids.iter().filter_map(|id| objects.get(&id.to_lowercase()).cloned()).collect();
        GraphReply::ok(
            json!({"@odata.context": format!("{}/v1.0/$metadata#directoryObjects", self.base_url), "value": values}),
        )
    }

    fn list_groups(&self, directory: &DirectoryFile, params: &HashMap<String, String>, path: &str) -> GraphReply {
        let filter = match params.get("$filter").map(|f| odata::parse_filter(f)) {
            Some(Err(msg)) => return GraphReply::error(400, "Request_UnsupportedQuery", &msg),
            Some(Ok(f)) => Some(f),
            None => None,
        };
        let (top, skip) = match page_of(params) {
            Ok(page) => page,
            Err(reply) => return reply,
        };
        let matching: Vec<&GroupRecord> = directory
            .groups
            .iter()
            .filter(|g| {
                filter.as_ref().is_none_or(|f| {
                    f.matches(|prop| match prop {
                        "displayName" => Some(g.display_name.clone()),
                        "mailNickname" => g.mail_nickname.clone(),
                        "id" => Some(g.object_id.clone()),
                        _ => None,
                    })
                })
            })
            .collect();
        let mut values = Vec::new();
        for g in matching.iter().skip(skip).take(top) {
            match select(group_json(g), params, GROUP_PROPERTIES, "group") {
                GraphReply { status: 200, body, .. } => values.push(body),
                error => return error,
            }
        }
        let mut body = json!({"@odata.context": format!("{}/v1.0/$metadata#groups", self.base_url), "value": values});
        if skip + top < matching.len() {
            body["@odata.nextLink"] = json!(self.next_link(params, path, skip + top));
        }
        GraphReply::ok(body)
    }
}

/// A Graph answer before it becomes an HTTP response or a batch item.
#[derive(Debug, Clone)]
struct GraphReply {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

impl GraphReply {
    fn ok(body: Value) -> Self {
        Self { status: 200, retry_after: None, body }
    }

    /// Graph's error body: code, message and innerError.
    fn error(status: u16, code: &str, message: &str) -> Self {
        let date = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S").to_string();
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            fastrand::u32(..),
            fastrand::u16(..),
            fastrand::u16(..4096),
            fastrand::u16(..4096),
            fastrand::u64(..1 << 48)
        );
        Self {
            status,
            retry_after: None,
            body: json!({"error": {"code": code, "message": message,
                "innerError": {"date": date, "request-id": id, "client-request-id": id}}}),
        }
    }

    fn retry_after(mut self, secs: Option<u64>) -> Self {
        self.retry_after = secs;
        self
    }

    fn headers_json(&self) -> Value {
        let mut h = json!({"Content-Type": "application/json"});
        if let Some(s) = self.retry_after {
            h["Retry-After"] = json!(s.to_string());
        }
        h
    }
}

impl IntoResponse for GraphReply {
    fn into_response(self) -> Response {
        if self.status == 204 {
            return StatusCode::NO_CONTENT.into_response();
        }
        let mut response =
            (StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), Json(self.body))
                .into_response();
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

fn throttled(retry_after: Option<u64>) -> GraphReply {
    GraphReply::error(429, "TooManyRequests", "Too many requests; retry after the interval in Retry-After.")
        .retry_after(retry_after)
}

fn not_found(id: &str) -> GraphReply {
    GraphReply::error(
        404,
        "Request_ResourceNotFound",
        &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
    )
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

fn group_json(g: &GroupRecord) -> Value {
    json!({"id": g.object_id, "displayName": g.display_name, "mailNickname": g.mail_nickname,
           "securityEnabled": g.security_enabled, "mailEnabled": false, "description": null,
           // Graph gives null, not false, for groups that are not role-assignable
           // or synchronized from on-premises.
           "isAssignableToRole": g.is_assignable_to_role.then_some(true),
           "onPremisesSyncEnabled": g.on_premises_sync_enabled.then_some(true)})
}

fn type_name(kind: members::MemberKind) -> &'static str {
    match kind {
        members::MemberKind::User => "user",
        members::MemberKind::ServicePrincipal => "servicePrincipal",
        members::MemberKind::Group => "group",
    }
}

fn typed(mut object: Value, type_name: &str) -> Value {
    object["@odata.type"] = json!(format!("#microsoft.graph.{type_name}"));
    object
}

/// A directory object as Graph lists it, with its `@odata.type`.
fn directory_object(directory: &DirectoryFile, member: &members::Member) -> Option<Value> {
    let id = &member.object_id;
    let object = match member.kind {
        members::MemberKind::User => user_json(directory.users.iter().find(|u| u.object_id.eq_ignore_ascii_case(id))?),
        members::MemberKind::ServicePrincipal => {
            let p = directory.service_principals.iter().find(|p| p.object_id.eq_ignore_ascii_case(id))?;
            json!({"id": p.object_id, "displayName": p.display_name})
        }
        members::MemberKind::Group => {
            group_json(directory.groups.iter().find(|g| g.object_id.eq_ignore_ascii_case(id))?)
        }
    };
    Some(typed(object, type_name(member.kind)))
}

#[derive(Deserialize)]
struct GetByIds {
    ids: Vec<String>,
    types: Option<Vec<String>>,
}

fn user_json(u: &UserRecord) -> Value {
    json!({"id": u.object_id, "userPrincipalName": u.user_principal_name, "displayName": u.display_name,
           "userType": u.user_type.clone().unwrap_or_else(|| "Member".into()), "mail": null})
}

/// Applies `$select`: only the named properties, and an error for an unknown one.
fn select(object: Value, params: &HashMap<String, String>, known: &[&str], type_name: &str) -> GraphReply {
    let Some(list) = params.get("$select") else { return GraphReply::ok(object) };
    let mut out = serde_json::Map::new();
    for prop in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if !known.contains(&prop) {
            return GraphReply::error(
                400,
                "Request_BadRequest",
                &format!("Could not find a property named '{prop}' on type 'microsoft.graph.{type_name}'."),
            );
        }
        out.insert(prop.to_string(), object[prop].clone());
    }
    GraphReply::ok(Value::Object(out))
}

/// `$top` (default 100, at most 999) and where the page starts (`$skiptoken`).
fn page_of(params: &HashMap<String, String>) -> Result<(usize, usize), GraphReply> {
    let top = match params.get("$top").map(|t| t.parse::<usize>()) {
        None => 100,
        Some(Ok(t)) if (1..=999).contains(&t) => t,
        Some(_) => {
            return Err(GraphReply::error(
                400,
                "Request_BadRequest",
                "Invalid page size specified. Must be between 1 and 999 inclusive.",
            ));
        }
    };
    let skip = params.get("$skiptoken").and_then(|s| s.strip_prefix("emu").and_then(|n| n.parse().ok())).unwrap_or(0);
    Ok((top, skip))
}

fn parse_query(query: &str) -> Result<HashMap<String, String>, String> {
    let mut params = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode =
            |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        if params.insert(decode(k), decode(v)).is_some() {
            return Err(format!("Query option '{}' was specified more than once.", decode(k)));
        }
    }
    Ok(params)
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/msi/token", get(managed_identity_token))
        .route("/v1.0/$batch", post(batch))
        .route("/v1.0/directoryObjects/getByIds", post(get_by_ids))
        .route("/v1.0/{*rest}", get(graph_get))
        .route("/_emulator/stats", get(|State(s): State<Arc<Shared>>| async move { Json(s.stats()) }))
        .route(
            "/_emulator/faults",
            post(|State(s): State<Arc<Shared>>, Json(f): Json<Faults>| async move {
                s.set_faults(&f);
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/_emulator/reset-stats",
            post(|State(s): State<Arc<Shared>>| async move {
                s.reset_stats();
                StatusCode::NO_CONTENT
            }),
        )
        .route("/_emulator/directory", put(replace_directory))
        // Membership changes at run time: {"group": id, "member": id, "untilSecs": n?}.
        .route(
            "/_emulator/members/add",
            post(|State(s): State<Arc<Shared>>, Json(c): Json<MemberChange>| async move {
                let until = c.until_secs.map(|secs| Instant::now() + Duration::from_secs(secs));
                member_changed(s.change_member(&c.group, &c.member, true, until))
            }),
        )
        .route(
            "/_emulator/members/remove",
            post(|State(s): State<Arc<Shared>>, Json(c): Json<MemberChange>| async move {
                member_changed(s.change_member(&c.group, &c.member, false, None))
            }),
        )
        .route(
            "/_emulator/role-assignments",
            get(|State(s): State<Arc<Shared>>| async move { Json(s.arm.lock().unwrap().assignments.clone()) }),
        )
        // The same for shell scripts: principal, role definition ID, name, scope; tab-separated.
        .route(
            "/_emulator/role-assignments.tsv",
            get(|State(s): State<Arc<Shared>>| async move {
                s.arm
                    .lock()
                    .unwrap()
                    .assignments
                    .iter()
                    .map(|a| format!("{}\t{}\t{}\t{}\n", a.principal_id, a.role_definition_id, a.name, a.scope))
                    .collect::<String>()
            }),
        )
        .with_state(shared)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MemberChange {
    group: String,
    member: String,
    until_secs: Option<u64>,
}

fn member_changed(known: bool) -> StatusCode {
    if known { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND }
}

async fn get_by_ids(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.counters.graph_requests.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(s.latency()).await;
    if let Some(reply) = s.check_bearer(&headers).or_else(|| s.request_fault(false)) {
        return reply.into_response();
    }
    s.get_by_ids(&body).into_response()
}

async fn replace_directory(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    match DirectoryFile::parse(&String::from_utf8_lossy(&body)) {
        Ok(d) => {
            s.set_directory(d);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// Entra ID's OAuth2 error body.
fn token_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let body = json!({"error": error, "error_description": format!("AADSTS{code}: {description}"),
                      "error_codes": [code], "timestamp": "", "trace_id": "", "correlation_id": ""});
    (status, Json(body)).into_response()
}

async fn token(
    State(s): State<Arc<Shared>>,
    UrlPath(tenant): UrlPath<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    s.counters.token_requests.fetch_add(1, Ordering::Relaxed);
    let field = |k: &str| form.get(k).map(String::as_str);
    if !tenant.eq_ignore_ascii_case(TENANT_ID) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if field("grant_type") != Some("client_credentials") {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if field("client_id") != Some(CLIENT_ID) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory.",
                field("client_id").unwrap_or("")
            ),
        );
    }
    let audience = field("scope").filter(|scope| scope.ends_with("/.default")).and_then(|scope| s.audience(scope));
    let Some(audience) = audience else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            &format!(
                "The provided value for scope {} is not valid; expected {}/.default (Graph) or {}/.default (ARM).",
                field("scope").unwrap_or(""),
                s.base_url,
                s.arm_url
            ),
        );
    };
    match (field("client_secret"), field("client_assertion"), field("client_assertion_type")) {
        (Some(CLIENT_SECRET), None, _) => {}
        (Some(_), None, _) => {
            return token_error(StatusCode::UNAUTHORIZED, "invalid_client", 7000215, "Invalid client secret provided.");
        }
        (None, Some(FEDERATED_TOKEN), Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")) => {}
        (None, Some(_), _) => {
            return token_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700211,
                "No matching federated identity record found for presented assertion.",
            );
        }
        _ => {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            );
        }
    }
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": s.issue_token(audience)}))
        .into_response()
}

async fn managed_identity_token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    s.counters.token_requests.fetch_add(1, Ordering::Relaxed);
    if headers.get("x-identity-header").and_then(|v| v.to_str().ok()) != Some(IDENTITY_HEADER) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_request", "error_description": "missing or wrong X-IDENTITY-HEADER"})),
        )
            .into_response();
    }
    let resource = q.get("resource").cloned().unwrap_or_default();
    let Some(audience) = s.audience(&resource) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_resource", "error_description": format!("unknown resource '{resource}'")})),
        )
            .into_response();
    };
    let expires_on = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() + 3599;
    Json(json!({"access_token": s.issue_token(audience), "expires_on": expires_on.to_string(), "resource": resource, "token_type": "Bearer"}))
        .into_response()
}

async fn graph_get(State(s): State<Arc<Shared>>, headers: HeaderMap, OriginalUri(uri): OriginalUri) -> Response {
    s.counters.graph_requests.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(s.latency()).await;
    if let Some(reply) = s.check_bearer(&headers).or_else(|| s.request_fault(false)) {
        return reply.into_response();
    }
    let path = uri.path().strip_prefix("/v1.0").unwrap_or(uri.path());
    s.lookup(path, uri.query().unwrap_or(""), false).into_response()
}

#[derive(Deserialize)]
struct BatchRequest {
    requests: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    id: String,
    method: String,
    url: String,
}

async fn batch(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    s.counters.graph_requests.fetch_add(1, Ordering::Relaxed);
    s.counters.batch_requests.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(s.latency()).await;
    if let Some(reply) = s.check_bearer(&headers).or_else(|| s.request_fault(true)) {
        return reply.into_response();
    }
    let Ok(request) = serde_json::from_slice::<BatchRequest>(&body) else {
        return GraphReply::error(400, "BadRequest", "Unable to deserialize content.").into_response();
    };
    if request.requests.len() > MAX_BATCH {
        return GraphReply::error(
            400,
            "BadRequest",
            &format!("The number of requests in a batch exceeds {MAX_BATCH}."),
        )
        .into_response();
    }
    let mut seen = HashSet::new();
    if let Some(dup) = request.requests.iter().find(|r| !seen.insert(r.id.as_str())) {
        return GraphReply::error(400, "BadRequest", &format!("Request Id '{}' is duplicated.", dup.id))
            .into_response();
    }
    let mut responses = Vec::with_capacity(request.requests.len());
    // Answer in reverse order: the real service gives no order guarantee.
    for item in request.requests.iter().rev() {
        let reply = if item.method != "GET" {
            GraphReply::error(405, "Request_BadRequest", "Only GET is supported here.")
        } else {
            let url = item.url.trim_start_matches('/');
            let (path, query) = url.split_once('?').unwrap_or((url, ""));
            s.lookup(path, query, true)
        };
        responses
            .push(json!({"id": item.id, "status": reply.status, "headers": reply.headers_json(), "body": reply.body}));
    }
    Json(json!({"responses": responses})).into_response()
}

struct TlsMaterial {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a serving certificate for 127.0.0.1, localhost and `address` signed by it.
fn tls_material(address: std::net::IpAddr) -> Result<TlsMaterial, rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "azure-emulator CA");
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !address.is_loopback() {
        names.push(address.to_string());
    }
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, "azure-emulator");
    let cert = params.signed_by(&key, &ca)?;
    Ok(TlsMaterial { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}
