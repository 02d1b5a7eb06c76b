//! The HTTP front: routes Kubernetes API paths to the store, streams watches,
//! renders Tables for kubectl, and counts requests by verb.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::openapi;
use super::resources::ResourceInfo;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{
    DeleteOpts, Event, EventType, FieldValidation, ListOpts, PatchBody, Propagation, Store,
    WriteCtx,
};
use super::table::{self, IncludeObject};

/// Largest request body accepted.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// State shared by every request.
pub struct Shared {
    /// The object store.
    pub store: Arc<Store>,
    /// Requests served, by verb.
    pub counts: Mutex<BTreeMap<String, u64>>,
    /// Bumped to end every open watch (knob and shutdown).
    pub close_watches: watch::Sender<u64>,
    /// Interval of watch bookmarks for clients that allow them.
    pub bookmark_interval: Duration,
}

impl Shared {
    fn count(&self, verb: &str) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry(verb.to_string()).or_default() += 1;
    }
}

type Params = HashMap<String, String>;

fn json_response(code: u16, v: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

/// The single entry point: everything is routed by path here because the
/// API's URL space (`/apis/G/V/namespaces/NS/R/NAME/SUB`) is dynamic.
pub async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let params: Params = Query::<Params>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let path = parts.uri.path().trim_end_matches('/').to_string();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return error_response(&ApiError::bad_request(format!("reading body: {e}"))),
    };
    match route(&sh, &parts.method, &path, &params, &parts.headers, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn route(
    sh: &Arc<Shared>,
    method: &Method,
    path: &str,
    params: &Params,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let registry = || sh.store.registry();
    match segs.as_slice() {
        ["healthz" | "readyz" | "livez", ..] => {
            sh.count("health");
            return Ok((StatusCode::OK, "ok").into_response());
        }
        ["version"] => {
            sh.count("discovery");
            return Ok(json_response(
                200,
                &json!({
                    "major": "1", "minor": "33", "gitVersion": "v1.33.0-grokcast-test",
                    "gitCommit": "", "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                    "goVersion": "", "compiler": "rust", "platform": "linux/amd64"
                }),
            ));
        }
        ["openapi", "v3"] => {
            sh.count("discovery");
            return Ok(json_response(200, &openapi::index(&registry())));
        }
        ["openapi", "v3", "api", v] | ["openapi", "v3", "apis", "", v] => {
            sh.count("discovery");
            return openapi::group_version(&registry(), "", v)
                .map(|x| json_response(200, &x))
                .ok_or_else(|| ApiError::no_route(path));
        }
        ["openapi", "v3", "apis", g, v] => {
            sh.count("discovery");
            return openapi::group_version(&registry(), g, v)
                .map(|x| json_response(200, &x))
                .ok_or_else(|| ApiError::no_route(path));
        }
        ["api"] => {
            sh.count("discovery");
            return Ok(json_response(200, &registry().core_versions()));
        }
        ["apis"] => {
            sh.count("discovery");
            return Ok(json_response(200, &registry().group_list()));
        }
        ["api", "v1"] => {
            sh.count("discovery");
            return registry()
                .resource_list("", "v1")
                .map(|v| json_response(200, &v))
                .ok_or_else(|| ApiError::no_route(path));
        }
        ["apis", g] => {
            sh.count("discovery");
            return registry()
                .group(g)
                .map(|v| json_response(200, &v))
                .ok_or_else(|| ApiError::no_route(path));
        }
        ["apis", g, v] => {
            sh.count("discovery");
            return registry()
                .resource_list(g, v)
                .map(|x| json_response(200, &x))
                .ok_or_else(|| ApiError::no_route(path));
        }
        _ => {}
    }
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route(path)),
    };
    // `/namespaces/NS/RESOURCE/...` unless it is the namespace object's own subresource.
    let (ns, resource, name, sub) = match rest {
        ["namespaces", ns, r, tail @ ..]
            if !(group.is_empty() && matches!(*r, "status" | "finalize")) =>
        {
            (Some(*ns), *r, tail.first().copied(), tail.get(1).copied())
        }
        [r, tail @ ..] => (None, *r, tail.first().copied(), tail.get(1).copied()),
        [] => return Err(ApiError::no_route(path)),
    };
    let info = sh
        .store
        .resource(group, version, resource)
        .ok_or_else(|| ApiError::no_route(path))?;
    if info.namespaced && name.is_some() && ns.is_none() {
        return Err(ApiError::no_route(path));
    }
    let ns_str = if info.namespaced {
        ns.unwrap_or_default()
    } else {
        ""
    };
    let ctx = write_ctx(params, headers);
    match (method, name, sub) {
        (&Method::GET, None, None) => {
            let list = list_opts(params, &info)?;
            if is_true(params.get("watch")) {
                sh.count("watch");
                let ns = ns.filter(|_| info.namespaced);
                return watch_response(sh, info, ns, list, params);
            }
            sh.count("list");
            let v = sh
                .store
                .list(&info, ns.filter(|_| info.namespaced), &list)?;
            Ok(match table_request(headers, params)? {
                Some(include) => table_response(&table::table(&info, &v, include)),
                None => json_response(200, &v),
            })
        }
        (&Method::GET, Some(n), None) => {
            sh.count("get");
            let v = sh.store.get(&info, ns_str, n)?;
            Ok(match table_request(headers, params)? {
                Some(include) => {
                    // A single object is printed as a one-row Table.
                    let list = json!({"metadata": {"resourceVersion": v.pointer("/metadata/resourceVersion")}, "items": [v]});
                    table_response(&table::table(&info, &list, include))
                }
                None => json_response(200, &v),
            })
        }
        (&Method::GET, Some(n), Some("status")) if info.status_subresource => {
            sh.count("get");
            Ok(json_response(200, &sh.store.get(&info, ns_str, n)?))
        }
        (&Method::GET, Some(n), Some("scale")) => {
            sh.count("get");
            Ok(json_response(200, &sh.store.get_scale(&info, ns_str, n)?))
        }
        (&Method::POST, None, None) => {
            sh.count("create");
            if info.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed(
                    "a namespace is required to create this resource",
                ));
            }
            let obj = parse_body(headers, &body)?;
            Ok(json_response(
                201,
                &sh.store.create(&info, ns_str, obj, &ctx)?,
            ))
        }
        (&Method::PUT, Some(n), sub @ (None | Some("status"))) => {
            sh.count("update");
            if sub.is_some() && !info.status_subresource {
                return Err(ApiError::no_route(path));
            }
            let obj = parse_body(headers, &body)?;
            Ok(json_response(
                200,
                &sh.store
                    .update(&info, ns_str, n, obj, &ctx, sub.is_some())?,
            ))
        }
        (&Method::PUT, Some(n), Some("scale")) => {
            sh.count("update");
            let new_scale = parse_body(headers, &body)?;
            let v = sh.store.update_scale(
                &info,
                ns_str,
                n,
                |s| {
                    let rv = new_scale.pointer("/metadata/resourceVersion").cloned();
                    s["spec"] = new_scale.get("spec").cloned().unwrap_or(json!({}));
                    if let Some(rv) = rv {
                        s["metadata"]["resourceVersion"] = rv;
                    }
                    Ok(())
                },
                &ctx,
            )?;
            Ok(json_response(200, &v))
        }
        (&Method::PATCH, Some(n), sub @ (None | Some("status"))) => {
            sh.count("patch");
            if sub.is_some() && !info.status_subresource {
                return Err(ApiError::no_route(path));
            }
            let patch = patch_body(headers, &body, params)?;
            if matches!(patch, PatchBody::Apply { .. }) && !params.contains_key("fieldManager") {
                return Err(ApiError::bad_request(
                    "PATCH requests with Apply content type must specify fieldManager",
                ));
            }
            let (v, created) = sh
                .store
                .patch(&info, ns_str, n, patch, &ctx, sub.is_some())?;
            Ok(json_response(if created { 201 } else { 200 }, &v))
        }
        (&Method::PATCH, Some(n), Some("scale")) => {
            sh.count("patch");
            let patch = patch_body(headers, &body, params)?;
            let v = sh.store.update_scale(
                &info,
                ns_str,
                n,
                |s| {
                    match &patch {
                        PatchBody::Merge(p) => super::patch::merge_patch(s, p),
                        PatchBody::Strategic(p) => super::patch::merge_patch(s, p),
                        PatchBody::Json(p) => super::patch::json_patch(s, p)
                            .map_err(|e| ApiError::bad_request(e.to_string()))?,
                        PatchBody::Apply { config, .. } => super::patch::merge_patch(s, config),
                    }
                    Ok(())
                },
                &ctx,
            )?;
            Ok(json_response(200, &v))
        }
        (&Method::DELETE, Some(n), None) => {
            sh.count("delete");
            let opts = delete_opts(params, &body)?;
            Ok(json_response(
                200,
                &sh.store.delete(&info, ns_str, n, &opts)?,
            ))
        }
        (&Method::DELETE, None, None) => {
            sh.count("deletecollection");
            let list = list_opts(params, &info)?;
            let opts = delete_opts(params, &body)?;
            Ok(json_response(
                200,
                &sh.store
                    .delete_collection(&info, ns.filter(|_| info.namespaced), &list, &opts)?,
            ))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {path}"
        ))),
    }
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|s| s == "true" || s == "1")
}

