//! Traces proven end to end: the real `broker-auth-api` and `broker-auth-dbproc` binaries export
//! their spans over OTLP/gRPC to a receiver in this test, and a signup and a verify each come
//! out as one trace crossing api → Kafka → dbproc → Kafka → api, with every parent link right.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is a failed test, with its location.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_auth_e2e::{Client, Mode, Options, PATIENCE, TestEnv, set_arg};
use broker_auth_testkit::process::{ManagedProcess, Stop, free_port};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery";

/// One exported span, as the receiver got it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

/// An OTLP/gRPC trace receiver that keeps every span it is sent.
#[derive(Default, Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| attribute(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    attributes: span
                        .attributes
                        .iter()
                        .filter_map(|kv| Some((kv.key.clone(), string_value(kv.value.as_ref()?)?)))
                        .collect(),
                });
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| string_value(kv.value.as_ref()?))
}

fn string_value(value: &AnyValue) -> Option<String> {
    match value.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text.clone()),
        any_value::Value::IntValue(number) => Some(number.to_string()),
        any_value::Value::BoolValue(flag) => Some(flag.to_string()),
        _ => None,
    }
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let receiver = Self::default();
        let incoming =
            tonic::transport::server::TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .unwrap();
        let addr = incoming.local_addr().unwrap();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .expect("the OTLP receiver runs");
        });
        (receiver, addr)
    }

    fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }
}

/// The spans of one trace, with the lookups the assertions need.
struct Trace(Vec<ReceivedSpan>);

impl Trace {
    /// The one span called `name` of `service` whose parent is `parent`, if it has arrived.
    fn child(&self, parent: &ReceivedSpan, service: &str, name: &str) -> Option<&ReceivedSpan> {
        self.0.iter().find(|span| {
            span.parent_span_id == parent.span_id && span.service == service && span.name == name
        })
    }

    /// The trace drawn as an indented tree from its root, each span with its service.
    fn render(&self, root: &ReceivedSpan) -> String {
        let mut out = String::new();
        self.render_from(root, 0, &mut out);
        out
    }

    fn render_from(&self, span: &ReceivedSpan, depth: usize, out: &mut String) {
        let detail = ["route", "kind", "template"]
            .iter()
            .filter_map(|key| Some(format!("{key}={}", span.attributes.get(*key)?)))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{:indent$}{} [{}] {detail}",
            "",
            span.name,
            span.service,
            indent = depth * 2
        );
        for child in self.0.iter().filter(|s| s.parent_span_id == span.span_id) {
            self.render_from(child, depth + 1, out);
        }
    }
}

/// The directory of the workspace's built binaries: next to this test's own `deps/` directory.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is not built: `cargo nextest run --workspace` builds it, or run \
         `cargo build -p broker-auth-api -p broker-auth-dbproc` first",
        path.display()
    );
    path
}

fn process(
    name: &str,
    program: PathBuf,
    mut args: Vec<String>,
    otlp: SocketAddr,
) -> ManagedProcess {
    args.remove(0);
    let log = std::env::temp_dir().join(format!(
        "broker-auth-traces-{name}-{}.log",
        std::process::id()
    ));
    ManagedProcess::new(name, program, log)
        .args(args)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        // Export every 100 ms instead of every 5 s, so the test does not wait on the batch.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RUST_LOG", "info")
}

