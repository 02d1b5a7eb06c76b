//! The object store: every object as JSON, one global resourceVersion, the
//! event history watches resume from, and the write path every verb shares
//! (metadata rules, status scoping, generation, finalizers, field ownership).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::clock;
use super::fields::{self, ListTypes, Scope, Writer};
use super::patch;
use super::resources::{Registry, ResourceInfo};
use super::schema;
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, FieldError, FieldErrorKind};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed from the store.
    Deleted,
}

/// One committed change.
#[derive(Debug)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// Kind of change.
    pub kind: EventType,
    /// Storage key of the resource (`apps/deployments`).
    pub key: String,
    /// The object after the change (before removal for `Deleted`).
    pub object: Arc<Value>,
    /// The object before the change, for `Modified`.
    pub old: Option<Arc<Value>>,
}

type ObjMap = BTreeMap<(String, String), Arc<Value>>;

struct State {
    rv: u64,
    compacted: u64,
    objects: HashMap<String, ObjMap>,
    uids: HashMap<String, (String, String, String)>,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    registry: Registry,
}

/// How unknown fields are treated (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Unknown fields are dropped silently.
    Ignore,
    /// Unknown fields are dropped (the real server adds a warning header).
    Warn,
    /// Unknown fields fail the request.
    Strict,
}

/// Who writes and how.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    /// Field manager.
    pub manager: String,
    /// `dryRun=All`: validate and return the result without storing it.
    pub dry_run: bool,
    /// `fieldValidation`.
    pub validation: FieldValidation,
}

impl WriteCtx {
    /// A write by one of the control plane's own controllers.
    pub fn system(manager: &str) -> Self {
        Self {
            manager: manager.to_string(),
            dry_run: false,
            validation: FieldValidation::Ignore,
        }
    }
}

/// The body of a PATCH.
#[derive(Debug, Clone)]
pub enum PatchBody {
    /// `application/merge-patch+json`.
    Merge(Value),
    /// `application/strategic-merge-patch+json`.
    Strategic(Value),
    /// `application/json-patch+json`.
    Json(Value),
    /// `application/apply-patch+yaml`.
    Apply {
        /// The applied configuration.
        config: Value,
        /// `force=true`.
        force: bool,
    },
}

/// `propagationPolicy` of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted after the owner (the default).
    Background,
    /// Dependents are deleted before the owner.
    Foreground,
    /// Dependents keep running; their owner reference is removed.
    Orphan,
}

/// Options of a delete.
#[derive(Debug, Clone)]
pub struct DeleteOpts {
    /// Propagation policy.
    pub propagation: Propagation,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
}

impl Default for DeleteOpts {
    fn default() -> Self {
        Self {
            propagation: Propagation::Background,
            uid: None,
            resource_version: None,
            dry_run: false,
        }
    }
}

/// Parameters of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOpts {
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
    /// Page size.
    pub limit: Option<usize>,
    /// Continue token from a previous page.
    pub continue_token: Option<String>,
    /// `resourceVersion` with `resourceVersionMatch=Exact`.
    pub exact_rv: Option<u64>,
}

/// Finalizer the real apiserver puts on CRDs so their objects are cleaned up first.
pub const CRD_CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
/// Finalizer for foreground cascading deletion.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// Finalizer for orphaning deletion.
pub const ORPHAN_FINALIZER: &str = "orphan";
const CRD_KEY: &str = "apiextensions.k8s.io/customresourcedefinitions";
const NAMESPACE_KEY: &str = "/namespaces";

/// The store. Cheap to share behind an `Arc`; every method takes the one lock briefly.
pub struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
}

/// Namespaces that exist in every cluster.
const INITIAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

fn meta<'v>(obj: &'v Value, field: &str) -> Option<&'v str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = v;
}

fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove(field);
    }
}

fn dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

fn dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && dns_subdomain(name)
}

/// Status and metadata excluded: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// The object with managedFields timestamps blanked, to detect no-op writes.
fn without_times(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(mf) = v
        .pointer_mut("/metadata/managedFields")
        .and_then(Value::as_array_mut)
    {
        for e in mf {
            if let Some(m) = e.as_object_mut() {
                m.remove("time");
            }
        }
    }
    remove_meta(&mut v, "resourceVersion");
    v
}

fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    let raw = format!("{ns}/{name}");
    let hex: String = raw.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{rv}-{hex}")
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token:?}"));
    let (rv, hex) = token.split_once('-').ok_or_else(bad)?;
    let rv = rv.parse().map_err(|_| bad())?;
    let bytes: Result<Vec<u8>, _> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(())
        })
        .collect();
    let raw = String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())?;
    let (ns, name) = raw.split_once('/').ok_or_else(bad)?;
    Ok((rv, ns.to_string(), name.to_string()))
}

