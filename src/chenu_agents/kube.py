"""Kubernetes objects of an agent's slots, and the traffic split they encode.

One Deployment and one Service per slot (labels app=<agent>, slot, version), a stable Service
`<agent>` that callers use, an HPA per slot with pods (autoscaling/v2, seed 000 §4.2: min 2, max 20,
CPU 70 %), a PodDisruptionBudget per slot with at least two pods, and an Ingress. Probes follow seed
000 §5.2: liveness /health/live every 10 s (timeout 5 s, 3 failures), readiness /health/ready every
5 s (timeout 3 s, 2 failures).

Two ways to split traffic (`routing`):
  ingress   the stable Service selects the slot with the most weight (blue-green is a change of that
            selector); an ingress-nginx canary Ingress sends the other slot its share
            (nginx.ingress.kubernetes.io/canary-weight). At most two slots carry weight.
  replicas  the stable Service selects every pod of the agent; `replicas` pods are shared between the
            slots per weight (a slot at 0 % runs none). The HPAs keep each slot between bounds scaled
            by its weight, so the ratio holds only roughly while they scale.

The objects go to one file, `<manifests_dir>/<agent>.yaml`, written only when its content changes; the
weights and states live in annotations of the Deployments, so the file is also the "before" of the
next change. Nothing here talks to a cluster: the Ansible module returns the objects for a
kubernetes.core.k8s task.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from chenu_agents.errors import Problem
from chenu_agents.files import write_if_changed
from chenu_agents.traffic import (
    SlotTraffic,
    Split,
    TrafficBackend,
    TrafficError,
    plan_targets,
    refusals,
    validate_request,
)

ANNOTATION_WEIGHT = "chenu.agents/weight"
ANNOTATION_STATE = "chenu.agents/state"
CANARY = "nginx.ingress.kubernetes.io/canary"
CANARY_WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"
STATUS = "rendered"  # health is the cluster's business (readiness probes), not observed here
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

LIVENESS = {"path": "/health/live", "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3}
READINESS = {"path": "/health/ready", "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 2}
DEFAULT_RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


def dns_name(agent: str) -> str:
    """Agent ids use underscores (legal_info); Kubernetes names may not (legal-info)."""
    return agent.replace("_", "-").lower()


def _probe(spec: Mapping[str, Any], port: str) -> dict[str, Any]:
    return {
        "httpGet": {"path": spec["path"], "port": port},
        "periodSeconds": spec["periodSeconds"],
        "timeoutSeconds": spec["timeoutSeconds"],
        "failureThreshold": spec["failureThreshold"],
    }


class KubernetesTraffic(TrafficBackend):
    def __init__(
        self,
        agent: str,
        manifests_dir: str | Path,
        *,
        namespace: str = "chenu-agents",
        slots: Mapping[str, Mapping[str, Any]] | None = None,
        routing: str = "ingress",
        host: str | None = None,
        ingress_class: str = "nginx",
        replicas: int = 10,
        min_replicas: int = 2,
        max_replicas: int = 20,
        cpu_target: int = 70,
        container_port: int = 8080,
        resources: Mapping[str, Any] | None = None,
        config_map: str | None = None,
    ):
        self.agent = agent
        self.name = dns_name(agent)
        self.path = Path(manifests_dir) / f"{agent}.yaml"
        self.namespace = namespace
        self.slots = {slot: dict(info or {}) for slot, info in (slots or {}).items()}
        self.routing = routing
        self.host = host or f"{self.name}.local"
        self.ingress_class = ingress_class
        self.replicas = replicas
        self.min_replicas = min_replicas
        self.max_replicas = max_replicas
        self.cpu_target = cpu_target
        self.container_port = container_port
        self.resources = dict(resources or DEFAULT_RESOURCES)
        self.config_map = config_map or f"{self.name}-runtime"
        self.where = str(self.path)
        self._check_options()

    def _check_options(self) -> None:
        problems = []
        if not _NAME.match(self.name):
            problems.append(
                Problem("(task)", "agent", "letters, digits, '-' or '_' (a Kubernetes name once '_' is '-')")
            )
        if self.routing not in ("ingress", "replicas"):
            problems.append(Problem("(task)", "routing", "ingress or replicas"))
        if not 1 <= self.min_replicas <= self.max_replicas:
            problems.append(Problem("(task)", "min_replicas", f"between 1 and max_replicas ({self.max_replicas})"))
        if self.replicas < 1:
            problems.append(Problem("(task)", "replicas", "at least 1"))
        if not 1 <= self.cpu_target <= 100:
            problems.append(Problem("(task)", "cpu_target", "a percentage 1-100"))
        for slot, info in self.slots.items():
            if not _NAME.match(slot):
                problems.append(Problem("(task)", f"slots.{slot}", "a lowercase DNS label"))
            unknown = sorted(set(info) - {"image", "version"})
            if unknown:
                problems.append(Problem("(task)", f"slots.{slot}", f"keys image and version only, got {unknown}"))
            if "version" in info and not _LABEL_VALUE.match(str(info["version"])):
                problems.append(Problem("(task)", f"slots.{slot}.version", "a valid label value (e.g. 1.2.0)"))
        if problems:
            raise TrafficError("Kubernetes traffic options refused", problems)

    # -------------------------------------------------------------------------------- the file as state

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            return [doc for doc in yaml.safe_load_all(self.path.read_text()) if doc]
        except yaml.YAMLError as exc:
            raise TrafficError(f"{self.path}: not YAML: {exc}") from exc

    def _deployed(self, docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Slot -> {weight, state, image, version} from the Deployments of an earlier run."""
        out = {}
        for doc in docs:
            if doc.get("kind") != "Deployment":
                continue
            meta = doc["metadata"]
            labels, notes = meta.get("labels", {}), meta.get("annotations", {})
            out[labels["slot"]] = {
                "weight": int(notes.get(ANNOTATION_WEIGHT, 0)),
                "state": notes.get(ANNOTATION_STATE, "ready"),
                "image": doc["spec"]["template"]["spec"]["containers"][0]["image"],
                "version": labels.get("version", ""),
            }
        return out

    def _stable_slot(self, docs: list[dict[str, Any]]) -> str | None:
        for doc in docs:
            if doc.get("kind") == "Service" and doc["metadata"]["name"] == self.name:
                return doc["spec"]["selector"].get("slot")
        return None

    def read(self) -> dict[str, SlotTraffic]:
        return {
            slot: SlotTraffic(weight=d["weight"], state=d["state"], up=True, status=STATUS)
            for slot, d in sorted(self._deployed(self._load()).items())
        }

    # -------------------------------------------------------------------------------------- the change

    def apply(
        self, weights: Mapping[str, Any], slot_states: Mapping[str, str] | None = None, *, check_mode: bool = False
    ) -> Split:
        docs = self._load()
        deployed = self._deployed(docs)
        known = sorted(set(deployed) | set(self.slots))
        current = {
            slot: SlotTraffic(
                weight=deployed.get(slot, {}).get("weight", 0),
                state=deployed.get(slot, {}).get("state", "ready"),
                up=True,
                status=STATUS if slot in deployed else "new",
            )
            for slot in known
        }
        weights_, states = validate_request(weights, slot_states, known, self.where)
        targets = plan_targets(current, weights_, states)
        problems = refusals(current, targets, self.where)
        releases = {slot: {**deployed.get(slot, {}), **self.slots.get(slot, {})} for slot in known}
        for slot, release in releases.items():
            if not release.get("image"):
                problems.append(Problem(self.where, f"slots.{slot}.image", "the container image of this slot"))
        carrying = [slot for slot, target in targets.items() if target[0] > 0]
        if self.routing == "ingress" and len(carrying) > 2:
            problems.append(
                Problem(self.where, "weights", f"at most two slots with weight for routing=ingress, got {carrying}")
            )
        if problems:
            raise TrafficError("traffic split refused, nothing changed", problems)

        objects = self.render(targets, releases, self._stable_slot(docs))
        text = yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)
        old = self.path.read_text() if self.path.is_file() else None
        changed = old != text
        if changed and not check_mode:
            write_if_changed(self.path, text.encode(), 0o644)
        after = {slot: SlotTraffic(w, st, True, STATUS) for slot, (w, st) in targets.items()}
        return Split(current, after, changed, {"manifests": objects, "path": str(self.path)})

    def render(
        self,
        targets: Mapping[str, tuple[int, str]],
        releases: Mapping[str, Mapping[str, Any]],
        previous_stable: str | None = None,
    ) -> list[dict[str, Any]]:
        """Every object, in apply order: Deployments, Services, HPAs, PDBs, Ingresses."""
        stable = self.primary(targets, previous_stable)
        pods = self.pods(targets)
        deployments, services, hpas, pdbs = [], [], [], []
        for slot, (weight, state) in targets.items():
            deployments.append(self.deployment(slot, releases[slot], weight, state, pods[slot]))
            services.append(self.service(f"{self.name}-{slot}", {"app": self.name, "slot": slot}))
            if pods[slot]:
                hpas.append(self.hpa(slot, weight))
            if pods[slot] >= 2:
                pdbs.append(self.pdb(slot))
        selector = {"app": self.name} if self.routing == "replicas" else {"app": self.name, "slot": stable}
        services.append(self.service(self.name, selector))
        ingresses = [self.ingress(self.name, self.name)]
        if self.routing == "ingress":
            others = [s for s in targets if s != stable]
            if others:
                canary = sorted(others, key=lambda s: (-targets[s][0], s))[0]
                ingresses.append(self.ingress(f"{self.name}-canary", f"{self.name}-{canary}", targets[canary][0]))
        return deployments + services + hpas + pdbs + ingresses

    def primary(self, targets: Mapping[str, tuple[int, str]], previous: str | None) -> str:
        """The slot the stable Service selects: the most weight; on a tie, the one it selected already."""
        top = max(weight for weight, _state in targets.values())
        tied = sorted(slot for slot, target in targets.items() if target[0] == top)
        return previous if previous in tied else tied[0]

    def pods(self, targets: Mapping[str, tuple[int, str]]) -> dict[str, int]:
        out = {}
        for slot, (weight, state) in targets.items():
            if state == "maint":
                out[slot] = 0
            elif self.routing == "replicas":
                out[slot] = max(1, round(self.replicas * weight / 100)) if weight else 0
            else:
                # Every slot in service keeps its minimum: a canary at 0 % or a blue kept warm for switch-back.
                out[slot] = self.min_replicas
        return out

    def _meta(self, name: str, labels: Mapping[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": self.namespace}
        meta["labels"] = {"app": self.name, "app.kubernetes.io/managed-by": "chenu.agents", **(labels or {})}
        meta.update(extra)
        return meta

    def deployment(
        self, slot: str, release: Mapping[str, Any], weight: int, state: str, replicas: int
    ) -> dict[str, Any]:
        version = str(release.get("version", ""))
        labels = {"app": self.name, "slot": slot, "version": version}
        container = {
            "name": "runtime",
            "image": release["image"],
            "command": ["python", "-m", "chenu_agents.runtime", "--config", "/etc/chenu-agents/runtime.yaml"],
            "env": [
                {"name": "CHENU_RUNTIME_AGENT", "value": self.agent},
                {"name": "CHENU_RUNTIME_SLOT", "value": slot},
                {"name": "CHENU_RUNTIME_HOST", "value": "0.0.0.0"},  # noqa: S104  # inside the pod
                {"name": "CHENU_RUNTIME_PORT", "value": str(self.container_port)},
            ],
            "ports": [{"name": "http", "containerPort": self.container_port, "protocol": "TCP"}],
            "livenessProbe": _probe(LIVENESS, "http"),
            "readinessProbe": _probe(READINESS, "http"),
            "resources": self.resources,
            "volumeMounts": [{"name": "settings", "mountPath": "/etc/chenu-agents", "readOnly": True}],
        }
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self._meta(
                f"{self.name}-{slot}",
                labels,
                annotations={ANNOTATION_WEIGHT: str(weight), ANNOTATION_STATE: state},
            ),
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": self.name, "slot": slot}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 45,
                        "containers": [container],
                        "volumes": [{"name": "settings", "configMap": {"name": self.config_map}}],
                    },
                },
            },
        }

    def service(self, name: str, selector: Mapping[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self._meta(name),
            "spec": {
                "type": "ClusterIP",
                "selector": dict(selector),
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            },
        }

    def hpa(self, slot: str, weight: int) -> dict[str, Any]:
        low, high = self.min_replicas, self.max_replicas
        if self.routing == "replicas":
            low = max(1, round(self.replicas * weight / 100))
            high = max(low, round(self.max_replicas * weight / 100))
        return {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": self._meta(f"{self.name}-{slot}", {"slot": slot}),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{self.name}-{slot}"},
                "minReplicas": low,
                "maxReplicas": high,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": self.cpu_target},
                        },
                    }
                ],
            },
        }

    def pdb(self, slot: str) -> dict[str, Any]:
        return {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": self._meta(f"{self.name}-{slot}", {"slot": slot}),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": self.name, "slot": slot}}},
        }

    def ingress(self, name: str, service: str, canary_weight: int | None = None) -> dict[str, Any]:
        extra = {}
        if canary_weight is not None:
            extra["annotations"] = {CANARY: "true", CANARY_WEIGHT: str(canary_weight)}
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": self._meta(name, **extra),
            "spec": {
                "ingressClassName": self.ingress_class,
                "rules": [
                    {
                        "host": self.host,
                        "http": {
                            "paths": [
                                {
                                    "path": "/",
                                    "pathType": "Prefix",
                                    "backend": {"service": {"name": service, "port": {"name": "http"}}},
                                }
                            ]
                        },
                    }
                ],
            },
        }
