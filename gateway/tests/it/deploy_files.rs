//! What `deploy/` ships, checked against the binary: every metric the
//! alert rules and the Grafana dashboard name is served (with the type
//! the query needs), every alert has a firing and a quiet promtool case,
//! every flag and `LOOKOUT_*` variable the systemd units, default configs
//! and Kubernetes manifests use is one `lookout` accepts, and the probe
//! paths they use answer on the port they name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lookout_testkit::cluster::{Cluster, Program};
use lookout_testkit::{LookoutProcess, free_port};

use crate::etcd_metrics::{Family, parse, scrape};
use crate::harness::http_get;
use crate::support::lookout_bin;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {ext} in deploy/{dir}");
    v
}

fn yaml_docs(p: &Path) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(p).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .collect()
}

/// Every PromQL expression of the rules and the dashboard, with its file.
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in files("prometheus", ".rules.yml") {
        for doc in yaml_docs(&f) {
            for g in doc["groups"].as_sequence().unwrap() {
                for r in g["rules"].as_sequence().unwrap() {
                    let e = r["expr"].as_str().unwrap().to_string();
                    out.push((f.display().to_string(), e));
                }
            }
        }
    }
    for f in files("grafana", ".json") {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let mut stack = vec![&v];
        while let Some(x) = stack.pop() {
            match x {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("expr", serde_json::Value::String(e)) => {
                                out.push((f.display().to_string(), e.clone()))
                            }
                            // Template variable queries name metrics too.
                            ("definition", serde_json::Value::String(e)) => {
                                out.push((f.display().to_string(), e.clone()))
                            }
                            _ => stack.push(v),
                        }
                    }
                }
                serde_json::Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }
    }
    out
}

/// Identifiers of an expression that look like our metric names.
fn metric_tokens(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            ["etcd_", "grpc_", "lookout_", "process_"]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .map(str::to_string)
        .collect()
}

/// A store (etcd's flags, --metrics=extensive) and a gateway in front of
/// it with its metrics on their own port.
struct Fleet {
    _store: Cluster,
    store_endpoint: String,
    _gateway: LookoutProcess,
    gateway_metrics: String,
    _dir: tempfile::TempDir,
}