impl Store {
    /// A store with the built-in kinds and the standard namespaces.
    pub fn new(history_limit: usize) -> Self {
        let (events, _) = broadcast::channel(16_384);
        let store = Self {
            state: Mutex::new(State {
                rv: 1,
                compacted: 0,
                objects: HashMap::new(),
                uids: HashMap::new(),
                history: VecDeque::new(),
                history_limit,
                registry: Registry::with_builtins(),
            }),
            events,
        };
        if let Some(info) = store.registry().get("", "v1", "namespaces") {
            for ns in INITIAL_NAMESPACES {
                let obj =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                let _ = store.create(&info, "", obj, &WriteCtx::system("kube-apiserver"));
            }
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data: every write
        // builds the new object first and commits it in one step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of the registry.
    pub fn registry(&self) -> Registry {
        self.lock().registry.clone()
    }

    /// Looks a served resource up.
    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.lock().registry.get(group, version, plural)
    }

    /// Looks a resource up by storage key.
    pub fn resource_by_key(&self, key: &str) -> Option<Arc<ResourceInfo>> {
        self.lock().registry.by_storage_key(key)
    }

    /// The current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Receives every committed event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// Forgets history up to now: watches and lists from older versions get 410 Gone.
    pub fn compact(&self) {
        let mut st = self.lock();
        st.compacted = st.rv;
        st.history.clear();
    }

    /// Number of objects of every kind.
    pub fn object_count(&self) -> usize {
        self.lock().objects.values().map(BTreeMap::len).sum()
    }

    fn commit(
        &self,
        st: &mut State,
        key: &str,
        kind: EventType,
        mut obj: Value,
        old: Option<Arc<Value>>,
    ) -> Arc<Value> {
        st.rv += 1;
        let rv = st.rv;
        let ns = meta(&obj, "namespace").unwrap_or_default().to_string();
        let name = meta(&obj, "name").unwrap_or_default().to_string();
        let uid = meta(&obj, "uid").unwrap_or_default().to_string();
        set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
        let obj = Arc::new(obj);
        let map = st.objects.entry(key.to_string()).or_default();
        match kind {
            EventType::Deleted => {
                map.remove(&(ns.clone(), name.clone()));
                st.uids.remove(&uid);
            }
            _ => {
                map.insert((ns.clone(), name.clone()), obj.clone());
                st.uids.insert(uid, (key.to_string(), ns, name.clone()));
            }
        }
        if key == CRD_KEY {
            match kind {
                EventType::Deleted => st.registry.unregister_crd(&name),
                _ => {
                    if let Err(e) = st.registry.register_crd(&obj) {
                        tracing::warn!(crd = %name, error = %e, "CRD not served");
                    }
                }
            }
        }
        let event = Arc::new(Event {
            rv,
            kind,
            key: key.to_string(),
            object: obj.clone(),
            old,
        });
        st.history.push_back(event.clone());
        while st.history.len() > st.history_limit {
            if let Some(e) = st.history.pop_front() {
                st.compacted = e.rv;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
        obj
    }

    fn lookup(st: &State, info: &ResourceInfo, ns: &str, name: &str) -> Option<Arc<Value>> {
        st.objects
            .get(&info.storage_key())?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Rewrites the stored object's apiVersion to the version requested.
    pub fn present(info: &ResourceInfo, obj: &Value) -> Value {
        if super::events::is_events_v1(info) {
            return super::events::to_events_v1(obj);
        }
        let mut v = obj.clone();
        v["apiVersion"] = json!(info.api_version());
        v["kind"] = json!(info.kind);
        v
    }

    /// GET one object.
    pub fn get(&self, info: &ResourceInfo, ns: &str, name: &str) -> Result<Value, ApiError> {
        let st = self.lock();
        Self::lookup(&st, info, ns, name)
            .map(|o| Self::present(info, &o))
            .ok_or_else(|| ApiError::not_found(&info.qualified(), name))
    }

    /// Whether an object with this uid exists.
    pub fn uid_exists(&self, uid: &str) -> bool {
        self.lock().uids.contains_key(uid)
    }

    /// Every object of a storage key (all namespaces).
    pub fn all_of(&self, key: &str) -> Vec<Arc<Value>> {
        self.lock()
            .objects
            .get(key)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every (storage key, object) in the store.
    pub fn everything(&self) -> Vec<(String, Arc<Value>)> {
        self.lock()
            .objects
            .iter()
            .flat_map(|(k, m)| m.values().map(move |o| (k.clone(), o.clone())))
            .collect()
    }

    /// LIST, one page.
    pub fn list(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOpts,
    ) -> Result<Value, ApiError> {
        let st = self.lock();
        if let Some(rv) = opts.exact_rv
            && rv < st.compacted
        {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                st.compacted
            )));
        }
        let mut start: Option<(String, String)> = None;
        if let Some(token) = &opts.continue_token {
            let (rv, cns, cname) = decode_continue(token)?;
            if rv < st.compacted {
                return Err(ApiError::expired(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
                ));
            }
            start = Some((cns, cname));
        }
        let empty = ObjMap::new();
        let map = st.objects.get(&info.storage_key()).unwrap_or(&empty);
        let mut items = vec![];
        let mut next = None;
        let mut remaining = 0usize;
        let lower = match &start {
            Some(k) => std::ops::Bound::Excluded(k.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let range = map.range((lower, std::ops::Bound::Unbounded));
        for ((ons, oname), obj) in range {
            if let Some(ns) = ns
                && ons != ns
            {
                continue;
            }
            let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
            if !opts.labels.matches(labels) || !opts.fields.matches(obj) {
                continue;
            }
            if let Some(limit) = opts.limit {
                if items.len() >= limit {
                    remaining += 1;
                    continue;
                }
                if items.len() + 1 == limit {
                    next = Some((ons.clone(), oname.clone()));
                }
            }
            items.push(Self::present(info, obj));
        }
        let mut metadata = json!({"resourceVersion": st.rv.to_string()});
        if remaining > 0
            && let Some((ns, name)) = next
        {
            let token_rv = match &opts.continue_token {
                Some(t) => decode_continue(t)?.0,
                None => st.rv,
            };
            metadata["continue"] = json!(encode_continue(token_rv, &ns, &name));
            metadata["remainingItemCount"] = json!(remaining);
        }
        Ok(json!({
            "apiVersion": info.api_version(),
            "kind": format!("{}List", info.kind),
            "metadata": metadata,
            "items": items,
        }))
    }

    /// For a watch: the current objects (when `from` is None) or the history
    /// after `from`, and a receiver for what follows, with no gap between them.
    #[allow(clippy::type_complexity)]
    pub fn watch_from(
        &self,
        info: &ResourceInfo,
        from: Option<u64>,
    ) -> Result<
        (
            Vec<Arc<Event>>,
            Vec<Arc<Value>>,
            u64,
            broadcast::Receiver<Arc<Event>>,
        ),
        ApiError,
    > {
        let st = self.lock();
        let rx = self.events.subscribe();
        let key = info.storage_key();
        match from {
            None => {
                let objs = st
                    .objects
                    .get(&key)
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default();
                Ok((vec![], objs, st.rv, rx))
            }
            Some(rv) => {
                if rv < st.compacted {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        st.compacted
                    )));
                }
                let events = st
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && e.key == key)
                    .cloned()
                    .collect();
                Ok((events, vec![], st.rv.max(rv), rx))
            }
        }
    }

