from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chenu_agents.errors import SandboxError
from chenu_agents.sandbox import Limits, Permissions, PooledSandbox, Sandbox, default_cache_dir

DOUBLE = "def handle(args):\n    print('computing')\n    return {'value': args['x'] * 2}\n"


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    # The runtime's own cache: compiling the interpreter takes seconds, loading it milliseconds.
    return default_cache_dir()


@pytest.fixture(scope="module")
def sandbox(cache_dir: Path):
    with Sandbox(cache_dir=cache_dir) as box:
        yield box


def test_handler_runs_and_returns_its_dict(sandbox: Sandbox) -> None:
    run = sandbox.run(DOUBLE, {"x": 21})
    assert run.ok, run.error
    assert run.result == {"value": 42}
    assert run.logs == "computing\n"
    assert run.error is None and not run.stdout_truncated
    assert 0 < run.duration_s < 2


def test_standard_library_is_available(sandbox: Sandbox) -> None:
    source = (
        "import json, math, decimal, re, datetime, statistics, fractions\n"
        "def handle(args):\n"
        "    return {'mean': statistics.mean(args['xs']), 'pi': round(math.pi, 3),\n"
        "            'd': str(decimal.Decimal('0.1') * 3)}\n"
    )
    run = sandbox.run(source, {"xs": [1, 2, 3]})
    assert run.result == {"mean": 2, "pi": 3.142, "d": "0.3"}


def test_second_sandbox_loads_the_compiled_module_from_cache(sandbox: Sandbox, cache_dir: Path) -> None:
    started = time.perf_counter()
    with Sandbox(cache_dir=cache_dir) as again:
        loaded = time.perf_counter() - started
        assert again.module_source == "cache"
        assert again.run(DOUBLE, {"x": 1}).result == {"value": 2}
    assert loaded < 1.0


