#!/bin/sh
# Run the fuzz target for the request input (body, key, token)
# over its seed corpus (or, built with --enable-fuzzing, fuzz it for
# CCGATE_FUZZ_SECONDS, default 10).
exec "$(dirname "$0")/run-target.sh" request
