"""HAProxyTraffic against a real, private HAProxy: weights move requests, refusals, state survives a restart."""

from __future__ import annotations

import shutil
import threading

import pytest

from chenu_agents.traffic import HAProxyTraffic, TrafficError, parse_servers_state
from tests.unit.private_haproxy import private_haproxy

pytestmark = pytest.mark.skipif(not shutil.which("haproxy"), reason="needs the haproxy binary")


@pytest.fixture
def proxy(tmp_path):
    with private_haproxy(tmp_path / "lb", weights={"blue": 100, "green": 0, "red": 0}) as running:
        yield running


def traffic(proxy, **options) -> HAProxyTraffic:
    return HAProxyTraffic(proxy.backend, proxy.socket, server_state_file=proxy.state_file, **options)


def test_weights_move_requests(proxy):
    assert proxy.count(40) == {"blue": 40}
    split = traffic(proxy).apply({"blue": 75, "green": 25})
    assert split.changed
    assert split.details["commands"] == ["set server be_demo/green weight 25", "set server be_demo/blue weight 75"]
    assert {s: t.weight for s, t in split.after.items()} == {"blue": 75, "green": 25, "red": 0}
    seen = proxy.count(200)
    assert seen["red"] == 0
    assert 135 <= seen["blue"] <= 165, seen
    assert seen["blue"] + seen["green"] == 200

    again = traffic(proxy).apply({"blue": 75, "green": 25})
    assert not again.changed and again.details["commands"] == []

    traffic(proxy).apply({"green": 100})
    assert proxy.count(40) == {"green": 40}


def test_state_file_written_and_kept_by_a_restart(proxy):
    traffic(proxy).apply({"blue": 95, "green": 5}, {"red": "maint"})
    rows = parse_servers_state(proxy.state_file.read_text(), proxy.backend)
    assert {name: row["srv_uweight"] for name, row in rows.items()} == {"blue": "95", "green": "5", "red": "0"}
    assert oct(proxy.state_file.stat().st_mode & 0o777) == "0o644"

    proxy.stop()
    proxy.start()
    proxy.wait_up(["blue", "green"])
    after = traffic(proxy).read()
    assert {s: (t.weight, t.state) for s, t in after.items()} == {
        "blue": (95, "ready"),
        "green": (5, "ready"),
        "red": (0, "maint"),
    }


def test_down_slot_refused_and_nothing_changes(proxy):
    proxy.slots["green"].ready = False
    proxy.wait_up(["green"], up=False)
    before_file = proxy.state_file.exists()
    with pytest.raises(TrafficError) as err:
        traffic(proxy, wait_timeout_s=3, poll_s=0.1).apply({"blue": 50, "green": 50})
    assert "green is DOWN" in str(err.value)
    assert {s: t.weight for s, t in traffic(proxy).read().items()} == {"blue": 100, "green": 0, "red": 0}
    assert proxy.state_file.exists() == before_file
    assert proxy.count(20) == {"blue": 20}


def test_wait_lets_a_slot_come_up(proxy):
    proxy.slots["green"].ready = False
    proxy.wait_up(["green"], up=False)
    # Green comes back while apply waits for it.
    threading.Timer(0.5, lambda: setattr(proxy.slots["green"], "ready", True)).start()
    split = traffic(proxy, wait_timeout_s=10, poll_s=0.1).apply({"blue": 50, "green": 50})
    assert split.after["green"].up and split.after["green"].weight == 50


def test_drain_and_maint_then_back(proxy):
    t = traffic(proxy)
    t.apply({"green": 100}, {"blue": "drain", "red": "maint"})
    assert {s: v.state for s, v in t.read().items()} == {"blue": "drain", "green": "ready", "red": "maint"}
    assert proxy.count(20) == {"green": 20}
    with pytest.raises(TrafficError, match="red would be maint"):
        t.apply({"green": 50, "red": 50})
    split = traffic(proxy, wait_timeout_s=10, poll_s=0.1).apply({"blue": 100}, {"blue": "ready", "red": "ready"})
    assert split.details["commands"][:2] == [
        "set server be_demo/blue weight 100",
        "set server be_demo/blue state ready",
    ]
    assert {s: (v.weight, v.state) for s, v in split.after.items()} == {
        "blue": (100, "ready"),
        "green": (0, "ready"),
        "red": (0, "ready"),
    }
    assert proxy.count(20) == {"blue": 20}


def test_unknown_backend_names_the_option(proxy):
    with pytest.raises(TrafficError) as err:
        HAProxyTraffic("be_nothing", proxy.socket).read()
    assert [p.field for p in err.value.problems] == ["haproxy_backend"]
