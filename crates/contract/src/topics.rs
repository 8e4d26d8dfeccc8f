use crate::ContractError;

/// The user-directory request kinds, each with a request topic and a reply topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    ExistenceCheck,
    UserCreation,
    Authentication,
    PasswordUpdate,
}

impl RequestKind {
    pub const ALL: [RequestKind; 4] = [
        RequestKind::ExistenceCheck,
        RequestKind::UserCreation,
        RequestKind::Authentication,
        RequestKind::PasswordUpdate,
    ];

    /// The seed's topic name for requests of this kind, before the prefix.
    pub fn request_topic_base(self) -> &'static str {
        match self {
            RequestKind::ExistenceCheck => "user-existence-check",
            RequestKind::UserCreation => "user-creation-request",
            RequestKind::Authentication => "user-authentication-request",
            RequestKind::PasswordUpdate => "user-password-update-request",
        }
    }

    /// The seed's topic name for replies of this kind, before the prefix.
    pub fn reply_topic_base(self) -> &'static str {
        match self {
            RequestKind::ExistenceCheck => "user-existence-response",
            RequestKind::UserCreation => "user-creation-response",
            RequestKind::Authentication => "user-authentication-response",
            RequestKind::PasswordUpdate => "user-password-update-response",
        }
    }

    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::ExistenceCheck => "existence_check",
            RequestKind::UserCreation => "user_creation",
            RequestKind::Authentication => "authentication",
            RequestKind::PasswordUpdate => "password_update",
        }
    }
}

/// What a topic carries, which decides how long Kafka should keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicClass {
    /// User-directory requests (creation requests carry bcrypt hashes).
    Request,
    /// Replies to the API (authentication replies carry bcrypt hashes); read within seconds.
    Reply,
    /// Mail requests (codes, sealed); a code is worth nothing after its few minutes.
    Mail,
    /// Records no consumer could handle, kept for a person to look at.
    DeadLetter,
    /// Security events for compliance and monitoring systems, which may read them late.
    Events,
}

impl TopicClass {
    /// The class of a topic of any deployment, whatever its prefix, by its base name; `None`
    /// for a topic that is not one of broker-auth's.
    pub fn of(topic: &str) -> Option<Self> {
        let is = |base: &str| topic.ends_with(base);
        if RequestKind::ALL.iter().any(|k| is(k.request_topic_base())) {
            Some(Self::Request)
        } else if RequestKind::ALL.iter().any(|k| is(k.reply_topic_base()))
            || instance_of_reply_topic(topic).is_some()
        {
            Some(Self::Reply)
        } else if is(MAIL_TOPIC) {
            Some(Self::Mail)
        } else if is(DEAD_LETTER_TOPIC) {
            Some(Self::DeadLetter)
        } else if is(AUTH_EVENTS_TOPIC) {
            Some(Self::Events)
        } else {
            None
        }
    }
}

const MAIL_TOPIC: &str = "mail-outbox";
const AUTH_EVENTS_TOPIC: &str = "auth-events";
/// Before an API instance's id in the name of its own reply topic.
const INSTANCE_REPLIES: &str = "api-replies.";
/// The longest instance id: a Kubernetes pod name is at most 63 characters.
pub const MAX_INSTANCE_ID_LEN: usize = 63;

/// The id of an API instance, which names its reply topic: 1 to 63 of `a-z`, `0-9` and `-`,
/// starting and ending with a letter or digit (a Kubernetes pod name, which is what the operator
/// gives each instance, fits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

impl InstanceId {
    pub fn parse(id: &str) -> Result<Self, ContractError> {
        let invalid = |reason| ContractError::InvalidInstanceId {
            id: id.to_owned(),
            reason,
        };
        if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN {
            return Err(invalid("must be 1 to 63 characters long"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "only lowercase ASCII letters, digits and '-' are allowed",
            ));
        }
        if id.starts_with('-') || id.ends_with('-') {
            return Err(invalid("must start and end with a letter or digit"));
        }
        Ok(Self(id.to_owned()))
    }

