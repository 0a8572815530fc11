#!/bin/sh
# The Debian package, end to end, on this machine: build it from a clean
# copy of the source (the dist tarball given as $1, or `git archive HEAD`
# of the checkout), lintian it, install it with apt-get, check what it
# installed (files, rendered paths, users, folders and their modes,
# `systemd-analyze verify` of the installed units, nothing enabled,
# `ccgate-admin --help`, nginx -t on the installed templates), remove it
# (state stays), purge it (nothing of it stays but the users, as Debian
# policy has it).  It purges whatever happens.  Run by `deploy/quickstart test` after distcheck; needs root
# (apt-get) and what `deploy/install-deps --test` installs.  It refuses to
# run where ccgate is installed already: its purge would delete that
# installation's configuration and state.
#   CCGATE_SRCDIR  the checkout (default: two folders above this script)
set -u
src=${CCGATE_SRCDIR:-$(cd "$(dirname "$0")/../.." && pwd)}
tarball=${1:-}
state_dirs="/etc/ccgate /var/lib/ccgate /var/log/ccgate /run/ccgate"
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok: $*"; }
bad() { failed=$((failed + 1)); echo "FAILED: $*"; }
finish() {
    echo "$passed passed, $failed failed, 0 skipped"
    [ "$failed" = 0 ] && [ "$passed" -gt 0 ]
    exit $?
}
# installed NAME: is the package NAME installed (or half so)?
installed() {
    st=$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != not-installed ]
}

if [ "$(id -u)" != 0 ]; then
    bad "check-deb.sh must run as root (apt-get install, purge)"
    finish
fi
if installed ccgate; then
    bad "ccgate is installed on this machine: not touching it"
    finish
fi
for d in $state_dirs /usr/sbin/ccgate-poold /usr/bin/ccgate-admin; do
    if [ -e "$d" ]; then
        bad "$d exists (a source install?): its purge would delete it"
        finish
    fi
done

