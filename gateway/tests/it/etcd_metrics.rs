//! The metric differential: a real etcd 3.4 and `lookout store` (one
//! member, then three), given the same etcdctl workload, scraped, and
//! compared family by family. Every metric etcd's own alert rules and
//! dashboards use must exist on the store with etcd's type and label
//! names; counters the workload moves must move alike. `lookout dev`
//! serves the store's set and the gateway's on one port.
//!
//! Set `LOOKOUT_METRICS_REPORT=FILE` to write the full comparison (every
//! `etcd_*` family etcd exports, present or not) as markdown.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lookout_testkit::cluster::{Cluster, Program};
use lookout_testkit::{LookoutProcess, etcdctl, free_port};

use crate::harness::http_get;
use crate::support::lookout_bin;

/// Metric names used by etcd's alert rules and Grafana dashboards:
/// Documentation/op-guide/etcd3_alert.rules.yml and grafana.json of
/// v3.4.23, contrib/mixin of v3.5.21 and v3.7.1 (read from the etcd
/// repository). `up` is Prometheus' own.
pub const ETCD_REFERENCE: &[(&str, &str)] = &[
    ("etcd_server_has_leader", "rules, dashboards"),
    ("etcd_server_leader_changes_seen_total", "rules, dashboards"),
    ("etcd_server_proposals_failed_total", "rules, dashboards"),
    ("etcd_server_proposals_pending", "dashboards"),
    ("etcd_server_proposals_committed_total", "dashboards"),
    ("etcd_server_proposals_applied_total", "dashboards"),
    ("etcd_server_quota_backend_bytes", "rules (3.5+)"),
    ("etcd_disk_wal_fsync_duration_seconds", "rules, dashboards"),
    (
        "etcd_disk_backend_commit_duration_seconds",
        "rules, dashboards",
    ),
    (
        "etcd_mvcc_db_total_size_in_bytes",
        "rules (3.5+), dashboards",
    ),
    ("etcd_mvcc_db_total_size_in_use_in_bytes", "rules (3.6+)"),
    (
        "etcd_network_peer_round_trip_time_seconds",
        "rules, dashboards",
    ),
    ("etcd_network_peer_sent_failures_total", "rules (3.5+)"),
    ("etcd_network_peer_sent_bytes_total", "dashboards"),
    ("etcd_network_peer_received_bytes_total", "dashboards"),
    ("etcd_network_client_grpc_sent_bytes_total", "dashboards"),
    (
        "etcd_network_client_grpc_received_bytes_total",
        "dashboards",
    ),
    ("grpc_server_started_total", "dashboards"),
    ("grpc_server_handled_total", "rules, dashboards"),
    (
        "grpc_server_handling_seconds",
        "rules (with --metrics=extensive)",
    ),
    ("process_resident_memory_bytes", "dashboards"),
    // v2 HTTP API metrics (3.4's rules): etcd 3.4 exports them only
    // for v2 requests, which it does not serve unless --enable-v2.
    ("etcd_http_failed_total", "rules (v2 API)"),
    ("etcd_http_received_total", "rules (v2 API)"),
    ("etcd_http_successful_duration_seconds", "rules (v2 API)"),
];

/// One metric family of a scrape.
#[derive(Debug, Clone, Default)]
pub struct Family {
    pub kind: String,
    /// The distinct sets of label names of its samples (`le` and
    /// `quantile` left out).
    pub label_sets: BTreeSet<BTreeSet<String>>,
    pub samples: Vec<(BTreeMap<String, String>, f64)>,
}

/// Parses Prometheus text format 0.0.4, panicking on anything a
/// Prometheus server would refuse: a family declared twice, a sample of
/// no declared family, a malformed line.
pub fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut fams: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(
                fams.insert(
                    name.to_string(),
                    Family {
                        kind: kind.to_string(),
                        ..Default::default()
                    }
                )
                .is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect("closing brace"))),
            None => (series, BTreeMap::new()),
        };
        let fam = [
            name,
            name.strip_suffix("_bucket").unwrap_or(name),
            name.strip_suffix("_sum").unwrap_or(name),
            name.strip_suffix("_count").unwrap_or(name),
        ]
        .into_iter()
        .find(|n| fams.contains_key(*n))
        .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"))
        .to_string();
        let f = fams.get_mut(&fam).expect("family");
        let names: BTreeSet<String> = labels
            .keys()
            .filter(|k| *k != "le" && *k != "quantile")
            .cloned()
            .collect();
        f.label_sets.insert(names);
        f.samples.push((labels, value));
    }
    fams
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} not quoted in {s}");
        let mut v = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => v.push(chars.next().expect("escape")),
                '"' => break,
                c => v.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_string(), v);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// The sum of a family's samples whose labels include all of `want`.