    /// An id made from any text (a host name, say): lowercased, every other character `-`,
    /// cut to leave room for `suffix`, then `-{suffix}`. `suffix` must itself be a valid id.
    pub fn sanitized(text: &str, suffix: &str) -> Result<Self, ContractError> {
        let room = MAX_INSTANCE_ID_LEN.saturating_sub(suffix.len() + 1);
        let base: String = text
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '-'
                }
            })
            .take(room)
            .collect();
        let base = base.trim_matches('-');
        if base.is_empty() {
            Self::parse(suffix)
        } else {
            Self::parse(&format!("{base}-{suffix}"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The instance whose own reply topic `topic` is, of any deployment: the id after the last
/// `api-replies.`, if valid.
fn instance_of_reply_topic(topic: &str) -> Option<InstanceId> {
    let (_, id) = topic.rsplit_once(INSTANCE_REPLIES)?;
    InstanceId::parse(id).ok()
}
const DEAD_LETTER_TOPIC: &str = "dead-letter";
const DBPROC_GROUP: &str = "broker-auth-dbproc";
const MAILER_GROUP: &str = "broker-auth-mailer";

/// Topic and consumer-group names of one deployment.
///
/// Several deployments can share one Kafka cluster by using different prefixes; the operator
/// derives the prefix from the `BrokerAuth`'s namespace and name ([`Topics::for_deployment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics with the given prefix, used verbatim (`""` gives the seed's bare names).
    ///
    /// Kafka topic names allow ASCII letters, digits, `.`, `_` and `-`, up to 249 characters;
    /// the longest base name must still fit behind the prefix.
    pub fn new(prefix: impl Into<String>) -> Result<Self, ContractError> {
        let prefix = prefix.into();
        let invalid = |reason| ContractError::InvalidPrefix {
            prefix: prefix.clone(),
            reason,
        };
        if !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                "only ASCII letters, digits, '.', '_' and '-' are allowed",
            ));
        }
        if prefix.len() > 200 {
            return Err(invalid("longer than 200 characters"));
        }
        Ok(Self { prefix })
    }

    /// The prefix the operator gives a `BrokerAuth` named `name` in `namespace`: `{namespace}.{name}.`.
    pub fn for_deployment(namespace: &str, name: &str) -> Result<Self, ContractError> {
        Self::new(format!("{namespace}.{name}."))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn request(&self, kind: RequestKind) -> String {
        format!("{}{}", self.prefix, kind.request_topic_base())
    }

    pub fn reply(&self, kind: RequestKind) -> String {
        format!("{}{}", self.prefix, kind.reply_topic_base())
    }

    /// The reply topic of one API instance: only that instance reads it, so it reads only the
    /// replies to its own requests however many instances run.
    pub fn instance_replies(&self, instance: &InstanceId) -> String {
        format!("{}{INSTANCE_REPLIES}{instance}", self.prefix)
    }

    /// What every instance reply topic of this deployment starts with.
    pub fn instance_replies_prefix(&self) -> String {
        format!("{}{INSTANCE_REPLIES}", self.prefix)
    }

    /// The instance whose reply topic `topic` is, if it is one of this deployment's.
    pub fn instance_of(&self, topic: &str) -> Option<InstanceId> {
        let id = topic.strip_prefix(&self.instance_replies_prefix())?;
        InstanceId::parse(id).ok()
    }

    /// Whether dbproc may answer to `topic`: one of this deployment's reply topics, shared (as
    /// API versions before instance reply topics asked) or an instance's own.
    pub fn is_reply_topic(&self, topic: &str) -> bool {
        self.instance_of(topic).is_some() || self.reply_topics().iter().any(|t| t == topic)
    }

    /// The request kind whose request topic is `topic`, if any.
    pub fn request_kind_of(&self, topic: &str) -> Option<RequestKind> {
        RequestKind::ALL
            .into_iter()
            .find(|kind| self.request(*kind) == topic)
    }

    pub fn mail(&self) -> String {
        format!("{}{MAIL_TOPIC}", self.prefix)
    }

    pub fn dead_letter(&self) -> String {
        format!("{}{DEAD_LETTER_TOPIC}", self.prefix)
    }

    /// Security events ([`crate::AuthEvent`]), keyed by user.
    pub fn auth_events(&self) -> String {
        format!("{}{AUTH_EVENTS_TOPIC}", self.prefix)
    }

    /// The topics the dbproc consumer group reads requests from (the ones the lag is measured on).
    pub fn request_topics(&self) -> Vec<String> {
        RequestKind::ALL.map(|k| self.request(k)).to_vec()
    }

    pub fn reply_topics(&self) -> Vec<String> {
        RequestKind::ALL.map(|k| self.reply(k)).to_vec()
    }

    /// Every topic of the deployment: requests, replies, mail, dead letters and auth events.
    pub fn all(&self) -> Vec<String> {
        let mut all = self.request_topics();
        all.extend(self.reply_topics());
        all.push(self.mail());
        all.push(self.dead_letter());
        all.push(self.auth_events());
        all
    }

    /// The consumer group of the user-directory workers.
    pub fn dbproc_group(&self) -> String {
        format!("{}{DBPROC_GROUP}", self.prefix)
    }

    /// The consumer group of the mailers (also in dbproc, a separate group so slow SMTP never
    /// holds back directory requests).
    pub fn mailer_group(&self) -> String {
        format!("{}{MAILER_GROUP}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_prefix_keeps_the_seed_names() {
        let topics = Topics::new("").unwrap();
        assert_eq!(
            topics.request(RequestKind::ExistenceCheck),
            "user-existence-check"
        );
        assert_eq!(
            topics.reply(RequestKind::Authentication),
            "user-authentication-response"
        );
        assert_eq!(topics.all().len(), 11);
    }

    #[test]
    fn deployments_get_disjoint_names() {
        let a = Topics::for_deployment("prod", "auth").unwrap();
        let b = Topics::for_deployment("staging", "auth").unwrap();
        assert_eq!(a.dbproc_group(), "prod.auth.broker-auth-dbproc");
        assert!(a.all().iter().all(|t| !b.all().contains(t)));
        assert_eq!(
            a.request_kind_of("prod.auth.user-creation-request"),
            Some(RequestKind::UserCreation)
        );
        assert_eq!(
            a.request_kind_of("staging.auth.user-creation-request"),
            None
        );
    }

    #[test]
    fn every_topic_has_its_class_whatever_the_prefix() {
        let topics = Topics::for_deployment("prod", "auth").unwrap();
        assert_eq!(
            TopicClass::of(&topics.request(RequestKind::UserCreation)),
            Some(TopicClass::Request)
        );
        assert_eq!(
            TopicClass::of(&topics.reply(RequestKind::Authentication)),
            Some(TopicClass::Reply)
        );
        assert_eq!(TopicClass::of(&topics.mail()), Some(TopicClass::Mail));
        assert_eq!(
            TopicClass::of(&topics.dead_letter()),
            Some(TopicClass::DeadLetter)
        );
        assert_eq!(
            TopicClass::of(&topics.auth_events()),
            Some(TopicClass::Events)
        );
        assert!(topics.all().iter().all(|t| TopicClass::of(t).is_some()));
        assert_eq!(TopicClass::of("someone-elses-topic"), None);
    }

    #[test]
    fn each_instance_has_its_own_reply_topic_within_the_deployment() {
        let topics = Topics::for_deployment("prod", "auth").unwrap();
        let other = Topics::for_deployment("staging", "auth").unwrap();
        let pod = InstanceId::parse("auth-api-5d8f9c7b6-x2x9k").unwrap();
        let topic = topics.instance_replies(&pod);
        assert_eq!(topic, "prod.auth.api-replies.auth-api-5d8f9c7b6-x2x9k");
        assert_eq!(topics.instance_of(&topic), Some(pod.clone()));
        assert!(topics.is_reply_topic(&topic));
        assert!(topics.is_reply_topic(&topics.reply(RequestKind::Authentication)));
        assert!(!other.is_reply_topic(&topic));
        assert!(!topics.is_reply_topic(&topics.request(RequestKind::Authentication)));
        assert!(!topics.is_reply_topic("prod.auth.api-replies."));
        assert!(!topics.is_reply_topic("prod.auth.api-replies.UPPER"));
        assert!(!topics.is_reply_topic(&topics.dead_letter()));
        assert_eq!(TopicClass::of(&topic), Some(TopicClass::Reply));
        assert!(!topics.all().contains(&topic));
    }

    #[test]
    fn instance_ids_are_pod_names_and_anything_else_is_refused() {
        for good in ["a", "auth-api-5d8f9c7b6-x2x9k", &"x".repeat(63)] {
            assert!(InstanceId::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", "a/b", &"x".repeat(64)] {
            assert!(InstanceId::parse(bad).is_err(), "{bad}");
        }
        let laptop = InstanceId::sanitized("My.Laptop_local", "1a2b3c4d").unwrap();
        assert_eq!(laptop.as_str(), "my-laptop-local-1a2b3c4d");
        let long = InstanceId::sanitized(&"h".repeat(100), "1a2b3c4d").unwrap();
        assert_eq!(long.as_str().len(), MAX_INSTANCE_ID_LEN);
        assert_eq!(
            InstanceId::sanitized("...", "1a2b3c4d").unwrap().as_str(),
            "1a2b3c4d"
        );
    }

    #[test]
    fn illegal_prefixes_are_refused() {
        assert!(Topics::new("has space").is_err());
        assert!(Topics::new("slash/").is_err());
        assert!(Topics::new("x".repeat(201)).is_err());
    }
}
