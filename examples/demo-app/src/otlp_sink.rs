//! The `otlp-sink` role: a tiny OTLP/gRPC trace receiver
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) that prints one JSON line
//! per span it receives, to see a mesh's traces without running Jaeger or a collector:
//!
//! ```text
//! {"trace_id":"…","span_id":"…","parent_span_id":"…","trace_state":"…","name":"…","kind":"server",
//!  "service_name":"waypoint.bookinfo","attributes":{…},"status":"unset",
//!  "start_unix_nano":…,"end_unix_nano":…}
//! ```
//!
//! Ids are lowercase hex (as in `traceparent`); a root span's `parent_span_id` is `""`.
//!
//! It also takes log records (`LogsService/Export`: the proxies' access logs), one line each:
//!
//! ```text
//! {"signal":"log","service_name":"ztunnel","severity":"INFO","body":"connection complete",
//!  "trace_id":"…","span_id":"…","attributes":{…},"time_unix_nano":…}
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ambient_proto::opentelemetry::proto::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use ambient_proto::opentelemetry::proto::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use ambient_proto::opentelemetry::proto::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use ambient_proto::opentelemetry::proto::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use ambient_proto::opentelemetry::proto::common::v1::{AnyValue, KeyValue, any_value};
use ambient_proto::opentelemetry::proto::trace::v1::{Span, span::SpanKind, status::StatusCode};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// Receives spans and writes them, one JSON line each, to `out`.
pub struct OtlpSink<W> {
    out: Arc<Mutex<W>>,
}

impl<W> Clone for OtlpSink<W> {
    fn clone(&self) -> Self {
        OtlpSink {
            out: self.out.clone(),
        }
    }
}

impl<W: Write> OtlpSink<W> {
    pub fn new(out: Arc<Mutex<W>>) -> Self {
        OtlpSink { out }
    }

    fn write(&self, lines: Vec<String>) -> Result<(), tonic::Status> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?;
        for line in lines {
            writeln!(out, "{line}").map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        }
        out.flush()
            .map_err(|e| tonic::Status::unavailable(e.to_string()))
    }
}

#[tonic::async_trait]
impl<W: Write + Send + 'static> LogsService for OtlpSink<W> {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.write(log_lines(&request.into_inner()))?;
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl<W: Write + Send + 'static> TraceService for OtlpSink<W> {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.write(lines(&request.into_inner()))?;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Serves on `listener` until the future is dropped, printing to stdout.
pub async fn serve(listener: TcpListener) -> Result<(), tonic::transport::Error> {
    let sink = OtlpSink::new(Arc::new(Mutex::new(std::io::stdout())));
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .add_service(LogsServiceServer::new(sink))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
        .await
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The JSON line of every span of `request`.
pub fn lines(request: &ExportTraceServiceRequest) -> Vec<String> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for scope in &resource_spans.scope_spans {
            for span in &scope.spans {
                out.push(span_json(span, &service).to_string());
            }
        }
    }
    out
}