/// Waits until `find` sees what it needs in the spans received so far, and returns it.
async fn wait_for<T>(
    receiver: &Receiver,
    what: &str,
    find: impl Fn(&[ReceivedSpan]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let spans = receiver.spans();
        if let Some(found) = find(&spans) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not arrive within {PATIENCE:?}; spans received:\n{}",
            spans
                .iter()
                .map(|s| format!("  {} [{}] {:?}", s.name, s.service, s.attributes))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The trace of the API request to `route`, once every span `complete` needs has arrived.
async fn trace_of(
    receiver: &Receiver,
    route: &str,
    complete: impl Fn(&Trace, &ReceivedSpan) -> bool,
) -> (Trace, ReceivedSpan) {
    wait_for(receiver, &format!("the whole trace of {route}"), |spans| {
        let root = spans.iter().find(|span| {
            span.service == API
                && span.name == "http"
                && span.attributes.get("route").map(String::as_str) == Some(route)
        })?;
        let trace = Trace(
            spans
                .iter()
                .filter(|span| span.trace_id == root.trace_id)
                .cloned()
                .collect(),
        );
        complete(&trace, root).then(|| (trace, root.clone()))
    })
    .await
}

const API: &str = "broker-auth-api";
const DBPROC: &str = "broker-auth-dbproc";

/// handler → directory_rpc (api) → directory_request (dbproc) → directory_reply (dbproc) →
/// directory_reply_received (api), for the directory request `kind`.
fn has_directory_round_trip(trace: &Trace, handler: &ReceivedSpan, kind: &str) -> bool {
    let Some(rpc) = trace.0.iter().find(|span| {
        span.parent_span_id == handler.span_id
            && span.service == API
            && span.name == "directory_rpc"
            && span.attributes.get("kind").map(String::as_str) == Some(kind)
    }) else {
        return false;
    };
    trace
        .child(rpc, DBPROC, "directory_request")
        .and_then(|handling| trace.child(handling, DBPROC, "directory_reply"))
        .and_then(|reply| trace.child(reply, API, "directory_reply_received"))
        .is_some()
}

/// handler → mail_enqueue (api) → mail (dbproc) → smtp_send (dbproc).
fn has_mail_path(trace: &Trace, handler: &ReceivedSpan) -> bool {
    trace
        .child(handler, API, "mail_enqueue")
        .and_then(|enqueue| trace.child(enqueue, DBPROC, "mail"))
        .and_then(|mail| trace.child(mail, DBPROC, "smtp_send"))
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_and_verify_are_each_one_trace_across_api_kafka_and_dbproc() {
    let (receiver, otlp) = Receiver::start().await;
    let env = TestEnv::services_only(Mode::Distributed, Options::default()).await;

    let dbproc_metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut args = env.dbproc_args();
    set_arg(&mut args, "--metrics-listen", &dbproc_metrics.to_string());
    let mut dbproc = process("dbproc", binary("broker-auth-dbproc"), args, otlp);
    dbproc
        .start_listening(dbproc_metrics, PATIENCE)
        .await
        .unwrap();
    broker_auth_e2e::wait_until_ok(&format!("http://{dbproc_metrics}/readyz")).await;

    let api_addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let mut args = env.api_args();
    set_arg(&mut args, "--listen", &api_addr.to_string());
    let mut api = process("api", binary("broker-auth-api"), args, otlp);
    api.start_listening(api_addr, PATIENCE).await.unwrap();
    broker_auth_e2e::wait_until_ok(&format!("http://{api_addr}/readyz")).await;

    let client = Client::for_origin(&format!("http://{api_addr}"));
    let email = env.new_email();
    assert_eq!(client.signup(&email).await.0, StatusCode::ACCEPTED);
    let code = env.code_for(&email).await;
    let (status, body) = client.verify(&email, &code, PASSWORD, "Traced").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // http (the request) → signup (the handler) → the directory round trip and the mail.
    let (signup, root) = trace_of(&receiver, "/api/v1/auth/signup", |trace, http| {
        trace.child(http, API, "signup").is_some_and(|handler| {
            has_directory_round_trip(trace, handler, "existence_check")
                && has_mail_path(trace, handler)
        })
    })
    .await;
    eprintln!("signup's trace:\n{}", signup.render(&root));
    let (verify, root) = trace_of(&receiver, "/api/v1/auth/verify", |trace, http| {
        trace
            .child(http, API, "verify")
            .is_some_and(|handler| has_directory_round_trip(trace, handler, "user_creation"))
    })
    .await;
    eprintln!("verify's trace:\n{}", verify.render(&root));

    api.stop(Stop::Term).await.unwrap();
    dbproc.stop(Stop::Term).await.unwrap();
}
