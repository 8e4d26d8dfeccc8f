/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] broker_auth_kafka::Error),
    #[error("kafka client: {0}")]
    KafkaClient(#[from] rdkafka::error::KafkaError),
    #[error("could not delete {what} yet: {code}")]
    KafkaDelete {
        what: String,
        code: rdkafka::types::RDKafkaErrorCode,
    },
    #[error("the BrokerAuth has no namespace")]
    MissingNamespace,
    #[error("invalid topic prefix: {0}")]
    Contract(#[from] broker_auth_contract::ContractError),
    #[error("serializing an object failed: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("aggregator authentication: {0}")]
    FrontProxy(String),
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("reading consumer lag: {0}")]
    Lag(String),
    #[error("uninstall: {0}")]
    Uninstall(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Self {
        Error::Kube(error)
    }
}

impl Error {
    /// A bounded label for the failures metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Kafka(_) | Error::KafkaClient(_) | Error::KafkaDelete { .. } => "kafka",
            Error::MissingNamespace => "missing_namespace",
            Error::Contract(_) => "invalid_prefix",
            Error::Serialize(_) => "serialize",
            Error::Finalizer(_) => "finalizer",
            Error::Tls(_) => "tls",
            Error::FrontProxy(_) => "front_proxy",
            Error::Join(_) => "join",
            Error::Lag(_) => "kafka",
            Error::Uninstall(_) => "uninstall",
            Error::Io(_) => "io",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