ESCAPES = {
    "read_etc_passwd": (
        "def handle(args):\n    return {'data': open('/etc/passwd').read()}\n",
        "exception",
        "No such file",
    ),
    "list_root": (
        "import os\ndef handle(args):\n    return {'ls': os.listdir('/')}\n",
        "exception",
        "No such file",
    ),
    "open_socket": (
        "import socket\n"
        "def handle(args):\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "    s.connect(('127.0.0.1', 22))\n"
        "    return {}\n",
        "exception",
        "OSError",
    ),
    "os_system": (
        "import os\ndef handle(args):\n    return {'rc': os.system('id')}\n",
        "exception",
        "has no attribute 'system'",
    ),
    "subprocess": (
        "import subprocess\n"
        "def handle(args):\n"
        "    return {'out': subprocess.run(['id'], capture_output=True).stdout}\n",
        "exception",
        "",
    ),
    "infinite_loop": ("def handle(args):\n    while True:\n        pass\n", "timeout", "timed out"),
    "long_sleep": ("import time\ndef handle(args):\n    time.sleep(60)\n", "timeout", "timed out"),
    "memory_bomb": (
        "def handle(args):\n    hoard = []\n    while True:\n        hoard.append(bytearray(1 << 20))\n",
        "memory",
        "MemoryError",
    ),
    "one_huge_allocation": (
        "def handle(args):\n    return {'n': len(bytearray(1 << 30))}\n",
        "memory",
        "MemoryError",
    ),
    "output_flood": (
        "def handle(args):\n    while True:\n        print('x' * 4096)\n",
        "output",
        "output over",
    ),
    "huge_result": (
        "def handle(args):\n    return {'blob': 'y' * (1 << 20)}\n",
        "output",
        "output over",
    ),
    "exit_early": ("import sys\ndef handle(args):\n    sys.exit(0)\n", "exception", "SystemExit"),
    "not_a_dict": ("def handle(args):\n    return [1, 2]\n", "exception", "expected dict"),
    "no_entrypoint": ("def other(args):\n    return {}\n", "exception", "no callable 'handle'"),
    "syntax_error": ("def handle(args) return {}\n", "exception", "SyntaxError"),
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_is_contained_and_next_call_works(sandbox: Sandbox, name: str) -> None:
    source, kind, fragment = ESCAPES[name]
    limits = Limits(timeout_ms=400, memory_mb=48, output_bytes=64 * 1024)
    started = time.perf_counter()
    run = sandbox.run(source, {}, limits=limits)
    assert not run.ok
    assert run.result is None
    assert run.error_kind == kind, run.error
    assert fragment in run.error
    assert time.perf_counter() - started < 2.0
    assert sandbox.run(DOUBLE, {"x": 2}).result == {"value": 4}


def test_output_flood_reports_truncation(sandbox: Sandbox) -> None:
    source, _, _ = ESCAPES["output_flood"]
    run = sandbox.run(source, {}, limits=Limits(output_bytes=10_000))
    assert run.stdout_truncated
    assert len(run.logs) <= 10_000


def test_environment_is_empty_unless_granted(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHENU_TOOL_TOKEN", "granted-value")
    monkeypatch.setenv("CHENU_SECRET", "must-not-leak")
    source = "import os\ndef handle(args):\n    return dict(os.environ)\n"
    assert sandbox.run(source, {}).result == {}
    granted = Permissions(env=("CHENU_TOOL_TOKEN", "ABSENT_VAR"))
    assert sandbox.run(source, {}, permissions=granted).result == {"CHENU_TOOL_TOKEN": "granted-value"}


def test_filesystem_grant_mounts_only_the_workdir(sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "rates.json").write_text('{"eur": 1.5}')
    source = (
        "import json\n"
        "def handle(args):\n"
        "    rates = json.load(open('/data/rates.json'))\n"
        "    try:\n"
        "        open('/data/out.txt', 'w').write('x')\n"
        "        wrote = True\n"
        "    except OSError:\n"
        "        wrote = False\n"
        "    return {'eur': rates['eur'], 'wrote': wrote}\n"
    )
    denied = sandbox.run(source, {})
    assert denied.error_kind == "exception" and "No such file" in denied.error
    read_only = Permissions(filesystem="read_only")
    assert sandbox.run(source, {}, permissions=read_only, workdir=tmp_path).result == {
        "eur": 1.5,
        "wrote": False,
    }
    assert not (tmp_path / "out.txt").exists()
    read_write = Permissions(filesystem="read_write")
    assert sandbox.run(source, {}, permissions=read_write, workdir=tmp_path).result["wrote"]
    assert (tmp_path / "out.txt").read_text() == "x"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"network": "outbound"}, "no sockets"),
        ({"filesystem": "everything"}, "unknown grant"),
    ],
)
def test_refused_grants(data: dict, message: str) -> None:
    with pytest.raises(SandboxError, match=message):
        Permissions.from_definition(data)


def test_filesystem_grant_needs_a_workdir(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="no workdir"):
        sandbox.run(DOUBLE, {"x": 1}, permissions=Permissions(filesystem="read_only"))


def test_arguments_must_be_json(sandbox: Sandbox) -> None:
    with pytest.raises(SandboxError, match="not JSON"):
        sandbox.run(DOUBLE, {"x": object()})


def test_limits_and_permissions_from_tool_definition() -> None:
    limits = Limits.from_definition({"timeout_ms": 100, "memory_mb": 32, "fuel": 10})
    assert (limits.timeout_ms, limits.memory_mb, limits.fuel) == (100, 32, 10)
    assert Limits.from_definition(None) == Limits()
    assert Permissions.from_definition({"env": ["A_B"]}).env == ("A_B",)


def test_wrong_interpreter_digest_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "python.wasm"
    fake.write_bytes(b"\0asm\x01\0\0\0")
    with pytest.raises(SandboxError, match="sha256"):
        Sandbox(wasm_path=fake, cache_dir=tmp_path)


def test_missing_interpreter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="not found"):
        Sandbox(wasm_path=tmp_path / "absent.wasm", cache_dir=tmp_path)


def test_fuel_budget_stops_cpu_and_reports_use(cache_dir: Path) -> None:
    with Sandbox(cache_dir=cache_dir, consume_fuel=True) as box:
        ok = box.run(DOUBLE, {"x": 3})
        assert ok.result == {"value": 6}
        assert ok.fuel_used and ok.fuel_used > 1_000_000
        spin = box.run(ESCAPES["infinite_loop"][0], {}, limits=Limits(fuel=2 * ok.fuel_used))
        assert spin.error_kind == "fuel"
        assert box.run(DOUBLE, {"x": 4}).result == {"value": 8}