    /// POST.
    pub fn create(
        &self,
        info: &Arc<ResourceInfo>,
        ns: &str,
        obj: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let out = self.write(
            &mut st,
            info,
            ns,
            None,
            obj,
            ctx,
            Scope::for_main(info),
            false,
        )?;
        Ok(Self::present(info, &out))
    }

    /// PUT on the main resource or `/status`.
    pub fn update(
        &self,
        info: &Arc<ResourceInfo>,
        ns: &str,
        name: &str,
        obj: Value,
        ctx: &WriteCtx,
        status: bool,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let old = Self::lookup(&st, info, ns, name)
            .ok_or_else(|| ApiError::not_found(&info.qualified(), name))?;
        if meta(&obj, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta(&obj, "name").unwrap_or_default()
            )));
        }
        Self::check_rv(info, &old, &obj)?;
        let scope = if status {
            Scope::Status
        } else {
            Scope::for_main(info)
        };
        let out = self.write(&mut st, info, ns, Some(old), obj, ctx, scope, false)?;
        Ok(Self::present(info, &out))
    }

    fn check_rv(info: &ResourceInfo, old: &Value, new: &Value) -> Result<(), ApiError> {
        if let Some(rv) = meta(new, "resourceVersion")
            && !rv.is_empty()
            && Some(rv) != meta(old, "resourceVersion")
        {
            return Err(ApiError::conflict(
                &info.qualified(),
                meta(old, "name").unwrap_or_default(),
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        Ok(())
    }

    /// PATCH on the main resource or `/status`. Apply patches may create.
    pub fn patch(
        &self,
        info: &Arc<ResourceInfo>,
        ns: &str,
        name: &str,
        body: PatchBody,
        ctx: &WriteCtx,
        status: bool,
    ) -> Result<(Value, bool), ApiError> {
        let mut st = self.lock();
        let old = Self::lookup(&st, info, ns, name);
        let scope = if status {
            Scope::Status
        } else {
            Scope::for_main(info)
        };
        let lt = ListTypes::of(info);
        let now = clock::now_rfc3339();
        let api_version = info.api_version();
        match body {
            PatchBody::Apply { config, force } => {
                let mut config = config;
                if !config.is_object() {
                    return Err(ApiError::bad_request("apply patch must be an object"));
                }
                let (av, kind) = (
                    config
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    config
                        .get("kind")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
                if av.is_empty() || kind.is_empty() {
                    return Err(ApiError::bad_request(
                        "invalid object type: apiVersion and kind must be set in an apply configuration",
                    ));
                }
                if av != api_version || kind != info.kind {
                    return Err(ApiError::bad_request(format!(
                        "the API version in the data ({av}) does not match the expected API version ({api_version}) or kind {kind} is not {}",
                        info.kind
                    )));
                }
                match meta(&config, "name") {
                    Some(n) if n != name => {
                        return Err(ApiError::bad_request(format!(
                            "the name of the object ({n}) does not match the name on the URL ({name})"
                        )));
                    }
                    None => set_meta(&mut config, "name", json!(name)),
                    _ => {}
                }
                if let Some(o) = &old {
                    Self::check_rv(info, o, &config)?;
                }
                for f in [
                    "resourceVersion",
                    "managedFields",
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "deletionTimestamp",
                ] {
                    remove_meta(&mut config, f);
                }
                if super::events::is_events_v1(info) {
                    // Merged against the stored core/v1 form.
                    config = super::events::to_core(&config);
                }
                let writer = Writer {
                    manager: &ctx.manager,
                    api_version: &api_version,
                    subresource: if status { "status" } else { "" },
                    now: &now,
                };
                if old.is_none() && status {
                    return Err(ApiError::not_found(&info.qualified(), name));
                }
                let merged = fields::apply(old.as_deref(), &config, &writer, force, scope, lt)
                    .map_err(|c| ApiError::apply_conflicts(&c, &api_version))?;
                let created = old.is_none();
                let out = self.write(&mut st, info, ns, old, merged, ctx, scope, true)?;
                Ok((Self::present(info, &out), created))
            }
            other => {
                let old = old.ok_or_else(|| ApiError::not_found(&info.qualified(), name))?;
                let mut doc = Self::present(info, &old);
                match &other {
                    PatchBody::Merge(p) => {
                        Self::check_rv(info, &old, p)?;
                        patch::merge_patch(&mut doc, p);
                    }
                    PatchBody::Strategic(p) => {
                        Self::check_rv(info, &old, p)?;
                        patch::strategic_merge_patch(&mut doc, p, lt);
                    }
                    PatchBody::Json(p) => {
                        patch::json_patch(&mut doc, p).map_err(|e| ApiError {
                            code: 422,
                            reason: "Invalid",
                            message: e.to_string(),
                            details: None,
                        })?;
                        Self::check_rv(info, &old, &doc)?;
                    }
                    PatchBody::Apply { .. } => {}
                }
                if meta(&doc, "name") != Some(name) {
                    return Err(ApiError::bad_request(
                        "a patch may not change metadata.name",
                    ));
                }
                let out = self.write(&mut st, info, ns, Some(old), doc, ctx, scope, false)?;
                Ok((Self::present(info, &out), false))
            }
        }
    }

    /// GET `/scale`.
    pub fn get_scale(&self, info: &ResourceInfo, ns: &str, name: &str) -> Result<Value, ApiError> {
        let obj = self.get(info, ns, name)?;
        scale_of(info, &obj)
    }

    /// PUT or PATCH `/scale`: the new `spec.replicas` is written to the object.
    pub fn update_scale(
        &self,
        info: &Arc<ResourceInfo>,
        ns: &str,
        name: &str,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        let Some(paths) = &info.scale else {
            return Err(ApiError::no_route(&format!("{}/scale", info.plural)));
        };
        let mut st = self.lock();
        let old = Self::lookup(&st, info, ns, name)
            .ok_or_else(|| ApiError::not_found(&info.qualified(), name))?;
        let mut scale = scale_of(info, &old)?;
        change(&mut scale)?;
        Self::check_rv(info, &old, &scale)?;
        let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
        if !replicas.is_i64() || replicas.as_i64().is_some_and(|r| r < 0) {
            return Err(ApiError::invalid(
                "Scale.autoscaling",
                "autoscaling",
                "Scale",
                name,
                &[FieldError {
                    field: "spec.replicas".into(),
                    kind: FieldErrorKind::Invalid(replicas.to_string()),
                    message: "must be greater than or equal to 0".into(),
                }],
            ));
        }
        let mut new = (*old).clone();
        set_path(&mut new, &paths.spec_replicas, replicas);
        let out = self.write(
            &mut st,
            info,
            ns,
            Some(old),
            new,
            ctx,
            Scope::for_main(info),
            false,
        )?;
        scale_of(info, &out)
    }

    /// DELETE one object. Returns the object when it lingers (finalizers) or a
    /// Status when it is gone.
    pub fn delete(
        &self,
        info: &Arc<ResourceInfo>,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        self.delete_locked(&mut st, info, ns, name, opts)
    }

    fn delete_locked(
        &self,
        st: &mut State,
        info: &Arc<ResourceInfo>,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let old = Self::lookup(st, info, ns, name)
            .ok_or_else(|| ApiError::not_found(&info.qualified(), name))?;
        if let Some(uid) = &opts.uid
            && meta(&old, "uid") != Some(uid.as_str())
        {
            return Err(ApiError::conflict(
                &info.qualified(),
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta(&old, "uid").unwrap_or_default()
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && meta(&old, "resourceVersion") != Some(rv.as_str())
        {
            return Err(ApiError::conflict(
                &info.qualified(),
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta(&old, "resourceVersion").unwrap_or_default()
                ),
            ));
        }
        let key = info.storage_key();
        let mut new = (*old).clone();
        let mut fins = finalizers(&new);
        match opts.propagation {
            Propagation::Foreground if !fins.iter().any(|f| f == FOREGROUND_FINALIZER) => {
                fins.push(FOREGROUND_FINALIZER.into())
            }
            Propagation::Orphan if !fins.iter().any(|f| f == ORPHAN_FINALIZER) => {
                fins.push(ORPHAN_FINALIZER.into())
            }
            _ => {}
        }
        let namespace_terminating = key == NAMESPACE_KEY
            && new
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
        if fins.is_empty() && !namespace_terminating {
            if !opts.dry_run {
                self.commit(st, &key, EventType::Deleted, new.clone(), Some(old));
            }
            return Ok(json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": info.group, "kind": info.plural, "uid": meta(&new, "uid")},
            }));
        }
        if meta(&new, "deletionTimestamp").is_some() && finalizers(&old) == fins {
            return Ok(Self::present(info, &old));
        }
        set_meta(&mut new, "finalizers", json!(fins));
        if meta(&new, "deletionTimestamp").is_none() {
            set_meta(&mut new, "deletionTimestamp", json!(clock::now_rfc3339()));
            set_meta(&mut new, "deletionGracePeriodSeconds", json!(0));
            if info.generation {
                let g = new
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                set_meta(&mut new, "generation", json!(g + 1));
            }
        }
        if key == NAMESPACE_KEY {
            new["status"] = json!({"phase": "Terminating"});
        }
        if opts.dry_run {
            return Ok(Self::present(info, &new));
        }
        let out = self.commit(st, &key, EventType::Modified, new, Some(old));
        Ok(Self::present(info, &out))
    }

    /// DELETE on a collection: deletes every selected object.
    pub fn delete_collection(
        &self,
        info: &Arc<ResourceInfo>,
        ns: Option<&str>,
        list: &ListOpts,
        opts: &DeleteOpts,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let targets: Vec<(String, String)> = st
            .objects
            .get(&info.storage_key())
            .map(|m| {
                m.iter()
                    .filter(|((ons, _), o)| {
                        ns.is_none_or(|n| n == ons)
                            && list
                                .labels
                                .matches(o.pointer("/metadata/labels").and_then(Value::as_object))
                            && list.fields.matches(o)
                    })
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut items = vec![];
        for (ons, oname) in targets {
            if let Some(o) = Self::lookup(&st, info, &ons, &oname) {
                items.push(Self::present(info, &o));
            }
            self.delete_locked(&mut st, info, &ons, &oname, opts)?;
        }
        Ok(json!({
            "apiVersion": info.api_version(),
            "kind": format!("{}List", info.kind),
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        }))
    }

    /// Internal write by a controller: `change` gets the current object and
    /// returns the new one (or None to leave it). Used for status and finalizers.
    pub fn modify(
        &self,
        info: &Arc<ResourceInfo>,
        ns: &str,
        name: &str,
        manager: &str,
        status: bool,
        change: impl FnOnce(&Value) -> Option<Value>,
    ) -> Result<Option<Value>, ApiError> {
        let mut st = self.lock();
        let Some(old) = Self::lookup(&st, info, ns, name) else {
            return Ok(None);
        };
        let Some(new) = change(&old) else {
            return Ok(None);
        };
        let scope = if status {
            Scope::Status
        } else {
            Scope::for_main(info)
        };
        let out = self.write(
            &mut st,
            info,
            ns,
            Some(old),
            new,
            &WriteCtx::system(manager),
            scope,
            false,
        )?;
        Ok(Some((*out).clone()))
    }

    /// The shared write path for create, update, patch and apply.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        st: &mut State,
        info: &Arc<ResourceInfo>,
        url_ns: &str,
        old: Option<Arc<Value>>,
        mut new: Value,
        ctx: &WriteCtx,
        scope: Scope,
        applied: bool,
    ) -> Result<Arc<Value>, ApiError> {
        let key = info.storage_key();
        let lt = ListTypes::of(info);
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON or YAML object",
            ));
        }
        if !new.get("metadata").is_some_and(Value::is_object) {
            new["metadata"] = json!({});
        }
        for (field, want) in [
            ("apiVersion", info.api_version()),
            ("kind", info.kind.clone()),
        ] {
            match new.get(field).and_then(Value::as_str) {
                Some(got)
                    if got != want
                        && !(field == "apiVersion"
                            && got.split('/').next() == want.split('/').next()
                            && info.custom) =>
                {
                    return Err(ApiError::bad_request(format!(
                        "the {field} of the object ({got}) does not match the {field} of the URL ({want})"
                    )));
                }
                _ => {}
            }
        }
        if super::events::is_events_v1(info) {
            // Stored in the core/v1 form both Event APIs share.
            new = super::events::to_core(&new);
        } else {
            new["apiVersion"] = json!(info.api_version());
            new["kind"] = json!(info.kind);
        }
        let now = clock::now_rfc3339();
        let name;
        match &old {
            Some(o) => {
                name = meta(o, "name").unwrap_or_default().to_string();
                for f in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    match o.pointer(&format!("/metadata/{f}")) {
                        Some(v) => set_meta(&mut new, f, v.clone()),
                        None => remove_meta(&mut new, f),
                    }
                }
                if !applied {
                    // Clients cannot rewrite ownership records through ordinary writes.
                    match o.pointer("/metadata/managedFields") {
                        Some(v) => set_meta(&mut new, "managedFields", v.clone()),
                        None => remove_meta(&mut new, "managedFields"),
                    }
                }
            }
            None => {
                let given = meta(&new, "name").unwrap_or_default().to_string();
                name = if given.is_empty() {
                    match meta(&new, "generateName") {
                        Some(prefix) if !prefix.is_empty() => {
                            format!("{prefix}{}", clock::name_suffix())
                        }
                        _ => {
                            return Err(ApiError::invalid(
                                &info.qualified_kind(),
                                &info.group,
                                &info.kind,
                                "",
                                &[FieldError {
                                    field: "metadata.name".into(),
                                    kind: FieldErrorKind::Required,
                                    message: "name or generateName is required".into(),
                                }],
                            ));
                        }
                    }
                } else {
                    given
                };
                let label_only = matches!(key.as_str(), NAMESPACE_KEY | "/services");
                let ok = if label_only {
                    dns_label(&name)
                } else {
                    dns_subdomain(&name)
                };
                if !ok {
                    let what = if label_only {
                        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                    } else {
                        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                    };
                    return Err(ApiError::invalid(
                        &info.qualified_kind(),
                        &info.group,
                        &info.kind,
                        &name,
                        &[FieldError {
                            field: "metadata.name".into(),
                            kind: FieldErrorKind::Invalid(format!("{name:?}")),
                            message: what.into(),
                        }],
                    ));
                }
                set_meta(&mut new, "name", json!(name));
                if info.namespaced {
                    let body_ns = meta(&new, "namespace").unwrap_or_default().to_string();
                    if !body_ns.is_empty() && body_ns != url_ns {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ));
                    }
                    set_meta(&mut new, "namespace", json!(url_ns));
                    match Self::lookup(st, &self_ns_info(st), "", url_ns) {
                        None => return Err(ApiError::not_found("namespaces", url_ns)),
                        Some(nso) if meta(&nso, "deletionTimestamp").is_some() => {
                            return Err(ApiError {
                                code: 403,
                                reason: "Forbidden",
                                message: format!(
                                    "{} \"{name}\" is forbidden: unable to create new content in namespace {url_ns} because it is being terminated",
                                    info.qualified()
                                ),
                                details: None,
                            });
                        }
                        Some(_) => {}
                    }
                } else {
                    remove_meta(&mut new, "namespace");
                }
                if Self::lookup(st, info, url_ns, &name).is_some() {
                    return Err(ApiError::already_exists(&info.qualified(), &name));
                }
                set_meta(&mut new, "uid", json!(clock::uuid()));
                set_meta(&mut new, "creationTimestamp", json!(now));
                for f in [
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    remove_meta(&mut new, f);
                }
                if info.generation {
                    set_meta(&mut new, "generation", json!(1));
                }
                if !applied {
                    remove_meta(&mut new, "managedFields");
                }
            }
        }
        remove_meta(&mut new, "resourceVersion");
        remove_meta(&mut new, "selfLink");
        // Status is written only through /status where that subresource exists.
        match scope {
            Scope::Main => {
                let old_status = old.as_ref().and_then(|o| o.get("status")).cloned();
                let m = new
                    .as_object_mut()
                    .ok_or_else(|| ApiError::internal("object"))?;
                match old_status {
                    Some(s) => {
                        m.insert("status".into(), s);
                    }
                    None => {
                        m.remove("status");
                    }
                }
            }
            Scope::Status => {
                if let Some(o) = &old {
                    let mut base = (**o).clone();
                    match new.get("status") {
                        Some(s) => base["status"] = s.clone(),
                        None => {
                            if let Some(m) = base.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                    if applied {
                        match new.pointer("/metadata/managedFields") {
                            Some(v) => set_meta(&mut base, "managedFields", v.clone()),
                            None => remove_meta(&mut base, "managedFields"),
                        }
                    }
                    new = base;
                }
            }
            Scope::MainWithStatus => {}
        }
        // Kind-specific rules of the real registry.
        if old.is_none() {
            if key == NAMESPACE_KEY {
                new["spec"] = json!({"finalizers": ["kubernetes"]});
                new["status"] = json!({"phase": "Active"});
            }
            if key == CRD_KEY {
                let mut fins = finalizers(&new);
                if !fins.iter().any(|f| f == CRD_CLEANUP_FINALIZER) {
                    fins.push(CRD_CLEANUP_FINALIZER.into());
                }
                set_meta(&mut new, "finalizers", json!(fins));
            }
        }
        if key == CRD_KEY && scope != Scope::Status {
            check_crd(&new, &name, info)?;
        }
        let checked = schema::validate(info, &mut new, old.as_deref(), ctx.validation, scope);
        if ctx.validation == FieldValidation::Strict && !checked.unknown.is_empty() {
            let list: Vec<String> = checked
                .unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(ApiError::bad_request(format!(
                "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
                list.join(", "),
                kind = info.kind,
                version = info.version
            )));
        }
        let mut errors = checked.errors;
        if let Some(o) = &old
            && meta(o, "deletionTimestamp").is_some()
        {
            let before = finalizers(o);
            for f in finalizers(&new) {
                if !before.contains(&f) {
                    errors.push(FieldError {
                            field: "metadata.finalizers".into(),
                            kind: FieldErrorKind::Forbidden,
                            message: format!("no new finalizers can be added if the object is being deleted, found new finalizers []string{{{f:?}}}"),
                        });
                }
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(
                &info.qualified_kind(),
                &info.group,
                &info.kind,
                &name,
                &errors,
            ));
        }
        if info.generation
            && let Some(o) = &old
            && spec_part(o) != spec_part(&new)
        {
            let g = o
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            set_meta(&mut new, "generation", json!(g + 1));
        }
        if !applied {
            let writer = Writer {
                manager: &ctx.manager,
                api_version: &info.api_version(),
                subresource: if scope == Scope::Status { "status" } else { "" },
                now: &now,
            };
            fields::record_update(old.as_deref(), &mut new, &writer, scope, lt);
        }
        if let Some(o) = &old
            && without_times(o) == without_times(&new)
        {
            return Ok(o.clone());
        }
        if ctx.dry_run {
            if let Some(o) = &old
                && let Some(rv) = o.pointer("/metadata/resourceVersion")
            {
                set_meta(&mut new, "resourceVersion", rv.clone());
            }
            return Ok(Arc::new(new));
        }
        let deleting = meta(&new, "deletionTimestamp").is_some();
        let ns_finalizers = key == NAMESPACE_KEY
            && new
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
        if deleting && finalizers(&new).is_empty() && !ns_finalizers {
            return Ok(self.commit(st, &key, EventType::Deleted, new, old));
        }
        let kind = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        Ok(self.commit(st, &key, kind, new, old))
    }
}

