#!/bin/sh
# Run the fuzz target for the compatible dialects' histories (compat.c)
# over its seed corpus (or, built with --enable-fuzzing, fuzz it for
# CCGATE_FUZZ_SECONDS, default 10).
exec "$(dirname "$0")/run-target.sh" compat
