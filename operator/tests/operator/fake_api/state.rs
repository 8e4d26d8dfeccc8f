//! What the fake API server does to its objects: versions, watch events, creation, deletion with
//! finalizers, the garbage collector, and the controllers it emulates (Deployments, KEDA).

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::requests::{group_of, labels_match};
use super::{DEPLOYMENTS, Event, HPAS, Key, ResponseBody, SCALED_OBJECTS, State, failure};

impl State {
    pub(super) fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    pub(super) fn emit(&mut self, key: &Key, kind: &'static str, object: &Value) {
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
    pub(super) fn write(&mut self, key: &Key, mut object: Value) -> Value {
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

    pub(super) fn keda_creates_hpa(&mut self, key: &Key, scaled_object: &Value) {
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

    pub(super) fn create(&mut self, key: &Key, mut object: Value) -> Value {
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
    pub(super) fn remove(&mut self, key: &Key) {
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

    pub(super) fn admit(&self, key: &Key, object: &Value) -> Option<Response<ResponseBody>> {
        self.webhooks.iter().find_map(|webhook| {
            webhook(&self.objects, key, object)
                .map(|message| failure(StatusCode::FORBIDDEN, "Forbidden", &message))
        })
    }

    pub(super) fn served(&self, resource: &str) -> bool {
        let group = group_of(resource);
        group.is_empty() || self.groups.contains(group)
    }
}

impl State {
    /// `None`: not found. `Some(Some(object))`: marked for deletion, still there. `Some(None)`: gone.
    pub(super) fn delete(&mut self, key: &Key, foreground: bool) -> Option<Option<Value>> {
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