/// The JSON line of every log record of `request`.
pub fn log_lines(request: &ExportLogsServiceRequest) -> Vec<String> {
    let mut out = Vec::new();
    for resource_logs in &request.resource_logs {
        let resource = resource_logs
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for scope in &resource_logs.scope_logs {
            for record in &scope.log_records {
                let line = json!({
                    "signal": "log",
                    "service_name": service,
                    "node": resource.get("k8s.node.name").cloned().unwrap_or(Value::Null),
                    "severity": record.severity_text,
                    "body": value(record.body.as_ref()),
                    "trace_id": hex(&record.trace_id),
                    "span_id": hex(&record.span_id),
                    "attributes": attributes(&record.attributes),
                    "time_unix_nano": record.time_unix_nano,
                });
                out.push(line.to_string());
            }
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn span_json(span: &Span, service: &str) -> Value {
    let kind = match SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified) {
        SpanKind::Unspecified => "unspecified",
        SpanKind::Internal => "internal",
        SpanKind::Server => "server",
        SpanKind::Client => "client",
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
    };
    let status = match span
        .status
        .as_ref()
        .and_then(|s| StatusCode::try_from(s.code).ok())
    {
        Some(StatusCode::Ok) => "ok",
        Some(StatusCode::Error) => "error",
        _ => "unset",
    };
    json!({
        "trace_id": hex(&span.trace_id),
        "span_id": hex(&span.span_id),
        "parent_span_id": hex(&span.parent_span_id),
        "trace_state": span.trace_state,
        "name": span.name,
        "kind": kind,
        "service_name": service,
        "attributes": attributes(&span.attributes),
        "status": status,
        "start_unix_nano": span.start_time_unix_nano,
        "end_unix_nano": span.end_time_unix_nano,
    })
}

fn attributes(list: &[KeyValue]) -> Map<String, Value> {
    list.iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect()
}

fn value(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(any_value::Value::StringValue(s)) => Value::from(s.as_str()),
        Some(any_value::Value::BoolValue(b)) => Value::from(*b),
        Some(any_value::Value::IntValue(i)) => Value::from(*i),
        Some(any_value::Value::DoubleValue(d)) => Value::from(*d),
        Some(any_value::Value::BytesValue(b)) => Value::from(hex(b)),
        Some(any_value::Value::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| value(Some(v))).collect())
        }
        Some(any_value::Value::KvlistValue(l)) => Value::Object(attributes(&l.values)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambient_proto::opentelemetry::proto::collector::trace::v1::trace_service_client::TraceServiceClient;
    use ambient_proto::opentelemetry::proto::resource::v1::Resource;
    use ambient_proto::opentelemetry::proto::trace::v1::{ResourceSpans, ScopeSpans, Status};

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
        }
    }

    fn request() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv(
                        "service.name",
                        any_value::Value::StringValue("waypoint.shop".into()),
                    )],
                    dropped_attributes_count: 0,
                }),
                scope_spans: vec![ScopeSpans {
                    scope: None,
                    spans: vec![
                        Span {
                            trace_id: vec![0xab; 16],
                            span_id: vec![1, 2, 3, 4, 5, 6, 7, 8],
                            parent_span_id: vec![0, 0, 0, 0, 0, 0, 0, 9],
                            name: "reviews.shop.svc.cluster.local:9080/*".into(),
                            kind: SpanKind::Server as i32,
                            start_time_unix_nano: 10,
                            end_time_unix_nano: 20,
                            attributes: vec![
                                kv("url.path", any_value::Value::StringValue("/r".into())),
                                kv("http.response.status_code", any_value::Value::IntValue(503)),
                            ],
                            status: Some(Status {
                                message: String::new(),
                                code: StatusCode::Error as i32,
                            }),
                            ..Default::default()
                        },
                        Span {
                            trace_id: vec![0xab; 16],
                            span_id: vec![9; 8],
                            name: "root".into(),
                            ..Default::default()
                        },
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    #[test]
    fn one_line_per_span() {
        let lines = lines(&request());
        assert_eq!(lines.len(), 2);
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["trace_id"], "ab".repeat(16));
        assert_eq!(first["span_id"], "0102030405060708");
        assert_eq!(first["parent_span_id"], "0000000000000009");
        assert_eq!(first["kind"], "server");
        assert_eq!(first["status"], "error");
        assert_eq!(first["service_name"], "waypoint.shop");
        assert_eq!(first["attributes"]["url.path"], "/r");
        assert_eq!(first["attributes"]["http.response.status_code"], 503);
        assert_eq!(first["start_unix_nano"], 10);
        assert_eq!(first["end_unix_nano"], 20);
        let root: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(root["parent_span_id"], "");
        assert_eq!(root["status"], "unset");
    }

    #[test]
    fn one_line_per_log_record() {
        use ambient_proto::opentelemetry::proto::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv(
                            "service.name",
                            any_value::Value::StringValue("ztunnel".into()),
                        ),
                        kv(
                            "k8s.node.name",
                            any_value::Value::StringValue("node-1".into()),
                        ),
                    ],
                    dropped_attributes_count: 0,
                }),
                scope_logs: vec![ScopeLogs {
                    scope: None,
                    log_records: vec![LogRecord {
                        time_unix_nano: 5,
                        severity_text: "ERROR".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(
                                "connection complete".into(),
                            )),
                        }),
                        attributes: vec![kv(
                            "direction",
                            any_value::Value::StringValue("inbound".into()),
                        )],
                        trace_id: vec![0xab; 16],
                        span_id: vec![1; 8],
                        ..Default::default()
                    }],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let lines = log_lines(&request);
        assert_eq!(lines.len(), 1);
        let v: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(v["signal"], "log");
        assert_eq!(v["service_name"], "ztunnel");
        assert_eq!(v["node"], "node-1");
        assert_eq!(v["severity"], "ERROR");
        assert_eq!(v["body"], "connection complete");
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["span_id"], "0101010101010101");
        assert_eq!(v["attributes"]["direction"], "inbound");
        assert_eq!(v["time_unix_nano"], 5);
    }

    #[tokio::test]
    async fn receives_over_grpc() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = OtlpSink::new(out.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mut client = TraceServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        client.export(request()).await.unwrap();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }
}
