#!/usr/bin/env bash
# Prepare this machine from bare: Debian tools the project shells out to, then the Python
# environment in .venv with pinned requirements and the chenu_agents package (editable).
# Idempotent; the second run takes a second or two.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(git tar zstd openssl ca-certificates python3-venv)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
fi

PY="${CHENU_PYTHON:-$(command -v python3.11 || command -v python3)}"
if [[ ! -x "$VENV/bin/python" ]]; then
  step "create $VENV with $PY"
  "$PY" -m venv "$VENV"
fi

stamp="$VENV/.requirements.sha256"
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  step "pip install requirements into $VENV"
  pip_quiet() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v 'is neither a file nor a directory' || true; }; }
  pip_quiet --upgrade pip
  pip_quiet -r "$ROOT/requirements-dev.txt"
  pip_quiet --no-deps -e "$ROOT"
  echo "$want" >"$stamp"
fi

# ansible-test --venv downloads get-pip from the internet; give it our local stand-in.
pip_version="$("$VENV/bin/python" - <<'PY'
import re, pathlib, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal/python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", src.read_text()).group(1))
PY
)"
mkdir -p "$HOME/.ansible/test/cache"
install -m 0644 "$ROOT/scripts/ansible_test_get_pip.py" "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
