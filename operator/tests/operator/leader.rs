//! Leader election between two replicas against a mock API server that stores the Lease and,
//! like the real one, refuses a replace whose resourceVersion is stale. Time is paused, so lease
//! expiry is stepped rather than waited for.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use broker_auth_operator::leader::LeaseLock;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube::client::Body;
use serde_json::{Value, json};

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases";
const DURATION: Duration = Duration::from_secs(15);

fn respond(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn failure(status: StatusCode, reason: &str) -> Response<Body> {
    respond(
        status,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": status.as_u16()}),
    )
}

/// One API server shared by every candidate: the stored Lease and a count of its writes.
#[derive(Clone, Default)]
struct LeaseStore {
    lease: Arc<Mutex<Option<Value>>>,
    writes: Arc<Mutex<u32>>,
}

impl LeaseStore {
    fn answer(&self, method: &str, path: &str, body: Value) -> Response<Body> {
        let mut stored = self.lease.lock().unwrap();
        let version = |lease: &Value| {
            lease["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        match (method, path) {
            ("GET", p) if p == format!("{LEASE_PATH}/operator") => match stored.as_ref() {
                Some(lease) => respond(StatusCode::OK, lease),
                None => failure(StatusCode::NOT_FOUND, "NotFound"),
            },
            ("POST", LEASE_PATH) => {
                if stored.is_some() {
                    return failure(StatusCode::CONFLICT, "AlreadyExists");
                }
                let mut lease = body;
                lease["metadata"]["resourceVersion"] = json!("1");
                *stored = Some(lease.clone());
                *self.writes.lock().unwrap() += 1;
                respond(StatusCode::CREATED, &lease)
            }
            ("PUT", p) if p == format!("{LEASE_PATH}/operator") => {
                let current = stored.as_ref().map(version);
                if current != Some(version(&body)) {
                    return failure(StatusCode::CONFLICT, "Conflict");
                }
                let mut lease = body;
                lease["metadata"]["resourceVersion"] = json!((current.unwrap() + 1).to_string());
                *stored = Some(lease.clone());
                *self.writes.lock().unwrap() += 1;
                respond(StatusCode::OK, &lease)
            }
            _ => panic!("unexpected request {method} {path}"),
        }
    }

    /// A client for one candidate, served from this store.
    fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let store = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect().await.unwrap().to_bytes();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                send.send_response(store.answer(&method, &path, body));
            }
        });
        Client::new(service, "ops")
    }

    fn candidate(&self, holder: &str) -> LeaseLock {
        LeaseLock::new(
            Api::<Lease>::namespaced(self.client(), "ops"),
            "operator",
            holder,
            DURATION,
        )
    }

    fn spec(&self) -> Value {
        self.lease.lock().unwrap().as_ref().unwrap()["spec"].clone()
    }

    fn writes(&self) -> u32 {
        *self.writes.lock().unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn a_second_replica_waits_out_a_renewed_lease_and_takes_an_expired_one() {
    let store = LeaseStore::default();
    let first = store.candidate("operator-a");
    let second = store.candidate("operator-b");

    assert!(
        first.try_acquire_or_renew().await.unwrap(),
        "a free lease is taken"
    );
    assert_eq!(store.spec()["holderIdentity"], "operator-a");
    assert_eq!(store.spec()["leaseTransitions"], 0);

    // Held and unexpired: the second candidate neither takes nor writes it.
    let writes = store.writes();
    assert!(!second.try_acquire_or_renew().await.unwrap());
    assert_eq!(store.writes(), writes);

    // The holder keeps renewing; every renewal restarts the second candidate's wait.
    for _ in 0..4 {
        tokio::time::advance(DURATION * 2 / 3).await;
        assert!(first.try_acquire_or_renew().await.unwrap());
        assert!(!second.try_acquire_or_renew().await.unwrap());
    }
    assert_eq!(store.spec()["holderIdentity"], "operator-a");

    // The holder stops renewing (its pod died). Just short of the duration it still holds...
    tokio::time::advance(DURATION - Duration::from_secs(1)).await;
    assert!(!second.try_acquire_or_renew().await.unwrap());
    // ...and once the record has been unchanged for a whole duration, it is taken over.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(second.try_acquire_or_renew().await.unwrap());
    assert_eq!(store.spec()["holderIdentity"], "operator-b");
    assert_eq!(store.spec()["leaseTransitions"], 1);

    // The old holder, coming back, finds the lease taken and does not reclaim it.
    assert!(!first.try_acquire_or_renew().await.unwrap());
    assert_eq!(store.spec()["holderIdentity"], "operator-b");
}

#[tokio::test(start_paused = true)]
async fn a_lease_stamped_long_ago_is_not_taken_before_this_replica_has_watched_it_expire() {
    // Another node's clock may be behind; a renewTime in the past proves nothing on its own.
    let store = LeaseStore::default();
    *store.lease.lock().unwrap() = Some(json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "operator", "namespace": "ops", "resourceVersion": "7"},
        "spec": {
            "holderIdentity": "operator-gone",
            "leaseDurationSeconds": 15,
            "renewTime": "2020-01-01T00:00:00.000000Z",
            "leaseTransitions": 3,
        },
    }));
    let candidate = store.candidate("operator-b");
    assert!(!candidate.try_acquire_or_renew().await.unwrap());
    tokio::time::advance(DURATION).await;
    assert!(candidate.try_acquire_or_renew().await.unwrap());
    assert_eq!(store.spec()["holderIdentity"], "operator-b");
    assert_eq!(store.spec()["leaseTransitions"], 4);
}

#[tokio::test(start_paused = true)]
async fn two_candidates_racing_for_an_expired_lease_produce_one_leader() {
    let store = LeaseStore::default();
    let gone = store.candidate("operator-gone");
    assert!(gone.try_acquire_or_renew().await.unwrap());
    let (b, c) = (store.candidate("operator-b"), store.candidate("operator-c"));
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(!c.try_acquire_or_renew().await.unwrap());
    tokio::time::advance(DURATION).await;

    let (b_won, c_won) = tokio::join!(b.try_acquire_or_renew(), c.try_acquire_or_renew());
    let (b_won, c_won) = (b_won.unwrap(), c_won.unwrap());
    assert!(b_won ^ c_won, "b won: {b_won}, c won: {c_won}");
    let leader = if b_won { "operator-b" } else { "operator-c" };
    assert_eq!(store.spec()["holderIdentity"], leader);
}

#[tokio::test(start_paused = true)]
async fn a_released_lease_is_taken_at_once() {
    let store = LeaseStore::default();
    let first = store.candidate("operator-a");
    let second = store.candidate("operator-b");
    assert!(first.try_acquire_or_renew().await.unwrap());
    assert!(!second.try_acquire_or_renew().await.unwrap());
    first.release().await.unwrap();
    assert!(second.try_acquire_or_renew().await.unwrap());
    assert_eq!(store.spec()["holderIdentity"], "operator-b");
}
