//! An in-process Kubernetes API server for running the real `Controller` over (paused) time.
//!
//! It keeps objects, and bumps `resourceVersion` and `metadata.generation` as the real one does:
//! a write that changes nothing is not a write (no new version, no watch event), and only a change
//! outside `metadata` and `status` bumps the generation. Lists and watches honour namespaces and
//! equality label selectors, and a watch replays what happened after the version it asks from.
//! Deployments report ready replicas as soon as they are written, a foreground deletion of one
//! finishes after [`FOREGROUND_DELETION`], and removing an object removes what it owns (the
//! garbage collector). A test can add admission webhooks and emulate KEDA.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::channel::mpsc;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// How long the garbage collector takes to delete a Deployment's pods in a foreground deletion.
pub const FOREGROUND_DELETION: Duration = Duration::from_secs(2);

/// How long KEDA takes to remove its HPA after a ScaledObject is deleted.
pub const KEDA_CLEANUP: Duration = Duration::from_secs(1);

/// `group/version/plural` (`v1/configmaps` for the core group), namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(resource: &str, namespace: &str, name: &str) -> Self {
        Self {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

pub const BROKERAUTHS: &str = "auth.cfdbroker.io/v1alpha1/brokerauths";
pub const DEPLOYMENTS: &str = "apps/v1/deployments";
pub const HPAS: &str = "autoscaling/v2/horizontalpodautoscalers";
pub const SCALED_OBJECTS: &str = "keda.sh/v1alpha1/scaledobjects";
pub const SECRETS: &str = "v1/secrets";
pub const CONFIGMAPS: &str = "v1/configmaps";
pub const LEASES: &str = "coordination.k8s.io/v1/leases";

/// An admission webhook: refuses a create or update of `key` with `object` by returning the
/// message the API server answers with. It sees every stored object.
pub type Webhook = Box<dyn Fn(&BTreeMap<Key, Value>, &Key, &Value) -> Option<String> + Send>;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
}

struct Watcher {
    resource: String,
    namespace: Option<String>,
    labels: Vec<(String, String)>,
    events: mpsc::UnboundedSender<Bytes>,
}

struct Event {
    version: u64,
    key: Key,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    version: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Event>,
    watchers: Vec<Watcher>,
    groups: BTreeSet<String>,
    webhooks: Vec<Webhook>,
    requests: Vec<Recorded>,
    /// KEDA's operator: a ScaledObject gets an HPA `keda-hpa-{name}` it owns.
    keda_controller: bool,
    allow_metric_reads: bool,
}

#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl Default for FakeApi {
    fn default() -> Self {
        let state = State {
            groups: [
                "apps",
                "autoscaling",
                "policy",
                "coordination.k8s.io",
                "events.k8s.io",
                "authorization.k8s.io",
                "auth.cfdbroker.io",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            allow_metric_reads: true,
            ..State::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed_unsync())
        .unwrap()
}

fn failure(status: StatusCode, reason: &str, message: &str) -> Response<ResponseBody> {
    respond(
        status,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": reason, "message": message, "code": status.as_u16()}),
    )
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| percent_decode(value))
    })
}

fn label_requirements(selector: Option<String>) -> Vec<(String, String)> {
    selector
        .unwrap_or_default()
        .split(',')
        .filter_map(|requirement| {
            let (key, value) = requirement.split_once('=')?;
            Some((
                key.trim().to_owned(),
                value.trim_start_matches('=').trim().to_owned(),
            ))
        })
        .collect()
}

fn labels_match(object: &Value, requirements: &[(String, String)]) -> bool {
    requirements
        .iter()
        .all(|(key, value)| object["metadata"]["labels"][key].as_str() == Some(value.as_str()))
}

/// Where a request goes: resource, namespace, name and subresource.
struct Route {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group_version, rest) = match segments.first().copied() {
        Some("api") if segments.len() >= 3 => (segments[1].to_owned(), &segments[2..]),
        Some("apis") if segments.len() >= 4 => {
            (format!("{}/{}", segments[1], segments[2]), &segments[3..])
        }
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(Route {
        resource: format!("{group_version}/{}", rest[0]),
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        subresource: rest.get(2).map(|s| (*s).to_owned()),
    })
}

