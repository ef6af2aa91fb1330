# Shared by the scripts in this folder. Sourced, not run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
export ANSIBLE_CONFIG="$ROOT/ansible.cfg"
export PATH="$VENV/bin:$PATH"
step() { printf '\n==> %s\n' "$*"; }