async fn fleet() -> Fleet {
    let store = Cluster::start(Program::Lookout(lookout_bin()), 1, &["--metrics=extensive"]).await;
    let store_endpoint = store.members[0].endpoint.clone();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("127.0.0.1:{}", free_port());
    let gateway_metrics = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = vec![
        "gateway".into(),
        format!("--listen-addr={endpoint}"),
        format!("--endpoints={store_endpoint}"),
        format!("--metrics-addr={gateway_metrics}"),
        "--metrics=extensive".into(),
    ];
    let gateway =
        LookoutProcess::spawn(&lookout_bin(), &args, &endpoint, &dir.path().join("gw.log")).await;
    lookout_testkit::wait_for("gateway synced", Duration::from_secs(30), || {
        let ep = gateway_metrics.clone();
        async move { matches!(http_get(&ep, "/readyz").await, Some((200, _))).then_some(()) }
    })
    .await;
    Fleet {
        _store: store,
        store_endpoint,
        _gateway: gateway,
        gateway_metrics,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_name_is_served() {
    let f = fleet().await;
    let mut fams: BTreeMap<String, Family> = parse(&scrape(&f.store_endpoint).await);
    fams.extend(parse(&scrape(&f.gateway_metrics).await));
    let labels: BTreeSet<String> = fams
        .values()
        .flat_map(|f| f.label_sets.iter().flatten().cloned())
        .collect();
    let mut checked = BTreeSet::new();
    for (file, expr) in expressions() {
        for t in metric_tokens(&expr) {
            if labels.contains(&t) {
                continue;
            }
            let found = fams.get(&t).map(|f| f.kind.as_str()).or_else(|| {
                ["_bucket", "_sum", "_count"].iter().find_map(|s| {
                    let base = t.strip_suffix(s)?;
                    let f = fams.get(base)?;
                    (f.kind == "histogram" || (f.kind == "summary" && *s != "_bucket"))
                        .then_some(f.kind.as_str())
                })
            });
            assert!(
                found.is_some(),
                "{file}: {t} (in `{}`) is not served by lookout store or gateway",
                expr.trim()
            );
            // rate() and increase() only make sense on counters and
            // histogram series.
            if expr.contains(&format!("rate({t}")) || expr.contains(&format!("increase({t}")) {
                assert!(
                    matches!(found, Some("counter" | "histogram")),
                    "{file}: rate of {t}, a {found:?}"
                );
            }
            checked.insert(t);
        }
    }
    assert!(checked.len() > 40, "only {} metrics named", checked.len());
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_test_case() {
    let mut alerts = BTreeSet::new();
    for f in files("prometheus", ".rules.yml") {
        for doc in yaml_docs(&f) {
            for g in doc["groups"].as_sequence().unwrap() {
                for r in g["rules"].as_sequence().unwrap() {
                    alerts.insert(r["alert"].as_str().unwrap().to_string());
                }
            }
        }
    }
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for f in files("prometheus/tests", ".yml") {
        for doc in yaml_docs(&f) {
            for t in doc["tests"].as_sequence().unwrap() {
                for a in t["alert_rule_test"].as_sequence().unwrap() {
                    let name = a["alertname"].as_str().unwrap().to_string();
                    let exp = a["exp_alerts"].as_sequence().map_or(0, Vec::len);
                    if exp == 0 {
                        quiet.insert(name);
                    } else {
                        firing.insert(name);
                    }
                }
            }
        }
    }
    for a in &alerts {
        assert!(firing.contains(a), "no promtool case where {a} fires");
        assert!(quiet.contains(a), "no promtool case where {a} stays quiet");
    }
}

/// `lookout ARGS --help`: clap refuses an unknown flag or a bad value
/// before it prints the help, and `--config` files are read first.
fn accepts(args: &[String], env: &[(String, String)]) -> Result<String, String> {
    let out = Command::new(lookout_bin())
        .args(args)
        .arg("--help")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "lookout {args:?} refused: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A `LOOKOUT_<FLAG>` variable must be one `lookout SUB --help` lists,
/// and its value one the flag accepts.
fn check_env(sub: &str, name: &str, value: &str) {
    let help = accepts(&[sub.to_string()], &[]).unwrap();
    assert!(
        help.contains(&format!("[env: {name}=")),
        "`lookout {sub}` has no variable {name}"
    );
    let flag = name
        .strip_prefix("LOOKOUT_")
        .unwrap()
        .to_ascii_lowercase()
        .replace('_', "-");
    accepts(&[sub.to_string(), format!("--{flag}={value}")], &[])
        .unwrap_or_else(|e| panic!("{name}={value}: {e}"));
}

/// The repository file the package installs at `installed`.
fn installed_file(installed: &str) -> String {
    let cargo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    for line in cargo.lines() {
        let parts: Vec<&str> = line.split('"').collect();
        if parts.len() < 4 {
            continue;
        }
        // A target ending in '/' is a directory: the file keeps its name.
        let target = match parts[3].strip_suffix('/') {
            Some(d) => format!("/{d}/{}", parts[1].rsplit('/').next().unwrap()),
            None => format!("/{}", parts[3]),
        };
        if target == installed {
            return Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(parts[1])
                .display()
                .to_string();
        }
    }
    panic!("the package installs nothing at {installed}")
}

#[test]
fn systemd_units_and_configs_use_flags_the_binary_accepts() {
    for unit in files("systemd", ".service") {
        let text = std::fs::read_to_string(&unit).unwrap();
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{}: no {k}=", unit.display()))
        };
        let exec: Vec<&str> = get("ExecStart").split_whitespace().collect();
        assert_eq!(exec[0], "/usr/bin/lookout", "the package's binary");
        let args: Vec<String> = exec[1..]
            .iter()
            .map(|a| {
                if a.starts_with("/etc/lookout/") {
                    installed_file(a)
                } else {
                    a.to_string()
                }
            })
            .collect();
        accepts(&args, &[]).unwrap_or_else(|e| panic!("{}: {e}", unit.display()));
        // Drains on SIGTERM, and leaves room for it.
        assert_eq!(get("KillSignal"), "SIGTERM");
        let stop: u64 = get("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
        assert!(stop >= 20, "{}: TimeoutStopSec {stop}", unit.display());
        let nofile: u64 = get("LimitNOFILE").parse().unwrap();
        assert!(nofile >= 65536, "{}: LimitNOFILE {nofile}", unit.display());
    }
}

/// The containers of the manifests: (file, subcommand, args with
/// `$(VAR)` expanded, LOOKOUT_* variables, probes as (port, path)).
type Container = (
    String,
    String,
    Vec<String>,
    Vec<(String, String)>,
    Vec<(u16, String)>,
);

fn containers() -> Vec<Container> {
    let mut out = Vec::new();
    for f in files("kubernetes", ".yaml") {
        for doc in yaml_docs(&f) {
            let kind = doc["kind"].as_str().unwrap_or("");
            if kind != "StatefulSet" && kind != "Deployment" {
                continue;
            }
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap()
            {
                let cmd: Vec<&str> = c["command"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert_eq!(cmd, ["/usr/bin/lookout"]);
                // Downward-API variables get stand-in values.
                let mut vars = BTreeMap::new();
                let mut lookout_env = Vec::new();
                for e in c["env"].as_sequence().unwrap() {
                    let name = e["name"].as_str().unwrap().to_string();
                    let value = match e["value"].as_str() {
                        Some(v) => v.to_string(),
                        None => match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                            Some("metadata.name") => "lookout-store-0".into(),
                            Some("metadata.namespace") => "default".into(),
                            Some("status.podIP") => "10.0.0.7".into(),
                            other => panic!("{}: unknown env source {other:?}", f.display()),
                        },
                    };
                    if name.starts_with("LOOKOUT_") {
                        lookout_env.push((name.clone(), value.clone()));
                    }
                    vars.insert(name, value);
                }
                let raw: Vec<String> = c["args"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                for name in vars.keys() {
                    let used = name.starts_with("LOOKOUT_")
                        || name == "RUST_LOG"
                        || raw.iter().any(|a| a.contains(&format!("$({name})")));
                    assert!(used, "{}: {name} is set but never used", f.display());
                }
                let args: Vec<String> = raw
                    .iter()
                    .map(|a| {
                        let mut a = a.clone();
                        for (k, v) in &vars {
                            a = a.replace(&format!("$({k})"), v);
                        }
                        assert!(!a.contains("$("), "{}: unexpanded {a}", f.display());
                        a
                    })
                    .collect();
                let ports: BTreeMap<String, u16> = c["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap().to_string(),
                            p["containerPort"].as_u64().unwrap() as u16,
                        )
                    })
                    .collect();
                let mut probes = Vec::new();
                for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                    let g = &c[probe]["httpGet"];
                    let port = ports[g["port"].as_str().unwrap()];
                    probes.push((port, g["path"].as_str().unwrap().to_string()));
                }
                assert!(
                    c["resources"]["requests"]["memory"].is_string(),
                    "{}: memory request",
                    f.display()
                );
                out.push((
                    f.display().to_string(),
                    args[0].clone(),
                    args,
                    lookout_env,
                    probes,
                ));
            }
        }
    }
    out
}

#[test]
fn kubernetes_manifests_use_flags_and_variables_the_binary_accepts() {
    let cs = containers();
    assert_eq!(cs.len(), 2, "a store and a gateway");
    for (file, sub, args, env, probes) in &cs {
        accepts(args, env).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (k, v) in env {
            check_env(sub, k, v);
        }
        // Probes go to the port the process serves them on.
        let flag_port = |flag: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{flag}=")))
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.rsplit(':').next())
                .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
                .unwrap_or_else(|| panic!("{file}: no --{flag}"))
        };
        let served_on = match sub.as_str() {
            "store" => flag_port("listen-client-urls"),
            "gateway" => flag_port("metrics-addr"),
            other => panic!("{file}: unexpected subcommand {other}"),
        };
        for (port, path) in probes {
            assert_eq!(*port, served_on, "{file}: probe {path}");
            assert!(path == "/livez" || path == "/readyz", "{file}: {path}");
        }
    }
}

