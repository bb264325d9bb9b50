//! A one-shot HTTP/1.1 GET over a fresh loopback connection, bounded in
//! time: enough for health checks and `/metrics` scrapes, with no HTTP
//! client stack behind it (so the load generator's scrapes cost little).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `http://endpoint/path` with `Connection: close`, answering
/// (status, body) with a chunked body decoded. Everything (connect, write,
/// read) must finish within `timeout`.
///
/// # Errors
/// A description of what failed: connect, I/O, a malformed answer or the
/// timeout.
pub async fn get(endpoint: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(endpoint)
            .await
            .map_err(|e| format!("connect {endpoint}: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP response from {endpoint}"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {}", head.lines().next().unwrap_or("")))?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    };
    tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| format!("GET {path} at {endpoint} timed out"))?
}

/// Joins the chunks of a chunked body (stops at the last chunk or at
/// anything malformed).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(dechunk("zz\r\nabc"), "");
    }
}
