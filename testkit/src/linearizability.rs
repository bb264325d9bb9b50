//! A linearizability checker for key-value register histories, in the
//! style of Wing & Gong with Lowe's memoisation (as porcupine does),
//! partitioned per key.
//!
//! ```text
//!   ops (call time, return time | unknown, input, output)
//!     ──per key──> events sorted by time (calls before returns on ties)
//!     ──DFS: linearize a call whose model step accepts its output,
//!            backtrack when a return is reached with its call pending,
//!            memoise (linearized set, model state)──> ok | counter-example
//! ```
//!
//! A write whose outcome is unknown (timed out, connection lost) has no
//! return: it may take effect at any point after its call, or never. The
//! model is made deterministic by tracking the *set* of possible register
//! values (a powerset construction), so an unknown write forks the state
//! instead of the search.

use std::collections::{BTreeSet, HashMap, HashSet};

/// What an operation asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Get,
    Put(String),
    /// Compare-and-swap: write `new` if the value equals `expect` (`None`:
    /// the key is absent).
    Cas {
        expect: Option<String>,
        new: String,
    },
}

/// What an operation answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Get(Option<String>),
    Put,
    /// Whether the swap happened.
    Cas(bool),
    /// No answer: it may or may not have taken effect.
    Unknown,
}

/// One operation of one client on one key.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub input: Input,
    pub output: Output,
    /// Nanoseconds since the history's start.
    pub call: u128,
    /// `None` for an unknown outcome (it never returned).
    pub ret: Option<u128>,
}

/// The register's possible values.
type State = BTreeSet<Option<String>>;

/// One model step from every possible value; `None` if no possible value
/// explains the output.
fn step(state: &State, input: &Input, output: &Output) -> Option<State> {
    let mut next = State::new();
    for v in state {
        match (input, output) {
            (Input::Get, Output::Get(got)) if got == v => {
                next.insert(v.clone());
            }
            (Input::Get, Output::Unknown) => {
                next.insert(v.clone());
            }
            (Input::Put(new), Output::Put) => {
                next.insert(Some(new.clone()));
            }
            (Input::Put(new), Output::Unknown) => {
                next.insert(Some(new.clone()));
                next.insert(v.clone());
            }
            (Input::Cas { expect, new }, Output::Cas(true)) if v == expect => {
                next.insert(Some(new.clone()));
            }
            (Input::Cas { expect, .. }, Output::Cas(false)) if v != expect => {
                next.insert(v.clone());
            }
            (Input::Cas { expect, new }, Output::Unknown) => {
                if v == expect {
                    next.insert(Some(new.clone()));
                }
                next.insert(v.clone());
            }
            _ => {}
        }
    }
    (!next.is_empty()).then_some(next)
}

/// Checks every key's history; `Err` names the first key that is not
/// linearizable, with its operations.
///
/// # Errors
/// A description of a key whose history no linearization explains.
pub fn check(ops: &[Op]) -> Result<(), String> {
    let mut by_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort_unstable();
    for k in keys {
        let h = &by_key[k];
        if !check_key(h) {
            let mut lines: Vec<String> = h
                .iter()
                .map(|o| {
                    format!(
                        "  c{} [{} .. {}] {:?} -> {:?}",
                        o.client,
                        o.call,
                        o.ret.map_or("?".to_string(), |r| r.to_string()),
                        o.input,
                        o.output
                    )
                })
                .collect();
            lines.sort();
            return Err(format!(
                "key {k:?}: no linearization of {} operations:\n{}",
                h.len(),
                lines.join("\n")
            ));
        }
    }
    Ok(())
}

const NIL: usize = usize::MAX;

/// Doubly linked event list (dancing links): node 0 is the head.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For a node: (op index, is call, matching node).
    info: Vec<(usize, bool, usize)>,
}

impl Events {
    fn lift(&mut self, call: usize) {
        let ret = self.info[call].2;
        for n in [call, ret] {
            let (p, x) = (self.prev[n], self.next[n]);
            self.next[p] = x;
            if x != NIL {
                self.prev[x] = p;
            }
        }
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.info[call].2;
        for n in [ret, call] {
            let (p, x) = (self.prev[n], self.next[n]);
            self.next[p] = n;
            if x != NIL {
                self.prev[x] = n;
            }
        }
    }
}

