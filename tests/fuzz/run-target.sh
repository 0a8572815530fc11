#!/bin/sh
# run-target.sh NAME: run tests/fuzz/fuzz_NAME.  A replay build runs every
# seed once; a libFuzzer build (--enable-fuzzing) fuzzes for a bounded time
# starting from the seeds, in a scratch copy of the corpus.
set -eu
name=$1
bin="$CCGATE_BUILDDIR/tests/fuzz/fuzz_$name"
seeds="$CCGATE_SRCDIR/tests/fuzz/corpus/$name"
if "$bin" -help=1 2>&1 | grep -q libFuzzer; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cp "$seeds"/* "$work"/
    exec "$bin" -max_total_time="${CCGATE_FUZZ_SECONDS:-10}" -max_len=65536 "$work"
fi
exec "$bin" "$seeds"
