#!/bin/sh
# The unit tests again under valgrind's memcheck: no invalid access, no
# use of uninitialised memory, and no leak (definite or indirect) in any
# of them.  Check runs the cases in-process (CK_FORK=no) so that memcheck
# sees all of them.  Listed only in builds without sanitizers.
set -eu
build=${CCGATE_BUILDDIR:?}
failed=0
# check_pool is not among them: it starts processes (vfork, close_range
# in the child), which memcheck cannot follow; the ASan build runs it
# with LeakSanitizer instead.
# check_files under memcheck takes the O_NOFOLLOW walk: valgrind does not
# know openat2 (ENOSYS), the fallback older kernels get.
for t in check_proto check_conf check_cli check_app check_files; do
    log=$(mktemp)
    if CK_FORK=no valgrind --quiet --error-exitcode=99 --leak-check=full \
        --errors-for-leak-kinds=definite,indirect \
        --show-leak-kinds=definite,indirect --track-origins=yes \
        "$build/tests/unit/$t" >"$log" 2>&1; then
        echo "ok: $t under valgrind"
    else
        echo "FAILED: $t under valgrind:"
        cat "$log"
        failed=$((failed + 1))
    fi
    rm -f "$log"
done
[ "$failed" -eq 0 ]
