//! Flags from the environment and from a config file, for any clap
//! command: every long flag `--some-flag` of every subcommand can also be
//! set as `LOOKOUT_SOME_FLAG`, or as key `some-flag` (or `some_flag`) in
//! the file named by `--config` / `LOOKOUT_CONFIG` (YAML, or TOML when the
//! file ends in `.toml`), like etcd's `--config-file`.
//!
//! ```text
//!  argv ──scan for --config──> file keys ──> each arg's default value
//!  clap::Command ──mut_arg──> .env("LOOKOUT_<FLAG>")
//!  precedence (clap's own): flag > env > file > built-in default
//! ```
//!
//! The file's values become the arguments' defaults, so clap's usual
//! precedence gives flag > environment > file > built-in default without
//! any merging code. A key that names no flag of the subcommand is an
//! error (a typo must not be silently ignored).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable prefix.
pub const ENV_PREFIX: &str = "LOOKOUT_";

/// Why the config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{path}: top level must be a map of flag names to values")]
    NotAMap { path: PathBuf },
    #[error("{path}: unknown key {key:?} for `lookout {sub}` (no --{key} flag)")]
    UnknownKey {
        path: PathBuf,
        key: String,
        sub: String,
    },
    #[error("{path}: key {key:?} has a value that is not a scalar or a list of scalars")]
    BadValue { path: PathBuf, key: String },
}

/// `LOOKOUT_` + the flag's long name, upper case, `-` as `_`.
pub fn env_name(long: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        long.to_ascii_uppercase().replace('-', "_")
    )
}

/// Gives every long flag of `cmd` and its subcommands an environment
/// variable (`--help`, `--version` and flags that already have one are
/// left alone).
pub fn with_env(cmd: clap::Command) -> clap::Command {
    let mut cmd = cmd;
    let ids: Vec<(String, String)> = cmd
        .get_arguments()
        .filter(|a| a.get_env().is_none())
        .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_string())))
        .filter(|(_, l)| l != "help" && l != "version")
        .collect();
    for (id, long) in ids {
        cmd = cmd.mut_arg(id, |a| a.env(env_name(&long)));
    }
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for s in subs {
        cmd = cmd.mut_subcommand(s, with_env);
    }
    cmd
}

/// The `--config FILE` of `args` (either spelling), else `LOOKOUT_CONFIG`.
pub fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    std::env::var_os(format!("{ENV_PREFIX}CONFIG")).map(PathBuf::from)
}

/// The first subcommand named in `args` (what the file's keys apply to).
fn subcommand_of(cmd: &clap::Command, args: &[OsString]) -> Option<String> {
    args.iter().skip(1).find_map(|a| {
        let s = a.to_string_lossy();
        cmd.find_subcommand(s.as_ref())
            .map(|c| c.get_name().to_string())
    })
}

/// Reads `path` as a map of flag name -> string values.
///
/// # Errors
/// Unreadable or unparsable file, or values that are maps.
pub fn read(path: &Path) -> Result<Vec<(String, Vec<String>)>, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse_err = |msg: String| ConfigFileError::Parse {
        path: path.to_path_buf(),
        msg,
    };
    // Both formats land in serde_json's value model: one walker below.
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "toml") {
        toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?
    } else if text.trim().is_empty() {
        serde_json::Value::Object(Default::default())
    } else {
        serde_yaml::from_str(&text).map_err(|e| parse_err(e.to_string()))?
    };
    let serde_json::Value::Object(map) = value else {
        return Err(ConfigFileError::NotAMap {
            path: path.to_path_buf(),
        });
    };
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let bad = || ConfigFileError::BadValue {
            path: path.to_path_buf(),
            key: k.clone(),
        };
        let values = match &v {
            serde_json::Value::Null => continue,
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| scalar(i).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?,
            other => vec![scalar(other).ok_or_else(bad)?],
        };
        out.push((k.replace('_', "-"), values));
    }
    Ok(out)
}

/// `cmd` with environment variables on every flag and, when `args` name
/// a config file, that file's values as the defaults of the chosen
/// subcommand's flags.
///
/// # Errors
/// The file is unreadable, unparsable, or names a flag the subcommand
/// does not have.
pub fn prepare(cmd: clap::Command, args: &[OsString]) -> Result<clap::Command, ConfigFileError> {
    let mut cmd = with_env(cmd);
    let Some(path) = config_path(args) else {
        return Ok(cmd);
    };
    let entries = read(&path)?;
    let Some(sub) = subcommand_of(&cmd, args) else {
        return Ok(cmd);
    };
    let known: Vec<(String, String, bool)> = cmd
        .find_subcommand(&sub)
        .map(|c| {
            c.get_arguments()
                .filter_map(|a| {
                    let flag = matches!(
                        a.get_action(),
                        clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
                    );
                    Some((a.get_id().to_string(), a.get_long()?.to_string(), flag))
                })
                .collect()
        })
        .unwrap_or_default();
    let globals: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    for (key, values) in entries {
        if key == "config" || globals.contains(&key) {
            // Globals (log format, OTLP) are read before the subcommand:
            // set them on the top-level command.
            let id = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .map(|a| a.get_id().to_string());
            if let Some(id) = id
                && key != "config"
            {
                cmd = cmd.mut_arg(id, |a| a.default_values(values.clone()));
            }
            continue;
        }
        let Some((id, _, is_flag)) = known.iter().find(|(_, l, _)| *l == key).cloned() else {
            return Err(ConfigFileError::UnknownKey {
                path: path.clone(),
                key,
                sub,
            });
        };
        cmd = cmd.mut_subcommand(&sub, |c| {
            c.mut_arg(id, |a| {
                if is_flag {
                    // A boolean flag takes no value on the command line;
                    // its default is what the file says.
                    a.default_value(if values.first().is_some_and(|v| v == "true") {
                        "true"
                    } else {
                        "false"
                    })
                } else {
                    a.default_values(values.clone())
                }
            })
        });
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_flags() {
        assert_eq!(env_name("data-dir"), "LOOKOUT_DATA_DIR");
        assert_eq!(env_name("cert-file"), "LOOKOUT_CERT_FILE");
    }

    #[test]
    fn config_path_takes_both_spellings() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&a(&["lookout", "--config", "x.yaml", "store"])),
            Some(PathBuf::from("x.yaml"))
        );
        assert_eq!(
            config_path(&a(&["lookout", "store", "--config=y.toml"])),
            Some(PathBuf::from("y.toml"))
        );
    }

    #[test]
    fn files_parse_as_yaml_or_toml() {
        let dir = tempfile::tempdir().unwrap();
        let y = dir.path().join("c.yaml");
        std::fs::write(
            &y,
            "name: n1\nlisten-client-urls: [a, b]\nsnapshot_count: 5\n",
        )
        .unwrap();
        let mut got = read(&y).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("listen-client-urls".into(), vec!["a".into(), "b".into()]),
                ("name".into(), vec!["n1".into()]),
                ("snapshot-count".into(), vec!["5".into()]),
            ]
        );
        let t = dir.path().join("c.toml");
        std::fs::write(&t, "client-cert-auth = true\n").unwrap();
        assert_eq!(
            read(&t).unwrap(),
            vec![("client-cert-auth".into(), vec!["true".into()])]
        );
        std::fs::write(&t, "[nested]\nx = 1\n").unwrap();
        assert!(matches!(read(&t), Err(ConfigFileError::BadValue { .. })));
    }
}
