//! The `lookout` command line: one clap subcommand per mode. This file
//! only parses flags; what each mode does is library code
//! (`lookout_gateway::commands`), where tests reach it.
//!
//! ```text
//!   lookout store --name n --data-dir d --listen-client-urls ...  -> one store member
//!     (a one-member raft cluster; with --initial-cluster a=http://..,b=..,c=..
//!      and --listen-peer-urls, one member of a 3- or 5-member cluster)
//!   lookout gateway --listen-addr a --endpoints h1:p1,h2:p2        -> watch-cache gateway
//!   lookout dev [--data-dir ./lookout-data]                       -> store on an internal
//!                      loopback port + gateway on 127.0.0.1:2379, one process
//! ```
//!
//! Each mode is a variant of [`Command`]; every mode's flags and what it
//! runs live in the library (`lookout_gateway::GatewayArgs`,
//! `lookout_gateway::commands`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lookout_gateway::GatewayArgs;
use lookout_gateway::commands::{
    CommandError, DevArgs, StoreArgs, run_dev, run_gateway, run_store,
};

#[derive(Debug, Parser)]
#[command(
    name = "lookout",
    version,
    about = "etcd-v3-compatible watch cache and revision store"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Config file (YAML, or TOML when it ends in .toml) whose keys are
    /// flag names; precedence: flag > `LOOKOUT_<FLAG>` env > file > default.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: lookout_gateway::telemetry::LogFormat,
    /// Export traces over OTLP/gRPC to this collector (e.g.
    /// http://127.0.0.1:4317); off when unset.
    #[arg(long, global = true)]
    pub otlp_endpoint: Option<String>,
}

// Parsed once at start; boxing the large store flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one store node (etcd's flag names).
    Store(StoreArgs),
    /// Run a watch-cache gateway in front of a store or etcd cluster
    /// (etcd grpc-proxy's flag names).
    Gateway(GatewayArgs),
    /// Run a one-node store and a gateway in front of it on 127.0.0.1:2379,
    /// in one process, for development.
    Dev(DevArgs),
    /// Restore a member's data dir from `etcdctl snapshot save` output.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// `lookout snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Check a snapshot file's sha256 and write a new member data dir from
    /// it; start the member with `lookout store --data-dir DIR` and its
    /// (new) `--initial-cluster`.
    Restore(RestoreArgs),
}

