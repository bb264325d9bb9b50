//! The `lookout` gateway and binary against real etcd 3.4 and our own
//! store: one binary, one module per concern (`http_*`: the HTTP/JSON API).

mod admin;
mod auth_vs_etcd;
mod authz;
mod config_env;
mod crash;
mod deploy_files;
mod drain;
mod etcd_metrics;
mod etcdctl_session;
mod harness;
mod http_access;
mod http_client;
mod http_endpoints;
mod http_etcd_compat;
mod http_v1;
mod http_watch;
mod index_filters;
mod informer;
mod json_gateway_table;
mod kv_vs_etcd;
mod lifecycle;
mod lock_election;
mod many_gateways;
mod metrics_scrape;
mod otlp;
mod prefixes;
mod semantics_vs_etcd;
mod snapshot;
mod support;
mod third_party_clients;
mod tls;
mod watch_guarantees;