/// The probe paths the manifests use answer 200 "ok" on a running store
/// and on a gateway's --metrics-addr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_paths_answer_on_a_running_fleet() {
    let f = fleet().await;
    for (_, sub, _, _, probes) in containers() {
        let ep = if sub == "store" {
            &f.store_endpoint
        } else {
            &f.gateway_metrics
        };
        for (_, path) in probes {
            let (code, body) = http_get(ep, &path).await.unwrap();
            assert_eq!((code, body.as_str()), (200, "ok\n"), "{sub} {path}");
        }
    }
}

/// The configurations README's "Operating a fleet" shows are ones the
/// binary accepts (store and gateway YAML), and its Prometheus snippet
/// names the rule files the package installs.
#[test]
fn readme_fleet_configs_are_accepted() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme.find("## Operating a fleet").expect("section");
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let section = &section[..end];
    let dir = tempfile::tempdir().unwrap();
    let mut checked = Vec::new();
    for (i, block) in section.split("```yaml\n").skip(1).enumerate() {
        let yaml = block.split("```").next().unwrap();
        let sub = if yaml.contains("initial-cluster:") {
            "store"
        } else if yaml.contains("listen-addr:") {
            "gateway"
        } else {
            assert!(yaml.contains("scrape_configs:"), "unknown block:\n{yaml}");
            for rules in ["lookout-store.rules.yml", "lookout-gateway.rules.yml"] {
                assert!(yaml.contains(&format!("/usr/share/lookout/prometheus/{rules}")));
                installed_file(&format!("/usr/share/lookout/prometheus/{rules}"));
            }
            continue;
        };
        let f = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        accepts(
            &[sub.into(), "--config".into(), f.display().to_string()],
            &[],
        )
        .unwrap_or_else(|e| panic!("README's {sub} config: {e}"));
        checked.push(sub);
    }
    assert_eq!(checked, ["store", "gateway"]);
}