/// The media type of a Table response, as the real server labels it.
const TABLE_MEDIA_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// Whether the client asked for a Table (kubectl's `get` sends
/// `application/json;as=Table;v=v1;g=meta.k8s.io,...,application/json`), and
/// with which `includeObject`. Only JSON Tables of `meta.k8s.io/v1` are served;
/// a client that lists other media types after them falls back to those.
fn table_request(headers: &HeaderMap, params: &Params) -> Result<Option<IncludeObject>, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let wants = accept.split(',').any(|media| {
        let mut parts = media.split(';').map(str::trim);
        let base = parts.next().unwrap_or_default();
        let mut as_table = false;
        let mut version_ok = true;
        let mut group_ok = true;
        for p in parts {
            match p.split_once('=') {
                Some(("as", v)) => as_table = v == "Table",
                Some(("v", v)) => version_ok = v == "v1",
                Some(("g", g)) => group_ok = g == "meta.k8s.io",
                _ => {}
            }
        }
        base == "application/json" && as_table && version_ok && group_ok
    });
    if !wants {
        return Ok(None);
    }
    IncludeObject::parse(params.get("includeObject").map(String::as_str))
        .map(Some)
        .map_err(ApiError::bad_request)
}

fn table_response(v: &Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, TABLE_MEDIA_TYPE)],
        v.to_string(),
    )
        .into_response()
}

