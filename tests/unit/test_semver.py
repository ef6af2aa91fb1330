from __future__ import annotations

import pytest

from chenu_agents import semver


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1.0.0", "1.0.0", 0),
        ("1.0.0", "1.0.1", -1),
        ("1.10.0", "1.9.9", 1),
        ("2.0.0", "10.0.0", -1),
        ("1.0.0-alpha", "1.0.0", -1),
        ("1.0.0-alpha", "1.0.0-alpha.1", -1),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta", -1),
        ("1.0.0-beta.2", "1.0.0-beta.11", -1),
        ("1.0.0-rc.1", "1.0.0-beta.11", 1),
        ("1.0.0+build.1", "1.0.0+build.2", 0),
    ],
)
def test_compare(a, b, expected):
    assert semver.compare(a, b) == expected
    assert semver.compare(b, a) == -expected


@pytest.mark.parametrize("bad", ["1.0", "01.0.0", "1.0.0-", "v1.0.0", "", "1.0.0.0"])
def test_parse_refuses(bad):
    with pytest.raises(semver.VersionError, match="not a semantic version"):
        semver.parse(bad)


@pytest.mark.parametrize(
    ("version", "changes", "expected"),
    [
        ("1.0.0", ["breaking_api_change"], "2.0.0"),
        ("1.4.2", ["incompatible_prompt_change"], "2.0.0"),
        ("1.4.2", ["capability_removal", "bug_fix"], "2.0.0"),
        ("1.0.0", ["new_capability"], "1.1.0"),
        ("1.4.2", ["new_tool", "documentation_update"], "1.5.0"),
        ("1.0.0", ["bug_fix"], "1.0.1"),
        ("1.0.0", ["performance_improvement"], "1.0.1"),
        ("1.0.1-rc.1", ["bug_fix"], "1.0.1"),
        ("1.2.3", "minor", "1.3.0"),
    ],
)
def test_bump(version, changes, expected):
    assert semver.bump(version, changes) == expected


def test_bump_unknown_kind_names_allowed():
    with pytest.raises(semver.VersionError, match="new_tool"):
        semver.bump("1.0.0", ["rewrite"])


@pytest.mark.parametrize(
    ("agent", "api", "expected"),
    [("2.3.0", "2.0.1", "yes"), ("2.0.0", "1.9.0", "limited"), ("1.5.0", "2.0.0", "no")],
)
def test_compatibility_matrix(agent, api, expected):
    assert semver.compatibility(agent, api) == expected
