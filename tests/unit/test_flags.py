from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from openfeature import api
from openfeature.flag_evaluation import Reason
from openfeature.provider.no_op_provider import NoOpProvider

from chenu_agents.flags import (
    STABLE,
    VARIANT,
    FlagError,
    FlagSource,
    LruStickyStore,
    RedisStickyStore,
    ReleaseFlagProvider,
    evaluation_context,
    read_flags,
    set_stage,
)

from ..conftest import REPO

GREEN = {"slot": "green", "version": "1.3.0", "url": "http://127.0.0.1:8102/"}
FLAG = "legal_info.release"


@pytest.fixture
def flags_file(tmp_path: Path) -> Path:
    return tmp_path / "flags" / "flags.json"


@pytest.fixture
def client(flags_file: Path):
    """An OpenFeature client on our provider, in a domain of its own."""
    provider = ReleaseFlagProvider(FlagSource(flags_file, check_interval_s=0), LruStickyStore(max_entries=100))
    domain = f"test-{uuid.uuid4().hex}"
    api.set_provider_and_wait(provider, domain)
    yield api.get_client(domain), provider
    api.set_provider(NoOpProvider(), domain)


def evaluate(client, session: str | None, groups=(), user: str | None = None) -> str:
    return client.get_string_value(FLAG, STABLE, evaluation_context(session, user, groups))


# -- the flags file and set_stage --------------------------------------------------------------


def test_set_stage_is_idempotent_and_keeps_the_epoch_while_on(flags_file: Path) -> None:
    first = set_stage(flags_file, "legal_info", "off", variant=GREEN)
    assert (first["previous_stage"], first["stage"], first["changed"]) == (None, "off", True)
    assert set_stage(flags_file, "legal_info", "off")["changed"] is False

    on = set_stage(flags_file, "legal_info", "internal")
    assert (on["previous_stage"], on["changed"]) == ("off", True)
    epoch = on["after"]["epoch"]
    assert epoch and on["after"]["variant"]["url"] == "http://127.0.0.1:8102"
    assert set_stage(flags_file, "legal_info", "internal", variant=GREEN)["changed"] is False
    beta = set_stage(flags_file, "legal_info", "beta")
    assert beta["changed"] and beta["after"]["epoch"] == epoch

    off = set_stage(flags_file, "legal_info", "off")
    again = set_stage(flags_file, "legal_info", "internal")
    assert off["changed"] and again["after"]["epoch"] != epoch  # back on: sessions forgotten
    other = set_stage(flags_file, "legal_info", "internal", variant={**GREEN, "version": "1.3.1"})
    assert other["changed"] and other["after"]["epoch"] != again["after"]["epoch"]

    data = json.loads(flags_file.read_text())
    assert data["format"] == 1 and data["flags"][FLAG]["stage"] == "internal"
    assert read_flags(flags_file)[FLAG].variant.version == "1.3.1"


def test_check_mode_writes_nothing(flags_file: Path) -> None:
    result = set_stage(flags_file, "legal_info", "beta", variant=GREEN, check_mode=True)
    assert result["changed"] and result["after"]["stage"] == "beta"
    assert not flags_file.exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"stage": "half"}, "stage"),
        ({"stage": "internal"}, "variant"),
        ({"stage": "beta", "variant": {"slot": "green"}}, "variant.url"),
        ({"stage": "beta", "variant": {"slot": "green", "url": "ftp://x"}}, "variant.url"),
        ({"stage": "beta", "variant": {"url": "http://x"}}, "variant.slot"),
    ],
)
def test_refusals_name_the_field(flags_file: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(FlagError) as err:
        set_stage(flags_file, "legal_info", **kwargs)
    assert field in {p.field for p in err.value.problems}
    assert not flags_file.exists()


def test_a_broken_file_keeps_the_last_good_flags(flags_file: Path) -> None:
    set_stage(flags_file, "legal_info", "all", variant=GREEN)
    source = FlagSource(flags_file, check_interval_s=0)
    assert source.get(FLAG).stage == "all"
    flags_file.write_text('{"flags": {"legal_info.release": {"stage": "sometimes"}}}')
    assert source.get(FLAG).stage == "all"
    assert "stage" in source.error
    with pytest.raises(FlagError, match="sometimes"):
        read_flags(flags_file)


# -- stage rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "groups", "expected"),
    [
        ("off", ["internal"], STABLE),
        ("internal", ["internal"], VARIANT),
        ("internal", ["beta"], STABLE),
        ("internal", [], STABLE),
        ("beta", ["beta"], VARIANT),
        ("beta", ["internal", "sales"], VARIANT),
        ("beta", ["sales"], STABLE),
        ("all", [], VARIANT),
    ],
)
def test_stage_rules(flags_file: Path, client, stage: str, groups: list[str], expected: str) -> None:
    of, _provider = client
    set_stage(flags_file, "legal_info", stage, variant=GREEN)
    assert evaluate(of, None, groups) == expected
    assert evaluate(of, f"s-{stage}-{'-'.join(groups)}", groups) == expected


