#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: chenu.agents contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: traffic_split
short_description: Split an agent's traffic between its slots (HAProxy runtime API or Kubernetes manifests)
version_added: 0.1.0
description:
  - Sets the share of an agent's traffic each slot (for example C(blue) and C(green)) receives, and each
    slot's state (C(ready), C(drain), C(maint)), behind one interface with two backends.
  - V(haproxy) talks to a running HAProxy through its runtime API on the admin socket. Weights are
    percentages and become HAProxy weights as they are (95/5 gives weights 95 and 5). Servers of the
    backend are named by slot; a server the task does not name gets weight 0. The changes are applied
    in an order that always leaves an UP, ready server carrying weight (weights raised first, slots
    brought back to ready next, then weights lowered, drain and maintenance last), and after a change
    the whole C(show servers state) is written atomically to O(server_state_file), so that a reload or
    a restart with C(load-server-state-from-file) keeps it.
  - The module refuses, changing nothing, to give weight to a slot that is DOWN (after waiting up to
    O(wait_timeout) for it to pass its health checks), in drain or in maintenance, or weights that do not
    sum to 100; the message names the slot and its state.
  - C(community.general.haproxy) sets one server per task and does not write the state back; this module
    exists because a release needs every server of a backend set consistently, plus the write-back.
  - V(kubernetes) renders the agent's manifests (a Deployment and a Service per slot, a stable Service
    whose selector picks the live slot, an HPA per serving slot, PodDisruptionBudgets, and for
    O(routing=ingress) an Ingress plus an ingress-nginx canary Ingress) into one file
    C(<manifests_dir>/<agent>.yaml), written only when its content changes. The module does not talk to
    a cluster; it returns the objects in RV(manifests) for a following C(kubernetes.core.k8s) task (see
    EXAMPLES). Slot health is not observed there, the readiness probes take a slot out of its Service.
author:
  - chenu.agents maintainers (@chenu-agents)
extends_documentation_fragment:
  - chenu.agents.attributes
options:
  backend:
    description: Where the traffic split lives.
    type: str
    choices: [haproxy, kubernetes]
    default: haproxy
  agent:
    description: The agent id; names the HAProxy backend C(be_<agent>) and the Kubernetes objects.
    type: str
    required: true
  weights:
    description:
      - "Slot name to whole percentage of the traffic, summing to 100, for example C({blue: 95, green: 5})."
      - Slots of the agent that are not named get 0.
    type: dict
    required: true
  slot_states:
    description:
      - Slot name to C(ready), C(drain) (no new traffic, sessions finish) or C(maint) (out of service).
      - Slots not named keep their state. A slot with weight must be (or be made) C(ready).
    type: dict
    default: {}
  socket:
    description: HAProxy admin socket (C(stats socket ... level admin)).
    type: path
    default: /run/haproxy/admin.sock
  haproxy_backend:
    description: HAProxy backend holding the slots' servers. Defaults to C(be_<agent>).
    type: str
  server_state_file:
    description:
      - The HAProxy C(server-state-file) written (every backend, atomically) after a change.
      - Without it the change lives until the next reload or restart only.
    type: path
  wait_timeout:
    description:
      - Seconds to wait for a slot that is to receive weight to be UP (health checks passing) before
        refusing, and for a slot brought back from drain or maintenance to come UP before the weights of
        the others are lowered. V(0) refuses at once.
    type: float
    default: 10
  manifests_dir:
    description: Kubernetes backend; directory of the rendered C(<agent>.yaml). Required for V(kubernetes).
    type: path
  namespace:
    description: Kubernetes namespace of the objects.
    type: str
    default: chenu-agents
  slots:
    description:
      - Kubernetes backend; slot name to C({image, version}) of the release it runs. A slot not listed
        here keeps what the manifests already in O(manifests_dir) say.
    type: dict
    default: {}
  routing:
    description:
      - Kubernetes backend; how a split other than 100/0 is made.
      - V(ingress) points the stable Service at the slot with the most weight and gives the other one its
        share through an ingress-nginx canary Ingress (C(nginx.ingress.kubernetes.io/canary-weight)); at
        most two slots carry weight.
      - V(replicas) makes the stable Service select every slot of the agent and splits O(replicas) between
        the slots per weight.
    type: str
    choices: [ingress, replicas]
    default: ingress
  host:
    description: Kubernetes backend, O(routing=ingress); host name of the Ingress. Defaults to C(<agent>.local).
    type: str
  ingress_class:
    description: Kubernetes backend; ingress class name of the Ingresses.
    type: str
    default: nginx
  replicas:
    description: Kubernetes backend, O(routing=replicas); pods shared between the slots per weight.
    type: int
    default: 10
  min_replicas:
    description: Kubernetes backend; HPA minimum of a slot carrying the stable share (seed 000 section 4.2).
    type: int
    default: 2
  max_replicas:
    description: Kubernetes backend; HPA maximum (seed 000 section 4.2).
    type: int
    default: 20
  cpu_target:
    description: Kubernetes backend; HPA average CPU utilisation target, in percent.
    type: int
    default: 70
  container_port:
    description: Kubernetes backend; port the runtime listens on in the container.
    type: int
    default: 8080
  resources:
    description: Kubernetes backend; the container's C(resources) (requests and limits).
    type: dict
    default: {requests: {cpu: 250m, memory: 256Mi}, limits: {cpu: "1", memory: 1Gi}}
