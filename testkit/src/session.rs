//! One fixed etcdctl 3.4 session and the normalizer that makes two
//! servers' transcripts comparable.
//!
//! ```text
//!   etcdctl_session(endpoint) ──runs──> put/get/del/txn/compact/watch/lease ...
//!                             <──────── transcript: "$ etcdctl ..." + normalized output
//! ```
//!
//! The transcript keeps what a client relies on (keys, values, revisions,
//! versions, counts, error texts, exit codes) and drops what legitimately
//! differs between two servers: cluster/member IDs, raft term, lease IDs
//! (replaced by `<lease-N>` in order of appearance) and the remaining TTL
//! of a live lease (checked to be plausible, then replaced). Run it
//! against a fresh server: revisions are compared absolutely.
//!
//! Every step is bounded: commands have etcdctl's command timeout, watches
//! are read until an expected line or a deadline, then killed by PID.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long one watch may take to print what the session expects.
const WATCH_DEADLINE: Duration = Duration::from_secs(15);
/// How long a lease of the minimum TTL may take to expire.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(20);

/// Runs the session against a fresh server at `endpoint` ("127.0.0.1:port")
/// and returns the normalized transcript.
pub fn etcdctl_session(endpoint: &str) -> String {
    let mut s = Session::new(endpoint);
    s.kv();
    s.txn();
    s.history_and_compaction();
    s.live_watch();
    s.leases();
    s.out
}

struct Session {
    endpoint: String,
    out: String,
    /// Server lease ID -> placeholder. Keyed by value: etcdctl prints IDs
    /// as zero-padded hex in text and as decimal in JSON.
    leases: HashMap<i64, String>,
}

/// One finished etcdctl run.
struct Run {
    stdout: String,
    stderr: String,
    code: i32,
}

fn base_cmd(endpoint: &str) -> Command {
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s");
    c
}

/// clientv3's retry interceptor logs JSON warnings with random client IDs
/// to stderr; they are noise, the `Error:` line that follows is the answer.
fn keep_stderr_line(l: &str) -> bool {
    !l.starts_with("{\"level\"")
}

