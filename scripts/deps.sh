#!/usr/bin/env bash
# Installs what Lookout's tests need beside the Rust toolchain: Debian's real
# etcd 3.4 and etcdctl (the reference every interop test compares against)
# and cargo-nextest. Idempotent: does nothing when both are present.
set -euo pipefail

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
    echo "installing etcd-server and etcd-client from Debian" >&2
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
    # Debian's package enables a system etcd on 127.0.0.1:2379, the port
    # `lookout dev` uses. Stop that unit (by name of the unit, never by pkill).
    if command -v systemctl >/dev/null 2>&1; then
        sudo_if_needed systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
fi

# The etcd-client crate (a dev-dependency: the gateway's third-party client
# test) compiles its .proto files with a system protoc at build time.
if ! command -v protoc >/dev/null 2>&1; then
    echo "installing protobuf-compiler from Debian (for the etcd-client dev-dependency)" >&2
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install cargo-nextest --locked
fi

# deploy/ checks (scripts/deploy-check.sh): promtool (Debian's prometheus
# package; its server is not needed), systemd-analyze, curl, python3-venv
# for kubernetes-validate, adduser, and cargo-deb at a pinned version.
deploy_pkgs=()
command -v promtool >/dev/null 2>&1 || deploy_pkgs+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || deploy_pkgs+=(systemd)
command -v curl >/dev/null 2>&1 || deploy_pkgs+=(curl)
command -v python3 >/dev/null 2>&1 || deploy_pkgs+=(python3)
# Debian's python3 makes venvs (with pip) only with python3-venv; the
# package's Depends (adduser) must be present for a plain dpkg -i.
dpkg -s python3-venv >/dev/null 2>&1 || deploy_pkgs+=(python3-venv)
dpkg -s adduser >/dev/null 2>&1 || deploy_pkgs+=(adduser)
if [ "${#deploy_pkgs[@]}" -gt 0 ]; then
    echo "installing ${deploy_pkgs[*]} from Debian (deploy/ checks)" >&2
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${deploy_pkgs[@]}" >/dev/null
    if command -v systemctl >/dev/null 2>&1; then
        sudo_if_needed systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
fi
if ! cargo deb --version 2>/dev/null | grep -q '3\.8\.0'; then
    echo "installing cargo-deb 3.8.0" >&2
    cargo install cargo-deb --version 3.8.0 --locked
fi

# Third-party etcd clients the gateway's client tests drive, pinned in
# gateway/tests/clients/: the Python ones into a venv under target/clients,
# the Node one into node_modules beside its package-lock.json. Each is
# (re)installed only when its pin file differs from the copy kept at the
# last install, so a second run costs two file compares.
root="$(cd "$(dirname "$0")/.." && pwd)"
clients="$root/gateway/tests/clients"
venv="$root/target/clients/venv"
if ! cmp -s "$clients/requirements.txt" "$venv/installed-requirements.txt"; then
    echo "installing the Python etcd clients into $venv" >&2
    if ! python3 -m venv --help >/dev/null 2>&1; then
        sudo_if_needed apt-get update -qq
        sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
        -r "$clients/requirements.txt"
    cp "$clients/requirements.txt" "$venv/installed-requirements.txt"
fi
if ! cmp -s "$clients/package-lock.json" "$clients/node_modules/installed-package-lock.json"; then
    echo "installing the Node etcd client into $clients/node_modules" >&2
    if ! command -v npm >/dev/null 2>&1; then
        sudo_if_needed apt-get update -qq
        sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    # No install scripts: the only one in the tree (protobufjs) just prints
    # version hints, and skipping it keeps the install quiet.
    (cd "$clients" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    cp "$clients/package-lock.json" "$clients/node_modules/installed-package-lock.json"
fi