fn group_of(resource: &str) -> &str {
    let parts: Vec<&str> = resource.split('/').collect();
    if parts.len() == 3 { parts[0] } else { "" }
}

/// What differs between two versions of an object, outside metadata and status.
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |value: &Value| {
        let mut value = value.clone();
        if let Some(object) = value.as_object_mut() {
            object.remove("metadata");
            object.remove("status");
        }
        value
    };
    strip(old) != strip(new)
}

impl State {
    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn emit(&mut self, key: &Key, kind: &'static str, object: &Value) {
        let version = self.version;
        let line = Bytes::from(
            serde_json::to_string(&json!({"type": kind, "object": object})).unwrap() + "\n",
        );
        self.watchers.retain(|watcher| {
            let interested = watcher.resource == key.resource
                && watcher
                    .namespace
                    .as_ref()
                    .is_none_or(|ns| *ns == key.namespace)
                && labels_match(object, &watcher.labels);
            !interested || watcher.events.unbounded_send(line.clone()).is_ok()
        });
        self.log.push(Event {
            version,
            key: key.clone(),
            kind,
            object: object.clone(),
        });
    }

    /// Stores `object` under `key` if it differs from what is there. Returns the stored object.
    fn write(&mut self, key: &Key, mut object: Value) -> Value {
        let existing = self.objects.get(key).cloned();
        if key.resource == DEPLOYMENTS {
            // The Deployment controller and kubelet, instantly: every replica is ready.
            let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
            object["status"] = json!({"observedGeneration": generation, "replicas": 1,
                "readyReplicas": 1, "updatedReplicas": 1, "availableReplicas": 1});
        }
        if existing.as_ref() == Some(&object) {
            return object;
        }
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.objects.insert(key.clone(), object.clone());
        let kind = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.emit(key, kind, &object);
        if kind == "ADDED" && key.resource == SCALED_OBJECTS && self.keda_controller {
            // KEDA's finalizer: it removes its HPA before letting the ScaledObject go.
            object["metadata"]["finalizers"] = json!(["finalizer.keda.sh"]);
            self.objects.insert(key.clone(), object.clone());
            self.keda_creates_hpa(key, &object);
        }
        object
    }

    fn keda_creates_hpa(&mut self, key: &Key, scaled_object: &Value) {
        let name = format!("keda-hpa-{}", key.name);
        let hpa = json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": key.namespace,
                "ownerReferences": [{"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                    "name": key.name, "uid": scaled_object["metadata"]["uid"], "controller": true}]},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                "name": scaled_object["spec"]["scaleTargetRef"]["name"]},
                "minReplicas": 1, "maxReplicas": 6},
        });
        self.create(&Key::new(HPAS, &key.namespace, &name), hpa);
    }

    fn create(&mut self, key: &Key, mut object: Value) -> Value {
        let uid = uuid::Uuid::new_v4().to_string();
        object["metadata"]["name"] = json!(key.name);
        if !key.namespace.is_empty() {
            object["metadata"]["namespace"] = json!(key.namespace);
        }
        object["metadata"]["uid"] = json!(uid);
        object["metadata"]["generation"] = json!(1);
        object["metadata"]["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
        self.write(key, object)
    }

    /// Removes an object for good, and (as the garbage collector) whatever it owns.
    fn remove(&mut self, key: &Key) {
        let Some(mut object) = self.objects.remove(key) else {
            return;
        };
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.emit(key, "DELETED", &object);
        let uid = object["metadata"]["uid"].clone();
        let owned: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, child)| {
                child["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|owners| owners.iter().any(|owner| owner["uid"] == uid))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in owned {
            self.remove(&key);
        }
    }

    fn admit(&self, key: &Key, object: &Value) -> Option<Response<ResponseBody>> {
        self.webhooks.iter().find_map(|webhook| {
            webhook(&self.objects, key, object)
                .map(|message| failure(StatusCode::FORBIDDEN, "Forbidden", &message))
        })
    }

    fn served(&self, resource: &str) -> bool {
        let group = group_of(resource);
        group.is_empty() || self.groups.contains(group)
    }
}