def test_configurable_group_names(flags_file: Path, client) -> None:
    of, provider = client
    set_stage(flags_file, "legal_info", "internal", variant=GREEN, internal_groups=["staff"])
    assert evaluate(of, None, ["staff"]) == VARIANT and evaluate(of, None, ["internal"]) == STABLE
    provider.beta_groups = ("early",)  # the runtime's default, for flags that name none
    set_stage(flags_file, "legal_info", "beta")
    assert evaluate(of, None, "early, other") == VARIANT


def test_details_carry_the_variant(flags_file: Path, client) -> None:
    of, _provider = client
    set_stage(flags_file, "legal_info", "internal", variant=GREEN)
    details = of.get_string_details(FLAG, STABLE, evaluation_context("s-1", "u-1", ["internal"]))
    assert (details.value, details.reason) == (VARIANT, Reason.TARGETING_MATCH)
    assert details.flag_metadata["variant_url"] == "http://127.0.0.1:8102"
    assert details.flag_metadata["variant_slot"] == "green" and details.flag_metadata["sticky"] == "new"
    again = of.get_string_details(FLAG, STABLE, evaluation_context("s-1", "u-1", ["internal"]))
    assert again.reason == Reason.CACHED and again.flag_metadata["sticky"] == "hit"
    assert of.get_boolean_value(FLAG, False, evaluation_context("s-1")) is True
    missing = of.get_string_details("takeoff.release", STABLE, evaluation_context("s-1"))
    assert missing.value == STABLE and missing.error_code is not None


# -- stickiness --------------------------------------------------------------------------------


def test_a_session_keeps_its_variant_across_stage_changes_and_off_clears(flags_file: Path, client) -> None:
    of, _provider = client
    set_stage(flags_file, "legal_info", "internal", variant=GREEN)
    assert evaluate(of, "s-outside") == STABLE  # started on stable
    assert evaluate(of, "s-staff", ["internal"]) == VARIANT
    set_stage(flags_file, "legal_info", "all")
    assert evaluate(of, "s-outside") == STABLE  # mid-conversation: stays
    assert evaluate(of, "s-new") == VARIANT
    set_stage(flags_file, "legal_info", "internal")
    assert evaluate(of, "s-new") == VARIANT  # flag still on: stays
    set_stage(flags_file, "legal_info", "off")
    assert {evaluate(of, s, ["internal"]) for s in ("s-outside", "s-staff", "s-new")} == {STABLE}
    set_stage(flags_file, "legal_info", "all")
    assert evaluate(of, "s-outside") == VARIANT  # new epoch: nothing remembered from before


def test_async_evaluation_matches(flags_file: Path, client) -> None:
    of, _provider = client
    set_stage(flags_file, "legal_info", "beta", variant=GREEN)

    async def run() -> list[str]:
        ctx = evaluation_context("s-a", None, ["beta"])
        first = await of.get_string_value_async(FLAG, STABLE, ctx)
        set_stage(flags_file, "legal_info", "internal")
        return [first, await of.get_string_value_async(FLAG, STABLE, ctx)]

    assert asyncio.run(run()) == [VARIANT, VARIANT]


