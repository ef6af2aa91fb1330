"""Issue 13: property-based tests over the bundle reader, the statement parser and the config loader.

Whatever the input, the answer is a result or the package's own error (never a traceback), within a
time and memory bound. Deterministic (derandomize) and bounded in examples, so CI is stable and each
test takes a few seconds.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chenu_agents import bundle, safeload, spec
from chenu_agents.errors import BundleError, ChenuError, SpecError
from chenu_agents.files import canonical_json
from chenu_agents.signing import verify_bundle
from chenu_agents.trust import TrustedKey, TrustStore, rsa_sign
from tests.conftest import write_agent

FUZZ = settings(
    # CHENU_FUZZ_EXAMPLES=5000 for a deeper run by hand; CI keeps the bounded default
    max_examples=int(os.environ.get("CHENU_FUZZ_EXAMPLES", "120")),
    derandomize=os.environ.get("CHENU_FUZZ_EXAMPLES") is None,
    deadline=None,  # measured below, with the memory, in one place
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_SECONDS = 2.0
MAX_BYTES = 64 * 1024 * 1024


def bounded(fn: Callable[[], Any], allowed: type[ChenuError] = ChenuError) -> Any:
    """Run fn: it returns or raises `allowed`, within MAX_SECONDS and MAX_BYTES of new allocations."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        try:
            return fn()
        except allowed as exc:
            assert str(exc)  # a message, and a Problem list when there is one
            return exc
        finally:
            _, peak = tracemalloc.get_traced_memory()
            elapsed = time.perf_counter() - started
            assert elapsed < MAX_SECONDS, f"took {elapsed:.2f} s"
            assert peak < MAX_BYTES, f"peak {peak >> 20} MiB"
    finally:
        tracemalloc.stop()


# --- bundle reader -----------------------------------------------------------------------------------------


@cache
def _valid_bundle() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return bundle.build(write_agent(Path(tmp))).data


def _tar(entries: list[tuple[str, bytes, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return raw.getvalue()


names = st.one_of(
    st.sampled_from(
        ["MANIFEST.json", "config.yaml", "a", "a/b", "A", "../x", "/etc/x", "a//b", "caf\u00e9", "cafe\u0301"]
    ),
    st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s),
)
kinds = st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE])
entries = st.lists(st.tuples(names, st.binary(max_size=64), kinds), max_size=8)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_fuzz_bundle_reader_on_arbitrary_bytes(data):
    bounded(lambda: bundle.read_bytes(data, "fuzz"), BundleError)


@FUZZ
@given(
    cuts=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    tail=st.binary(max_size=16),
)
def test_fuzz_bundle_reader_on_mutated_bundles(cuts, tail):
    data = bytearray(_valid_bundle())
    for position, value in cuts:
        data[position % len(data)] = value
    result = bounded(lambda: bundle.read_bytes(bytes(data) + tail, "fuzz"), BundleError)
    if isinstance(result, bundle.Bundle):
        # only an unchanged bundle reads (zstd's checksum and the manifest catch every change)
        assert bytes(data) + tail == _valid_bundle()


@FUZZ
@given(items=entries, manifest=st.one_of(st.none(), st.binary(max_size=200), st.just(b'{"format": 1}')))
def test_fuzz_bundle_reader_on_hand_made_tars(items, manifest):
    entries_ = [(n, d, k) for n, d, k in items]
    if manifest is not None:
        entries_.insert(0, ("MANIFEST.json", manifest, tarfile.REGTYPE))
    try:
        raw = _tar(entries_)
    except (ValueError, UnicodeError):
        return  # tarfile itself cannot write this name
    data = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    bounded(lambda: bundle.read_bytes(data, "fuzz"), BundleError)


# --- statement parser -----------------------------------------------------------------------------------------

NOW = datetime(2026, 6, 1, tzinfo=UTC)


@cache
def _key() -> tuple[rsa.RSAPrivateKey, TrustStore]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    trusted = TrustedKey("file:fuzz", pem.decode(), valid_from=NOW - timedelta(days=10))
    return private, TrustStore((trusted,))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