impl Session {
    fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            out: String::new(),
            leases: HashMap::new(),
        }
    }

    fn run_raw(&self, args: &[&str], stdin: Option<&str>) -> Run {
        let mut cmd = base_cmd(&self.endpoint);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("run etcdctl (apt-get install etcd-client)");
        if let Some(input) = stdin {
            let mut w = child.stdin.take().expect("stdin");
            w.write_all(input.as_bytes()).expect("write etcdctl stdin");
        }
        let o = child.wait_with_output().expect("etcdctl output");
        Run {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            code: o.status.code().unwrap_or(-1),
        }
    }

    /// Runs etcdctl, records the command and its normalized output.
    fn run(&mut self, args: &[&str]) -> Run {
        self.run_with(args, None)
    }

    fn run_with(&mut self, args: &[&str], stdin: Option<&str>) -> Run {
        let r = self.run_raw(args, stdin);
        self.record(args, &r);
        r
    }

    fn record(&mut self, args: &[&str], r: &Run) {
        let shown: Vec<String> = args.iter().map(|a| self.norm_text(a)).collect();
        self.out
            .push_str(&format!("$ etcdctl {}\n", shown.join(" ")));
        for l in r.stdout.lines() {
            let l = self.norm_line(l);
            self.out.push_str(&l);
            self.out.push('\n');
        }
        for l in r.stderr.lines().filter(|l| keep_stderr_line(l)) {
            let l = self.norm_line(l);
            self.out.push_str(&format!("stderr: {l}\n"));
        }
        if r.code != 0 {
            self.out.push_str(&format!("[exit {}]\n", r.code));
        }
    }

    fn note(&mut self, s: &str) {
        self.out.push_str(&format!("# {s}\n"));
    }

    /// Current revision, from a JSON get's header (not recorded).
    fn revision(&self) -> i64 {
        let r = self.run_raw(&["get", "revision-probe", "-w", "json"], None);
        let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).expect("json get");
        v["header"]["revision"].as_i64().expect("header.revision")
    }

    // === normalization ===

    fn lease_placeholder(&mut self, id: i64) -> String {
        let n = self.leases.len() + 1;
        self.leases
            .entry(id)
            .or_insert_with(|| format!("<lease-{n}>"))
            .clone()
    }

    /// Replaces known lease IDs (hex words) in free text.
    fn norm_text(&self, s: &str) -> String {
        s.split_inclusive(|c: char| !c.is_ascii_hexdigit())
            .map(|tok| {
                let word = tok.trim_end_matches(|c: char| !c.is_ascii_hexdigit());
                let known = i64::from_str_radix(word, 16)
                    .ok()
                    .and_then(|id| self.leases.get(&id));
                match known {
                    Some(p) if !word.is_empty() => format!("{p}{}", &tok[word.len()..]),
                    _ => tok.to_string(),
                }
            })
            .collect()
    }

    fn norm_line(&mut self, l: &str) -> String {
        if l.starts_with('{')
            && let Ok(mut v) = serde_json::from_str::<serde_json::Value>(l)
        {
            self.norm_json(&mut v);
            return v.to_string();
        }
        // "lease 694d... granted with TTL(60s)" introduces an ID.
        if let Some(rest) = l.strip_prefix("lease ")
            && let Some(id) = rest.split(' ').next()
            && rest.contains(" granted with TTL(")
            && let Ok(id) = i64::from_str_radix(id, 16)
        {
            self.lease_placeholder(id);
        }
        let mut l = self.norm_text(l);
        // etcd lists a lease's keys from a Go map: order is random.
        if let Some(start) = l.find("attached keys([")
            && let Some(len) = l[start..].find("])")
        {
            let inner = start + "attached keys([".len();
            let end = start + len;
            let mut keys: Vec<&str> = l[inner..end].split(' ').collect();
            keys.sort_unstable();
            let sorted = keys.join(" ");
            l.replace_range(inner..end, &sorted);
        }
        // "remaining(59s)": the clock differs between runs; keep it honest
        // (0 < remaining <= granted) and drop the exact number.
        if let Some(start) = l.find("remaining(") {
            let num_start = start + "remaining(".len();
            if let Some(len) = l[num_start..].find("s)") {
                let rem: i64 = l[num_start..num_start + len].parse().unwrap_or(-1);
                let granted: i64 = l
                    .split("TTL(")
                    .nth(1)
                    .and_then(|t| t.split('s').next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let verdict = if rem > 0 && rem <= granted {
                    "ok"
                } else {
                    "BAD"
                };
                l.replace_range(num_start..num_start + len, &format!("<{verdict}>"));
            }
        }
        l
    }

    fn norm_json(&mut self, v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::Object(m) => {
                // "header" in responses, "Header" in etcdctl's watch JSON.
                for name in ["header", "Header"] {
                    if let Some(Value::Object(h)) = m.get_mut(name) {
                        h.remove("cluster_id");
                        h.remove("member_id");
                        h.remove("raft_term");
                    }
                }
                for field in ["lease", "ID"] {
                    if let Some(id) = m.get(field).and_then(Value::as_i64)
                        && id != 0
                    {
                        let p = self.lease_placeholder(id);
                        m.insert(field.into(), Value::String(p));
                    }
                }
                for (_, child) in m.iter_mut() {
                    self.norm_json(child);
                }
            }
            Value::Array(a) => {
                for child in a {
                    self.norm_json(child);
                }
            }
            _ => {}
        }
    }

    /// Starts `etcdctl watch args`, runs `during` while it is live, then
    /// records its stdout up to and including the first line for which
    /// `until` holds (or everything it printed by the deadline, or before
    /// it exited), and its stderr.
    fn watch(
        &mut self,
        args: &[&str],
        until: impl Fn(&str) -> bool,
        during: impl FnOnce(&mut Self),
    ) {
        let mut full = vec!["watch"];
        full.extend_from_slice(args);
        let mut child = base_cmd(&self.endpoint)
            .args(&full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl watch");
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                s.push_str(&l);
                s.push('\n');
            }
            s
        });
        during(self);
        let deadline = Instant::now() + WATCH_DEADLINE;
        let mut lines = Vec::new();
        let mut done = false;
        let mut eof = false;
        while !done {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    done = until(&l);
                    lines.push(l);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                // stdout closed: etcdctl is exiting by itself (e.g. the
                // server cancelled the watch).
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    eof = true;
                    break;
                }
            }
        }
        let mut exited = child.try_wait().ok().flatten();
        if eof && exited.is_none() {
            let exit_deadline = Instant::now() + Duration::from_secs(5);
            while exited.is_none() && Instant::now() < exit_deadline {
                std::thread::sleep(Duration::from_millis(10));
                exited = child.try_wait().ok().flatten();
            }
        }
        let _ = child.kill();
        let status = child.wait().ok();
        let _ = reader.join();
        let stderr = err_reader.join().unwrap_or_default();
        let code = match exited {
            Some(st) => st.code().unwrap_or(-1),
            // Still running when we had what we waited for: that is success.
            None if done => 0,
            None => {
                lines.push("<watch deadline passed>".into());
                status.and_then(|s| s.code()).unwrap_or(-1)
            }
        };
        let run = Run {
            stdout: lines.join("\n"),
            stderr,
            code,
        };
        self.record(&full, &run);
    }

    // === the steps ===

    fn kv(&mut self) {
        self.note("puts");
        for (k, v) in [
            ("foo", "bar"),
            ("foo1", "bar1"),
            ("foo2", "bar2"),
            ("foo3", "bar3"),
            ("zoo", "zebra"),
            ("foo", "bar-v2"),
        ] {
            self.run(&["put", k, v]);
        }
        self.run(&["put", "", "empty-key"]);
        self.run(&["put", "foo1", "bar1-v2", "--prev-kv"]);
        self.note("gets");
        self.run(&["get", "foo"]);
        self.run(&["get", "foo", "-w", "json"]);
        self.run(&["get", "foo", "--prefix"]);
        self.run(&["get", "foo", "--prefix", "--keys-only"]);
        self.run(&["get", "foo", "foo2"]);
        self.run(&["get", "foo", "foo2", "-w", "json"]);
        self.run(&["get", "foo", "--prefix", "--limit=2"]);
        self.run(&["get", "foo", "--prefix", "--limit=2", "-w", "json"]);
        self.run(&[
            "get",
            "foo",
            "--prefix",
            "--sort-by=MODIFY",
            "--order=DESCEND",
        ]);
        self.run(&[
            "get",
            "foo",
            "--prefix",
            "--sort-by=VALUE",
            "--order=DESCEND",
            "--keys-only",
        ]);
        self.run(&[
            "get",
            "foo",
            "--prefix",
            "--sort-by=CREATE",
            "--order=ASCEND",
            "-w",
            "json",
        ]);
        self.run(&[
            "get",
            "foo",
            "--prefix",
            "--sort-by=VERSION",
            "--order=DESCEND",
            "--limit=1",
        ]);
        self.run(&[
            "get",
            "foo",
            "--prefix",
            "--sort-by=KEY",
            "--order=DESCEND",
            "--limit=3",
            "-w",
            "json",
        ]);
        self.run(&["get", "foo1", "--from-key"]);
        self.run(&[
            "get",
            "foo1",
            "--from-key",
            "--keys-only",
            "--limit=2",
            "-w",
            "json",
        ]);
        self.run(&["get", "foo", "--print-value-only"]);
        self.run(&["get", "foo", "--rev=2"]);
        self.run(&["get", "foo", "--prefix", "--rev=4", "-w", "json"]);
        self.run(&["get", "foo", "--rev=99"]);
        self.run(&["get", "nothing-here", "-w", "json"]);
        self.note("deletes");
        self.run(&["del", "foo3", "--prev-kv"]);
        self.run(&["del", "foo", "--prefix"]);
        self.run(&["del", "missing"]);
        self.run(&["del", "zz", "--prev-kv", "-w", "json"]);
        self.run(&["get", "foo", "--prefix", "-w", "json"]);
        self.run(&["put", "foo", "again"]);
    }

    fn txn(&mut self) {
        self.note("txn, success branch");
        self.run_with(
            &["txn", "--interactive=false"],
            Some("value(\"foo\") = \"again\"\n\nput t yes\nget foo\n\nput t no\n\n"),
        );
        self.note("txn, failure branch");
        self.run_with(
            &["txn", "--interactive=false", "-w", "json"],
            Some("mod(\"foo\") > \"100\"\nversion(\"zoo\") = \"1\"\n\nput t2 yes\n\nput t2 no\ndel zoo\n\n"),
        );
        self.run(&["get", "t", "--print-value-only"]);
        self.run(&["get", "t2", "--print-value-only"]);
        self.run(&["get", "zoo", "-w", "json"]);
    }

    fn history_and_compaction(&mut self) {
        self.note("watch from the past");
        self.watch(&["--rev=2", "--prefix", "foo"], |l| l == "again", |_| {});
        self.note("compaction");
        self.run(&["compact", "7"]);
        self.run(&["compact", "7"]);
        self.run(&["compact", "1000"]);
        self.run(&["get", "foo", "--rev=6"]);
        self.run(&["get", "foo", "--prefix", "--rev=7", "-w", "json"]);
        self.run(&["get", "foo", "--prefix", "--rev=8"]);
        self.watch(&["--rev=6", "foo"], |_| false, |_| {});
        self.watch(
            &["--rev=7", "--prefix", "foo", "--prev-kv"],
            |l| l == "again",
            |_| {},
        );
    }

    fn live_watch(&mut self) {
        self.note("live watch with concurrent writes");
        let rev = (self.revision() + 1).to_string();
        let rev_flag = format!("--rev={rev}");
        // Starting at the next revision makes the transcript exact even if
        // the watch registers after the first write.
        self.watch(
            &["--prefix", "live/", "--prev-kv", &rev_flag],
            |l| l == "end",
            |s| {
                s.run(&["put", "live/a", "1"]);
                s.run(&["put", "live/b", "2"]);
                s.run(&["put", "live/a", "3"]);
                s.run(&["del", "live/", "--prefix"]);
                s.run(&["put", "live/zz", "end"]);
            },
        );
    }

    fn leases(&mut self) {
        self.note("leases");
        let r = self.run(&["lease", "grant", "60"]);
        let id = r
            .stdout
            .split_whitespace()
            .nth(1)
            .expect("lease id in grant output")
            .to_string();
        let lease_flag = format!("--lease={id}");
        self.run(&["put", &lease_flag, "lk", "lv"]);
        self.run(&["put", &lease_flag, "lk2", "lv2"]);
        self.run(&["get", "lk", "-w", "json"]);
        self.run(&["lease", "timetolive", &id, "--keys"]);
        self.run(&["lease", "keep-alive", "--once", &id]);
        self.run(&["lease", "list"]);
        self.run(&["lease", "revoke", &id]);
        self.run(&["get", "lk", "--prefix", "-w", "json"]);
        self.run(&["lease", "timetolive", &id]);
        self.run(&["lease", "revoke", &id]);
        self.run(&["put", "--lease=1234abcd", "k", "v"]);
        self.run(&["lease", "keep-alive", "--once", "1234abcd"]);
        self.note("expiry");
        let r = self.run(&["lease", "grant", "1"]);
        let id = r
            .stdout
            .split_whitespace()
            .nth(1)
            .expect("lease id in grant output")
            .to_string();
        let lease_flag = format!("--lease={id}");
        let from = format!("--rev={}", self.revision() + 1);
        self.run(&["put", &lease_flag, "exp/a", "1"]);
        self.run(&["put", &lease_flag, "exp/b", "2"]);
        let deadline = Instant::now() + EXPIRY_DEADLINE;
        let mut gone = false;
        while Instant::now() < deadline {
            let r = self.run_raw(&["get", "exp/", "--prefix", "--keys-only"], None);
            if r.code == 0 && r.stdout.trim().is_empty() {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.note(if gone {
            "lease expired"
        } else {
            "LEASE DID NOT EXPIRE"
        });
        self.run(&["get", "exp/", "--prefix", "-w", "json"]);
        self.run(&["lease", "timetolive", &id]);
        // Both keys go in one revision: one watch response with two deletes.
        self.watch(
            &[&from, "--prefix", "exp/", "-w", "json"],
            |l| l.contains("\"type\":1"),
            |_| {},
        );
    }
}
