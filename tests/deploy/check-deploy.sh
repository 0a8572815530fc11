#!/bin/sh
# The deployment files as an operator installs them: the systemd units
# pass `systemd-analyze verify` (with ExecStart pointing at this build's
# programs), tmpfiles.d, sysusers.d and logrotate.d parse, and nginx
# accepts the site template rendered as the quick start renders it
# (`nginx -t`).
set -eu
src=${CCGATE_SRCDIR:?}
build=${CCGATE_BUILDDIR:?}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAILED: $*"; }

subst() {
    sed -e "s|@SBINDIR@|$build|g" -e "s|@SYSCONFDIR@|$tmp/etc|g" \
        -e "s|@RUNDIR@|$tmp/run|g" -e "s|@STATEDIR@|$tmp/state|g" \
        -e "s|@LOGDIR@|$tmp/log|g" -e "s|@NGINX_PID@|$tmp/nginx.pid|g" \
        -e "s|@DOCDIR@|$src/docs|g" "$1" > "$2"
}

mkdir -p "$tmp/units" "$tmp/etc/ccgate" "$tmp/run" "$tmp/state"
subst "$src/deploy/systemd/ccgate-fcgi.socket.in" "$tmp/units/ccgate-fcgi.socket"
for u in ccgate-poold ccgate-fcgi ccgate-ws; do
    subst "$src/deploy/systemd/$u.service.in" "$tmp/units/$u.service"
    if out=$(cd "$tmp/units" &&
             systemd-analyze verify --man=no "$u.service" 2>&1) &&
       [ -z "$out" ]; then
        ok "systemd-analyze verify $u.service"
    else
        bad "systemd-analyze verify $u.service: $out"
    fi
    # ccgate-poold is root (bwrap mounts each CLI's sandbox), with a
    # bounded set of capabilities; the others are ccgate with none.
    user=User=ccgate
    [ $u = ccgate-poold ] && user=User=root
    for d in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes \
             PrivateTmp=yes PrivateDevices=yes Restart=on-failure $user; do
        grep -qx "$d" "$tmp/units/$u.service" || bad "$u.service lacks $d"
    done
    grep -q '^SystemCallFilter=@system-service' "$tmp/units/$u.service" ||
        bad "$u.service lacks SystemCallFilter=@system-service"
    if [ $u = ccgate-poold ]; then
        grep -q '^CapabilityBoundingSet=CAP_' "$tmp/units/$u.service" ||
            bad "$u.service: root without a bounded capability set"
    else
        grep -qx 'CapabilityBoundingSet=' "$tmp/units/$u.service" ||
            bad "$u.service keeps capabilities"
    fi
    grep -q '^RestrictAddressFamilies=' "$tmp/units/$u.service" ||
        bad "$u.service lacks RestrictAddressFamilies"
done
if out=$(cd "$tmp/units" &&
         systemd-analyze verify --man=no ccgate-fcgi.socket 2>&1) &&
   [ -z "$out" ]; then
    ok "systemd-analyze verify ccgate-fcgi.socket"
else
    bad "systemd-analyze verify ccgate-fcgi.socket: $out"
fi
grep -q "^ListenStream=$tmp/run/fcgi.sock\$" "$tmp/units/ccgate-fcgi.socket" ||
    bad "ccgate-fcgi.socket does not listen where ccgate.conf.sample says"
grep -q '^listen = /run/ccgate/fcgi.sock$' "$src/deploy/ccgate.conf.sample" ||
    bad "ccgate.conf.sample's listen is not the socket unit's"
# What `make` generated for installation has every placeholder filled.
for f in "$build/deploy/systemd/ccgate-poold.service" \
         "$build/deploy/systemd/ccgate-fcgi.socket" \
         "$build/deploy/systemd/ccgate-fcgi.service" \
         "$build/deploy/systemd/ccgate-ws.service" \
         "$build/deploy/systemd/tmpfiles.d/ccgate.conf" \
         "$build/deploy/logrotate/ccgate"; do
    if [ -f "$f" ] && ! grep -n '@[A-Z]*@' "$f"; then
        ok "$(basename "$f") generated"
    else
        bad "$f: missing or with a placeholder left"
    fi
done
subst "$src/deploy/systemd/tmpfiles.d/ccgate.conf.in" "$tmp/tmpfiles.conf"
if systemd-tmpfiles --dry-run --create "$tmp/tmpfiles.conf" >/dev/null 2>&1 ||
   systemd-tmpfiles --create --prefix="$tmp/nothing" "$tmp/tmpfiles.conf" >/dev/null 2>&1; then
    ok "tmpfiles.d parses"
else
    bad "tmpfiles.d: $(systemd-tmpfiles --create --prefix="$tmp/nothing" "$tmp/tmpfiles.conf" 2>&1)"
