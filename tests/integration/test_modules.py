"""Each module through ansible-playbook on this host: check, apply, check again, apply again, refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO

PLAYBOOKS = sorted((Path(__file__).parent / "playbooks").glob("*.yml"))
pytestmark = pytest.mark.integration


def ansible_playbook(playbook: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    args = [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,", str(playbook)]
    args += ["-e", f"ansible_connection=local ansible_python_interpreter={sys.executable}"]
    for key, value in extra.items():
        args += ["-e", f"{key}={value}"]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=[p.stem for p in PLAYBOOKS])
def test_module_playbook(playbook, tmp_path):
    run = ansible_playbook(playbook, work=str(tmp_path), examples=str(EXAMPLES))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
