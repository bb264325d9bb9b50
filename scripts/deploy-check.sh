#!/usr/bin/env bash
# Checks what deploy/ ships with the tools operators use (CI runs it after
# scripts/test.sh, which built target/debug/lookout):
#   promtool check rules/config + promtool test rules (every alert firing and quiet)
#   kubernetes-validate --strict on the manifests (schemas bundled, offline)
#   cargo deb of the built binary, dpkg -i, systemd-analyze verify of the
#   installed units, and `lookout dev` run from /usr/bin answering on a
#   loopback port (bounded wait, stopped by its PID).
# scripts/deps.sh installs promtool, systemd-analyze, python3-venv and
# cargo-deb; kubernetes-validate goes into target/deploy-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo "== deploy: $1 ($(( $(date +%s) - start ))s)"; }

step "promtool check rules"
promtool check rules deploy/prometheus/*.rules.yml
promtool check config deploy/prometheus/prometheus.yml
step "promtool test rules"
(cd deploy/prometheus && promtool test rules tests/*.yml)

step "kubernetes-validate"
venv=target/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
"$venv/bin/kubernetes-validate" --strict deploy/kubernetes/*.yaml

step "cargo deb"
# The test build's binary, packaged as the release package would be (a
# release package: `cargo deb -p lookout-gateway`, which builds --release).
test -x target/debug/lookout || cargo build -p lookout-gateway --bin lookout
rm -rf target/debian
cargo deb -p lookout-gateway --profile dev --no-build --fast --quiet -o target/debian/
deb=$(ls target/debian/lookout_*.deb)
dpkg-deb --info "$deb" | sed -n '/Package:/,/Depends:/p'

step "dpkg -i"
dpkg -i "$deb"
test -x /usr/bin/lookout
test -f /etc/lookout/store.yaml && test -f /etc/lookout/gateway.yaml
getent passwd lookout >/dev/null

step "systemd-analyze verify"
units=(/usr/lib/systemd/system/lookout-store.service /usr/lib/systemd/system/lookout-gateway.service)
out=$(systemd-analyze verify "${units[@]}" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then
    echo "systemd-analyze verify is not clean:"
    echo "$out"
    exit 1
fi
# The installed configs are ones the installed binary accepts.
/usr/bin/lookout store --config /etc/lookout/store.yaml --help >/dev/null
/usr/bin/lookout gateway --config /etc/lookout/gateway.yaml --help >/dev/null

step "lookout dev from the package"
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
/usr/bin/lookout dev --listen-client-urls "http://127.0.0.1:$port" --data-dir "$tmp/data" >"$tmp/log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
ready=""
for _ in $(seq 300); do
    if curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then ready=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "lookout dev did not become ready:"; cat "$tmp/log"; exit 1
fi
ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$port" --command-timeout=10s put deb-check installed >/dev/null
got=$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$port" --command-timeout=10s get deb-check --print-value-only)
[ "$got" = "installed" ] || { echo "read back $got"; exit 1; }
metrics=$(curl -sf "http://127.0.0.1:$port/metrics")
for m in etcd_server_has_leader etcd_disk_wal_fsync_duration_seconds_bucket lookout_watchers grpc_server_handled_total; do
    grep -q "^$m" <<<"$metrics" || { echo "/metrics lacks $m"; exit 1; }
done
kill -TERM "$pid"
for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
    echo "lookout dev did not stop within 20 s of SIGTERM"; kill -9 "$pid"; exit 1
fi
wait "$pid" || { echo "lookout dev exited with an error:"; cat "$tmp/log"; exit 1; }
step "done"