pub fn total(f: &BTreeMap<String, Family>, name: &str, want: &[(&str, &str)]) -> f64 {
    let (fam, suffix) = match name.strip_suffix("_count") {
        Some(b) if f.get(b).is_some_and(|x| x.kind == "histogram") => (b, "count"),
        _ => (name, ""),
    };
    let Some(fam) = f.get(fam) else { return 0.0 };
    fam.samples
        .iter()
        .filter(|(l, _)| {
            want.iter().all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
                && (suffix.is_empty() || !l.contains_key("le"))
        })
        .filter(|(l, _)| suffix.is_empty() || !l.contains_key("le"))
        .map(|(_, v)| *v)
        .sum::<f64>()
}

pub async fn scrape(endpoint: &str) -> String {
    let (code, body) = http_get(endpoint, "/metrics").await.expect("scrape");
    assert_eq!(code, 200, "{body}");
    body
}

/// The same etcdctl workload against `endpoint` (puts, a range, a
/// delete, a lease's life, a refused put, a compaction).
fn workload(endpoint: &str, puts: usize) {
    let ok = |args: &[&str]| {
        let o = etcdctl(endpoint, args);
        assert!(o.status.success(), "etcdctl {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    for i in 0..puts {
        ok(&["put", &format!("m/{i}"), "value"]);
    }
    ok(&["get", "m/", "--prefix"]);
    ok(&["del", "m/0"]);
    let grant = ok(&["lease", "grant", "60"]);
    let id = grant
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    ok(&["put", "m/leased", "v", &format!("--lease={id}")]);
    ok(&["lease", "keep-alive", "--once", &id]);
    ok(&["lease", "revoke", &id]);
    // NotFound: a lease that does not exist.
    let o = etcdctl(endpoint, &["put", "m/x", "v", "--lease=1234"]);
    assert!(!o.status.success());
    ok(&["compact", "3"]);
}

/// Compares `etcd` and `lookout` on the reference families present in
/// etcd's scrape; returns the names compared.
fn compare_reference(
    etcd: &BTreeMap<String, Family>,
    lookout: &BTreeMap<String, Family>,
    what: &str,
) -> Vec<&'static str> {
    let mut compared = Vec::new();
    for (name, _) in ETCD_REFERENCE {
        let Some(e) = etcd.get(*name) else { continue };
        let l = lookout
            .get(*name)
            .unwrap_or_else(|| panic!("{what}: etcd exports {name}, lookout does not"));
        assert_eq!(l.kind, e.kind, "{what}: type of {name}");
        assert_eq!(l.label_sets, e.label_sets, "{what}: label names of {name}");
        compared.push(*name);
    }
    compared
}

