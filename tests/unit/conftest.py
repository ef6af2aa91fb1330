"""Fixtures shared by the unit tests."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from chenu_agents import keystore as keystore_mod


@pytest.fixture(scope="session")
def key_pool() -> list[rsa.RSAPrivateKey]:
    # RSA-2048 generation costs ~50 ms: make a few once and hand them out in turn.
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(6)]


@pytest.fixture
def fast_keys(monkeypatch: pytest.MonkeyPatch, key_pool: list[rsa.RSAPrivateKey]) -> None:
    """New file-store keys come from the pool, in turn, instead of being generated."""
    pool = itertools.cycle(key_pool)
    monkeypatch.setattr(keystore_mod, "_generate_rsa_key", lambda: next(pool))
