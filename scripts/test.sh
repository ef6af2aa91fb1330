#!/usr/bin/env bash
# The whole test suite, from a bare machine: setup, then lint (ruff, ansible-lint),
# ansible-test sanity on the built collection, then pytest (unit, module integration,
# molecule scenarios, end-to-end). Pass pytest arguments through, e.g. `scripts/test.sh -m "not e2e"`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"

step "ruff"
ruff check src tests bench plugins scripts
ruff format --check src tests bench scripts

step "ansible-lint (production profile)"
ansible-lint --profile production --offline

step "ansible-test sanity (built collection)"
bash "$ROOT/scripts/sanity.sh"

step "pytest"
exec pytest "$@"
