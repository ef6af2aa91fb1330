#!/usr/bin/env bash
# ansible-test sanity on exactly what ships: build the collection tarball, unpack it under
# a scratch ansible_collections/chenu/agents, and run every sanity test there (empty ignore file).
# The scratch tree sits outside this git checkout: inside it, ansible-test lists files through git
# and would find none of the (untracked) unpacked ones.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
work="${CHENU_SANITY_DIR:-${TMPDIR:-/tmp}/chenu-agents-sanity}"
rm -rf "$work" && mkdir -p "$work/dist" "$work/tree/ansible_collections/chenu/agents"
ansible-galaxy collection build --force --output-path "$work/dist" "$ROOT" >/dev/null
tar -xzf "$work"/dist/chenu-agents-*.tar.gz -C "$work/tree/ansible_collections/chenu/agents"
cd "$work/tree/ansible_collections/chenu/agents"
ansible-test sanity --venv --python 3.11 --color no "$@"
