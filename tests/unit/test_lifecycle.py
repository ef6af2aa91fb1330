"""The lifecycle state machine (pure): exactly seed 000 §1, every action from every state."""

from __future__ import annotations

import copy

import pytest

from chenu_agents import lifecycle
from chenu_agents.errors import LifecycleError

# Seed 000 §1.2, copied by hand: the data file must say the same.
SEED = {
    "draft": (["edit", "validate", "delete"], ["testing"]),
    "testing": (["test", "edit", "approve", "reject"], ["staged", "draft"]),
    "staged": (["deploy", "rollback_to_testing"], ["active", "testing"]),
    "active": (["pause", "deprecate", "hotfix", "scale"], ["paused", "deprecated"]),
    "paused": (["resume", "deprecate"], ["active", "deprecated"]),
    "deprecated": (["archive", "restore"], ["archived", "active"]),
    "archived": (["clone", "delete_permanent"], ["draft"]),
}
TRANSITIONS = {
    ("draft", "validate"): "testing",
    ("testing", "reject"): "draft",
    ("testing", "approve"): "staged",
    ("staged", "rollback_to_testing"): "testing",
    ("staged", "deploy"): "active",
    ("active", "pause"): "paused",
    ("paused", "resume"): "active",
    ("active", "deprecate"): "deprecated",
    ("paused", "deprecate"): "deprecated",
    ("deprecated", "restore"): "active",
    ("deprecated", "archive"): "archived",
    ("archived", "clone"): "draft",
}
OPERATIONS = {"edit", "test", "delete", "hotfix", "scale", "delete_permanent", "announce_deprecation"}
# Our one addition to the seed's lists: the announcement its deprecation_notice (30d) implies.
ADDED = {"active": ["announce_deprecation"], "paused": ["announce_deprecation"]}


def test_states_and_their_lists_are_the_seeds():
    machine = lifecycle.machine()
    assert list(machine["states"]) == list(SEED)
    for state, (allowed, targets) in SEED.items():
        assert machine["states"][state]["allowed_actions"] == allowed + ADDED.get(state, [])
        assert machine["states"][state]["transitions_to"] == targets


@pytest.mark.parametrize("state", list(SEED))
@pytest.mark.parametrize("action", [a for a in lifecycle.actions()])
def test_every_action_from_every_state(state, action):
    allowed, _targets = SEED[state]
    allowed = allowed + ADDED.get(state, [])
    if (state, action) in TRANSITIONS:
        step = lifecycle.plan(state, action=action)
        assert (step.from_state, step.to_state, step.noop) == (state, TRANSITIONS[state, action], False)
        assert step.transition() == {"action": action, "from": state, "to": TRANSITIONS[state, action]}
    elif action in allowed:
        assert action in OPERATIONS
        step = lifecycle.plan(state, action=action)
        assert step.to_state == state and step.transition() is None
    elif lifecycle.machine()["actions"][action]["to"] == state:
        assert lifecycle.plan(state, action=action).noop  # already where it leads
    else:
        with pytest.raises(LifecycleError) as err:
            lifecycle.plan(state, action=action, what="legal_info 1.2.0")
        message = str(err.value)
        assert f"legal_info 1.2.0 is {state}: {action} is not allowed" in message
        assert all(a in message for a in allowed)


@pytest.mark.parametrize("state", list(SEED))
@pytest.mark.parametrize("target", list(SEED))
def test_every_target_from_every_state(state, target):
    reachable = {to: action for (src, action), to in TRANSITIONS.items() if src == state}
    if target == state:
        step = lifecycle.plan(state, target=target)
        assert step.noop and step.transition() is None
    elif target in reachable:
        assert lifecycle.plan(state, target=target).action == reachable[target]
    else:
        with pytest.raises(LifecycleError, match=f"cannot go to {target}; allowed actions in {state}"):
            lifecycle.plan(state, target=target)


def test_unregistered_version_can_only_be_registered():
    assert lifecycle.plan(None, target="draft").action == lifecycle.REGISTER
    assert lifecycle.plan(None, action="register").to_state == "draft"
    with pytest.raises(LifecycleError, match="not registered"):
        lifecycle.plan(None, action="validate")
    with pytest.raises(LifecycleError, match="not registered"):
        lifecycle.plan(None, target="active")


def test_unknown_inputs_name_the_known_ones():
    with pytest.raises(LifecycleError, match="unknown action 'launch'") as err:
        lifecycle.plan("draft", action="launch")
    assert "validate" in str(err.value)
    with pytest.raises(LifecycleError, match="unknown state 'live'"):
        lifecycle.plan("draft", target="live")
    with pytest.raises(LifecycleError, match="either an action or a target"):
        lifecycle.plan("draft", action="validate", target="testing")


def test_every_action_says_what_it_does():
    for name, spec in lifecycle.machine()["actions"].items():
        assert spec["does"].strip(), name
        assert (spec["to"] is None) == (name in OPERATIONS)


def test_an_inconsistent_machine_is_refused():
    broken = copy.deepcopy(lifecycle.machine())
    broken["states"]["draft"]["allowed_actions"].append("deploy")
    broken["states"]["paused"]["transitions_to"] = ["active"]
    with pytest.raises(LifecycleError) as err:
        lifecycle.check_machine(broken)
    assert "states.draft.allowed_actions" in str(err.value)
    assert "states.paused.transitions_to" in str(err.value)


def test_defaults_for_actor_and_run_id(monkeypatch):
    monkeypatch.setenv("JOB_ID", "4242")
    monkeypatch.setenv("AWX_USER_NAME", "alice")
    assert lifecycle.default_run_id() == "awx-job-4242"
    assert lifecycle.default_actor() == "alice"
    monkeypatch.delenv("JOB_ID")
    monkeypatch.delenv("AWX_USER_NAME")
    monkeypatch.delenv("SUDO_USER", raising=False)
    assert lifecycle.default_run_id().startswith("run-")
    assert lifecycle.default_actor()


def test_the_module_and_its_documentation_offer_exactly_the_machine():
    import ast

    import yaml

    from tests.conftest import REPO

    source = (REPO / "plugins" / "modules" / "agent_lifecycle.py").read_text()
    tree = ast.parse(source)
    consts = {
        t.id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Name) and t.id in ("STATES", "ACTIONS", "DOCUMENTATION")
    }
    assert consts["STATES"] == list(lifecycle.states())
    assert sorted(consts["ACTIONS"]) == sorted([*lifecycle.actions(), lifecycle.REGISTER])
    options = yaml.safe_load(consts["DOCUMENTATION"])["options"]
    assert options["state"]["choices"] == consts["STATES"]
    assert options["action"]["choices"] == consts["ACTIONS"]


def test_the_documentation_carries_the_generated_tables():
    from tests.conftest import REPO

    text = (REPO / "docs" / "lifecycle.md").read_text(encoding="utf-8")
    start = text.index("<!-- generated: chenu_agents.lifecycle.markdown_tables() -->\n") + len(
        "<!-- generated: chenu_agents.lifecycle.markdown_tables() -->\n"
    )
    assert text[start : text.index("<!-- end generated -->")] == lifecycle.markdown_tables()
