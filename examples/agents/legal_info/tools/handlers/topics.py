"""Reviewed information sheets on Quebec construction law, looked up by topic key or keyword."""

from __future__ import annotations

import re
import unicodedata

REVIEWED = "2026-09-15"

TOPICS = {
    "licence_rbq": {
        "title": "Licence d'entrepreneur de la Régie du bâtiment du Québec (RBQ)",
        "points": [
            "Loi sur le bâtiment : nul ne peut exercer les fonctions d'entrepreneur de construction, ni s'annoncer "
            "comme tel, sans détenir une licence en vigueur de la RBQ dans la bonne sous-catégorie de travaux.",
            "La licence se vérifie gratuitement dans le registre des détenteurs de licence de la RBQ, par numéro "
            "(10 chiffres, format XXXX-XXXX-XX) ou par nom d'entreprise.",
            "Le registre indique le statut de la licence (en vigueur, suspendue, annulée), ses sous-catégories et "
            "le cautionnement de l'entrepreneur.",
            "Un propriétaire qui fait lui-même des travaux sur son propre bâtiment n'a généralement pas besoin de "
            "licence ; il en faut une s'il construit pour vendre ou louer (constructeur-propriétaire).",
        ],
        "references": ["Loi sur le bâtiment, RLRQ c. B-1.1, art. 46 et suivants"],
        "authority": "Régie du bâtiment du Québec (RBQ)",
        "keywords": ["rbq", "licence", "license", "regie du batiment", "entrepreneur licencie"],
    },
    "hypotheque_legale": {
        "title": "Hypothèque légale de la construction",
        "points": [
            "Le Code civil accorde une hypothèque légale sur l'immeuble à ceux qui ont participé à sa construction "
            "ou à sa rénovation : entrepreneur, sous-entrepreneur, ouvrier, architecte, ingénieur, fournisseur de "
            "matériaux (art. 2724 et 2726 C.c.Q.).",
            "Elle ne garantit que la plus-value apportée à l'immeuble par les travaux, matériaux ou services "
            "(art. 2728 C.c.Q.).",
            "Sauf l'ouvrier, celui qui n'a pas contracté avec le propriétaire (sous-traitant, fournisseur) doit "
            "faire une dénonciation écrite de son contrat au propriétaire ; l'hypothèque ne couvre alors que ce qui "
            "est fourni après la dénonciation (art. 2728 C.c.Q.).",
            "Elle subsiste 30 jours après la fin des travaux ; pour la conserver, un avis désignant l'immeuble et "
            "le montant de la créance doit être inscrit au registre foncier dans ces 30 jours et signifié au "
            "propriétaire (art. 2727 C.c.Q.).",
            "L'hypothèque conservée s'éteint six mois après la fin des travaux, sauf si une action contre le "
            "propriétaire est publiée ou un préavis d'exercice inscrit (art. 2727 C.c.Q.).",
            "La date de fin des travaux est souvent contestée : elle vise l'ensemble de l'ouvrage.",
        ],
        "references": ["C.c.Q., art. 2724, 2726 à 2728 et 2952"],
        "authority": "Registre foncier du Québec",
        "keywords": ["hypotheque", "lien", "denonciation", "sous-traitant", "fournisseur", "plus-value"],
    },
    "garantie_gcr": {
        "title": "Plan de garantie des bâtiments résidentiels neufs (GCR)",
        "points": [
            "Le plan de garantie est obligatoire pour les maisons neuves et certains bâtiments multifamiliaux "
            "construits par un entrepreneur accrédité ; il est administré depuis 2015 par Garantie de construction "
            "résidentielle (GCR).",
            "Couvertures : parachèvement des travaux et acomptes ; malfaçons découvertes dans l'année suivant la "
            "réception ; vices cachés découverts dans les 3 ans ; vices de conception, de construction ou du sol "
            "découverts dans les 5 ans.",
            "Un problème doit être dénoncé par écrit à l'entrepreneur et à GCR dans un délai raisonnable, d'au "
            "plus 6 mois après sa découverte.",
            "Une décision de GCR peut être contestée en arbitrage selon le règlement.",
            "Les rénovations et les maisons construites par le propriétaire lui-même ne sont pas couvertes.",
        ],
        "references": [
            "Règlement sur le plan de garantie des bâtiments résidentiels neufs, RLRQ c. B-1.1, r. 8"
        ],
        "authority": "Garantie de construction résidentielle (GCR), sous la surveillance de la RBQ",
        "keywords": ["gcr", "plan de garantie", "maison neuve", "batiment residentiel neuf", "condo neuf"],
    },
    "garantie_ccq": {
        "title": "Garanties du Code civil du Québec (contrat d'entreprise)",
        "points": [
            "Réception : le client reçoit l'ouvrage quand il est en état de servir à l'usage prévu ; il peut "
            "retenir une somme suffisante pour les malfaçons apparentes signalées à la réception "
            "(art. 2110 et 2111 C.c.Q.).",
            "Malfaçons : l'entrepreneur, l'architecte, l'ingénieur et le sous-entrepreneur garantissent pendant "
            "un an l'ouvrage contre les malfaçons existantes à la réception ou découvertes dans l'année qui suit "
            "(art. 2120 C.c.Q.).",
            "Perte de l'ouvrage : l'entrepreneur, l'architecte et l'ingénieur sont solidairement tenus de la perte "
            "qui survient dans les cinq ans qui suivent la fin des travaux, par vice de conception, de "
            "construction, de réalisation ou du sol (art. 2118 C.c.Q.).",
            "Les tribunaux assimilent à une perte les vices graves qui compromettent la solidité ou l'usage de "
            "l'ouvrage, pas seulement son effondrement.",
            "Le recours se prescrit en principe par trois ans à compter de la connaissance du préjudice "
            "(art. 2925 et 2926 C.c.Q.).",
        ],
        "references": ["C.c.Q., art. 2110, 2111, 2118 à 2120, 2925 et 2926"],
        "authority": "Tribunaux civils du Québec",
        "keywords": ["garantie", "malfacon", "reception", "2118", "2120", "perte de l'ouvrage", "vice"],
    },
    "cnesst_chantier": {
        "title": "Santé et sécurité sur les chantiers (CNESST)",
        "points": [
            "La Loi sur la santé et la sécurité du travail et le Code de sécurité pour les travaux de construction "
            "s'appliquent à tout chantier de construction.",
            "Le maître d'œuvre est responsable de la santé et de la sécurité sur le chantier et coordonne les "
            "employeurs qui y travaillent.",
            "Le maître d'œuvre transmet à la CNESST un avis d'ouverture de chantier avant le début des travaux "
            "lorsqu'au moins 10 travailleurs y seront à l'œuvre simultanément (art. 197 LSST) ; vérifier les "
            "seuils en vigueur auprès de la CNESST.",
            "Des mesures de protection contre les chutes sont requises notamment dès qu'un travailleur s'expose à "
            "une chute de plus de 3 m (Code de sécurité, section 2.9).",
            "Un accident grave (décès, blessure grave, dommages matériels importants) se déclare à la CNESST dans "
            "les 24 heures, sans modifier les lieux (art. 62 LSST).",
        ],
        "references": [
            "Loi sur la santé et la sécurité du travail, RLRQ c. S-2.1",
            "Code de sécurité pour les travaux de construction, RLRQ c. S-2.1, r. 4",
        ],
        "authority": "Commission des normes, de l'équité, de la santé et de la sécurité du travail (CNESST)",
        "keywords": ["cnesst", "sst", "securite", "chantier", "accident", "chute", "maitre d'oeuvre"],
    },
    "recours_civils": {
        "title": "Recours contre un entrepreneur ou un client",
        "points": [
            "Avant de poursuivre, on transmet habituellement une mise en demeure écrite qui décrit le manquement "
            "et accorde un délai raisonnable pour s'exécuter (art. 1594 et 1595 C.c.Q.).",
            "La Division des petites créances de la Cour du Québec entend les réclamations jusqu'à 15 000 $ ; "
            "les parties s'y représentent elles-mêmes.",
            "Au-delà, la Cour du Québec ou la Cour supérieure est compétente selon le montant en jeu.",
            "L'action se prescrit en principe par trois ans (art. 2925 C.c.Q.) ; certains délais sont plus courts, "
            "comme ceux de l'hypothèque légale.",
            "Le contrat peut prévoir une médiation ou un arbitrage avant tout recours judiciaire.",
        ],
        "references": [
            "C.c.Q., art. 1594, 1595 et 2925",
            "Code de procédure civile, RLRQ c. C-25.01, art. 536",
        ],
        "authority": "Cour du Québec, Cour supérieure",
        "keywords": ["recours", "poursuivre", "poursuite", "mise en demeure", "petites creances", "tribunal"],
    },
}


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return re.sub(r"\s+", " ", plain.replace("\u2019", "'").strip().lower())


def _mentions(text: str, keywords: list[str]) -> bool:
    return any(re.search(rf"\b{re.escape(word)}\b", text) for word in keywords)


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    topic = args.get("topic")
    if not isinstance(topic, str) or not topic.strip() or len(topic) > 200:
        return {"error": "topic doit être un texte de 1 à 200 caractères", "known_topics": list(TOPICS)}
    wanted = _fold(topic)
    key = wanted.replace(" ", "_")
    if key not in TOPICS:
        key = next((k for k, sheet in TOPICS.items() if _mentions(wanted, sheet["keywords"])), None)
    if key is None:
        return {"error": f"aucune fiche pour le sujet : {topic.strip()}", "known_topics": list(TOPICS)}
    sheet = TOPICS[key]
    return {
        "topic": key,
        "title": sheet["title"],
        "points": list(sheet["points"]),
        "references": list(sheet["references"]),
        "authority": sheet["authority"],
        "last_reviewed": REVIEWED,
        "jurisdiction": "Québec",
    }
