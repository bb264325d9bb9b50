//! Request bodies: read under a byte limit (413 past it), parsed as etcd's
//! gateway parses them (one JSON value, an empty body is the empty message,
//! unknown fields skipped), with errors that name the failing field.
//! Streaming endpoints (`/v3/watch`, `/v3/lease/keepalive`) read a body of
//! back-to-back JSON objects one at a time as it arrives.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use serde::de::{DeserializeOwned, IgnoredAny};

use super::error::HttpError;

/// Reads the whole body, refusing more than `limit` bytes.
///
/// # Errors
/// [`HttpError::TooLarge`] past `limit` (checked on Content-Length first),
/// [`HttpError::Body`] when the connection fails mid-body.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, HttpError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(HttpError::TooLarge { limit });
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(HttpError::TooLarge { limit }),
        Err(e) => Err(HttpError::Body(e.to_string())),
    }
}

/// Parses the first JSON value of `b` as `T`; an empty (or blank) body is
/// `T::default()` and anything after the first value is ignored, as
/// grpc-gateway's decoder does.
///
/// # Errors
/// [`HttpError::BadJson`] naming the field that failed.
pub fn parse_json<T: DeserializeOwned + Default>(b: &[u8]) -> Result<T, HttpError> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let mut de = serde_json::Deserializer::from_slice(b);
    serde_path_to_error::deserialize(&mut de).map_err(|e| HttpError::BadJson {
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Back-to-back JSON objects read from a request body as they arrive.
#[derive(Debug)]
pub struct JsonStream {
    body: Body,
    buf: BytesMut,
    /// The body has ended: what is buffered is all there is.
    done: bool,
    /// Most bytes one object may take.
    limit: usize,
}

impl JsonStream {
    pub fn new(body: Body, limit: usize) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            done: false,
            limit,
        }
    }

    /// The next object; `None` once the body ended cleanly.
    ///
    /// # Errors
    /// Bad JSON (naming the field), an object over the limit, a broken
    /// connection.
    pub async fn next<T: DeserializeOwned + Default>(&mut self) -> Option<Result<T, HttpError>> {
        loop {
            let blank = self
                .buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.buf.len());
            self.buf.advance(blank);
            if !self.buf.is_empty() {
                let mut it =
                    serde_json::Deserializer::from_slice(&self.buf).into_iter::<IgnoredAny>();
                match it.next() {
                    // A number or a literal ending where the bytes so far
                    // end may go on in the next chunk ("12" sent as "1",
                    // "2"; "true" followed by junk, which is an error):
                    // wait for it, so what is read never depends on how
                    // the body was cut (objects, arrays and strings end on
                    // their own).
                    Some(Ok(_))
                        if !self.done
                            && it.byte_offset() == self.buf.len()
                            && self.buf.last().is_some_and(u8::is_ascii_alphanumeric) => {}
                    Some(Ok(_)) => {
                        let end = it.byte_offset();
                        let one = self.buf.split_to(end);
                        return Some(parse_json(&one));
                    }
                    // An error where the bytes so far end ("-" or "1e"
                    // before the rest of the number arrives) may be no
                    // error once the next chunk is in: wait, for the same
                    // reason.
                    Some(Err(e)) if !self.done && (e.is_eof() || at_end(&self.buf, &e)) => {}
                    Some(Err(e)) => {
                        return Some(Err(HttpError::BadJson {
                            field: String::new(),
                            message: e.to_string(),
                        }));
                    }
                    None => {}
                }
            }
            if self.done {
                return None;
            }
            if self.buf.len() > self.limit {
                return Some(Err(HttpError::TooLarge { limit: self.limit }));
            }
            match self.body.frame().await {
                None => self.done = true,
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => return Some(Err(HttpError::Body(e.to_string()))),
            }
        }
    }
}

/// Whether serde_json's error `e` is at the last byte of `buf` (its line
/// and column, 1-based, point at the byte it stopped on).
fn at_end(buf: &[u8], e: &serde_json::Error) -> bool {
    let line_start = if e.line() <= 1 {
        0
    } else {
        buf.iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(e.line() - 2)
            .map_or(buf.len(), |(i, _)| i + 1)
    };
    line_start + e.column() >= buf.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookout_proto::pb;

    #[test]
    fn empty_is_default_and_errors_name_fields() {
        let r: pb::RangeRequest = parse_json(b" \n").unwrap();
        assert_eq!(r, pb::RangeRequest::default());
        let r: pb::RangeRequest = parse_json(br#"{"key":"Zm9v","kex":1} trailing"#).unwrap();
        assert_eq!(r.key.as_ref(), b"foo");
        let e = parse_json::<pb::TxnRequest>(br#"{"compare":[{"key":"!!"}]}"#).unwrap_err();
        match &e {
            HttpError::BadJson { field, .. } => assert_eq!(field, "compare[0].key"),
            other => panic!("{other:?}"),
        }
        let e = parse_json::<pb::RangeRequest>(br#"{"limit":"x"}"#).unwrap_err();
        assert!(e.to_string().contains(r#"field "limit""#), "{e}");
        assert!(parse_json::<pb::RangeRequest>(b"{").is_err());
    }

    #[tokio::test]
    async fn stream_splits_objects_across_chunks() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(br#"{"create_request":{"key":"#)),
            Ok(Bytes::from_static(br#""Zm9v"}} {"progress_request":{}}"#)),
            Ok(Bytes::from_static(b"\n{\"cancel_request\"")),
            Ok(Bytes::from_static(br#":{"watch_id":"3"}}"#)),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let mut s = JsonStream::new(body, 1024);
        let mut got = Vec::new();
        while let Some(r) = s.next::<pb::WatchRequest>().await {
            got.push(r.unwrap());
        }
        assert_eq!(got.len(), 3);
        use pb::watch_request::RequestUnion as U;
        assert!(
            matches!(&got[0].request_union, Some(U::CreateRequest(c)) if c.key.as_ref() == b"foo")
        );
        assert!(matches!(&got[1].request_union, Some(U::ProgressRequest(_))));
        assert!(matches!(&got[2].request_union, Some(U::CancelRequest(c)) if c.watch_id == 3));

        let body = Body::from(r#"{"create_request":{}} {"#);
        let mut s = JsonStream::new(body, 1024);
        assert!(s.next::<pb::WatchRequest>().await.unwrap().is_ok());
        assert!(s.next::<pb::WatchRequest>().await.unwrap().is_err());
    }
}
