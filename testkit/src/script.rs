//! A small script language for etcdctl sessions that must give the same
//! transcript on several servers (real etcd and each Lookout target),
//! and its normalizer.
//!
//! ```text
//!   script (text) ──run_script(endpoint)──> etcdctl processes, in order
//!                 <─────────────────────── transcript: "$ ..." + normalized output
//! ```
//!
//! One command a line; a line starting with `#` is a comment:
//!
//! - `note TEXT`: a `# TEXT` line in the transcript.
//! - `$ ARGS`: runs `etcdctl ARGS` (quotes group words, as a shell's
//!   would) and records its output. Lines that follow starting with `| `
//!   are its standard input.
//! - `bg NAME $ ARGS`: starts `etcdctl ARGS` in the background, stdin open.
//! - `send NAME TEXT`: writes `TEXT` and a newline to its stdin.
//! - `await NAME TEXT`: waits (bounded) until it printed the line `TEXT`.
//! - `stop NAME`: closes its stdin, waits (bounded) for it to exit, kills
//!   it by PID if it did not, and records everything it printed.
//! - `sleep SECONDS`: waits; only for what is about time (token expiry).
//! - `capture VAR N $ ARGS`: as `$ ARGS`, and keeps word `N` (from 0) of
//!   its first output line as `{VAR}` for later lines (a lease ID).
//! - `next VAR $ ARGS`: runs a `-w json` read, unrecorded, and keeps its
//!   header revision plus one as `{VAR}` (a watch from the next revision
//!   sees exactly the writes that follow).
//!
//! Normalized away: the endpoint, cluster/member IDs and raft terms in
//! JSON, lease IDs (`<lease-N>` in order of appearance), and the noise of
//! clientv3's retry warnings (only their `error` is kept, as `warn: ...`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

// parking_lot: no poisoning to unwrap; the reader thread only pushes lines.
use parking_lot::Mutex;

/// Longest a background command may take to print an awaited line, or to
/// exit once stopped.
const AWAIT_DEADLINE: Duration = Duration::from_secs(20);

/// Longest one foreground command may run: etcdctl's own
/// `--command-timeout` is 10 s, so this only fires when a command would
/// never end (a watch that gets no event, a hung dial); it is then killed
/// by PID and recorded as `killed after ...`, and the transcripts differ
/// at once instead of the test hanging until its harness limit.
const RUN_DEADLINE: Duration = Duration::from_secs(30);

