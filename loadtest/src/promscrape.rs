//! Reading a target's Prometheus `/metrics` (Lookout serves it on its
//! client port over HTTP/1.1), so a run can report what the target itself
//! counted: lists it sent its store, ranges it forwarded, responses written.
//!
//! ```text
//!   run start ──scrape──> before ┐
//!   run end   ──scrape──> after  ┴─> ServerMetrics { after, delta } per label
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One target's metrics at the end of a run, and how much each grew.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerMetrics {
    pub endpoint: String,
    /// Every sample at the end (name with labels -> value).
    pub after: BTreeMap<String, f64>,
    /// `after - before` for samples present both times and changed.
    pub delta: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Parses Prometheus text: `name{labels} value` lines, comments skipped.
pub fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// GET http://`endpoint`/metrics, bounded to 5 s.
///
/// # Errors
/// A description of what failed.
pub async fn scrape(endpoint: &str) -> Scrape {
    let (status, body) =
        lookout_testkit::http1::get(endpoint, "/metrics", Duration::from_secs(5)).await?;
    if status != 200 {
        return Err(format!("/metrics at {endpoint} answered {status}"));
    }
    Ok(parse(&body))
}

/// One scrape: every sample, or why there is none.
type Scrape = Result<BTreeMap<String, f64>, String>;

/// Scrapes taken at the start of a run, to be finished at its end.
#[derive(Debug, Default)]
pub struct Scrapes {
    /// (label, endpoint, scrape at the start).
    before: Vec<(String, String, Scrape)>,
}

impl Scrapes {
    /// Scrapes every `(label, endpoint)` now.
    pub async fn start(endpoints: &[(String, String)]) -> Self {
        let mut before = Vec::new();
        for (label, ep) in endpoints {
            before.push((label.clone(), ep.clone(), scrape(ep).await));
        }
        Self { before }
    }

    /// Scrapes again; returns per label the end values and the growth.
    pub async fn finish(self) -> BTreeMap<String, ServerMetrics> {
        let mut out = BTreeMap::new();
        for (label, ep, before) in self.before {
            let after = scrape(&ep).await;
            let m = match (before, after) {
                (Ok(b), Ok(a)) => ServerMetrics {
                    endpoint: ep,
                    delta: a
                        .iter()
                        .filter_map(|(k, v)| {
                            let d = v - b.get(k)?;
                            (d != 0.0).then(|| (k.clone(), d))
                        })
                        .collect(),
                    after: a,
                    error: None,
                },
                (_, Ok(a)) => ServerMetrics {
                    endpoint: ep,
                    after: a,
                    error: Some("no scrape at the start".into()),
                    ..Default::default()
                },
                (_, Err(e)) => ServerMetrics {
                    endpoint: ep,
                    error: Some(e),
                    ..Default::default()
                },
            };
            out.insert(label, m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_with_labels() {
        let m =
            parse("# HELP x y\n# TYPE x counter\nlookout_a 3\nlookout_b{side=\"client\"} 4.5\n\n");
        assert_eq!(m["lookout_a"], 3.0);
        assert_eq!(m["lookout_b{side=\"client\"}"], 4.5);
        assert_eq!(m.len(), 2);
    }
}