/// One member each, same workload: the reference families match in type
/// and labels, the `etcd_*` families' label names match wherever both
/// export them, and the counters the workload drives moved alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_exports_etcds_metrics() {
    let mut etcd = Cluster::start(Program::Etcd, 1, &["--metrics=extensive"]).await;
    let mut lk = Cluster::start(Program::Lookout(lookout_bin()), 1, &["--metrics=extensive"]).await;
    let (ee, le) = (
        etcd.members[0].endpoint.clone(),
        lk.members[0].endpoint.clone(),
    );
    let (e0, l0) = (parse(&scrape(&ee).await), parse(&scrape(&le).await));
    const PUTS: usize = 12;
    workload(&ee, PUTS);
    workload(&le, PUTS);
    let (e1, l1) = (parse(&scrape(&ee).await), parse(&scrape(&le).await));

    let compared = compare_reference(&e1, &l1, "one member");
    for must in [
        "etcd_server_has_leader",
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        "etcd_server_quota_backend_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "grpc_server_handling_seconds",
        "etcd_network_client_grpc_received_bytes_total",
    ] {
        assert!(compared.contains(&must), "{must} not compared");
    }
    // Not exported by etcd 3.4 either (v2 API only).
    for v2 in ["etcd_http_failed_total", "etcd_http_received_total"] {
        assert!(!e1.contains_key(v2));
    }
    // Every etcd_* family both export has the same type and labels.
    for (name, e) in e1.iter().filter(|(n, _)| n.starts_with("etcd_")) {
        if let Some(l) = l1.get(name) {
            assert_eq!(l.kind, e.kind, "type of {name}");
            if !e.label_sets.is_empty() && !l.label_sets.is_empty() {
                assert_eq!(l.label_sets, e.label_sets, "labels of {name}");
            }
        }
    }

    // The workload moved both alike.
    let delta = |a: &BTreeMap<String, Family>,
                 b: &BTreeMap<String, Family>,
                 n,
                 w: &[(&str, &str)]| { total(b, n, w) - total(a, n, w) };
    let put_ok = [("grpc_method", "Put"), ("grpc_code", "OK")];
    assert_eq!(
        delta(&e0, &e1, "grpc_server_handled_total", &put_ok),
        PUTS as f64 + 1.0
    );
    assert_eq!(
        delta(&l0, &l1, "grpc_server_handled_total", &put_ok),
        PUTS as f64 + 1.0
    );
    let nf = [("grpc_method", "Put"), ("grpc_code", "NotFound")];
    assert_eq!(delta(&e0, &e1, "grpc_server_handled_total", &nf), 1.0);
    assert_eq!(delta(&l0, &l1, "grpc_server_handled_total", &nf), 1.0);
    // etcdctl sends the same bytes to both.
    assert_eq!(
        delta(
            &l0,
            &l1,
            "etcd_network_client_grpc_received_bytes_total",
            &[]
        ),
        delta(
            &e0,
            &e1,
            "etcd_network_client_grpc_received_bytes_total",
            &[]
        ),
    );
    for name in [
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_backend_commit_duration_seconds_count",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_mvcc_put_total",
    ] {
        assert!(delta(&e0, &e1, name, &[]) > 0.0, "etcd {name}");
        assert!(delta(&l0, &l1, name, &[]) > 0.0, "lookout {name}");
    }
    for (fams, who) in [(&e1, "etcd"), (&l1, "lookout")] {
        assert_eq!(total(fams, "etcd_server_has_leader", &[]), 1.0, "{who}");
        assert_eq!(total(fams, "etcd_server_proposals_failed_total", &[]), 0.0);
        assert_eq!(total(fams, "etcd_server_proposals_pending", &[]), 0.0);
        assert!(total(fams, "etcd_server_leader_changes_seen_total", &[]) >= 1.0);
        assert!(total(fams, "process_resident_memory_bytes", &[]) > 1e6);
    }
    assert_eq!(
        total(&l1, "etcd_server_quota_backend_bytes", &[]),
        total(&e1, "etcd_server_quota_backend_bytes", &[]),
        "the same default quota"
    );
    // Puts that took effect (the refused one did not), on both.
    assert_eq!(
        delta(&l0, &l1, "etcd_mvcc_put_total", &[]),
        PUTS as f64 + 1.0
    );
    assert_eq!(
        delta(&e0, &e1, "etcd_mvcc_put_total", &[]),
        PUTS as f64 + 1.0
    );

    if let Some(path) = std::env::var_os("LOOKOUT_METRICS_REPORT") {
        write_report(std::path::Path::new(&path), &e1, &l1, "one member").unwrap();
    }
    etcd.kill9(0);
    lk.kill9(0);
}

/// Three members each: the peer families (round trips, bytes, and,
/// after a member is killed, send failures) have etcd's labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_export_etcds_peer_metrics() {
    let mut etcd = Cluster::start(Program::Etcd, 3, &["--metrics=extensive"]).await;
    let mut lk = Cluster::start(Program::Lookout(lookout_bin()), 3, &["--metrics=extensive"]).await;
    let el = etcd.wait_leader(Duration::from_secs(30)).await;
    let ll = lk.wait_leader(Duration::from_secs(30)).await;
    let (ee, le) = (
        etcd.members[el].endpoint.clone(),
        lk.members[ll].endpoint.clone(),
    );
    workload(&ee, 5);
    workload(&le, 5);
    // etcd probes its peers' round trip every few seconds.
    let scrape_when = |ep: String, name: &'static str| async move {
        lookout_testkit::wait_for(name, Duration::from_secs(30), || {
            let ep = ep.clone();
            async move {
                let f = parse(&scrape(&ep).await);
                (total(&f, &format!("{name}_count"), &[]) > 0.0
                    || f.get(name)
                        .is_some_and(|x| x.kind != "histogram" && !x.samples.is_empty()))
                .then_some(f)
            }
        })
        .await
    };
    let e1 = scrape_when(ee.clone(), "etcd_network_peer_round_trip_time_seconds").await;
    let l1 = scrape_when(le.clone(), "etcd_network_peer_round_trip_time_seconds").await;
    let compared = compare_reference(&e1, &l1, "three members");
    for must in [
        "etcd_network_peer_round_trip_time_seconds",
        "etcd_network_peer_sent_bytes_total",
        "etcd_network_peer_received_bytes_total",
    ] {
        assert!(compared.contains(&must), "{must} not compared");
    }
    let (e, l) = (
        &e1["etcd_network_active_peers"],
        &l1["etcd_network_active_peers"],
    );
    assert_eq!(
        (l.kind.as_str(), &l.label_sets),
        (e.kind.as_str(), &e.label_sets)
    );
    // A follower dies: the leader counts failed sends to it.
    let ef = (0..3).find(|i| *i != el).unwrap();
    let lf = (0..3).find(|i| *i != ll).unwrap();
    etcd.kill9(ef);
    lk.kill9(lf);
    let e2 = scrape_when(ee, "etcd_network_peer_sent_failures_total").await;
    let l2 = scrape_when(le, "etcd_network_peer_sent_failures_total").await;
    let wait_failures =
        |f: &BTreeMap<String, Family>| total(f, "etcd_network_peer_sent_failures_total", &[]);
    assert!(wait_failures(&e2) > 0.0 && wait_failures(&l2) > 0.0);
    let compared = compare_reference(&e2, &l2, "three members, one killed");
    assert!(compared.contains(&"etcd_network_peer_sent_failures_total"));
    if let Some(path) = std::env::var_os("LOOKOUT_METRICS_REPORT") {
        let p = std::path::PathBuf::from(path).with_extension("three.md");
        write_report(&p, &e2, &l2, "three members, one killed").unwrap();
    }
}