fn self_ns_info(st: &State) -> ResourceInfo {
    st.registry
        .get("", "v1", "namespaces")
        .map(|i| (*i).clone())
        .unwrap_or_else(|| ResourceInfo {
            group: String::new(),
            version: "v1".into(),
            plural: "namespaces".into(),
            singular: "namespace".into(),
            kind: "Namespace".into(),
            namespaced: false,
            short_names: vec![],
            categories: vec![],
            status_subresource: true,
            scale: None,
            generation: false,
            schema: None,
            printer_columns: vec![],
            custom: false,
            storage: true,
        })
}

fn check_crd(crd: &Value, name: &str, info: &ResourceInfo) -> Result<(), ApiError> {
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut errors = vec![];
    if name != format!("{plural}.{group}") {
        errors.push(FieldError {
            field: "metadata.name".into(),
            kind: FieldErrorKind::Invalid(format!("{name:?}")),
            message: "must be spec.names.plural+\".\"+spec.group".into(),
        });
    }
    if let Err(e) = Registry::default().register_crd(crd) {
        let (field, msg) = e.split_once(": ").unwrap_or(("spec", e.as_str()));
        errors.push(FieldError {
            field: field.into(),
            kind: FieldErrorKind::Required,
            message: if msg == "Required value" {
                String::new()
            } else {
                msg.into()
            },
        });
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count()
        != 1
    {
        errors.push(FieldError {
            field: "spec.versions".into(),
            kind: FieldErrorKind::Invalid(format!("{}", Value::Array(versions.clone()))),
            message: "must have exactly one version marked as storage version".into(),
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &info.qualified_kind(),
            &info.group,
            &info.kind,
            name,
            &errors,
        ))
    }
}

impl Scope {
    /// The scope of the main endpoint for `info`.
    pub fn for_main(info: &ResourceInfo) -> Self {
        if info.status_subresource {
            Scope::Main
        } else {
            Scope::MainWithStatus
        }
    }
}

/// Reads a dotted path (`.spec.replicas`).
pub fn get_path<'v>(obj: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = obj;
    for seg in path.trim_start_matches('.').split('.') {
        cur = cur.get(seg)?;
    }
    Some(cur)
}

