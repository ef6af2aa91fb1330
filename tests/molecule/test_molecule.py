"""Every molecule scenario (molecule/<scenario>/molecule.yml), each its own test: converge,
idempotence and verify on this host, with the shared base of .config/molecule/config.yml.

The scenarios drive the real services of this host, so they must not run in parallel with each
other or with the e2e tests (with pytest-xdist, use --dist loadgroup: they share one group).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("this_host")]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str) -> None:
    bindir = Path(sys.executable).parent
    molecule = bindir / "molecule"
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "NO_COLOR": "1",
        "PY_COLORS": "0",
    }
    done = subprocess.run(
        [str(molecule) if molecule.exists() else "molecule", "test", "-s", scenario],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"molecule test -s {scenario} failed (rc={done.returncode}):\n{output[-8000:]}"