statement_fields = st.fixed_dictionaries(
    {
        "type": st.one_of(st.just("chenu.agents/statement/v1"), json_values),
        "agent": st.one_of(st.sampled_from(["estimator", "../x", "estimator\n", "\u0435stimator"]), json_values),
        "version": st.one_of(st.sampled_from(["1.0.0", "1.0", "1.0.0+b", "01.0.0"]), json_values),
        "digest": st.one_of(st.just("sha256:" + "0" * 64), json_values),
        "key_id": st.just("file:fuzz"),
        "issued_at": st.one_of(st.sampled_from(["2026-06-01T00:00:00Z", "2026-06-01 00:00:00"]), json_values),
        "expires_at": st.one_of(st.sampled_from(["2026-06-05T00:00:00Z", "2126-06-05T00:00:00Z"]), json_values),
    },
    optional={"extra": json_values},
)


def _verify(tmp: Path, envelope: bytes) -> Any:
    target = tmp / "b.tar.zst"
    target.write_bytes(b"bundle bytes")
    Path(f"{target}.sig").write_bytes(envelope)
    return verify_bundle(target, _key()[1], now=NOW + timedelta(days=1))


@FUZZ
@given(envelope=st.one_of(st.binary(max_size=2048), json_values.map(lambda v: json.dumps(v).encode())))
def test_fuzz_statement_parser_on_arbitrary_envelopes(envelope):
    with tempfile.TemporaryDirectory() as tmp:
        bounded(lambda: _verify(Path(tmp), envelope))


@FUZZ
@given(statement=statement_fields)
def test_fuzz_statement_parser_on_signed_statements(statement):
    # correctly signed, so every check after the signature sees the hostile fields
    try:
        signed = canonical_json(statement)
    except (TypeError, ValueError):
        return
    signature = base64.b64encode(rsa_sign(_key()[0], signed)).decode()
    envelope = json.dumps({"statement": statement, "signature": signature, "algorithm": "rsa-pss-sha256"}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        result = bounded(lambda: _verify(Path(tmp), envelope))
    assert isinstance(result, ChenuError)  # the digest never matches these bytes, whatever else holds


# --- config loader -----------------------------------------------------------------------------------------------

yaml_alphabet = st.sampled_from(
    [*"ab:-[]{}&*!<> \n\t\"'#|>019.,?%@`~\\\x1f\x85", "\u00e9", "\u200b", "&a ", "*a", "<<: "]
)
yaml_texts = st.lists(yaml_alphabet, max_size=200).map("".join)


@st.composite
def anchored(draw) -> str:
    """Documents of nested anchors and aliases, some recursive, some wide."""
    levels = draw(st.integers(1, 12))
    width = draw(st.integers(1, 12))
    lines = ["l0: &l0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels):
        target = draw(st.integers(0, i))  # == i: a recursive alias
        if target == i:
            lines.append(
                f"l{i}: &l{i} [*l{i}]" if draw(st.booleans()) else f"l{i}: &l{i} [" + f"*l{i - 1}, " * width + "]"
            )
        else:
            lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{target}"] * width) + "]")
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=st.one_of(yaml_texts, anchored(), st.text(max_size=300)))
def test_fuzz_yaml_loader(text):
    bounded(lambda: safeload.load_yaml(text, "fuzz.yaml", error=SpecError), SpecError)


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), json_values.map(lambda v: json.dumps(v).encode())))
def test_fuzz_json_loader(data):
    bounded(lambda: safeload.load_json(data, "fuzz.json", error=SpecError), SpecError)


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    return write_agent(tmp_path_factory.mktemp("fuzz"))


@FUZZ
@given(text=st.one_of(yaml_texts, anchored(), json_values.map(json.dumps)))
def test_fuzz_config_loader(fuzz_root, text):
    (fuzz_root / "config.yaml").write_text(text, encoding="utf-8")
    bounded(lambda: spec.load_agent(fuzz_root), SpecError)