/// Whether one key's history is linearizable.
pub fn check_key(ops: &[&Op]) -> bool {
    // (time, 0 = call / 1 = return, op)
    let mut ev: Vec<(u128, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        ev.push((op.call, 0, i));
        ev.push((op.ret.unwrap_or(u128::MAX), 1, i));
    }
    ev.sort_unstable();
    let n = ev.len() + 1;
    let mut e = Events {
        next: (1..=n).map(|i| if i == n { NIL } else { i }).collect(),
        prev: (0..n).map(|i| if i == 0 { NIL } else { i - 1 }).collect(),
        info: vec![(0, false, 0); n],
    };
    let mut call_node = vec![0usize; ops.len()];
    for (j, (_, kind, op)) in ev.iter().enumerate() {
        let node = j + 1;
        e.info[node] = (*op, *kind == 0, 0);
        if *kind == 0 {
            call_node[*op] = node;
        }
    }
    for (j, (_, kind, op)) in ev.iter().enumerate() {
        if *kind == 1 {
            let ret = j + 1;
            let call = call_node[*op];
            e.info[call].2 = ret;
            e.info[ret].2 = call;
        }
    }
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: State = BTreeSet::from([None]);
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut entry = e.next[0];
    // Each iteration either lifts a call (bounded by the memo) or
    // backtracks; the memo makes the search finite.
    loop {
        if e.next[0] == NIL {
            return true;
        }
        if entry == NIL {
            // Only unknown returns can be left at the end with nothing
            // linearizable before them: backtrack.
            let Some((call, prev)) = stack.pop() else {
                return false;
            };
            let op = e.info[call].0;
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev;
            e.unlift(call);
            entry = e.next[call];
            continue;
        }
        let (op, is_call, _) = e.info[entry];
        if is_call {
            if let Some(next) = step(&state, &ops[op].input, &ops[op].output) {
                let mut lin = linearized.clone();
                lin[op / 64] |= 1 << (op % 64);
                if cache.insert((lin.clone(), next.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next)));
                    linearized = lin;
                    e.lift(entry);
                    entry = e.next[0];
                    continue;
                }
            }
            entry = e.next[entry];
        } else {
            let Some((call, prev)) = stack.pop() else {
                return false;
            };
            let op = e.info[call].0;
            linearized[op / 64] &= !(1 << (op % 64));
            state = prev;
            e.unlift(call);
            entry = e.next[call];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, input: Input, output: Output, call: u128, ret: Option<u128>) -> Op {
        Op {
            client,
            key: "k".into(),
            input,
            output,
            call,
            ret,
        }
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        let h = vec![
            op(0, Input::Put(s("a")), Output::Put, 0, Some(10)),
            op(1, Input::Get, Output::Get(Some(s("a"))), 11, Some(20)),
            // Concurrent put and get: the get may see either value.
            op(0, Input::Put(s("b")), Output::Put, 21, Some(40)),
            op(1, Input::Get, Output::Get(Some(s("a"))), 22, Some(30)),
            op(
                2,
                Input::Cas {
                    expect: Some(s("b")),
                    new: s("c"),
                },
                Output::Cas(true),
                41,
                Some(50),
            ),
            op(1, Input::Get, Output::Get(Some(s("c"))), 51, Some(60)),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_rejected() {
        let h = vec![
            op(0, Input::Put(s("a")), Output::Put, 0, Some(10)),
            op(0, Input::Put(s("b")), Output::Put, 11, Some(20)),
            // Starts after "b" was acknowledged, yet sees "a".
            op(1, Input::Get, Output::Get(Some(s("a"))), 21, Some(30)),
        ];
        let err = check(&h).unwrap_err();
        assert!(err.contains("key \"k\""), "{err}");
    }

    #[test]
    fn a_lost_acknowledged_write_is_rejected() {
        let h = vec![
            op(0, Input::Put(s("a")), Output::Put, 0, Some(10)),
            op(1, Input::Get, Output::Get(None), 20, Some(30)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn two_successful_swaps_from_the_same_value_are_rejected() {
        let h = vec![
            op(0, Input::Put(s("a")), Output::Put, 0, Some(10)),
            op(
                1,
                Input::Cas {
                    expect: Some(s("a")),
                    new: s("x"),
                },
                Output::Cas(true),
                20,
                Some(40),
            ),
            op(
                2,
                Input::Cas {
                    expect: Some(s("a")),
                    new: s("y"),
                },
                Output::Cas(true),
                21,
                Some(41),
            ),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_take_effect() {
        // The unknown put is seen by one read...
        let seen = vec![
            op(0, Input::Put(s("a")), Output::Unknown, 0, None),
            op(1, Input::Get, Output::Get(Some(s("a"))), 50, Some(60)),
        ];
        assert!(check(&seen).is_ok());
        // ...or never.
        let never = vec![
            op(0, Input::Put(s("a")), Output::Unknown, 0, None),
            op(1, Input::Get, Output::Get(None), 50, Some(60)),
            op(1, Input::Get, Output::Get(None), 70, Some(80)),
        ];
        assert!(check(&never).is_ok());
        // But it cannot take effect before it was called.
        let early = vec![
            op(1, Input::Get, Output::Get(Some(s("a"))), 0, Some(10)),
            op(0, Input::Put(s("a")), Output::Unknown, 20, None),
        ];
        assert!(check(&early).is_err());
        // And once seen, it cannot be unseen.
        let flicker = vec![
            op(0, Input::Put(s("a")), Output::Unknown, 0, None),
            op(1, Input::Get, Output::Get(Some(s("a"))), 50, Some(60)),
            op(1, Input::Get, Output::Get(None), 70, Some(80)),
        ];
        assert!(check(&flicker).is_err());
    }
}