tmp=$(mktemp -d /tmp/ccgate-deb.XXXXXX)
mine=no
cleanup() {
    if [ $mine = yes ] && installed ccgate; then
        echo "check-deb.sh: purging ccgate"
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq ccgate \
            >"$tmp/cleanup-purge.log" 2>&1 || cat "$tmp/cleanup-purge.log"
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP
start=$(date +%s)

# 1. A clean copy of the source, and the package built from it.
mkdir "$tmp/src"
if [ -n "$tarball" ]; then
    tar -xzf "$tarball" -C "$tmp/src" || { bad "cannot unpack $tarball"; finish; }
else
    git -C "$src" archive --format=tar --prefix=ccgate/ HEAD | tar -xf - -C "$tmp/src" ||
        { bad "git archive HEAD of $src"; finish; }
fi
top=$(find "$tmp/src" -mindepth 1 -maxdepth 2 -name debian -type d | head -1)
top=${top%/debian}
if [ -z "$top" ] || [ ! -f "$top/debian/control" ]; then
    bad "the source has no debian/ (is it in EXTRA_DIST?)"
    finish
fi
version=$(sed -n 's/^AC_INIT(\[ccgate\], \[\([^]]*\)\].*/\1/p' "$top/configure.ac")
debversion=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
if [ "${debversion%-*}" = "$version" ]; then
    ok "debian/changelog's version $debversion is configure.ac's $version"
else
    bad "debian/changelog's version $debversion is not configure.ac's $version"
fi
if (cd "$top" && dpkg-buildpackage -us -uc -b) >"$tmp/build.log" 2>&1; then
    ok "dpkg-buildpackage -us -uc -b ($(( $(date +%s) - start )) s)"
else
    tail -40 "$tmp/build.log"
    bad "dpkg-buildpackage -us -uc -b"
    finish
fi
deb=$(ls "$(dirname "$top")"/ccgate_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { bad "no ccgate_*.deb built"; finish; }
if out=$(lintian --fail-on error,warning "$deb" 2>&1); then
    ok "lintian: no error, no warning"
else
    bad "lintian: $out"
fi

# 2. Installed with apt, as an operator does.
mine=yes
if (cd "$(dirname "$deb")" && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq "./$(basename "$deb")") >"$tmp/install.log" 2>&1; then
    ok "apt-get install ./$(basename "$deb")"
else
    tail -30 "$tmp/install.log"
    bad "apt-get install ./$(basename "$deb")"
    finish
fi
dpkg-query -L ccgate > "$tmp/files"

for f in /usr/sbin/ccgate-poold /usr/sbin/ccgate-fcgi /usr/sbin/ccgate-ws \
         /usr/bin/ccgate-admin /usr/share/ccgate/render \
         /usr/share/ccgate/install-claude; do
    [ -x "$f" ] || bad "$f is not installed as a program"
done
for f in /lib/systemd/system/ccgate-poold.service \
         /lib/systemd/system/ccgate-fcgi.socket \
         /lib/systemd/system/ccgate-fcgi.service \
         /lib/systemd/system/ccgate-ws.service \
         /usr/lib/sysusers.d/ccgate.conf /usr/lib/tmpfiles.d/ccgate.conf \
         /etc/logrotate.d/ccgate /etc/ccgate/ccgate.conf.sample \
         /etc/ccgate/poold.conf.sample \
         /usr/share/ccgate/nginx/ccgate-site.conf.in \
         /usr/share/ccgate/nginx/ccgate-egress.conf.in \
         /usr/share/ccgate/nginx/nginx-standalone.conf.in \
         /usr/share/ccgate/nginx/errors/502.json \
         /usr/share/ccgate/nginx/edge/admin-allow.conf \
         /usr/share/ccgate/admin-ui/index.html \
         /usr/share/ccgate/admin-ui/app.js \
         /usr/share/doc/ccgate/install.md /usr/share/doc/ccgate/README.Debian \
         /usr/share/doc/ccgate/copyright; do
    [ -f "$f" ] || bad "$f is not installed"
done
for f in "$top"/sql/*.sql; do
    [ -f "/usr/share/ccgate/sql/$(basename "$f")" ] ||
        bad "sql/$(basename "$f") is not installed"
done
n=0
while read -r f; do
    [ -e "$f" ] || bad "$f is listed by dpkg but missing"
    n=$((n + 1))
done < "$tmp/files"
ok "the package's $n paths are installed"
if grep -q '^/etc/nginx' "$tmp/files"; then
    bad "the package puts files in /etc/nginx (the site must not be enabled)"
else
    ok "nothing in /etc/nginx"
fi

# The units, rendered for /usr, /etc/ccgate, /var/lib/ccgate, /run/ccgate.
u=/lib/systemd/system
if grep -n '@[A-Z_]*@' $u/ccgate-* /usr/lib/tmpfiles.d/ccgate.conf \
        /etc/logrotate.d/ccgate; then
    bad "a placeholder is left in the installed units, tmpfiles.d or logrotate"
fi
grep -qx 'ExecStart=/usr/sbin/ccgate-poold -f /etc/ccgate/poold.conf' \
    $u/ccgate-poold.service || bad "ccgate-poold.service's ExecStart"
grep -qx 'ExecStart=/usr/sbin/ccgate-fcgi -f /etc/ccgate/ccgate.conf' \
    $u/ccgate-fcgi.service || bad "ccgate-fcgi.service's ExecStart"
grep -qx 'ExecStart=/usr/sbin/ccgate-ws -f /etc/ccgate/ccgate.conf' \
    $u/ccgate-ws.service || bad "ccgate-ws.service's ExecStart"
grep -qx 'ReadWritePaths=/var/lib/ccgate /run/ccgate' \
    $u/ccgate-poold.service || bad "ccgate-poold.service's ReadWritePaths"
grep -qx 'ListenStream=/run/ccgate/fcgi.sock' $u/ccgate-fcgi.socket ||
    bad "ccgate-fcgi.socket does not listen on /run/ccgate/fcgi.sock"
grep -q '^listen = /run/ccgate/fcgi.sock$' /etc/ccgate/ccgate.conf.sample ||
    bad "ccgate.conf.sample's listen is not the socket unit's"
grep -qx 'Documentation=file:/usr/share/doc/ccgate/install.md' \
    $u/ccgate-poold.service || bad "the units' Documentation="
ok "units, tmpfiles.d and logrotate rendered with the installed paths"
# systemd-analyze verify works without systemd as PID 1 (it loads the
# units from the unit path, checks ExecStart= programs exist, and needs
# no manager), so the installed units are verified in place, with every
# unit they name (ccgate-fcgi.socket, mariadb.service).
for unit in ccgate-poold.service ccgate-fcgi.socket ccgate-fcgi.service \
            ccgate-ws.service; do
    if out=$(systemd-analyze verify --man=no "$u/$unit" 2>&1) &&
       [ -z "$out" ]; then
        ok "systemd-analyze verify $u/$unit"
    else
        bad "systemd-analyze verify $u/$unit: $out"
    fi
done
# Nothing enabled, nothing started: no wants/ link, no process.
if ls /etc/systemd/system/*/ccgate-* >/dev/null 2>&1; then
    bad "a ccgate unit is enabled: $(ls /etc/systemd/system/*/ccgate-*)"
else
    ok "no unit enabled"
fi
# (Another test's daemons may run from a build tree: only the installed
# programs count.)
for p in $(pgrep -x 'ccgate-(poold|fcgi|ws)' 2>/dev/null); do
    case $(readlink "/proc/$p/exe" 2>/dev/null) in
    /usr/sbin/ccgate-*) bad "the installed $(readlink "/proc/$p/exe") runs (pid $p)" ;;
    esac
done

# The users and folders postinst made (sysusers.d, tmpfiles.d).
if getent passwd ccgate >/dev/null && getent group ccgate >/dev/null &&
   getent passwd ccgate-cli >/dev/null && getent group ccgate-cli >/dev/null; then
    ok "users ccgate and ccgate-cli and their groups exist"
else
    bad "postinst did not make the users ccgate and ccgate-cli"
fi
if id -nG ccgate-cli 2>/dev/null | tr ' ' '\n' | grep -qx ccgate; then
    bad "ccgate-cli is in the group ccgate"
fi
# mode owner group of each folder
for spec in "/etc/ccgate 750 root ccgate" "/run/ccgate 750 ccgate www-data" \
            "/run/ccgate/egress 750 root ccgate-cli" \
            "/var/lib/ccgate 711 root ccgate" "/var/log/ccgate 750 root adm" \
            "/var/lib/ccgate/fcgi-spool 700 ccgate ccgate"; do
    set -- $spec
    got=$(stat -c '%a %U %G' "$1" 2>/dev/null)
    if [ "$got" = "$2 $3 $4" ]; then
        ok "$1 is $got"
    else
        bad "$1 is '${got:-missing}', not $2 $3 $4"
    fi
done
if setpriv --reuid=ccgate-cli --regid=ccgate-cli --clear-groups \
        ls /etc/ccgate >/dev/null 2>&1; then
    bad "ccgate-cli can list /etc/ccgate"
else
    ok "ccgate-cli cannot enter /etc/ccgate"
fi

# The programs run: ccgate-admin's help, a secret as the docs make it.
if out=$(ccgate-admin --help 2>&1) && echo "$out" | grep -q '^usage: ccgate-admin'; then
    ok "ccgate-admin --help"
else
    bad "ccgate-admin --help: $out"
fi
# As docs/install.md makes it: root writes in /etc/ccgate, ccgate reads.
if ccgate-admin secret /etc/ccgate/key.secret &&
   chown ccgate: /etc/ccgate/key.secret &&
   [ "$(stat -c '%a %U' /etc/ccgate/key.secret)" = "600 ccgate" ] &&
   runuser -u ccgate -- cat /etc/ccgate/key.secret >/dev/null; then
    ok "ccgate-admin secret (mode 600, ccgate reads it)"
else
    bad "ccgate-admin secret /etc/ccgate/key.secret"
fi
if out=$(logrotate -d -s "$tmp/logrotate.state" /etc/logrotate.d/ccgate 2>&1) &&
   ! printf '%s\n' "$out" | grep -qi 'error'; then
    ok "logrotate parses /etc/logrotate.d/ccgate"
else
    bad "logrotate: $out"
fi

# The site and the egress rendered with the installed render from the
# installed templates, as docs/install.md does (the allowlists from
# /usr/share, scratch files for what the operator writes), pass nginx -t.
mkdir -p "$tmp/nginx" "$tmp/egress/tokens"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
    -keyout "$tmp/tls.key" -out "$tmp/tls.crt" >/dev/null 2>&1
printf 'proxy_set_header x-api-key "sk-ant-test";\nproxy_set_header authorization "";\n' \
    > "$tmp/egress-credential.conf"
n=/usr/share/ccgate/nginx
user=""
[ "$(id -u)" = 0 ] && user="user root root;"
if /usr/share/ccgate/render $n/ccgate-site.conf.in "$tmp/site.conf" \
        LISTEN=127.0.0.1:1 "TLS_CERT=$tmp/tls.crt" "TLS_KEY=$tmp/tls.key" \
        MAX_BODY=2m FILES_MAX_BODY=2g ERRORS_DIR=$n/errors FCGI_SOCKET=/run/ccgate/fcgi.sock \
        WS_SOCKET=/run/ccgate/ws.sock ADMIN_UI_DIR=/usr/share/ccgate/admin-ui \
        ADMIN_UI_CONF=$n/admin-ui.conf EDGE_DIR=$n/edge \
        RATE_PER_IP=50r/s BURST_PER_IP=100 RATE_PER_KEY=20r/s BURST_PER_KEY=40 \
        CONN_PER_IP=200 READ_TIMEOUT=660s "ACCESS_LOG=$tmp/nginx/access.log" &&
   /usr/share/ccgate/render $n/ccgate-egress.conf.in "$tmp/egress.conf" \
        EGRESS_SOCKET=/run/ccgate/egress/egress.sock \
        "EGRESS_TOKENS=$tmp/egress/tokens" "EGRESS_LOG=$tmp/nginx/egress.log" \
        "EGRESS_CREDENTIAL=$tmp/egress-credential.conf" \
        UPSTREAM_SERVER=127.0.0.1:443 UPSTREAM_SCHEME=https \
        UPSTREAM_HOST=api.anthropic.com &&
   /usr/share/ccgate/render $n/nginx-standalone.conf.in "$tmp/nginx.conf" \
        "USER_LINE=$user" "VAR_DIR=$tmp/nginx" "DAEMON_LINE=daemon off;" \
        "SITE_CONF=$tmp/site.conf" "EGRESS_CONF=$tmp/egress.conf" &&
   out=$(nginx -t -p "$tmp/nginx" -c "$tmp/nginx.conf" 2>&1); then
    ok "nginx -t on the installed site and egress templates"
else
    bad "nginx -t on the installed templates: ${out:-render failed}"
fi

# 3. Removed: the units go, the state and the configuration stay.
install -m 0640 -g ccgate /etc/ccgate/ccgate.conf.sample /etc/ccgate/ccgate.conf
echo state > /var/lib/ccgate/state-file
echo log > /var/log/ccgate/access.log
if DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq ccgate \
        >"$tmp/remove.log" 2>&1; then
    ok "apt-get remove ccgate"
else
    cat "$tmp/remove.log"
    bad "apt-get remove ccgate"
fi
[ ! -e /usr/sbin/ccgate-poold ] && [ ! -e $u/ccgate-poold.service ] ||
    bad "remove left the programs or the units"
if [ -f /etc/ccgate/key.secret ] && [ -f /etc/ccgate/ccgate.conf ] &&
   [ -f /var/lib/ccgate/state-file ] && [ -f /var/log/ccgate/access.log ]; then
    ok "remove keeps the configuration and the state"
else
    bad "remove deleted configuration or state"
fi

# 4. Purged: nothing of the package, no state.
if DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq ccgate \
        >"$tmp/purge.log" 2>&1; then
    ok "apt-get purge ccgate"
else
    cat "$tmp/purge.log"
    bad "apt-get purge ccgate"
fi
if installed ccgate; then
    bad "ccgate is still known to dpkg after purge"
fi
left=""
while read -r f; do
    # Shared folders (/usr/share/doc, /lib/systemd/system) stay; every
    # file and every folder of ccgate's own goes.
    if [ -e "$f" ] || [ -L "$f" ]; then
        if [ ! -d "$f" ] || case $f in *ccgate*) true ;; *) false ;; esac; then
            left="$left $f"
        fi
    fi
done < "$tmp/files"
for d in $state_dirs; do
    [ -e "$d" ] && left="$left $d"
done
for f in /var/lib/systemd/deb-systemd-helper-enabled/ccgate-* \
         /var/lib/systemd/deb-systemd-helper-masked/ccgate-*; do
    [ -e "$f" ] && left="$left $f"
done
if [ -z "$left" ]; then
    ok "purge leaves no file of the package and no state"
else
    bad "left after purge:$left"
fi
# The users stay (Debian does not delete system users: files they own
# elsewhere would get a reused id).
getent passwd ccgate >/dev/null &&
    echo "note: the users ccgate and ccgate-cli stay after purge (Debian policy)"
echo "check-deb.sh: $(( $(date +%s) - start )) s"
finish
