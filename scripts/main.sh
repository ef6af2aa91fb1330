#!/usr/bin/env bash
# The main job on the local inventory: setup, then playbooks/main.yml (everything on this host).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec ansible-playbook -i inventories/local playbooks/main.yml "$@"