def test_short_sleep_returns_in_time(sandbox: Sandbox) -> None:
    # The clock subscription's timeout sits after 4 bytes of padding: read without it, any sleep
    # looked endless and ended at the deadline.
    run = sandbox.run("import time\ndef handle(args):\n    time.sleep(0.05)\n    return {'slept': True}\n", {})
    assert run.ok, run.error
    assert 0.05 <= run.duration_s < 1.0


# -- pooled mode -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pooled(cache_dir: Path):
    with PooledSandbox(cache_dir=cache_dir) as box:
        yield box


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_pooled_escape_is_contained_and_next_call_works(pooled: PooledSandbox, name: str) -> None:
    source, kind, fragment = ESCAPES[name]
    limits = Limits(timeout_ms=400, memory_mb=48, output_bytes=64 * 1024)
    started = time.perf_counter()
    run = pooled.run(source, {}, limits=limits)
    assert not run.ok
    assert run.error_kind == kind, run.error
    assert fragment in run.error
    assert time.perf_counter() - started < 2.0
    # A second call of the same failing handler gets a fresh interpreter and fails the same way.
    again = pooled.run(source, {}, limits=limits)
    assert again.error_kind == kind, again.error
    assert pooled.run(DOUBLE, {"x": 2}).result == {"value": 4}


def test_pooled_warm_calls_skip_the_interpreter_start(pooled: PooledSandbox) -> None:
    source = "import statistics\ndef handle(args):\n    return {'mean': statistics.mean(args['xs'])}\n"
    assert pooled.run(source, {"xs": [1, 2, 3]}).result == {"mean": 2}
    warm = []
    for i in range(20):
        started = time.perf_counter()
        assert pooled.run(source, {"xs": [i, i]}).result == {"mean": i}
        warm.append(time.perf_counter() - started)
    assert sorted(warm)[len(warm) // 2] < 0.01


def test_pooled_calls_get_a_fresh_namespace_and_no_stdin(pooled: PooledSandbox) -> None:
    counter = "seen = []\ndef handle(args):\n    seen.append(args['x'])\n    return {'seen': seen}\n"
    assert [pooled.run(counter, {"x": i}).result for i in range(3)] == [{"seen": [i]} for i in range(3)]
    reader = "import sys\ndef handle(args):\n    return {'stdin': sys.stdin.read()}\n"
    assert pooled.run(reader, {"x": "secret"}).result == {"stdin": ""}
    assert pooled.run(reader, {}).result == {"stdin": ""}


def test_pooled_serves_concurrent_calls(pooled: PooledSandbox) -> None:
    with ThreadPoolExecutor(8) as threads:
        results = list(threads.map(lambda i: pooled.run(DOUBLE, {"x": i}).result, range(40)))
    assert results == [{"value": 2 * i} for i in range(40)]


def test_pooled_filesystem_grant_runs_per_call(pooled: PooledSandbox, tmp_path: Path) -> None:
    (tmp_path / "rates.json").write_text('{"eur": 1.5}')
    source = "import json\ndef handle(args):\n    return json.load(open('/data/rates.json'))\n"
    granted = Permissions(filesystem="read_only")
    assert pooled.run(source, {}, permissions=granted, workdir=tmp_path).result == {"eur": 1.5}
    assert pooled.run(source, {}).error_kind == "exception"


def test_pooled_mode_refuses_fuel(cache_dir: Path) -> None:
    with pytest.raises(SandboxError, match="fuel"):
        PooledSandbox(cache_dir=cache_dir, consume_fuel=True)


def test_pooled_retain_stops_the_workers_of_dropped_handlers(cache_dir: Path) -> None:
    triple = DOUBLE.replace("* 2", "* 3")
    with PooledSandbox(cache_dir=cache_dir) as box:
        assert box.run(DOUBLE, {"x": 1}).ok and box.run(triple, {"x": 1}).ok
        assert box.retain([triple]) == 1
        assert box.run(DOUBLE, {"x": 2}).result == {"value": 4}  # still served, then stopped
        assert box.retain([triple]) == 0
        assert box.run(triple, {"x": 2}).result == {"value": 6}