/// Waits for `child` at most `limit`, reading its output meanwhile (so a
/// full pipe cannot stall it); past the limit it is killed.
fn wait_bounded(mut child: Child, limit: Duration) -> (String, String, i32) {
    fn drain(r: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let mut killed = false;
    let code = loop {
        match child.try_wait().expect("etcdctl wait") {
            Some(st) => break st.code().unwrap_or(-1),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                killed = true;
                break -1;
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let mut stderr = err.join().unwrap_or_default();
    if killed {
        stderr.push_str(&format!("\nkilled after {limit:?}\n"));
    }
    (stdout, stderr, code)
}

/// Runs `script` against `endpoint` ("127.0.0.1:port") and returns the
/// normalized transcript.
///
/// # Panics
/// A malformed script line, or etcdctl that cannot be started.
pub fn run_script(script: &str, endpoint: &str) -> String {
    let mut r = Runner {
        endpoint: endpoint.to_string(),
        out: String::new(),
        leases: HashMap::new(),
        bg: HashMap::new(),
        vars: HashMap::new(),
    };
    let lines: Vec<&str> = script.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_end();
        i += 1;
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut stdin = Vec::new();
        while i < lines.len() && lines[i].trim_start().starts_with('|') {
            let l = lines[i].trim_start();
            stdin.push(l.strip_prefix("| ").unwrap_or(&l[1..]).to_string());
            i += 1;
        }
        r.step(t, &stdin);
    }
    for name in r.bg.keys().cloned().collect::<Vec<_>>() {
        r.stop(&name);
    }
    r.out
}

struct Background {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Lines printed so far on stdout.
    lines: Arc<Mutex<Vec<String>>>,
    stdout_reader: Option<std::thread::JoinHandle<()>>,
    stderr_reader: Option<std::thread::JoinHandle<String>>,
    args: Vec<String>,
}

struct Runner {
    endpoint: String,
    out: String,
    /// Server lease ID -> placeholder.
    leases: HashMap<i64, String>,
    bg: HashMap<String, Background>,
    /// `{NAME}` values set by `capture` and `next`.
    vars: HashMap<String, String>,
}

/// Splits a command line into words: spaces separate, single or double
/// quotes group (without escapes).
pub fn split_words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    out
}

impl Runner {
    fn cmd(&self, args: &[String]) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg("--command-timeout=10s")
            .args(args);
        c
    }

    fn subst(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (k, v) in &self.vars {
            s = s.replace(&format!("{{{k}}}"), v);
        }
        s
    }

    fn step(&mut self, line: &str, stdin: &[String]) {
        let line = self.subst(line);
        let stdin: Vec<String> = stdin.iter().map(|l| self.subst(l)).collect();
        let (verb, rest) = line.split_once(' ').unwrap_or((&line, ""));
        match verb {
            "note" => self.out.push_str(&format!("# {rest}\n")),
            "$" => {
                self.run(&split_words(rest), &stdin);
            }
            "capture" => {
                let mut it = rest.splitn(3, ' ');
                let (var, n, cmd) = (
                    it.next().expect("capture VAR N $ ARGS"),
                    it.next()
                        .and_then(|n| n.parse::<usize>().ok())
                        .expect("capture VAR N"),
                    it.next()
                        .and_then(|c| c.trim_start().strip_prefix('$'))
                        .expect("capture VAR N $ ARGS"),
                );
                let stdout = self.run(&split_words(cmd), &stdin);
                let word = stdout
                    .lines()
                    .next()
                    .and_then(|l| l.split_whitespace().nth(n))
                    .unwrap_or("<none>")
                    .to_string();
                self.vars.insert(var.to_string(), word);
            }
            "next" => {
                let (var, cmd) = rest.split_once(' ').expect("next VAR $ ARGS");
                let args =
                    split_words(cmd.trim_start().strip_prefix('$').expect("next VAR $ ARGS"));
                let o = self
                    .cmd(&args)
                    .stdin(Stdio::null())
                    .output()
                    .expect("etcdctl");
                let v: serde_json::Value =
                    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
                let rev = v["header"]["revision"].as_i64().unwrap_or(-1);
                self.vars.insert(var.to_string(), (rev + 1).to_string());
            }
            "bg" => {
                let (name, cmd) = rest.split_once(' ').expect("bg NAME $ ARGS");
                let args = cmd.trim_start().strip_prefix('$').expect("bg NAME $ ARGS");
                self.start(name, split_words(args));
            }
            "send" => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let b = self.bg.get_mut(name).expect("send to a started command");
                if let Some(w) = b.stdin.as_mut() {
                    let _ = writeln!(w, "{text}");
                    let _ = w.flush();
                }
            }
            "await" => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                self.await_line(name, text);
            }
            "stop" => self.stop(rest.trim()),
            "sleep" => {
                let s: f64 = rest.trim().parse().expect("sleep SECONDS");
                std::thread::sleep(Duration::from_secs_f64(s));
            }
            other => panic!("unknown script verb {other:?} in {line:?}"),
        }
    }

    /// Runs and records one command; returns its raw stdout.
    fn run(&mut self, args: &[String], stdin: &[String]) -> String {
        let mut cmd = self.cmd(args);
        cmd.stdin(if stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("run etcdctl (apt-get install etcd-client)");
        if let Some(mut w) = child.stdin.take() {
            for l in stdin {
                let _ = writeln!(w, "{l}");
            }
        }
        let (stdout, stderr, code) = wait_bounded(child, RUN_DEADLINE);
        self.record(args, &stdout, &stderr, code);
        stdout
    }

    fn start(&mut self, name: &str, args: Vec<String>) {
        let mut child = self
            .cmd(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcdctl");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let sink = lines.clone();
        let stdout_reader = std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().push(l);
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let stderr_reader = std::thread::spawn(move || {
            let mut s = String::new();
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                s.push_str(&l);
                s.push('\n');
            }
            s
        });
        self.out
            .push_str(&format!("& {}: etcdctl {}\n", name, args.join(" ")));
        self.bg.insert(
            name.to_string(),
            Background {
                stdin: child.stdin.take(),
                child,
                lines,
                stdout_reader: Some(stdout_reader),
                stderr_reader: Some(stderr_reader),
                args,
            },
        );
    }

    fn await_line(&mut self, name: &str, text: &str) {
        let b = self.bg.get_mut(name).expect("await a started command");
        let deadline = Instant::now() + AWAIT_DEADLINE;
        loop {
            if b.lines.lock().iter().any(|l| l == text) {
                return;
            }
            if Instant::now() >= deadline || !matches!(b.child.try_wait(), Ok(None)) {
                self.out
                    .push_str(&format!("<{name} never printed {text:?}>\n"));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self, name: &str) {
        let Some(mut b) = self.bg.remove(name) else {
            panic!("stop of an unknown command {name:?}");
        };
        drop(b.stdin.take());
        let deadline = Instant::now() + AWAIT_DEADLINE;
        let mut code = None;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = b.child.try_wait() {
                code = st.code();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if code.is_none() {
            // Still running (a watch): that is how it ends here.
            let _ = b.child.kill();
            let _ = b.child.wait();
        }
        if let Some(h) = b.stdout_reader.take() {
            let _ = h.join();
        }
        let stderr = b
            .stderr_reader
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stdout = b.lines.lock().join("\n");
        self.out.push_str(&format!("& {name} stopped\n"));
        let args = b.args.clone();
        self.record(&args, &stdout, &stderr, code.unwrap_or(0));
    }

    fn record(&mut self, args: &[String], stdout: &str, stderr: &str, code: i32) {
        let shown: Vec<String> = args.iter().map(|a| self.norm_text(a)).collect();
        self.out
            .push_str(&format!("$ etcdctl {}\n", shown.join(" ")));
        for l in stdout.lines() {
            let l = self.norm_line(l);
            self.out.push_str(&l);
            self.out.push('\n');
        }
        for l in stderr.lines() {
            let l = self.norm_stderr(l);
            self.out.push_str(&format!("stderr: {l}\n"));
        }
        if code != 0 {
            self.out.push_str(&format!("[exit {code}]\n"));
        }
    }

    // === normalization ===

    fn norm_stderr(&mut self, l: &str) -> String {
        if l.starts_with("{\"level\"")
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(l)
        {
            let e = v["error"].as_str().unwrap_or("?");
            return format!("warn: {}", self.norm_text(e));
        }
        self.norm_line(l)
    }

    fn lease_placeholder(&mut self, id: i64) -> String {
        let n = self.leases.len() + 1;
        self.leases
            .entry(id)
            .or_insert_with(|| format!("<lease-{n}>"))
            .clone()
    }

    fn norm_text(&self, s: &str) -> String {
        let s = s.replace(&self.endpoint, "<endpoint>");
        s.split_inclusive(|c: char| !c.is_ascii_hexdigit())
            .map(|tok| {
                let word = tok.trim_end_matches(|c: char| !c.is_ascii_hexdigit());
                let known = i64::from_str_radix(word, 16)
                    .ok()
                    .and_then(|id| self.leases.get(&id));
                match known {
                    Some(p) if !word.is_empty() && word.len() >= 8 => {
                        format!("{p}{}", &tok[word.len()..])
                    }
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
        if let Some(rest) = l.strip_prefix("lease ")
            && let Some(id) = rest.split(' ').next()
            && rest.contains(" granted with TTL(")
            && let Ok(id) = i64::from_str_radix(id, 16)
        {
            self.lease_placeholder(id);
        }
        self.norm_text(l)
    }

    fn norm_json(&mut self, v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::Object(m) => {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(
            split_words(r#"put "a b" c '' --x="y z""#),
            vec!["put", "a b", "c", "", "--x=y z"]
        );
        assert_eq!(split_words("  get  k "), vec!["get", "k"]);
    }
}