/// `lookout snapshot restore` flags.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The file `etcdctl snapshot save` wrote from a `lookout store`.
    pub file: PathBuf,
    /// The member data dir to create (must not exist yet).
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// Entry point called by `main`.
pub fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cmd = match lookout_gateway::config_file::prepare(Cli::command(), &args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lookout: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::from_arg_matches(&cmd.get_matches_from(&args)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lookout: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Inside the runtime: the OTLP exporter runs on it.
        let _telemetry =
            match lookout_gateway::telemetry::init(cli.log_format, cli.otlp_endpoint.as_deref()) {
                Ok(g) => g,
                Err(e) => return Err(CommandError::BadFlag(e)),
            };
        match cli.command {
            Command::Store(a) => run_store(a).await,
            Command::Gateway(a) => run_gateway(a).await,
            Command::Dev(a) => run_dev(a).await,
            Command::Snapshot(SnapshotCommand::Restore(a)) => {
                let r = lookout_consensus::snapshot_stream::restore(&a.file, &a.data_dir)?;
                println!(
                    "restored {} revision records and {} leases at revision {} into {}",
                    r.kv_records,
                    r.leases,
                    r.revision,
                    a.data_dir.display()
                );
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "lookout stopped");
            eprintln!("lookout: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lookout_gateway::commands::parse_auto_compaction;

    use super::*;

    #[test]
    fn gateway_subcommand_takes_grpc_proxy_flags() {
        let c = Cli::try_parse_from([
            "lookout",
            "gateway",
            "--listen-addr=127.0.0.1:0",
            "--endpoints=127.0.0.1:1,127.0.0.1:2",
            "--prefix=/a/",
        ])
        .unwrap();
        let Command::Gateway(a) = c.command else {
            panic!("gateway")
        };
        assert_eq!(a.endpoints.len(), 2);
        assert_eq!(a.to_config().prefixes.len(), 1);
        let d = Cli::try_parse_from(["lookout", "dev"]).unwrap();
        let Command::Dev(d) = d.command else {
            panic!("dev")
        };
        assert_eq!(d.listen_client_urls, "http://127.0.0.1:2379");
    }

    #[test]
    fn flags_use_etcd_names_and_defaults() {
        let c =
            Cli::try_parse_from(["lookout", "store", "--name", "n1", "--max-txn-ops=3"]).unwrap();
        let Command::Store(a) = c.command else {
            panic!("store")
        };
        assert_eq!(a.name, "n1");
        assert_eq!(a.max_txn_ops, 3);
        assert_eq!(a.max_request_bytes, 1536 * 1024);
        assert_eq!(a.listen_client_urls, vec!["http://localhost:2379"]);
        assert_eq!(a.heartbeat_interval, 100);
        assert_eq!(a.election_timeout, 1000);
        assert_eq!(a.initial_cluster_state, "new");
        assert!(a.peer_append_stream);
        let c = Cli::try_parse_from([
            "lookout",
            "store",
            "--experimental-peer-append-stream=false",
        ])
        .unwrap();
        let Command::Store(a) = c.command else {
            panic!("store")
        };
        assert!(!a.peer_append_stream);
    }

    #[test]
    fn cluster_flags_parse_like_etcd() {
        let c = Cli::try_parse_from([
            "lookout",
            "store",
            "--name=a",
            "--initial-cluster=a=http://127.0.0.1:1,b=http://127.0.0.1:2",
            "--initial-cluster-state=existing",
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
            "--quota-backend-bytes=-1",
        ])
        .unwrap();
        let Command::Store(a) = c.command else {
            panic!("store")
        };
        assert_eq!(a.initial_cluster_state, "existing");
        assert_eq!(a.quota_backend_bytes, -1);
        assert_eq!(
            parse_auto_compaction(&a.auto_compaction_mode, &a.auto_compaction_retention).unwrap(),
            Some(lookout_consensus::config::AutoCompaction::Revision(1000))
        );
        assert_eq!(
            parse_auto_compaction("periodic", "2").unwrap(),
            Some(lookout_consensus::config::AutoCompaction::Periodic(
                Duration::from_secs(7200)
            ))
        );
        assert_eq!(parse_auto_compaction("periodic", "0").unwrap(), None);
        assert!(Cli::try_parse_from(["lookout", "store", "--initial-cluster-state=old"]).is_err());
    }

    #[test]
    fn config_file_values_are_defaults_under_flags() {
        use clap::{CommandFactory, FromArgMatches};
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gw.yaml");
        std::fs::write(
            &f,
            "prefix: [/a/, /b/]\nclient-cert-auth: true\ncert-file: c.pem\nkey-file: k.pem\ntrusted-ca-file: ca.pem\nread-timeout: 2s\nlog-format: json\n",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut args: Vec<std::ffi::OsString> = vec!["lookout".into(), "gateway".into()];
            args.push("--config".into());
            args.push(f.clone().into());
            args.extend(extra.iter().map(Into::into));
            let cmd = lookout_gateway::config_file::prepare(Cli::command(), &args).unwrap();
            Cli::from_arg_matches(&cmd.try_get_matches_from(&args).unwrap()).unwrap()
        };
        let c = parse(&[]);
        assert_eq!(c.log_format, lookout_gateway::telemetry::LogFormat::Json);
        let Command::Gateway(g) = c.command else {
            panic!("gateway")
        };
        assert_eq!(g.prefixes, vec!["/a/", "/b/"]);
        assert!(g.tls.client_cert_auth);
        assert_eq!(g.read_timeout, Duration::from_secs(2));
        assert!(g.to_checked_config().unwrap().tls.is_some());
        let Command::Gateway(g) = parse(&["--read-timeout=3s", "--prefix=/c/"]).command else {
            panic!("gateway")
        };
        assert_eq!(g.read_timeout, Duration::from_secs(3));
        assert_eq!(g.prefixes, vec!["/c/"]);
    }

    #[test]
    fn indexes_come_from_flags_files_and_the_environment() {
        use clap::{CommandFactory, FromArgMatches};
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("gw.yaml");
        std::fs::write(
            &f,
            "index:\n  - node@/calico/=json:/spec/nodeName\n  - 'ns=key:^/registry/pods/([^/]+)/'\n",
        )
        .unwrap();
        let args: Vec<std::ffi::OsString> = vec![
            "lookout".into(),
            "gateway".into(),
            "--config".into(),
            f.clone().into(),
        ];
        let cmd = lookout_gateway::config_file::prepare(Cli::command(), &args).unwrap();
        let c = Cli::from_arg_matches(&cmd.try_get_matches_from(&args).unwrap()).unwrap();
        let Command::Gateway(g) = c.command else {
            panic!("gateway")
        };
        let set = g.to_checked_config().unwrap().cache.indexes;
        assert_eq!(set.names(), "known: node, ns");
        // A bad declaration in the file is refused when the flags parse.
        std::fs::write(&f, "index: node=xml:/x\n").unwrap();
        let cmd = lookout_gateway::config_file::prepare(Cli::command(), &args).unwrap();
        assert!(cmd.try_get_matches_from(&args).is_err());
        // The environment variable carries one index.
        let cmd = lookout_gateway::config_file::with_env(Cli::command());
        let arg = cmd
            .find_subcommand("gateway")
            .unwrap()
            .get_arguments()
            .find(|a| a.get_long() == Some("index"))
            .unwrap()
            .get_env()
            .map(|e| e.to_string_lossy().into_owned());
        assert_eq!(arg.as_deref(), Some("LOOKOUT_INDEX"));
    }
}
