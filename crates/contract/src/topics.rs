use crate::ContractError;

/// The three user-directory request kinds, each with a request topic and a reply topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    ExistenceCheck,
    UserCreation,
    Authentication,
}

impl RequestKind {
    pub const ALL: [RequestKind; 3] = [
        RequestKind::ExistenceCheck,
        RequestKind::UserCreation,
        RequestKind::Authentication,
    ];

    /// The seed's topic name for requests of this kind, before the prefix.
    pub fn request_topic_base(self) -> &'static str {
        match self {
            RequestKind::ExistenceCheck => "user-existence-check",
            RequestKind::UserCreation => "user-creation-request",
            RequestKind::Authentication => "user-authentication-request",
        }
    }

    /// The seed's topic name for replies of this kind, before the prefix.
    pub fn reply_topic_base(self) -> &'static str {
        match self {
            RequestKind::ExistenceCheck => "user-existence-response",
            RequestKind::UserCreation => "user-creation-response",
            RequestKind::Authentication => "user-authentication-response",
        }
    }

    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::ExistenceCheck => "existence_check",
            RequestKind::UserCreation => "user_creation",
            RequestKind::Authentication => "authentication",
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
}

impl TopicClass {
    /// The class of a topic of any deployment, whatever its prefix, by its base name; `None`
    /// for a topic that is not one of broker-auth's.
    pub fn of(topic: &str) -> Option<Self> {
        let is = |base: &str| topic.ends_with(base);
        if RequestKind::ALL.iter().any(|k| is(k.request_topic_base())) {
            Some(Self::Request)
        } else if RequestKind::ALL.iter().any(|k| is(k.reply_topic_base())) {
            Some(Self::Reply)
        } else if is(MAIL_TOPIC) {
            Some(Self::Mail)
        } else if is(DEAD_LETTER_TOPIC) {
            Some(Self::DeadLetter)
        } else {
            None
        }
    }
}

const MAIL_TOPIC: &str = "mail-outbox";
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

    /// The topics the dbproc consumer group reads requests from (the ones the lag is measured on).
    pub fn request_topics(&self) -> Vec<String> {
        RequestKind::ALL.map(|k| self.request(k)).to_vec()
    }

    pub fn reply_topics(&self) -> Vec<String> {
        RequestKind::ALL.map(|k| self.reply(k)).to_vec()
    }

    /// Every topic of the deployment: requests, replies, mail and dead letters.
    pub fn all(&self) -> Vec<String> {
        let mut all = self.request_topics();
        all.extend(self.reply_topics());
        all.push(self.mail());
        all.push(self.dead_letter());
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
        assert_eq!(topics.all().len(), 8);
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
        assert!(topics.all().iter().all(|t| TopicClass::of(t).is_some()));
        assert_eq!(TopicClass::of("someone-elses-topic"), None);
    }

    #[test]
    fn illegal_prefixes_are_refused() {
        assert!(Topics::new("has space").is_err());
        assert!(Topics::new("slash/").is_err());
        assert!(Topics::new("x".repeat(201)).is_err());
    }
}
