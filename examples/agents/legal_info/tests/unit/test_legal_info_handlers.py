"""Unit tests of the legal_info handlers, loaded by file path as the runtime does."""

import importlib.util
from pathlib import Path

import pytest

HANDLERS = Path(__file__).resolve().parents[2] / "tools" / "handlers"


def load(name):
    spec = importlib.util.spec_from_file_location(f"legal_info_{name}", HANDLERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handle


topics, deadlines, rbq = (load(n) for n in ("topics", "deadlines", "rbq"))


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("hypotheque_legale", "hypotheque_legale"),
        ("Hypothèque légale", "hypotheque_legale"),
        ("dénonciation du contrat", "hypotheque_legale"),
        ("licence RBQ", "licence_rbq"),
        ("plan de garantie maison neuve", "garantie_gcr"),
        ("malfaçons après réception", "garantie_ccq"),
        ("CNESST", "cnesst_chantier"),
        ("mise en demeure", "recours_civils"),
    ],
)
def test_topic_lookup_by_key_or_keyword(query, key):
    result = topics({"topic": query})
    assert result["topic"] == key
    assert result["points"] and result["references"]
    assert result["jurisdiction"] == "Québec"


def test_keywords_match_whole_words_only():
    # "lien" (construction lien) must not match inside "client".
    assert "error" in topics({"topic": "client"})


def test_hypotheque_sheet_states_both_delays():
    text = " ".join(topics({"topic": "hypotheque_legale"})["points"])
    assert "30 jours" in text
    assert "six mois" in text


@pytest.mark.parametrize("args", [{}, {"topic": ""}, {"topic": 42}, {"topic": "drones"}, {"topic": "x" * 300}])
def test_topic_rejects_bad_or_unknown_input(args):
    result = topics(args)
    assert "error" in result
    assert "licence_rbq" in result["known_topics"]


@pytest.mark.parametrize(
    ("kind", "start", "due", "weekday"),
    [
        ("hypotheque_publication", "2025-03-14", "2025-04-13", "dimanche"),
        ("hypotheque_extinction", "2025-08-31", "2026-02-28", "samedi"),
        ("garantie_malfacons", "2024-02-29", "2025-02-28", "vendredi"),
        ("garantie_perte_ouvrage", "2025-06-02", "2030-06-02", "dimanche"),
        ("prescription_action", "2025-01-15", "2028-01-15", "samedi"),
        ("gcr_denonciation", "2025-05-20", "2025-11-20", "jeudi"),
    ],
)
def test_deadlines(kind, start, due, weekday):
    result = deadlines({"deadline_type": kind, "start_date": start})
    assert result["due_date"] == due
    assert result["weekday"] == weekday
    assert result["falls_on_weekend"] is (weekday in ("samedi", "dimanche"))


def test_weekend_deadline_mentions_next_business_day():
    result = deadlines({"deadline_type": "hypotheque_publication", "start_date": "2025-03-14"})
    assert "2025-04-14" in result["note"]


def test_deadline_expiry_relative_to_as_of():
    args = {"deadline_type": "hypotheque_publication", "start_date": "2019-01-10", "as_of": "2025-06-01"}
    result = deadlines(args)
    assert result["expired"] is True
    assert result["days_remaining"] < 0
    args["as_of"] = "2019-02-01"
    assert deadlines(args)["days_remaining"] == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"deadline_type": "hypotheque_publication", "start_date": "2025-02-30"}, "date invalide"),
        ({"deadline_type": "hypotheque_publication", "start_date": "14/03/2025"}, "AAAA-MM-JJ"),
        ({"deadline_type": "hypotheque_publication", "start_date": "1850-01-01"}, "hors plage"),
        ({"deadline_type": "delai_magique", "start_date": "2025-01-01"}, "type de délai inconnu"),
        ({"deadline_type": "hypotheque_publication", "start_date": "2025-01-01", "as_of": "hier"}, "as_of"),
    ],
)
def test_deadline_rejects_bad_input(args, message):
    assert message in deadlines(args)["error"]


@pytest.mark.parametrize("number", ["5641-2087-01", "5641 2087 01", "5641208701", " 5641.2087.01 "])
def test_licence_format_is_normalised(number):
    result = rbq({"licence_number": number})
    assert result["valid_format"] is True
    assert result["normalized"] == "5641-2087-01"
    assert "RBQ" in result["verify_at"]


@pytest.mark.parametrize(("number", "reason"), [("1234-56", "6 chiffres"), ("ABCD-2087-01", "que des chiffres")])
def test_licence_format_rejected(number, reason):
    result = rbq({"licence_number": number})
    assert result["valid_format"] is False
    assert reason in result["reason"]


@pytest.mark.parametrize(
    "args", [{}, {"licence_number": ""}, {"licence_number": 5641208701}, {"licence_number": "1" * 40}]
)
def test_licence_rejects_bad_input(args):
    assert "error" in rbq(args)
