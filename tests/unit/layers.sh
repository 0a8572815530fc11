#!/bin/sh
# fcgi-app's layers, as the linker sees them (docs/architecture.md):
#  - the core (libccgate-core.a) uses nothing of the HTTP layer, of
#    libfcgi or of libwebsockets;
#  - the HTTP layer (libccgate-http.a) uses no transport library;
#  - within each layer no two files call each other, directly or round
#    a cycle (the route table and the turn_ops are the callbacks that
#    keep it so);
#  - ccgate-admin holds nothing of the HTTP layer and links no libfcgi,
#    and ccgate-ws links no libfcgi.
# Each check prints what broke it: the object and the symbol it takes
# from the layer above.
set -eu
build=${CCGATE_BUILDDIR:?}
failed=0

fail() {
    echo "FAILED: $*"
    failed=$((failed + 1))
}

defined() {		# the global symbols an archive defines
    nm -g --defined-only "$1" 2>/dev/null | awk 'NF == 3 { print $3 }' |
        sort -u
}

undefined_by_object() {	# "object symbol" for each undefined symbol
    nm -g --undefined-only -A "$1" | awk '{ n = split($1, p, ":");
        print p[n - 1], $NF }'
}

core="$build/libccgate-core.a"
http="$build/libccgate-http.a"
for f in "$core" "$http" "$build/ccgate-admin" "$build/ccgate-ws" \
    "$build/ccgate-fcgi"; do
    [ -f "$f" ] || { echo "FAILED: $f is not built"; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
defined "$http" >"$tmp/http"
[ -s "$tmp/http" ] || fail "nm found no symbol in $http"

undefined_by_object "$core" >"$tmp/core-undef"
awk 'NR == FNR { up[$1] = 1; next } ($2 in up) || $2 ~ /^(FCGX_|FCGI_|lws_)/' \
    "$tmp/http" "$tmp/core-undef" >"$tmp/bad"
if [ -s "$tmp/bad" ]; then
    fail "the core uses the layers above it:"
    cat "$tmp/bad"
else
    echo "ok: the core uses nothing of the HTTP layer, libfcgi or libwebsockets"
fi

undefined_by_object "$http" | awk '$2 ~ /^(FCGX_|FCGI_|lws_)/' >"$tmp/bad"
if [ -s "$tmp/bad" ]; then
    fail "the HTTP layer uses a transport library:"
    cat "$tmp/bad"
else
    echo "ok: the HTTP layer knows no transport library"
fi

# A file's calls into the other files of its layer, and any cycle.
for lib in "$core" "$http"; do
    if nm -A -g "$lib" | python3 -c '
import collections, sys
defined, used = {}, collections.defaultdict(set)
for line in sys.stdin:
    head, rest = line.rstrip("\n").rsplit(":", 1)
    obj = head.split(":")[-1].split("-")[-1][:-2]
    f = rest.split()
    if f[-2] == "U":
        used[obj].add(f[-1])
    else:
        defined[f[-1]] = obj
calls = {o: {defined[s] for s in u if defined.get(s, o) != o}
    for o, u in used.items()}
def reach(a, b, seen):
    for n in calls.get(a, ()):
        if n == b or (n not in seen and (seen.add(n) or reach(n, b, seen))):
            return True
    return False
bad = sorted(o for o in calls if reach(o, o, set()))
for o in bad:
    print("  %s -> %s" % (o, " ".join(sorted(calls[o]))))
sys.exit(1 if bad else 0)
' >"$tmp/bad"; then
        echo "ok: no cycle among the files of $(basename "$lib")"
    else
        fail "files of $(basename "$lib") in a cycle (each with its calls):"
        cat "$tmp/bad"
    fi
done

nm "$build/ccgate-admin" | awk 'NF == 3 { print $3 }' | sort -u >"$tmp/admin"
comm -12 "$tmp/http" "$tmp/admin" >"$tmp/bad"
if [ -s "$tmp/bad" ]; then
    fail "ccgate-admin carries the HTTP layer:"
    cat "$tmp/bad"
else
    echo "ok: ccgate-admin carries nothing of the HTTP layer"
fi

for prog in ccgate-admin ccgate-ws; do
    if readelf -d "$build/$prog" | grep -q 'NEEDED.*libfcgi'; then
        fail "$prog links libfcgi"
    else
        echo "ok: $prog links no libfcgi"
    fi
done
if readelf -d "$build/ccgate-fcgi" | grep -q 'NEEDED.*libfcgi'; then
    echo "ok: ccgate-fcgi links libfcgi (the check above can see it)"
else
    fail "ccgate-fcgi does not link libfcgi: this test sees nothing"
fi
[ "$failed" -eq 0 ]