fn user_agent_manager(headers: &HeaderMap) -> String {
    // The real server names an unnamed manager after the user agent's program name.
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

fn write_ctx(params: &Params, headers: &HeaderMap) -> WriteCtx {
    WriteCtx {
        manager: params
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| user_agent_manager(headers)),
        dry_run: params.get("dryRun").is_some_and(|d| d == "All"),
        validation: match params.get("fieldValidation").map(String::as_str) {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        },
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn parse_json_or_yaml(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    serde_yaml::from_slice::<Value>(body)
        .map_err(|e| ApiError::bad_request(format!("the body could not be decoded: {e}")))
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type(headers);
    match ct.as_str() {
        "application/json" | "application/yaml" | "" | "*/*" => parse_json_or_yaml(body),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn patch_body(headers: &HeaderMap, body: &[u8], params: &Params) -> Result<PatchBody, ApiError> {
    let ct = content_type(headers);
    let v = parse_json_or_yaml(body)?;
    Ok(match ct.as_str() {
        "application/merge-patch+json" => PatchBody::Merge(v),
        "application/strategic-merge-patch+json" => PatchBody::Strategic(v),
        "application/json-patch+json" => PatchBody::Json(v),
        "application/apply-patch+yaml" | "application/apply-patch+json" => PatchBody::Apply {
            config: v,
            force: is_true(params.get("force")),
        },
        other => return Err(ApiError::unsupported_media_type(other)),
    })
}

fn list_opts(params: &Params, info: &ResourceInfo) -> Result<ListOpts, ApiError> {
    let labels = LabelSelector::parse(
        params
            .get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse(
        params
            .get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
        &info.kind,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = match params.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        )
        .filter(|l| *l > 0),
        None => None,
    };
    let exact_rv = match (
        params.get("resourceVersion"),
        params.get("resourceVersionMatch").map(String::as_str),
    ) {
        (Some(rv), Some("Exact")) => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
        ),
        _ => None,
    };
    Ok(ListOpts {
        labels,
        fields,
        limit,
        continue_token: params.get("continue").filter(|c| !c.is_empty()).cloned(),
        exact_rv,
    })
}

fn delete_opts(params: &Params, body: &[u8]) -> Result<DeleteOpts, ApiError> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json_or_yaml(body)?
    };
    let policy = b
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| params.get("propagationPolicy").cloned())
        .or_else(
            || match b.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some("Orphan".into()),
                _ => None,
            },
        );
    let propagation = match policy.as_deref() {
        None | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown propagationPolicy {other:?}"
            )));
        }
    };
    let dry = b
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x == "All"))
        || params.get("dryRun").is_some_and(|d| d == "All");
    Ok(DeleteOpts {
        propagation,
        uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: dry,
    })
}

