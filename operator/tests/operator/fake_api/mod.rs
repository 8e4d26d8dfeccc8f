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

mod requests;
mod state;

use requests::{
    json_merge, json_patch, label_requirements, labels_match, query_param, route,
    server_side_apply, spec_changed,
};

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
