"""Kubernetes manifests of an agent's slots: validated against the API schemas, and the split they encode."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from chenu_agents.kube import CANARY, CANARY_WEIGHT, KubernetesTraffic
from chenu_agents.traffic import TrafficError, select_backend

# The newest schemas kubernetes-validate ships, and an older release still widely run.
VERSIONS = [kubernetes_validate.latest_version(), "1.30.0"]
RELEASES = {
    "blue": {"image": "registry.example/chenu/runtime:1.2.0", "version": "1.2.0"},
    "green": {"image": "registry.example/chenu/runtime:1.3.0", "version": "1.3.0"},
}


def kube(tmp_path, **options) -> KubernetesTraffic:
    return KubernetesTraffic("legal_info", tmp_path, slots=options.pop("slots", RELEASES), **options)


def by(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("routing", ["ingress", "replicas"])
@pytest.mark.parametrize("weights", [{"blue": 100}, {"blue": 95, "green": 5}, {"blue": 50, "green": 50}])
def test_every_manifest_validates(tmp_path, version, routing, weights):
    split = kube(tmp_path, routing=routing).apply(weights, {"green": "maint"} if weights == {"blue": 100} else None)
    kinds = {o["kind"] for o in split.details["manifests"]}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "Ingress"} <= kinds
    for obj in split.details["manifests"]:
        kubernetes_validate.validate(obj, version, strict=True)
    # The file holds the same objects, and validates as a file too.
    assert list(yaml.safe_load_all((tmp_path / "legal_info.yaml").read_text())) == split.details["manifests"]


def test_schema_validation_catches_a_bad_object(tmp_path):
    obj = by(kube(tmp_path).apply({"blue": 100}).details["manifests"], "Deployment", "legal-info-blue")
    obj["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, VERSIONS[0], strict=True)


def test_deployment_probes_labels_and_command(tmp_path):
    objects = kube(tmp_path).apply({"blue": 95, "green": 5}).details["manifests"]
    deployment = by(objects, "Deployment", "legal-info-green")
    assert deployment["metadata"]["labels"]["version"] == "1.3.0"
    assert deployment["spec"]["template"]["metadata"]["labels"] == {
        "app": "legal-info",
        "slot": "green",
        "version": "1.3.0",
    }
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["python", "-m", "chenu_agents.runtime"]
    live, ready = container["livenessProbe"], container["readinessProbe"]
    assert (live["httpGet"]["path"], live["periodSeconds"], live["timeoutSeconds"], live["failureThreshold"]) == (
        "/health/live",
        10,
        5,
        3,
    )
    assert (ready["httpGet"]["path"], ready["periodSeconds"], ready["timeoutSeconds"], ready["failureThreshold"]) == (
        "/health/ready",
        5,
        3,
        2,
    )
    assert container["resources"]["requests"]["cpu"] == "250m"


def test_hpa_follows_seed(tmp_path):
    hpa = by(kube(tmp_path).apply({"blue": 100}).details["manifests"], "HorizontalPodAutoscaler", "legal-info-blue")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_ingress_canary_weight_and_stable_selector(tmp_path):
    objects = kube(tmp_path).apply({"blue": 95, "green": 5}).details["manifests"]
    assert by(objects, "Service", "legal-info")["spec"]["selector"] == {"app": "legal-info", "slot": "blue"}
    canary = by(objects, "Ingress", "legal-info-canary")
    assert canary["metadata"]["annotations"] == {CANARY: "true", CANARY_WEIGHT: "5"}
    assert canary["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "legal-info-green"
    assert "annotations" not in by(objects, "Ingress", "legal-info")["metadata"]


def test_blue_green_is_a_selector_change_and_a_tie_keeps_the_stable_slot(tmp_path):
    traffic = kube(tmp_path)
    traffic.apply({"blue": 100})
    half = traffic.apply({"blue": 50, "green": 50}).details["manifests"]
    assert by(half, "Service", "legal-info")["spec"]["selector"]["slot"] == "blue"
    switched = traffic.apply({"green": 100})
    objects = switched.details["manifests"]
    assert by(objects, "Service", "legal-info")["spec"]["selector"] == {"app": "legal-info", "slot": "green"}
    assert by(objects, "Ingress", "legal-info-canary")["metadata"]["annotations"][CANARY_WEIGHT] == "0"
    # Blue stays warm (its pods and HPA) for an instant switch back.
    assert by(objects, "Deployment", "legal-info-blue")["spec"]["replicas"] == 2
    assert switched.before["blue"].weight == 50 and switched.after["green"].weight == 100


def test_replica_ratio(tmp_path):
    objects = kube(tmp_path, routing="replicas", replicas=20).apply({"blue": 75, "green": 25}).details["manifests"]
    assert by(objects, "Service", "legal-info")["spec"]["selector"] == {"app": "legal-info"}
    assert by(objects, "Deployment", "legal-info-blue")["spec"]["replicas"] == 15
    assert by(objects, "Deployment", "legal-info-green")["spec"]["replicas"] == 5
    assert not [o for o in objects if o["metadata"]["name"] == "legal-info-canary"]
    hpa = by(objects, "HorizontalPodAutoscaler", "legal-info-green")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (5, 5)
    zero = kube(tmp_path, routing="replicas").apply({"blue": 100}).details["manifests"]
    assert by(zero, "Deployment", "legal-info-green")["spec"]["replicas"] == 0
    assert not [o for o in zero if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"].endswith("green")]


def test_idempotent_and_check_mode(tmp_path):
    path = tmp_path / "legal_info.yaml"
    check = kube(tmp_path).apply({"blue": 95, "green": 5}, check_mode=True)
    assert check.changed and not path.exists()
    assert kube(tmp_path).apply({"blue": 95, "green": 5}).changed
    mtime = path.stat().st_mtime_ns
    again = kube(tmp_path).apply({"blue": 95, "green": 5})
    assert not again.changed and path.stat().st_mtime_ns == mtime
    # Slots and releases come back from the file when the task does not repeat them.
    assert not kube(tmp_path, slots={}).apply({"blue": 95, "green": 5}).changed
    assert kube(tmp_path).read()["green"].weight == 5


@pytest.mark.parametrize(
    ("options", "weights", "states", "field"),
    [
        ({}, {"blue": 90, "green": 5}, None, "weights"),
        ({}, {"blue": 95, "green": 5}, {"green": "maint"}, "weights.green"),
        ({"slots": {"blue": {"image": "x:1"}, "green": {}}}, {"blue": 100}, None, "slots.green.image"),
        (
            {"slots": {**RELEASES, "red": {"image": "x:1"}}},
            {"blue": 50, "green": 25, "red": 25},
            None,
            "weights",
        ),
        ({"slots": {"Blue": {"image": "x:1"}}}, {"Blue": 100}, None, "slots.Blue"),
        ({"slots": {"blue": {"image": "x:1", "tag": "y"}}}, {"blue": 100}, None, "slots.blue"),
        ({"min_replicas": 30}, {"blue": 100}, None, "min_replicas"),
    ],
)
def test_refusals_name_the_field_and_write_nothing(tmp_path, options, weights, states, field):
    with pytest.raises(TrafficError) as err:
        kube(tmp_path, **options).apply(weights, states)
    assert field in [p.field for p in err.value.problems]
    assert not (tmp_path / "legal_info.yaml").exists()


def test_select_backend(tmp_path):
    assert isinstance(select_backend("kubernetes", agent="a", manifests_dir=tmp_path), KubernetesTraffic)
    with pytest.raises(TrafficError):
        select_backend("nginx")