/// Applies the JSON patch operations kube's finalizer helper sends (`test`, `add`, `remove`).
fn json_patch(object: &mut Value, operations: &Value) -> Result<(), String> {
    for operation in operations.as_array().ok_or("not a JSON patch")? {
        let path = operation["path"].as_str().ok_or("no path")?;
        let (parent, last) = path.rsplit_once('/').ok_or("bad path")?;
        match operation["op"].as_str() {
            Some("test") => {
                let found = object.pointer(path).cloned().unwrap_or(Value::Null);
                if found != operation["value"] {
                    return Err(format!("test of {path} failed"));
                }
            }
            Some("add") => {
                let target = object.pointer_mut(parent).ok_or("no parent")?;
                match target {
                    Value::Array(items) if last == "-" => items.push(operation["value"].clone()),
                    Value::Object(fields) => {
                        fields.insert(last.to_owned(), operation["value"].clone());
                    }
                    _ => return Err("cannot add there".into()),
                }
            }
            Some("remove") => {
                let target = object.pointer_mut(parent).ok_or("no parent")?;
                match target {
                    Value::Array(items) => {
                        let index: usize = last.parse().map_err(|_| "bad index")?;
                        if index >= items.len() {
                            return Err("no such index".into());
                        }
                        items.remove(index);
                    }
                    Value::Object(fields) => {
                        fields.remove(last);
                    }
                    _ => return Err("cannot remove there".into()),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

/// Server-side apply by one field manager, forced: what it sends replaces what it sent before.
fn server_side_apply(existing: &Value, applied: &Value, status_only: bool) -> Value {
    let mut merged = existing.clone();
    if status_only {
        merged["status"] = applied["status"].clone();
        return merged;
    }
    for (field, value) in applied.as_object().into_iter().flatten() {
        match field.as_str() {
            "status" => {}
            "metadata" => {
                for (meta_field, meta_value) in value.as_object().into_iter().flatten() {
                    if ["labels", "annotations", "ownerReferences", "finalizers"]
                        .contains(&meta_field.as_str())
                    {
                        merged["metadata"][meta_field] = meta_value.clone();
                    }
                }
            }
            _ => merged[field] = value.clone(),
        }
    }
    if spec_changed(existing, &merged) {
        let generation = existing["metadata"]["generation"].as_i64().unwrap_or(0);
        merged["metadata"]["generation"] = json!(generation + 1);
    }
    merged
}

impl FakeApi {
    /// A client talking to this server.
    pub fn client(&self) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(request).await) }
        });
        Client::new(service, "default")
    }

    /// Stores an object as if a user had created it; returns it as stored.
    pub fn insert(&self, resource: &str, object: Value) -> Value {
        let key = Key::new(
            resource,
            object["metadata"]["namespace"].as_str().unwrap_or_default(),
            object["metadata"]["name"].as_str().unwrap(),
        );
        self.state.lock().unwrap().create(&key, object)
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        self.state.lock().unwrap().objects.get(key).cloned()
    }

    /// Changes an object as a user would (`kubectl edit`).
    pub fn update(&self, key: &Key, change: impl FnOnce(&mut Value)) {
        let mut state = self.state.lock().unwrap();
        let existing = state.objects.get(key).cloned().unwrap();
        let mut changed = existing.clone();
        change(&mut changed);
        if spec_changed(&existing, &changed) {
            let generation = existing["metadata"]["generation"].as_i64().unwrap_or(0);
            changed["metadata"]["generation"] = json!(generation + 1);
        }
        state.write(key, changed);
    }

    /// `kubectl delete`: marks the object when it has finalizers, removes it otherwise.
    pub fn delete(&self, key: &Key) {
        let mut state = self.state.lock().unwrap();
        self.delete_and_follow_up(&mut state, key, false);
    }

    /// Deletes, and lets the controllers that hold finalizers finish the deletion later: KEDA
    /// removes its HPA, then the ScaledObject; the garbage collector ends a foreground deletion
    /// of a Deployment once its pods are gone.
    fn delete_and_follow_up(
        &self,
        state: &mut State,
        key: &Key,
        foreground: bool,
    ) -> Option<Option<Value>> {
        let result = state.delete(key, foreground);
        if matches!(result, Some(Some(_))) {
            let later = match key.resource.as_str() {
                SCALED_OBJECTS if state.keda_controller => Some(KEDA_CLEANUP),
                DEPLOYMENTS if foreground => Some(FOREGROUND_DELETION),
                _ => None,
            };
            if let Some(after) = later {
                let api = self.clone();
                let key = key.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let mut state = api.state.lock().unwrap();
                    if key.resource == SCALED_OBJECTS {
                        let hpa = Key::new(HPAS, &key.namespace, &format!("keda-hpa-{}", key.name));
                        state.remove(&hpa);
                    }
                    state.remove(&key);
                });
            }
        }
        result
    }

    pub fn exists(&self, key: &Key) -> bool {
        self.state.lock().unwrap().objects.contains_key(key)
    }

    pub fn keys(&self, resource: &str) -> Vec<Key> {
        let state = self.state.lock().unwrap();
        state
            .objects
            .keys()
            .filter(|key| key.resource == resource)
            .cloned()
            .collect()
    }

    pub fn add_webhook(&self, webhook: Webhook) {
        self.state.lock().unwrap().webhooks.push(webhook);
    }

    /// Installs KEDA: its API group, its operator (an HPA per ScaledObject) and its admission
    /// webhook, which refuses a ScaledObject whose workload another HPA already scales.
    pub fn install_keda(&self) {
        let mut state = self.state.lock().unwrap();
        state.groups.insert("keda.sh".into());
        state.keda_controller = true;
        state.webhooks.push(Box::new(|objects, key, object| {
            if key.resource != SCALED_OBJECTS {
                return None;
            }
            let target = object["spec"]["scaleTargetRef"]["name"].as_str()?;
            let own_hpa = format!("keda-hpa-{}", key.name);
            objects
                .iter()
                .find(|(other, hpa)| {
                    other.resource == HPAS
                        && other.namespace == key.namespace
                        && other.name != own_hpa
                        && hpa["spec"]["scaleTargetRef"]["name"].as_str() == Some(target)
                })
                .map(|(other, _)| {
                    format!(
                        "admission webhook \"vscaledobject.kb.io\" denied the request: the workload '{target}' of type 'apps/v1.Deployment' is already managed by the hpa '{}'",
                        other.name
                    )
                })
        }));
    }

    /// The HPA controller: every `every`, each HPA's status gets the metric it read, a new value
    /// each time, as under traffic.
    pub fn start_hpa_controller(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let api = self.clone();
        tokio::spawn(async move {
            for sync in 1u64.. {
                tokio::time::sleep(every).await;
                let mut state = api.state.lock().unwrap();
                let hpas: Vec<Key> = state
                    .objects
                    .keys()
                    .filter(|k| k.resource == HPAS)
                    .cloned()
                    .collect();
                for key in hpas {
                    let mut hpa = state.objects[&key].clone();
                    hpa["status"] = json!({"currentReplicas": 1, "desiredReplicas": 1,
                        "currentMetrics": [{"type": "External", "external": {"metric": {"name": "lag"},
                            "current": {"averageValue": sync.to_string()}}}]});
                    state.write(&key, hpa);
                }
            }
        })
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Every version `key` went through, as watch events saw them.
    pub fn history(&self, key: &Key) -> Vec<(String, Value)> {
        let state = self.state.lock().unwrap();
        state
            .log
            .iter()
            .filter(|event| event.key == *key)
            .map(|event| (event.kind.to_owned(), event.object.clone()))
            .collect()
    }

    /// Every watch event of `resource`, in order, with the object's key.
    pub fn events(&self, resource: &str) -> Vec<(String, Key, Value)> {
        let state = self.state.lock().unwrap();
        state
            .log
            .iter()
            .filter(|event| event.key.resource == resource)
            .map(|event| {
                (
                    event.kind.to_owned(),
                    event.key.clone(),
                    event.object.clone(),
                )
            })
            .collect()
    }

    pub async fn handle(&self, request: Request<Body>) -> Response<ResponseBody> {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let content_type = request
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut state = self.state.lock().unwrap();
        state.requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
        });
        if path == "/apis" {
            let groups: Vec<Value> = state
                .groups
                .iter()
                .map(|name| json!({"name": name, "versions": [], "preferredVersion": {"groupVersion": format!("{name}/v1"), "version": "v1"}}))
                .collect();
            return respond(
                StatusCode::OK,
                &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            );
        }
        let Some(route) = route(&path) else {
            return failure(StatusCode::NOT_FOUND, "NotFound", "no such path");
        };
        if !state.served(&route.resource) {
            return failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        match (method.as_str(), &route.name) {
            ("GET", None) if query_param(&query, "watch").as_deref() == Some("true") => {
                let (events, stream) = mpsc::unbounded();
                let since: u64 = query_param(&query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let labels = label_requirements(query_param(&query, "labelSelector"));
                for event in state.log.iter().filter(|event| {
                    event.version > since
                        && event.key.resource == route.resource
                        && route
                            .namespace
                            .as_ref()
                            .is_none_or(|ns| *ns == event.key.namespace)
                        && labels_match(&event.object, &labels)
                }) {
                    let line =
                        serde_json::to_string(&json!({"type": event.kind, "object": event.object}))
                            .unwrap();
                    let _ = events.unbounded_send(Bytes::from(line + "\n"));
                }
                state.watchers.push(Watcher {
                    resource: route.resource.clone(),
                    namespace: route.namespace.clone(),
                    labels,
                    events,
                });
                let body =
                    StreamBody::new(stream.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))));
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(body.boxed_unsync())
                    .unwrap()
            }
            ("GET", None) => {
                let labels = label_requirements(query_param(&query, "labelSelector"));
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(key, object)| {
                        key.resource == route.resource
                            && route
                                .namespace
                                .as_ref()
                                .is_none_or(|ns| *ns == key.namespace)
                            && labels_match(object, &labels)
                    })
                    .map(|(_, object)| object.clone())
                    .collect();
                respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "List",
                            "metadata": {"resourceVersion": state.version.to_string()}, "items": items}),
                )
            }
            ("GET", Some(name)) => {
                let key = Key::new(
                    &route.resource,
                    route.namespace.as_deref().unwrap_or(""),
                    name,
                );
                match state.objects.get(&key) {
                    // The operator reads Secrets' metadata only.
                    Some(object) if !path.contains("/secrets/") => respond(StatusCode::OK, object),
                    Some(object) => respond(
                        StatusCode::OK,
                        &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": object["metadata"]}),
                    ),
                    None => failure(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{name} not found"),
                    ),
                }
            }
            ("PATCH", Some(name)) => {
                let key = Key::new(
                    &route.resource,
                    route.namespace.as_deref().unwrap_or(""),
                    name,
                );
                let status_only = route.subresource.as_deref() == Some("status");
                let existing = state.objects.get(&key).cloned();
                let patched = if content_type.contains("apply-patch") {
                    match &existing {
                        Some(existing) => server_side_apply(existing, &body, status_only),
                        None if status_only => {
                            return failure(StatusCode::NOT_FOUND, "NotFound", "not found");
                        }
                        None => {
                            if let Some(refused) = state.admit(&key, &body) {
                                return refused;
                            }
                            let created = state.create(&key, body);
                            return respond(StatusCode::CREATED, &created);
                        }
                    }
                } else {
                    let Some(existing) = existing.clone() else {
                        return failure(StatusCode::NOT_FOUND, "NotFound", "not found");
                    };
                    let mut patched = existing.clone();
                    if content_type.contains("json-patch") {
                        if let Err(message) = json_patch(&mut patched, &body) {
                            return failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &message);
                        }
                    } else {
                        json_merge(&mut patched, &body);
                    }
                    if spec_changed(&existing, &patched) && !status_only {
                        let generation = existing["metadata"]["generation"].as_i64().unwrap_or(0);
                        patched["metadata"]["generation"] = json!(generation + 1);
                    }
                    patched
                };
                if let Some(refused) = state.admit(&key, &patched) {
                    return refused;
                }
                let deleting = patched["metadata"]["deletionTimestamp"].is_string();
                let no_finalizers = patched["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty);
                let stored = state.write(&key, patched);
                if deleting && no_finalizers {
                    state.remove(&key);
                }
                respond(StatusCode::OK, &stored)
            }
            ("POST", None) => {
                if route.resource.ends_with("/subjectaccessreviews") {
                    let mut review = body.clone();
                    review["status"] = json!({"allowed": state.allow_metric_reads});
                    return respond(StatusCode::CREATED, &review);
                }
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        format!(
                            "{}{}",
                            body["metadata"]["generateName"]
                                .as_str()
                                .unwrap_or("object-"),
                            state.version + 1
                        )
                    });
                let key = Key::new(
                    &route.resource,
                    route.namespace.as_deref().unwrap_or(""),
                    &name,
                );
                if state.objects.contains_key(&key) {
                    return failure(StatusCode::CONFLICT, "AlreadyExists", "already exists");
                }
                if let Some(refused) = state.admit(&key, &body) {
                    return refused;
                }
                let created = state.create(&key, body);
                respond(StatusCode::CREATED, &created)
            }
            ("PUT", Some(name)) => {
                let key = Key::new(
                    &route.resource,
                    route.namespace.as_deref().unwrap_or(""),
                    name,
                );
                let Some(existing) = state.objects.get(&key).cloned() else {
                    return failure(StatusCode::NOT_FOUND, "NotFound", "not found");
                };
                if existing["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] {
                    return failure(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified",
                    );
                }
                if let Some(refused) = state.admit(&key, &body) {
                    return refused;
                }
                let mut replaced = body.clone();
                replaced["metadata"]["uid"] = existing["metadata"]["uid"].clone();
                let stored = state.write(&key, replaced);
                respond(StatusCode::OK, &stored)
            }
            ("DELETE", Some(name)) => {
                let key = Key::new(
                    &route.resource,
                    route.namespace.as_deref().unwrap_or(""),
                    name,
                );
                let foreground = body["propagationPolicy"] == "Foreground";
                match self.delete_and_follow_up(&mut state, &key, foreground) {
                    None => failure(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{name} not found"),
                    ),
                    Some(Some(still_there)) => respond(StatusCode::OK, &still_there),
                    Some(None) => respond(
                        StatusCode::OK,
                        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
                    ),
                }
            }
            _ => failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                &format!("{method} {path}"),
            ),
        }
    }
}

impl State {
    /// `None`: not found. `Some(Some(object))`: marked for deletion, still there. `Some(None)`: gone.
    fn delete(&mut self, key: &Key, foreground: bool) -> Option<Option<Value>> {
        let mut object = self.objects.get(key).cloned()?;
        if object["metadata"]["deletionTimestamp"].is_string() {
            return Some(Some(object));
        }
        let mut finalizers: Vec<Value> = object["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if foreground {
            finalizers.push(json!("foregroundDeletion"));
        }
        if finalizers.is_empty() {
            self.remove(key);
            return Some(None);
        }
        object["metadata"]["finalizers"] = json!(finalizers);
        object["metadata"]["deletionTimestamp"] = json!(
            k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        );
        let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
        object["metadata"]["generation"] = json!(generation + 1);
        Some(Some(self.write(key, object)))
    }
}

/// RFC 7386 merge patch.
fn json_merge(target: &mut Value, patch: &Value) {
    match patch.as_object() {
        Some(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            for (key, value) in fields {
                if value.is_null() {
                    if let Some(object) = target.as_object_mut() {
                        object.remove(key);
                    }
                } else {
                    json_merge(&mut target[key], value);
                }
            }
        }
        None => *target = patch.clone(),
    }
}
