//! The HTTP layer's one error type and its answer: a JSON body with the
//! gRPC code and the HTTP status etcd 3.4's grpc-gateway uses for it.
//!
//! ```text
//!   /v3/...  {"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}
//!   /v1/...  {"error":"etcdserver: key is not provided","code":3}
//! ```

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tonic::Code;

/// Everything an HTTP request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The etcd API answered with a status (etcd's code and message).
    #[error("{}", .0.message())]
    Api(#[from] tonic::Status),
    /// The JSON body is not the message it should be; `field` is the path
    /// to the offending field ("" when the body itself is malformed).
    #[error("{}", json_message(field, message))]
    BadJson { field: String, message: String },
    /// A query parameter that does not parse.
    #[error("bad query parameter {name:?}: {message}")]
    BadQuery { name: String, message: String },
    /// Something else about the request (no key, a bad header).
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the request body: {0}")]
    Body(String),
    /// The etcd key a `/v1/kv` GET named does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("no such path: {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}; allowed: {allowed}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allowed: &'static str,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
}

fn json_message(field: &str, message: &str) -> String {
    if field.is_empty() || field == "." {
        format!("bad JSON body: {message}")
    } else {
        format!("bad JSON in field {field:?}: {message}")
    }
}

/// grpc-gateway v1's `HTTPStatusFromCode`, which etcd 3.4's gateway uses.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl HttpError {
    /// The gRPC code the body carries.
    pub fn code(&self) -> Code {
        match self {
            HttpError::Api(s) => s.code(),
            HttpError::BadJson { .. }
            | HttpError::BadQuery { .. }
            | HttpError::BadRequest(_)
            | HttpError::TooLarge { .. } => Code::InvalidArgument,
            HttpError::Body(_) => Code::Unknown,
            HttpError::KeyNotFound | HttpError::NotFound(_) => Code::NotFound,
            HttpError::MethodNotAllowed { .. } => Code::Unimplemented,
            HttpError::ShuttingDown => Code::Unavailable,
        }
    }

    /// The HTTP status: etcd's gateway's for API errors, the plain HTTP
    /// meaning for the request's own faults.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::NotFound(_) => StatusCode::NOT_FOUND,
            HttpError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::Body(_) => StatusCode::BAD_REQUEST,
            other => http_status(other.code()),
        }
    }

    /// The answer in the `/v3` (etcd gateway) form.
    pub fn etcd(self) -> Response {
        let message = self.to_string();
        let body = EtcdErrorBody {
            error: &message,
            message: &message,
            code: self.code() as i32,
        };
        json_response(self.status(), &body)
    }

    /// The answer in the `/v1` form.
    pub fn readable(self) -> Response {
        let body = ReadableErrorBody {
            error: &self.to_string(),
            code: self.code() as i32,
        };
        readable_json(self.status(), &body)
    }

    /// The line a stream writes when it fails after its headers went out:
    /// grpc-gateway v1's stream error object.
    pub fn stream_line(&self) -> Vec<u8> {
        let status = self.status();
        let body = StreamError {
            error: StreamErrorInner {
                grpc_code: self.code() as i32,
                http_code: status.as_u16(),
                message: &self.to_string(),
                http_status: status.canonical_reason().unwrap_or(""),
            },
        };
        let mut v = serde_json::to_vec(&body).expect("plain structs serialize");
        v.push(b'\n');
        v
    }
}

/// `/v1` handlers answer in the readable form.
impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        self.readable()
    }
}

#[derive(Serialize)]
struct EtcdErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

#[derive(Serialize)]
struct ReadableErrorBody<'a> {
    error: &'a str,
    code: i32,
}

#[derive(Serialize)]
struct StreamError<'a> {
    error: StreamErrorInner<'a>,
}

#[derive(Serialize)]
struct StreamErrorInner<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

/// A JSON answer with `status`.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("plain structs serialize");
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A `/v1` JSON answer: as [`json_response`], with a final newline so
/// curl's output ends its line.
pub fn readable_json(status: StatusCode, body: &impl Serialize) -> Response {
    let mut bytes = serde_json::to_vec(body).expect("plain structs serialize");
    bytes.push(b'\n');
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `/v3` handlers answer errors in etcd's form.
#[derive(Debug)]
pub struct EtcdError(pub HttpError);

impl<E: Into<HttpError>> From<E> for EtcdError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for EtcdError {
    fn into_response(self) -> Response {
        self.0.etcd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_grpc_gateways() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::OutOfRange, 400),
            (Code::NotFound, 404),
            (Code::FailedPrecondition, 412),
            (Code::ResourceExhausted, 429),
            (Code::Unavailable, 503),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
        ];
        for (code, want) in cases {
            let e = HttpError::Api(tonic::Status::new(code, "x"));
            assert_eq!(e.status().as_u16(), want, "{code:?}");
        }
        assert_eq!(HttpError::TooLarge { limit: 1 }.status().as_u16(), 413);
    }

    #[test]
    fn messages_name_the_field() {
        let e = HttpError::BadJson {
            field: "compare[0].key".into(),
            message: "Invalid symbol 33, offset 0.".into(),
        };
        assert_eq!(
            e.to_string(),
            r#"bad JSON in field "compare[0].key": Invalid symbol 33, offset 0."#
        );
        let line = String::from_utf8(e.stream_line()).unwrap();
        assert!(
            line.starts_with(r#"{"error":{"grpc_code":3,"http_code":400,"#),
            "{line}"
        );
    }
}
