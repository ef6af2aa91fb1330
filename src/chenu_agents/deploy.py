"""Put a signed bundle into one runtime slot and make the slot serve it, or leave the slot as it was.

A slot's settings file (written by the sandbox_runtime role) names its bundle as
`<slot dir>/current/agent.tar.zst`; this module owns what is behind that path:

    <slot dir>/releases/<version>-<digest[:16]>/agent.tar.zst      one directory per release,
    <slot dir>/releases/<version>-<digest[:16]>/agent.tar.zst.sig  rewritten only when the bundle is re-signed
    <slot dir>/current -> releases/<version>-<digest[:16]>         one symlink, swapped by one rename

One symlink to a directory (rather than two links, bundle and signature) means a runtime that starts or
reloads at any moment sees a matching pair.

Order: verify the staged bundle on this host the way the runtime will (trust store, expected agent and
version, the slot's own accepted versions), copy it into its release directory, swap `current`, make the
runtime load it (POST /admin/reload with an admin token, SIGHUP through the service manager, or a start
when the slot is not running), then wait until /health/ready says ready and /metrics' chenu_agent_info
names the new digest. A refusal or a timeout puts `current` and the accepted-versions file back; the
runtime keeps serving what it served, since a refused reload never swaps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chenu_agents.bundle import digest_bytes
from chenu_agents.errors import ChenuError, Problem, TamperedBundle
from chenu_agents.files import atomic_write
from chenu_agents.runtime.config import RuntimeConfig
from chenu_agents.signing import Statement, file_digest, signature_path_for, verify_bundle
from chenu_agents.trust import AcceptedVersions, TrustStore, dump_json

BUNDLE_NAME = "agent.tar.zst"
CURRENT = "current"
RELEASES = "releases"
MANAGERS = ("none", "supervisor", "systemd")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class DeployError(ChenuError):
    """The slot cannot be given this bundle; it keeps what it had."""


class ReloadRefused(DeployError):
    """The runtime verified the new bundle itself and refused it."""


class NotServing(DeployError):
    """The slot did not serve the new version, ready, within the timeout."""


@dataclass(frozen=True)
class Version:
    agent: str
    version: str
    digest: str

    def to_dict(self) -> dict[str, str]:
        return {"agent": self.agent, "version": self.version, "digest": self.digest}


@dataclass(frozen=True)
class Served(Version):
    ready: bool
    refused_reloads: float

    def describe(self) -> dict[str, Any]:
        return {**self.to_dict(), "ready": self.ready, "refused_reloads": self.refused_reloads}


# -- the slot -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    settings: Path
    config: RuntimeConfig

    @classmethod
    def load(cls, settings: str | os.PathLike[str]) -> Slot:
        settings = Path(settings)
        # The file alone: the module's own environment says nothing about the service's.
        config = RuntimeConfig.load(settings, environ={})
        problems = []
        if config.bundle.name != BUNDLE_NAME or config.bundle.parent.name != CURRENT:
            problems.append(
                Problem(str(settings), "bundle", f"<slot dir>/{CURRENT}/{BUNDLE_NAME} (got {config.bundle})")
            )
        if config.signature is not None and config.signature != signature_path_for(config.bundle):
            problems.append(
                Problem(str(settings), "signature", f"unset or {config.bundle}.sig (got {config.signature})")
            )
        if problems:
            raise DeployError(f"{settings}: not a slot laid out for deployment", problems)
        return cls(settings, config)

    @property
    def current(self) -> Path:
        return self.config.bundle.parent

    @property
    def releases(self) -> Path:
        return self.current.parent / RELEASES

    @property
    def url(self) -> str:
        # A wildcard bind is reached on loopback.
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.config.host, self.config.host)  # noqa: S104
        return f"http://[{host}]:{self.config.port}" if ":" in host else f"http://{host}:{self.config.port}"

    def installed(self) -> Version | None:
        """What `current` points at: version from its statement (unverified), digest of the file itself."""
        bundle = self.config.bundle
        if not bundle.is_file():
            return None
        try:
            statement = json.loads(self.config.signature_path.read_bytes())["statement"]
            agent, version = str(statement["agent"]), str(statement["version"])
        except (OSError, ValueError, KeyError, TypeError):
            agent, version = "?", "?"
        return Version(agent, version, file_digest(bundle))

    def probe(self, timeout_s: float = 2.0) -> Served | None:
        """What the running process serves, from /metrics and /health/ready; None when nothing answers."""
        try:
            status, text = _http("GET", f"{self.url}/metrics", timeout_s=timeout_s)
        except OSError:
            return None
        if status != 200:
            return None
        info, refused = None, 0.0
        for line in text.splitlines():
            name, _sep, rest = line.partition("{")
            if name not in ("chenu_agent_info", "chenu_agent_reloads_total"):
                continue
            labels = dict(_LABEL.findall(rest.rpartition("}")[0]))
            if labels.get("slot") != self.config.slot:
                continue
            if name == "chenu_agent_info" and rest.rpartition("}")[2].strip() not in ("0", "0.0"):
                info = labels
            elif name == "chenu_agent_reloads_total" and labels.get("outcome") == "refused":
                refused = float(rest.rpartition("}")[2].strip() or 0)
        if info is None:
            return None
        try:
            ready_status, _body = _http("GET", f"{self.url}/health/ready", timeout_s=timeout_s + 2)
        except OSError:
            ready_status = 0
        return Served(info.get("agent", "?"), info.get("version", "?"), info.get("digest", "?"), ready_status == 200,
                      refused)  # fmt: skip


def _http(method: str, url: str, *, token: str | None = None, timeout_s: float = 5.0) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)  # noqa: S310
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310  (http to the slot)
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except urllib.error.URLError as exc:
        reason = exc.reason if isinstance(exc.reason, OSError) else OSError(str(exc.reason))
        raise reason from None


# -- how the process is told ----------------------------------------------------------------------


class ServiceControl:
    """No service manager: the module can reload a running slot over HTTP, never start one."""

    manager = "none"
    can_start = False

    def __init__(self, service: str | None = None):
        self.service = service

    def start(self) -> None:
        raise DeployError("the slot is not running and no service manager was given to start it")

    def stop(self) -> None:
        raise DeployError("no service manager was given to stop the slot")

    def signal_reload(self) -> None:
        raise DeployError("no admin token to reload over HTTP and no service manager to send SIGHUP through")

    def _run(self, argv: list[str], tolerate: tuple[str, ...] = ()) -> None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeployError(f"{' '.join(argv)}: {exc}") from None
        output = (done.stdout + done.stderr).strip()
        if any(t in output for t in tolerate):
            return
        # supervisorctl 4 answers some failures with rc 0 and an ERROR line.
        if done.returncode != 0 or "ERROR" in output:
            raise DeployError(f"{' '.join(argv)} failed (rc={done.returncode}): {output}")


class Supervisor(ServiceControl):
    manager = "supervisor"
    can_start = True

    def start(self) -> None:
        # A program still retrying its start (BACKOFF) is "already started": its next try finds the bundle.
        self._run(["supervisorctl", "start", str(self.service)], tolerate=("already started",))

    def stop(self) -> None:
        self._run(["supervisorctl", "stop", str(self.service)], tolerate=("not running",))

    def signal_reload(self) -> None:
        self._run(["supervisorctl", "signal", "HUP", str(self.service)])


class Systemd(ServiceControl):
    manager = "systemd"
    can_start = True

    def start(self) -> None:
        self._run(["systemctl", "start", str(self.service)])

    def stop(self) -> None:
        self._run(["systemctl", "stop", str(self.service)])

    def signal_reload(self) -> None:
        self._run(["systemctl", "reload", str(self.service)])  # the unit's ExecReload sends SIGHUP


def select_control(manager: str = "none", service: str | None = None) -> ServiceControl:
    if manager not in MANAGERS:
        raise DeployError(f"service manager {manager!r} is not one of {', '.join(MANAGERS)}")
    if manager != "none" and not service:
        raise DeployError(f"service manager {manager} needs the slot's service name")
    return {"none": ServiceControl, "supervisor": Supervisor, "systemd": Systemd}[manager](service)


# -- deploy ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    changed: bool
    slot: str
    before: dict[str, Any]
    after: dict[str, Any]
    release: str | None = None
    reload: str | None = None
    running: bool = False
    serving: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def deploy(
    settings: str | os.PathLike[str],
    bundle: str | os.PathLike[str],
    *,
    signature: str | os.PathLike[str] | None = None,
    agent: str | None = None,
    version: str | None = None,
    allow_rollback: bool = False,
    admin_token: str | None = None,
    control: ServiceControl | None = None,
    wait: bool = True,
    timeout_s: float = 60.0,
    keep_releases: int = 3,
    check_mode: bool = False,
) -> Outcome:
    """Make the slot serve this bundle. Raises a ChenuError, slot untouched or put back, when it cannot."""
    slot = Slot.load(settings)
    control = control or ServiceControl()
    bundle = Path(bundle)
    sig = Path(signature) if signature else signature_path_for(bundle)
    accepted = AcceptedVersions(slot.config.accepted_versions)
    statement = verify_bundle(
        bundle,
        TrustStore.load(slot.config.trust_store),
        signature_path=sig,
        agent=agent or slot.config.agent,
        version=version,
        accepted=accepted,
        allow_rollback=allow_rollback,
    )
    new = Version(statement.agent, statement.version, statement.digest)
    served, installed = slot.probe(), slot.installed()
    before = {
        "installed": installed.to_dict() if installed else None,
        "serving": served.to_dict() if served else None,
    }
    after = {"installed": new.to_dict(), "serving": new.to_dict() if served or control.can_start else None}
    # Same bytes re-signed (after a rotation or a revocation) is a change too: the slot must load the
    # new statement, or it keeps one that may no longer verify.
    installed_sig = slot.current / f"{BUNDLE_NAME}.sig"
    resigned = installed is not None and (not installed_sig.is_file() or installed_sig.read_bytes() != sig.read_bytes())
    needs_install = installed is None or installed.digest != new.digest or resigned
    needs_load = served is None or served.digest != new.digest or resigned
    if needs_load and served is None and not control.can_start and wait:
        raise DeployError(
            f"slot {slot.config.slot} ({slot.url}) is not running and there is no service manager to start it; "
            "start it, give service_manager, or set wait=false to only install the bundle"
        )
    can_load = served is not None or control.can_start
    outcome = Outcome(
        changed=needs_install or (needs_load and can_load),
        slot=slot.config.slot,
        before=before,
        after=after,
        running=served is not None,
        serving=served.describe() if served else None,
    )
    if check_mode or not outcome.changed:
        return outcome

    release = _install(slot, bundle, sig, statement)
    outcome.release = str(release)
    previous = os.readlink(slot.current) if slot.current.is_symlink() else None
    accepted_bytes = slot.config.accepted_versions.read_bytes() if slot.config.accepted_versions.is_file() else None
    if allow_rollback and accepted.is_rollback(new.agent, new.version):
        # The operator asked for this version: the slot's record comes down to it, or the runtime
        # (which never lowers it itself) would refuse the reload as a rollback.
        data = accepted.load()
        data[new.agent] = new.version
        atomic_write(slot.config.accepted_versions, dump_json(data), 0o644)
    _point(slot.current, Path(RELEASES) / release.name)
    try:
        if needs_load and can_load:
            outcome.reload = _trigger(slot, control, served, admin_token)
            if wait:
                now = _wait_serving(slot, new, served, timeout_s)
                outcome.serving, outcome.running = now.describe(), True
    except ChenuError:
        _put_back(slot, previous, accepted_bytes, new, served, control, admin_token)
        raise
    _prune(slot, keep_releases, {release.name, Path(previous).name if previous else ""})
    return outcome


def _install(slot: Slot, bundle: Path, sig: Path, statement: Statement) -> Path:
    data, sig_data = bundle.read_bytes(), sig.read_bytes()
    if digest_bytes(data) != statement.digest:
        raise TamperedBundle(f"{bundle}: the file changed while it was being deployed")
    release = slot.releases / f"{statement.version}-{statement.digest.removeprefix('sha256:')[:16]}"
    release.mkdir(parents=True, exist_ok=True, mode=0o755)
    target = release / BUNDLE_NAME
    if not (target.is_file() and file_digest(target) == statement.digest):
        atomic_write(target, data, 0o644)
    atomic_write(release / f"{BUNDLE_NAME}.sig", sig_data, 0o644)
    return release


def _point(link: Path, target: Path | str | None) -> None:
    if target is None:
        link.unlink(missing_ok=True)
        return
    if link.exists() and not link.is_symlink():
        raise DeployError(f"{link} is not a symlink: move it away, the slot's bundle is managed through it")
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)  # rename(2) replaces the link itself, atomically


def _trigger(slot: Slot, control: ServiceControl, served: Served | None, admin_token: str | None) -> str:
    if served is None:
        control.start()
        return "start"
    if not admin_token:
        control.signal_reload()
        return "signal"
    try:
        status, body = _http("POST", f"{slot.url}/admin/reload", token=admin_token, timeout_s=120)
    except OSError as exc:
        raise DeployError(f"POST {slot.url}/admin/reload: {exc}") from None
    if status == 409:
        raise ReloadRefused(f"slot {slot.config.slot} refused the bundle: {_field(body, 'error')}")
    if status != 200:
        raise DeployError(f"POST {slot.url}/admin/reload answered {status}: {_field(body, 'error')}")
    return "http"


def _field(body: str, name: str) -> str:
    try:
        return str(json.loads(body).get(name) or body)
    except (ValueError, AttributeError):
        return body[:500]


def _wait_serving(slot: Slot, new: Version, served: Served | None, timeout_s: float) -> Served:
    deadline = time.monotonic() + timeout_s
    last: Served | None = None
    refused_before = served.refused_reloads if served else 0.0
    while True:
        last = slot.probe() or last
        if last is not None:
            if last.digest == new.digest and last.ready:
                return last
            if last.digest != new.digest and last.refused_reloads > refused_before:
                raise ReloadRefused(
                    f"slot {slot.config.slot} refused {new.agent} {new.version} on reload and still serves "
                    f"{last.version}; see its log"
                )
        if time.monotonic() >= deadline:
            seen = f"{last.version} {last.digest[:19]}..., ready={last.ready}" if last else "nothing answering"
            raise NotServing(
                f"slot {slot.config.slot} did not serve {new.agent} {new.version}, ready, within {timeout_s:g} s "
                f"(last seen: {seen})"
            )
        time.sleep(0.2)


def _put_back(
    slot: Slot,
    previous: str | None,
    accepted_bytes: bytes | None,
    new: Version,
    served: Served | None,
    control: ServiceControl,
    admin_token: str | None,
) -> None:
    _point(slot.current, previous)
    if accepted_bytes is None:
        slot.config.accepted_versions.unlink(missing_ok=True)
    else:
        atomic_write(slot.config.accepted_versions, accepted_bytes, 0o644)
    now = slot.probe()
    if served is not None and previous and now is not None and now.digest == new.digest:
        # It loaded the new version but never became ready: load the previous one again, best effort.
        try:
            _trigger(slot, control, now, admin_token)
        except ChenuError:
            pass


def _prune(slot: Slot, keep: int, protected: set[str]) -> None:
    if not slot.releases.is_dir():
        return
    releases = sorted((p for p in slot.releases.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    kept = 0
    for release in releases:
        if release.name in protected or kept < keep:
            kept += 1
            continue
        shutil.rmtree(release, ignore_errors=True)