attributes:
  check_mode:
    support: full
    details: Reads the current weights and states, checks the request and lists the commands it would send.
  diff_mode:
    support: full
    details: Each slot's weight and state before and after.
  idempotent:
    support: full
notes:
  - The Kubernetes apply is not exercised on this project's hosts (no cluster); the manifests are
    validated against the Kubernetes API schemas in the tests.
requirements:
  - chenu_agents (the Python package of this collection)
  - For V(haproxy), access to the admin socket (root or the C(haproxy) group)
seealso:
  - module: community.general.haproxy
  - module: kubernetes.core.k8s
"""

EXAMPLES = r"""
- name: Canary step, 5 % to green
  chenu.agents.traffic_split:
    agent: legal_info
    weights: {blue: 95, green: 5}
    server_state_file: /var/lib/haproxy/server-state

- name: Abort, every request back on blue, green out of service
  chenu.agents.traffic_split:
    agent: legal_info
    weights: {blue: 100}
    slot_states: {green: maint}
    server_state_file: /var/lib/haproxy/server-state
    wait_timeout: 0

- name: Render the Kubernetes objects for a blue-green switch to green
  chenu.agents.traffic_split:
    backend: kubernetes
    agent: legal_info
    weights: {green: 100}
    slots:
      blue: {image: "registry.example/chenu/runtime:1.2.0", version: 1.2.0}
      green: {image: "registry.example/chenu/runtime:1.3.0", version: 1.3.0}
    manifests_dir: /var/lib/chenu-agents/k8s
  register: split

- name: Apply them when a cluster is configured
  kubernetes.core.k8s:
    kubeconfig: "{{ kubeconfig }}"
    state: present
    apply: true
    definition: "{{ split.manifests }}"
  when: kubeconfig is defined
"""

RETURN = r"""
before:
  description: Each slot's C({weight, state, up, status}) before the task.
  returned: always
  type: dict
  sample: {blue: {weight: 100, state: ready, up: true, status: UP}, green: {weight: 0, state: ready, up: true, status: UP}}
after:
  description: Each slot's C({weight, state, up, status}) after the task (expected, in check mode).
  returned: always
  type: dict
  sample: {blue: {weight: 95, state: ready, up: true, status: UP}, green: {weight: 5, state: ready, up: true, status: UP}}
commands:
  description: HAProxy runtime commands sent (would be sent, in check mode), in order.
  returned: backend is haproxy
  type: list
  elements: str
  sample: ["set server be_legal_info/green weight 5", "set server be_legal_info/blue weight 95"]
state_file:
  description: The server state file written, or null.
  returned: backend is haproxy
  type: str
manifests:
  description: The Kubernetes objects rendered, in apply order.
  returned: backend is kubernetes
  type: list
  elements: dict
path:
  description: The manifests file, C(<manifests_dir>/<agent>.yaml).
  returned: backend is kubernetes
  type: str
error:
  description: On a refusal, the error class (C(TrafficError), C(HAProxyError)).
  returned: failure
  type: str
problems:
  description: On a refusal, each field at fault and what was expected.
  returned: failure
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.chenu.agents.plugins.module_utils.common import require_chenu_agents, run_module

KUBERNETES_OPTIONS = (
    "manifests_dir",
    "namespace",
    "slots",
    "routing",
    "host",
    "ingress_class",
    "replicas",
    "min_replicas",
    "max_replicas",
    "cpu_target",
    "container_port",
    "resources",
)


def ensure_split(module):
    from chenu_agents.traffic import select_backend

    p = module.params
    if p["backend"] == "haproxy":
        backend = select_backend(
            "haproxy",
            backend=p["haproxy_backend"] or f"be_{p['agent']}",
            socket_path=p["socket"],
            server_state_file=p["server_state_file"],
            wait_timeout_s=p["wait_timeout"],
        )
    else:
        backend = select_backend("kubernetes", agent=p["agent"], **{k: p[k] for k in KUBERNETES_OPTIONS})
    result = backend.apply(p["weights"], p["slot_states"], check_mode=module.check_mode).to_dict()
    if module._diff:
        result["diff"] = dict(
            before={s: {"weight": v["weight"], "state": v["state"]} for s, v in result["before"].items()},
            after={s: {"weight": v["weight"], "state": v["state"]} for s, v in result["after"].items()},
        )
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type="str", default="haproxy", choices=["haproxy", "kubernetes"]),
            agent=dict(type="str", required=True),
            weights=dict(type="dict", required=True),
            slot_states=dict(type="dict", default={}),
            socket=dict(type="path", default="/run/haproxy/admin.sock"),
            haproxy_backend=dict(type="str"),
            server_state_file=dict(type="path"),
            wait_timeout=dict(type="float", default=10),
            manifests_dir=dict(type="path"),
            namespace=dict(type="str", default="chenu-agents"),
            slots=dict(type="dict", default={}),
            routing=dict(type="str", default="ingress", choices=["ingress", "replicas"]),
            host=dict(type="str"),
            ingress_class=dict(type="str", default="nginx"),
            replicas=dict(type="int", default=10),
            min_replicas=dict(type="int", default=2),
            max_replicas=dict(type="int", default=20),
            cpu_target=dict(type="int", default=70),
            container_port=dict(type="int", default=8080),
            resources=dict(
                type="dict",
                default={"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
            ),
        ),
        required_if=[("backend", "kubernetes", ("manifests_dir",))],
        supports_check_mode=True,
    )
    require_chenu_agents(module)
    run_module(module, ensure_split)


if __name__ == "__main__":
    main()