/// Writes a dotted path, creating objects on the way.
pub fn set_path(obj: &mut Value, path: &str, v: Value) {
    let segs: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let Some((last, parents)) = segs.split_last() else {
        return;
    };
    if !obj.is_object() {
        *obj = json!({});
    }
    let mut cur = obj;
    for seg in parents {
        if !cur.get(*seg).is_some_and(Value::is_object) {
            cur[*seg] = json!({});
        }
        cur = &mut cur[*seg];
    }
    cur[*last] = v;
}

/// The `autoscaling/v1` Scale view of an object.
pub fn scale_of(info: &ResourceInfo, obj: &Value) -> Result<Value, ApiError> {
    let paths = info
        .scale
        .as_ref()
        .ok_or_else(|| ApiError::no_route(&format!("{}/scale", info.plural)))?;
    let spec = get_path(obj, &paths.spec_replicas)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let status = get_path(obj, &paths.status_replicas)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = match &paths.label_selector {
        Some(p) => get_path(obj, p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        None => obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
    };
    let md = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut metadata = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = md.get(f) {
            metadata[f] = v.clone();
        }
    }
    let mut st = json!({"replicas": status});
    if !selector.is_empty() {
        st["selector"] = json!(selector);
    }
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": metadata,
        "spec": {"replicas": spec},
        "status": st,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(m: &str) -> WriteCtx {
        WriteCtx {
            manager: m.into(),
            dry_run: false,
            validation: FieldValidation::Strict,
        }
    }

    #[test]
    fn continue_tokens_round_trip() {
        let t = encode_continue(42, "ns", "a-b.c");
        assert_eq!(
            decode_continue(&t).expect("valid"),
            (42, "ns".into(), "a-b.c".into())
        );
        assert!(decode_continue("garbage").is_err());
    }

    #[test]
    fn update_with_stale_resource_version_conflicts_and_changes_nothing() {
        let store = Store::new(1000);
        let cm = store.resource("", "v1", "configmaps").expect("builtin");
        let created = store
            .create(
                &cm,
                "default",
                json!({"metadata": {"name": "a"}, "data": {"k": "1"}}),
                &ctx("t"),
            )
            .expect("create");
        let mut stale = created.clone();
        stale["data"]["k"] = json!("2");
        store
            .update(&cm, "default", "a", stale.clone(), &ctx("t"), false)
            .expect("first update");
        stale["data"]["k"] = json!("3");
        let err = store
            .update(&cm, "default", "a", stale, &ctx("t"), false)
            .expect_err("stale");
        assert_eq!(err.code, 409);
        assert_eq!(
            store.get(&cm, "default", "a").expect("get")["data"]["k"],
            "2"
        );
    }

    #[test]
    fn generation_moves_only_with_spec() {
        let store = Store::new(1000);
        let d = store
            .resource("apps", "v1", "deployments")
            .expect("builtin");
        let obj = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
        let created = store.create(&d, "default", obj, &ctx("t")).expect("create");
        assert_eq!(created["metadata"]["generation"], 1);
        let mut labelled = created.clone();
        labelled["metadata"]["labels"] = json!({"a": "b"});
        let after_labels = store
            .update(&d, "default", "d", labelled, &ctx("t"), false)
            .expect("labels");
        assert_eq!(after_labels["metadata"]["generation"], 1);
        let mut st = after_labels.clone();
        st["status"] = json!({"replicas": 1});
        let after_status = store
            .update(&d, "default", "d", st, &ctx("t"), true)
            .expect("status");
        assert_eq!(after_status["metadata"]["generation"], 1);
        assert_eq!(after_status["status"]["replicas"], 1);
        let mut spec = after_status.clone();
        spec["spec"]["replicas"] = json!(3);
        spec["status"] = json!({"replicas": 99});
        let after_spec = store
            .update(&d, "default", "d", spec, &ctx("t"), false)
            .expect("spec");
        assert_eq!(after_spec["metadata"]["generation"], 2);
        assert_eq!(
            after_spec["status"]["replicas"], 1,
            "main endpoint ignores status"
        );
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let store = Store::new(1000);
        let cm = store.resource("", "v1", "configmaps").expect("builtin");
        store
            .create(
                &cm,
                "default",
                json!({"metadata": {"name": "f", "finalizers": ["x/y"]}}),
                &ctx("t"),
            )
            .expect("create");
        let lingering = store
            .delete(&cm, "default", "f", &DeleteOpts::default())
            .expect("delete");
        assert!(lingering["metadata"]["deletionTimestamp"].is_string());
        let mut more = lingering.clone();
        more["metadata"]["finalizers"] = json!(["x/y", "new/one"]);
        let err = store
            .update(&cm, "default", "f", more, &ctx("t"), false)
            .expect_err("no new finalizers");
        assert_eq!(err.code, 422);
        let mut done = lingering.clone();
        done["metadata"]["finalizers"] = json!([]);
        store
            .update(&cm, "default", "f", done, &ctx("t"), false)
            .expect("remove finalizer");
        assert_eq!(store.get(&cm, "default", "f").expect_err("gone").code, 404);
    }

    #[test]
    fn creating_in_a_missing_namespace_is_not_found() {
        let store = Store::new(1000);
        let cm = store.resource("", "v1", "configmaps").expect("builtin");
        let err = store
            .create(&cm, "nope", json!({"metadata": {"name": "a"}}), &ctx("t"))
            .expect_err("no namespace");
        assert_eq!(
            (err.code, err.message.as_str()),
            (404, "namespaces \"nope\" not found")
        );
        let err = store
            .create(
                &cm,
                "default",
                json!({"metadata": {"name": "Bad_Name"}}),
                &ctx("t"),
            )
            .expect_err("bad name");
        assert_eq!(err.code, 422);
        assert!(
            err.message
                .contains("metadata.name: Invalid value: \"Bad_Name\""),
            "{}",
            err.message
        );
    }
}