fi
if systemd-sysusers --dry-run "$src/deploy/systemd/sysusers.d/ccgate.conf" >/dev/null 2>&1 ||
   systemd-sysusers --root="$tmp/root" "$src/deploy/systemd/sysusers.d/ccgate.conf" >/dev/null 2>&1; then
    ok "sysusers.d parses"
else
    bad "sysusers.d: $(systemd-sysusers --root="$tmp/root" "$src/deploy/systemd/sysusers.d/ccgate.conf" 2>&1)"
fi

mkdir -p "$tmp/log"
subst "$src/deploy/logrotate/ccgate.in" "$tmp/logrotate.conf"
if out=$(logrotate -d -s "$tmp/logrotate.state" "$tmp/logrotate.conf" 2>&1) &&
   ! printf '%s\n' "$out" | grep -qi 'error'; then
    ok "logrotate parses"
else
    bad "logrotate: $out"
fi
# nginx -t on the site template, rendered as the quick start does.
mkdir -p "$tmp/nginx"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
    -keyout "$tmp/tls.key" -out "$tmp/tls.crt" >/dev/null 2>&1
"$src/deploy/render" "$src/nginx/ccgate-site.conf.in" "$tmp/site.conf" \
    LISTEN=127.0.0.1:1 "TLS_CERT=$tmp/tls.crt" "TLS_KEY=$tmp/tls.key" \
    MAX_BODY=2m FILES_MAX_BODY=2g "ERRORS_DIR=$src/nginx/errors" "FCGI_SOCKET=$tmp/run/fcgi.sock" \
    "WS_SOCKET=$tmp/run/ws.sock" \
    "ADMIN_UI_DIR=$src/admin-ui" "ADMIN_UI_CONF=$src/nginx/admin-ui.conf" \
    "EDGE_DIR=$src/nginx/edge" RATE_PER_IP=50r/s BURST_PER_IP=100 \
    RATE_PER_KEY=20r/s BURST_PER_KEY=40 CONN_PER_IP=200 READ_TIMEOUT=660s \
    "ACCESS_LOG=$tmp/nginx/access.log"
user=""
[ "$(id -u)" = 0 ] && user="user root root;"
# The egress, as the quick start renders it (with a credential file; an
# address for the upstream, since nginx resolves names when it starts).
mkdir -p "$tmp/run/egress" "$tmp/state/egress/tokens"
printf 'proxy_set_header x-api-key "sk-ant-test";\nproxy_set_header authorization "";\n' \
    > "$tmp/egress-credential.conf"
"$src/deploy/render" "$src/nginx/ccgate-egress.conf.in" "$tmp/egress.conf" \
    "EGRESS_SOCKET=$tmp/run/egress/egress.sock" \
    "EGRESS_TOKENS=$tmp/state/egress/tokens" "EGRESS_LOG=$tmp/nginx/egress.log" \
    "EGRESS_CREDENTIAL=$tmp/egress-credential.conf" \
    UPSTREAM_SERVER=127.0.0.1:443 UPSTREAM_SCHEME=https \
    UPSTREAM_HOST=api.anthropic.com
# An empty http{} file for a template tested alone.
: > "$tmp/none.conf"
# nginx_t NAME SITE [EGRESS]: `nginx -t` on SITE (and EGRESS) wrapped in
# the standalone nginx.conf.
nginx_t() {
    "$src/deploy/render" "$src/nginx/nginx-standalone.conf.in" "$tmp/$1-nginx.conf" \
        "USER_LINE=$user" "VAR_DIR=$tmp/nginx" "DAEMON_LINE=daemon off;" \
        "SITE_CONF=$2" "EGRESS_CONF=${3:-$tmp/none.conf}"
    if out=$(nginx -t -p "$tmp/nginx" -c "$tmp/$1-nginx.conf" 2>&1); then
        ok "nginx -t ($1)"
    else
        bad "nginx -t ($1): $out"
    fi
}
nginx_t site "$tmp/site.conf" "$tmp/egress.conf"

# And on the front template of docs/scaling.md.
echo "server 127.0.0.1:1 max_fails=1 fail_timeout=10s;" > "$tmp/nodes.conf"
"$src/deploy/render" "$src/nginx/ccgate-front.conf.in" "$tmp/front.conf" \
    LISTEN=127.0.0.1:2 "TLS_CERT=$tmp/tls.crt" "TLS_KEY=$tmp/tls.key" \
    MAX_BODY=2m "NODES_CONF=$tmp/nodes.conf" "NODES_CA=$tmp/tls.crt" \
    NODES_TLS_NAME=127.0.0.1 READ_TIMEOUT=660s "ACCESS_LOG=$tmp/nginx/front.log"
nginx_t front "$tmp/front.conf"

echo "$passed passed, $failed failed, 0 skipped"
[ "$failed" = 0 ]