/// `lookout dev` serves the store's `etcd_*` families and the gateway's
/// `lookout_*` ones on its one port, each family once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_the_store_and_gateway_sets_on_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let args: Vec<String> = vec![
        "dev".into(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--listen-client-urls".into(),
        format!("http://{endpoint}"),
    ];
    let dev = LookoutProcess::spawn(
        &lookout_bin(),
        &args,
        &endpoint,
        &dir.path().join("dev.log"),
    )
    .await;
    workload(&dev.endpoint, 3);
    let f = lookout_testkit::wait_for("dev metrics", Duration::from_secs(20), || {
        let ep = dev.endpoint.clone();
        async move {
            let f = parse(&scrape(&ep).await);
            (total(&f, "lookout_cache_revision", &[]) > 0.0).then_some(f)
        }
    })
    .await;
    for name in [
        "etcd_server_has_leader",
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_mvcc_db_total_size_in_bytes",
        "lookout_watchers",
        "lookout_cache_revision_lag",
        "grpc_server_handled_total",
        "process_resident_memory_bytes",
    ] {
        assert!(f.contains_key(name), "dev lacks {name}");
    }
    assert_eq!(total(&f, "etcd_server_has_leader", &[]), 1.0);
    // The gRPC families count the clients of the dev port (the gateway).
    let put_ok = [("grpc_method", "Put"), ("grpc_code", "OK")];
    assert_eq!(total(&f, "grpc_server_handled_total", &put_ok), 4.0);
}

/// Writes every `etcd_*` family of the etcd scrape with Lookout's status.
fn write_report(
    path: &std::path::Path,
    etcd: &BTreeMap<String, Family>,
    lookout: &BTreeMap<String, Family>,
    what: &str,
) -> std::io::Result<()> {
    let reference: BTreeMap<&str, &str> = ETCD_REFERENCE.iter().copied().collect();
    let mut o = format!(
        "# etcd 3.4.23 vs lookout store ({what})\n\n| family | type | labels | used by | lookout |\n|---|---|---|---|---|\n"
    );
    let labels = |f: &Family| {
        f.label_sets
            .iter()
            .map(|s| s.iter().cloned().collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mut same = 0;
    let mut n = 0;
    for (name, e) in etcd.iter().filter(|(n, _)| {
        n.starts_with("etcd_") || n.starts_with("grpc_") || n.starts_with("process_")
    }) {
        n += 1;
        let status = match lookout.get(name) {
            Some(l) if l.kind == e.kind && l.label_sets == e.label_sets => {
                same += 1;
                "same".to_string()
            }
            Some(l) => format!("differs: {} {}", l.kind, labels(l)),
            None => "absent".to_string(),
        };
        let used = reference.get(name.as_str()).copied().unwrap_or("");
        o.push_str(&format!(
            "| `{name}` | {} | {} | {used} | {status} |\n",
            e.kind,
            labels(e)
        ));
    }
    o.push_str(&format!("\n{same} of {n} families exported alike.\n"));
    std::fs::write(path, o)
}