/// Filters and renders events for one watch.
struct WatchFilter {
    info: Arc<ResourceInfo>,
    key: String,
    ns: Option<String>,
    list: ListOpts,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.ns
            && obj.pointer("/metadata/namespace").and_then(Value::as_str) != Some(ns)
        {
            return false;
        }
        self.list
            .labels
            .matches(obj.pointer("/metadata/labels").and_then(Value::as_object))
            && self.list.fields.matches(obj)
    }

    fn line(&self, kind: &str, obj: &Value) -> Bytes {
        let mut s = json!({"type": kind, "object": Store::present(&self.info, obj)}).to_string();
        s.push('\n');
        Bytes::from(s)
    }

    /// An event as this watcher sees it: objects that stop matching the
    /// selector are DELETED for it, objects that start matching are ADDED.
    fn render(&self, ev: &Event) -> Option<Bytes> {
        if ev.key != self.key {
            return None;
        }
        let now = self.matches(&ev.object);
        let kind = match ev.kind {
            EventType::Added => now.then_some("ADDED")?,
            EventType::Deleted => now.then_some("DELETED")?,
            EventType::Modified => {
                let before = ev.old.as_deref().is_some_and(|o| self.matches(o));
                match (before, now) {
                    (true, true) => "MODIFIED",
                    (false, true) => "ADDED",
                    (true, false) => "DELETED",
                    (false, false) => return None,
                }
            }
        };
        Some(self.line(kind, &ev.object))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut md = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            md["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.info.kind, "apiVersion": self.info.api_version(), "metadata": md});
        let mut s = json!({"type": "BOOKMARK", "object": obj}).to_string();
        s.push('\n');
        Bytes::from(s)
    }
}

struct WatchState {
    filter: WatchFilter,
    rx: broadcast::Receiver<Arc<Event>>,
    pending: VecDeque<Bytes>,
    last_rv: u64,
    deadline: tokio::time::Instant,
    bookmarks: Option<tokio::time::Interval>,
    close: watch::Receiver<u64>,
    done: bool,
}

fn watch_response(
    sh: &Arc<Shared>,
    info: Arc<ResourceInfo>,
    ns: Option<&str>,
    list: ListOpts,
    params: &Params,
) -> Result<Response, ApiError> {
    let filter = WatchFilter {
        key: info.storage_key(),
        info,
        ns: ns.map(str::to_string),
        list,
    };
    let rv_param = params
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or_default();
    let initial_events = is_true(params.get("sendInitialEvents"));
    let from = match rv_param {
        "" | "0" => None,
        _ if initial_events => None,
        s => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}")))?,
        ),
    };
    let mut pending = VecDeque::new();
    let mut close = sh.close_watches.subscribe();
    close.mark_unchanged();
    let (rx, last_rv) = match sh.store.watch_from(&filter.info, from) {
        Ok((replay, initial, rv, rx)) => {
            for obj in initial {
                if filter.matches(&obj) {
                    pending.push_back(filter.line("ADDED", &obj));
                }
            }
            for ev in &replay {
                if let Some(line) = filter.render(ev) {
                    pending.push_back(line);
                }
            }
            let last = replay.last().map(|e| e.rv).unwrap_or(rv).max(rv);
            if initial_events {
                pending.push_back(filter.bookmark(last, true));
            }
            (Some(rx), last)
        }
        Err(e) => {
            // Like the watch cache: a 200 response whose only event is the error.
            let mut s = json!({"type": "ERROR", "object": e.to_status()}).to_string();
            s.push('\n');
            pending.push_back(Bytes::from(s));
            (None, 0)
        }
    };
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = is_true(params.get("allowWatchBookmarks")).then(|| {
        let mut iv = tokio::time::interval_at(
            tokio::time::Instant::now() + sh.bookmark_interval,
            sh.bookmark_interval,
        );
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        iv
    });
    let done = rx.is_none();
    let Some(rx) = rx.or_else(|| Some(sh.store.subscribe())) else {
        return Err(ApiError::internal("watch"));
    };
    let state = WatchState {
        filter,
        rx,
        pending,
        last_rv,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        bookmarks,
        close,
        done,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                return Some((Ok::<Bytes, std::convert::Infallible>(b), st));
            }
            if st.done {
                return None;
            }
            let tick = async {
                match st.bookmarks.as_mut() {
                    Some(iv) => {
                        iv.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = st.rx.recv() => match r {
                    Ok(ev) => {
                        if ev.rv <= st.last_rv {
                            continue;
                        }
                        st.last_rv = ev.rv;
                        if let Some(line) = st.filter.render(&ev) {
                            st.pending.push_back(line);
                        }
                    }
                    // A watcher that fell behind is ended; the client resumes
                    // from the last version it saw, which history still holds.
                    Err(_) => st.done = true,
                },
                _ = tokio::time::sleep_until(st.deadline) => st.done = true,
                _ = st.close.changed() => st.done = true,
                _ = tick => {
                    let b = st.filter.bookmark(st.last_rv, false);
                    st.pending.push_back(b);
                }
            }
        }
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error_response(&ApiError::internal("building the watch response"))))
}