def test_lru_is_bounded_and_expires() -> None:
    store = LruStickyStore(max_entries=3, ttl_s=60)
    for i in range(3):
        store.get_or_set(f"k{i}", "stable")
    assert store.get_or_set("k0", "variant") == ("stable", True)  # k0 now most recent
    store.get_or_set("k3", "variant")
    assert len(store) == 3
    assert store.get_or_set("k1", "variant") == ("variant", False)  # k1 was the least recent: evicted
    short = LruStickyStore(max_entries=3, ttl_s=0)
    short.get_or_set("k", "stable")
    assert short.get_or_set("k", "variant") == ("variant", False)


def test_a_store_outage_falls_back_to_the_stage_rule(flags_file: Path) -> None:
    class Broken:
        def get_or_set(self, key, value):
            raise ConnectionError("store down")

        async def aget_or_set(self, key, value):
            raise ConnectionError("store down")

        def close(self):
            pass

    set_stage(flags_file, "legal_info", "internal", variant=GREEN)
    provider = ReleaseFlagProvider(FlagSource(flags_file), Broken())
    ctx = evaluation_context("s-1", None, ["internal"])
    details = provider.resolve_string_details(FLAG, STABLE, ctx)
    assert details.value == VARIANT and details.flag_metadata["sticky"] == "error"
    assert asyncio.run(provider.resolve_string_details_async(FLAG, STABLE, ctx)).value == VARIANT
    assert provider.stats.sticky_errors == 2 and "store down" in provider.stats.last_sticky_error


# -- Redis (the local one) ---------------------------------------------------------------------


def _redis_password() -> str | None:
    secret = REPO / ".cache" / "local" / "secrets" / "redis"
    return secret.read_text().strip() if secret.exists() else None


@pytest.fixture
def redis_store():
    import redis

    password = _redis_password()
    prefix = f"chenu-test:flags:{uuid.uuid4().hex[:8]}:"
    raw = redis.Redis(host="127.0.0.1", port=6379, password=password, socket_timeout=1)
    try:
        raw.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no local Redis: {exc}")
    store = RedisStickyStore("redis://127.0.0.1:6379/0", password=password, prefix=prefix, ttl_s=120)
    try:
        yield store, raw, prefix
    finally:
        keys = list(raw.scan_iter(match=f"{prefix}*"))
        if keys:
            raw.delete(*keys)
        store.close()
        raw.close()


def test_redis_stickiness_is_shared_between_processes(flags_file: Path, redis_store) -> None:
    store, raw, prefix = redis_store
    set_stage(flags_file, "legal_info", "internal", variant=GREEN)
    one = ReleaseFlagProvider(FlagSource(flags_file, check_interval_s=0), store)
    other_store = RedisStickyStore("redis://127.0.0.1:6379/0", password=_redis_password(), prefix=prefix, ttl_s=120)
    other = ReleaseFlagProvider(FlagSource(flags_file, check_interval_s=0), other_store)
    try:
        assert one.resolve_string_details(FLAG, STABLE, evaluation_context("s-r", None, [])).value == STABLE
        set_stage(flags_file, "legal_info", "all")
        assert other.resolve_string_details(FLAG, STABLE, evaluation_context("s-r")).value == STABLE
        assert other.resolve_string_details(FLAG, STABLE, evaluation_context("s-fresh")).value == VARIANT

        async def run() -> str:
            try:
                return (await other.resolve_string_details_async(FLAG, STABLE, evaluation_context("s-r"))).value
            finally:
                await other_store.aclose()

        assert asyncio.run(run()) == STABLE
        keys = sorted(k.decode() for k in raw.scan_iter(match=f"{prefix}*"))
        assert len(keys) == 2 and all(k.startswith(f"{prefix}{FLAG}:") for k in keys)
        assert 0 < raw.ttl(keys[0]) <= 120
        set_stage(flags_file, "legal_info", "off")
        assert (
            one.resolve_string_details(FLAG, STABLE, evaluation_context("s-fresh", None, ["internal"])).value == STABLE
        )
    finally:
        other_store.close()


def test_redis_down_falls_back(flags_file: Path) -> None:
    set_stage(flags_file, "legal_info", "internal", variant=GREEN)
    store = RedisStickyStore("redis://127.0.0.1:1/0", timeout_s=0.2)
    provider = ReleaseFlagProvider(FlagSource(flags_file), store)
    details = provider.resolve_string_details(FLAG, STABLE, evaluation_context("s-1", None, ["internal"]))
    assert details.value == VARIANT and details.flag_metadata["sticky"] == "error"
