#!/bin/sh
# Run the CLI line parser's fuzz target over its seed corpus (see run-proto.sh).
exec "$(dirname "$0")/run-target.sh" cli
