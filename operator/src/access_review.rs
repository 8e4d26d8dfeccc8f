//! Authorization of external metric reads, delegated to the kube-apiserver with a
//! SubjectAccessReview (the operator's ServiceAccount is bound to `system:auth-delegator`), as
//! k8s.io/apiserver's delegating authorizer does for metrics-server and KEDA's adapter.
//! Decisions are cached briefly: the HPA controller asks for the same metric every 15 s.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

use crate::error::Result;
use crate::external_metrics::GROUP;
use crate::front_proxy::UserInfo;

/// How long an answer is reused (k8s.io/apiserver's delegating authorizer default).
pub const DECISION_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Question {
    user: UserInfo,
    namespace: String,
    metric: String,
}

pub struct SubjectAccessReviewer {
    api: Api<SubjectAccessReview>,
    decisions: Mutex<HashMap<Question, (bool, Instant)>>,
}

impl SubjectAccessReviewer {
    pub fn new(client: Client) -> Self {
        Self {
            api: Api::all(client),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    /// May `user` list `metric` in `namespace`?
    pub async fn may_read_metric(
        &self,
        user: &UserInfo,
        namespace: &str,
        metric: &str,
    ) -> Result<bool> {
        let question = Question {
            user: user.clone(),
            namespace: namespace.to_owned(),
            metric: metric.to_owned(),
        };
        if let Some(allowed) = self.cached(&question) {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            metadata: ObjectMeta::default(),
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_owned()),
                    // The HPA asks for `…/namespaces/{ns}/{metric}`, a collection: the
                    // kube-apiserver's authorizer sees that GET as `list`, and so does the
                    // aggregator's (k8s.io/apiserver's RequestInfo).
                    verb: Some("list".into()),
                    group: Some(GROUP.into()),
                    version: Some("v1beta1".into()),
                    resource: Some(metric.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            status: None,
        };
        let answered = self.api.create(&PostParams::default(), &review).await?;
        let allowed = answered.status.is_some_and(|s| s.allowed);
        if let Ok(mut decisions) = self.decisions.lock() {
            let now = Instant::now();
            decisions.retain(|_, (_, at)| now.duration_since(*at) < DECISION_TTL);
            decisions.insert(question, (allowed, now));
        }
        Ok(allowed)
    }

    fn cached(&self, question: &Question) -> Option<bool> {
        let decisions = self.decisions.lock().ok()?;
        decisions
            .get(question)
            .filter(|(_, at)| at.elapsed() < DECISION_TTL)
            .map(|(allowed, _)| *allowed)
    }
}
