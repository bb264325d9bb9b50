//! Flag values and the command line: durations, PIDs, `LABEL=VALUE` pairs,
//! fresh key prefixes and the shell-quoted command that reproduces a run.
//! Shared by the flags of every command ([`crate::cli`]) and the comparison
//! driver ([`crate::compare`]), so neither needs the other for them.

use std::time::Duration;

/// "10s", "250ms", "2m", "1h" or plain seconds ("1.5").
///
/// # Errors
/// A message naming the bad value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?} (try 10s, 500ms, 2m)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// "1234" or "etcd=1234".
///
/// # Errors
/// A message naming the bad value.
pub fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (label, pid) = match s.split_once('=') {
        Some((l, p)) => (l.to_string(), p),
        None => (format!("pid {s}"), s),
    };
    let pid: u32 = pid.trim().parse().map_err(|_| format!("bad pid {s:?}"))?;
    Ok((label, pid))
}

/// A fresh key prefix for one run.
pub fn fresh_prefix() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("lookout-load/{t}-{}/", std::process::id())
}

/// This process's command line, shell-quoted where needed.
pub fn own_command() -> String {
    std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `a` for a POSIX shell when it holds anything unusual.
pub fn shell_quote(a: &str) -> String {
    if !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b))
    {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// "LABEL=HOST:PORT" or "HOST:PORT" (labelled "target").
pub fn parse_labeled(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((l, ep)) if !l.is_empty() && !ep.is_empty() => Ok((l.to_string(), ep.to_string())),
        Some(_) => Err(format!("bad value {s:?}: use HOST:PORT or LABEL=HOST:PORT")),
        None => Ok(("target".to_string(), s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn pids_parse() {
        assert_eq!(parse_pid("etcd=12").unwrap(), ("etcd".into(), 12));
        assert_eq!(parse_pid("12").unwrap().1, 12);
        assert!(parse_pid("etcd=x").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("--rate=100"), "--rate=100");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
