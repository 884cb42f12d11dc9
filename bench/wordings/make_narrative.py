#!/usr/bin/env python3
"""Held-out wording suite: clinical narrative / discharge-letter notes.

Rewrites the 600 QaTa-COV19 test notes as a sentence or two of a clinic letter,
discharge summary or admission narrative, e.g.

    His chest radiograph on admission showed patchy consolidation confined to
    the left lower zone, with a clear right lung.

Only the structure of each cleaned caption (which zones of which lung are
involved) is used.  "left" and "right" are kept exactly as the caption writes
them.  While a note is built, every phrase records which (side, zone) pairs it
names as involved and which it calls clear; before a row is written the script
asserts that the involved set equals the caption's and that nothing called clear
is involved.

Standard library only, deterministic.  Usage (from the repository root):

    python3 bench/wordings/make_narrative.py   # --data ../shared/data/qata-cov19 --seed 20250307

Writes narrative.csv next to this script (or into --out).
"""

import argparse
import csv
import os
import random
import re
import sys

SIDES = ("left", "right")
ZONES = ("upper", "middle", "lower")
ALL3 = frozenset(ZONES)
NUM_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
WORD_OF = {v: k for k, v in NUM_WORDS.items()}
OTHER = {"left": "right", "right": "left"}


# --------------------------------------------------------------------------
# Parser for the fixed caption pattern
# --------------------------------------------------------------------------

CAPTION_RE = re.compile(
    r"^(unilateral|bilateral) pulmonary infection, "
    r"(one|two|three|four|five|six) infected (area|areas), (.+)\.$"
)
PART_RE = re.compile(r"^((?:upper|middle|lower)(?: (?:upper|middle|lower))*) (left|right) lung$")


class CaptionError(ValueError):
    pass


def parse_caption(text):
    """Return {side: frozenset(zones)} for involved sides only. Raise on anything unexpected."""
    m = CAPTION_RE.match(text)
    if not m:
        raise CaptionError("caption does not fit the pattern: %r" % text)
    lateral, count_word, area_word, body = m.groups()
    count = NUM_WORDS[count_word]
    if (count == 1) != (area_word == "area"):
        raise CaptionError("'area'/'areas' disagrees with the count: %r" % text)
    parts = body.split(" and ")
    inv = {}
    for part in parts:
        pm = PART_RE.match(part)
        if not pm:
            raise CaptionError("location %r does not fit the pattern: %r" % (part, text))
        zone_words, side = pm.group(1).split(" "), pm.group(2)
        if side in inv:
            raise CaptionError("side %s named twice: %r" % (side, text))
        if len(set(zone_words)) != len(zone_words):
            raise CaptionError("zone named twice: %r" % text)
        if zone_words != sorted(zone_words, key=ZONES.index):
            raise CaptionError("zones out of upper/middle/lower order: %r" % text)
        inv[side] = frozenset(zone_words)
    n_zones = sum(len(z) for z in inv.values())
    if n_zones != count:
        raise CaptionError("stated count %d but %d zones named: %r" % (count, n_zones, text))
    if (lateral == "unilateral") != (len(inv) == 1):
        raise CaptionError("'%s' disagrees with the sides named: %r" % (lateral, text))
    return inv


def cells(side, zones):
    return frozenset((side, z) for z in zones)


# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

U, M, L = frozenset(["upper"]), frozenset(["middle"]), frozenset(["lower"])
UM, ML, UL = U | M, M | L, U | L

# One lung, a subset of its zones.  (noun phrase, prepositional phrase, plural, number used)
# {s} is the side word.  A phrase with a number is only used where that number equals
# the total number of involved zones of the note (and never in a "clear" phrase).
SIDE_LOCS = {
    U: [
        ("the {s} upper zone", "in the {s} upper zone", False, None),
        ("the {s} apex", "at the {s} apex", False, None),
        ("the upper zone of the {s} lung", "in the upper zone of the {s} lung", False, None),
        ("the upper third of the {s} lung", "in the upper third of the {s} lung", False, None),
        ("the {s} upper lung field", "in the {s} upper lung field", False, None),
        ("the apical region of the {s} lung", "in the apical region of the {s} lung", False, None),
        ("the upper zone on the {s}", "in the upper zone on the {s}", False, None),
    ],
    M: [
        ("the {s} mid zone", "in the {s} mid zone", False, None),
        ("the {s} midzone", "in the {s} midzone", False, None),
        ("the middle zone of the {s} lung", "in the middle zone of the {s} lung", False, None),
        ("the middle third of the {s} lung", "in the middle third of the {s} lung", False, None),
        ("the {s} mid-lung field", "in the {s} mid-lung field", False, None),
        ("the mid region of the {s} lung", "in the mid region of the {s} lung", False, None),
        ("the mid zone on the {s}", "in the mid zone on the {s}", False, None),
    ],
    L: [
        ("the {s} lower zone", "in the {s} lower zone", False, None),
        ("the {s} base", "at the {s} base", False, None),
        ("the {s} lung base", "at the {s} lung base", False, None),
        ("the lower zone of the {s} lung", "in the lower zone of the {s} lung", False, None),
        ("the lower third of the {s} lung", "in the lower third of the {s} lung", False, None),
        ("the {s} lower lung field", "in the {s} lower lung field", False, None),
        ("the basal region of the {s} lung", "in the basal region of the {s} lung", False, None),
        ("the base on the {s}", "at the base on the {s}", False, None),
    ],
    UM: [
        ("the {s} upper and mid zones", "in the {s} upper and mid zones", True, None),
        ("the upper and middle zones of the {s} lung", "in the upper and middle zones of the {s} lung", True, None),
        ("the upper and middle thirds of the {s} lung", "in the upper and middle thirds of the {s} lung", True, None),
        ("the upper two thirds of the {s} lung", "in the upper two thirds of the {s} lung", False, 2),
        ("the {s} apex and mid zone", "at the {s} apex and in the {s} mid zone", True, None),
        ("the {s} upper and mid lung fields", "in the {s} upper and mid lung fields", True, None),
        ("the upper and middle zones on the {s}", "in the upper and middle zones on the {s}", True, None),
    ],
    ML: [
        ("the {s} mid and lower zones", "in the {s} mid and lower zones", True, None),
        ("the middle and lower zones of the {s} lung", "in the middle and lower zones of the {s} lung", True, None),
        ("the {s} mid zone and base", "in the {s} mid zone and at the {s} base", True, None),
        ("the middle and lower thirds of the {s} lung", "in the middle and lower thirds of the {s} lung", True, None),
        ("the lower two thirds of the {s} lung", "in the lower two thirds of the {s} lung", False, 2),
        ("the {s} mid and lower lung fields", "in the {s} mid and lower lung fields", True, None),
        ("the mid and lower zones on the {s}", "in the mid and lower zones on the {s}", True, None),
    ],
    UL: [
        ("the {s} upper and lower zones", "in the {s} upper and lower zones", True, None),
        ("the upper and lower zones of the {s} lung", "in the upper and lower zones of the {s} lung", True, None),
        ("the {s} apex and base", "at the {s} apex and base", True, None),
        ("the upper and lower thirds of the {s} lung", "in the upper and lower thirds of the {s} lung", True, None),
        ("the {s} upper and lower lung fields", "in the {s} upper and lower lung fields", True, None),
    ],
    ALL3: [
        ("the whole of the {s} lung", "throughout the {s} lung", False, None),
        ("the entire {s} lung", "throughout the entire {s} lung", False, None),
        ("the whole {s} lung", "throughout the whole {s} lung", False, None),
        ("all zones of the {s} lung", "in all zones of the {s} lung", True, None),
        ("all three zones of the {s} lung", "in all three zones of the {s} lung", True, 3),
        ("the upper, mid and lower zones of the {s} lung", "in the upper, mid and lower zones of the {s} lung", True, None),
        ("the {s} upper, middle and lower zones", "in the {s} upper, middle and lower zones", True, None),
        ("the {s} lung from apex to base", "throughout the {s} lung, from apex to base", False, None),
    ],
}

# Both lungs, the same subset of zones on each side.
SYM_LOCS = {
    U: [
        ("both upper zones", "in both upper zones", True, None),
        ("both apices", "at both apices", True, None),
        ("the upper zones bilaterally", "in the upper zones bilaterally", True, None),
        ("the upper third of each lung", "in the upper third of each lung", False, None),
        ("the upper zones of both lungs", "in the upper zones of both lungs", True, None),
    ],
    M: [
        ("both mid zones", "in both mid zones", True, None),
        ("both middle zones", "in both middle zones", True, None),
        ("the mid zones bilaterally", "in the mid zones bilaterally", True, None),
        ("the middle third of each lung", "in the middle third of each lung", False, None),
        ("the mid zones of both lungs", "in the mid zones of both lungs", True, None),
    ],
    L: [
        ("both lower zones", "in both lower zones", True, None),
        ("both bases", "at both bases", True, None),
        ("both lung bases", "at both lung bases", True, None),
        ("the lower zones bilaterally", "in the lower zones bilaterally", True, None),
        ("the lower third of each lung", "in the lower third of each lung", False, None),
        ("the lower zones of both lungs", "in the lower zones of both lungs", True, None),
    ],
    UM: [
        ("the upper and mid zones of both lungs", "in the upper and mid zones of both lungs", True, None),
        ("the upper and middle zones bilaterally", "in the upper and middle zones bilaterally", True, None),
        ("both upper zones and both mid zones", "in both upper zones and both mid zones", True, None),
    ],
    ML: [
        ("the mid and lower zones of both lungs", "in the mid and lower zones of both lungs", True, None),
        ("the middle and lower zones bilaterally", "in the middle and lower zones bilaterally", True, None),
        ("both mid zones and both bases", "in both mid zones and at both bases", True, None),
        ("the middle and lower thirds of each lung", "in the middle and lower thirds of each lung", True, None),
    ],
    UL: [
        ("the upper and lower zones of both lungs", "in the upper and lower zones of both lungs", True, None),
        ("both apices and both bases", "at both apices and both bases", True, None),
        ("the upper and lower zones bilaterally", "in the upper and lower zones bilaterally", True, None),
    ],
    ALL3: [
        ("the whole of both lungs", "throughout both lungs", False, None),
        ("both lungs in their entirety", "throughout both lungs", True, None),
        ("all six zones", "in all six zones", True, 6),
        ("every zone of both lungs", "in every zone of both lungs", False, None),
        ("both lungs from apex to base", "throughout both lungs, from apex to base", True, None),
        ("the upper, mid and lower zones of both lungs", "in the upper, mid and lower zones of both lungs", True, None),
        ("the entirety of both lungs", "throughout both lungs", False, None),
    ],
}

# Zone phrases for one lung with the side given elsewhere ("the left lung showed X {own}").
# {d} is the determiner: "its" or "the".
OWN_PPS = {
    U: [("in {d} upper zone", None), ("at {d} apex", None), ("in {d} upper third", None)],
    M: [("in {d} mid zone", None), ("in {d} middle zone", None), ("in {d} middle third", None)],
    L: [("in {d} lower zone", None), ("at {d} base", None), ("in {d} lower third", None)],
    UM: [("in {d} upper and mid zones", None), ("in {d} upper and middle thirds", None),
         ("in {d} upper two thirds", 2), ("at {d} apex and in {d} mid zone", None)],
    ML: [("in {d} mid and lower zones", None), ("in {d} mid zone and at {d} base", None),
         ("in {d} lower two thirds", 2), ("in {d} middle and lower thirds", None)],
    UL: [("in {d} upper and lower zones", None), ("at {d} apex and base", None),
         ("in {d} upper and lower thirds", None)],
    ALL3: [("throughout", None), ("from apex to base", None), ("in all {d} zones", None),
           ("in all three of {d} zones", 3)],
}

# Noun phrases for a lung's zones, side given elsewhere ("On the left, {np} was involved").
OWN_NPS = {
    U: [("the upper zone", False, None), ("the apex", False, None)],
    M: [("the mid zone", False, None), ("the middle zone", False, None)],
    L: [("the lower zone", False, None), ("the base", False, None)],
    UM: [("the upper and mid zones", True, None), ("the apex and mid zone", True, None)],
    ML: [("the mid and lower zones", True, None), ("the mid zone and base", True, None)],
    UL: [("the upper and lower zones", True, None), ("the apex and base", True, None)],
    ALL3: [("all three zones", True, 3), ("every zone", False, None), ("all zones", True, None)],
}

# Adjectival zone forms: "{adj} consolidation".
SIDE_ADJ = {
    U: ["{s} upper zone", "{s} apical"],
    M: ["{s} mid zone", "{s} midzone"],
    L: ["{s} lower zone", "{s} basal"],
    UM: ["{s} upper and mid zone"],
    ML: ["{s} mid and lower zone"],
    UL: [],
    ALL3: [],
}
SYM_ADJ = {
    U: ["bilateral upper zone", "bilateral apical"],
    M: ["bilateral mid zone"],
    L: ["bibasal", "bilateral lower zone", "bilateral basal"],
    UM: ["bilateral upper and mid zone"],
    ML: ["bilateral mid and lower zone"],
    UL: [],
    ALL3: [],
}

# (finding, plural)
FINDINGS = [
    ("patchy consolidation", False),
    ("consolidation", False),
    ("airspace opacification", False),
    ("patchy airspace opacification", False),
    ("airspace shadowing", False),
    ("patchy shadowing", False),
    ("ground-glass opacification", False),
    ("ground-glass change", False),
    ("airspace change", False),
    ("hazy opacification", False),
    ("airspace opacities", True),
    ("patchy opacities", True),
    ("ground-glass opacities", True),
    ("patchy infiltrates", True),
    ("infective changes", True),
    ("confluent consolidation", False),
]
# Nouns that read well after a zone adjective ("left basal consolidation").
BARE_FINDINGS = [
    ("consolidation", False),
    ("airspace opacification", False),
    ("opacification", False),
    ("airspace shadowing", False),
    ("shadowing", False),
    ("ground-glass change", False),
    ("airspace opacities", True),
    ("infiltrates", True),
]
# Nouns that take "of" + place ("opacification of the right lung").
OF_FINDINGS = ["opacification", "consolidation", "airspace opacification", "patchy opacification",
               "ground-glass opacification", "hazy opacification"]

PERSONS = [
    dict(noun="gentleman", Subj="He", subj="he", Poss="His", poss="his", obj="him", was="was"),
    dict(noun="man", Subj="He", subj="he", Poss="His", poss="his", obj="him", was="was"),
    dict(noun="lady", Subj="She", subj="she", Poss="Her", poss="her", obj="her", was="was"),
    dict(noun="woman", Subj="She", subj="she", Poss="Her", poss="her", obj="her", was="was"),
    dict(noun="patient", Subj="They", subj="they", Poss="Their", poss="their", obj="them", was="were"),
    dict(noun="patient", Subj="The patient", subj="the patient", Poss="The patient's",
         poss="the patient's", obj="the patient", was="was"),
]

# Subjects of "{lead} showed ...".
LEADS = [
    "{Poss} chest radiograph on admission",
    "{Poss} admission chest X-ray",
    "{Poss} initial chest radiograph",
    "{Poss} chest X-ray in the emergency department",
    "The admission film",
    "A chest radiograph on arrival",
    "Chest radiography at presentation",
    "A portable chest film on the ward",
    "Imaging",
    "The chest X-ray taken at presentation",
    "A plain chest radiograph on admission",
    "The chest radiograph from {poss} admission",
]
VERBS = ["showed", "showed", "revealed", "demonstrated", "was notable for"]
# "{lead_on}, there was ..."
LEADS_ON = [
    "On {poss} admission chest radiograph",
    "On the chest X-ray taken in the emergency department",
    "On the admission film",
    "On {poss} chest radiograph at presentation",
    "On imaging",
]
# A sentence saying a film was taken, before a passive findings sentence.
IMAGING_SENTENCES = [
    "A chest radiograph was performed on admission.",
    "{Subj} had a chest X-ray on arrival.",
    "We reviewed {poss} admission chest radiograph.",
    "{Poss} chest film from the emergency department has been reviewed.",
    "A chest X-ray was taken at presentation.",
]
PASSIVE_VERBS = ["seen", "noted", "present", "evident", "demonstrated"]

# Context sentences: must name no place, side, zone, count, or finding state.
PRE_CONTEXT = [
    "Thank you for seeing this {noun}, who was admitted under our team with COVID pneumonia.",
    "{Subj} {was} admitted with fever, cough and increasing breathlessness.",
    "{Subj} presented to the emergency department with a short history of cough and fever.",
    "I reviewed {obj} in the respiratory clinic today.",
    "{Subj} {was} admitted with hypoxia after a positive COVID swab.",
    "I am writing to update you on {poss} recent admission with COVID pneumonia.",
    "{Subj} {was} referred by the GP with worsening shortness of breath.",
    "This {noun} was admitted with COVID pneumonia and is now ready for discharge.",
]
POST_CONTEXT = [
    "{Subj} {was} treated with supplemental oxygen and dexamethasone.",
    "{Subj} improved with supportive care and {was} discharged home.",
    "{Poss} oxygen requirement settled over the following days.",
    "We will repeat the chest radiograph at follow-up.",
    "{Subj} {was} managed on the ward with oxygen and antibiotics.",
    "I would be grateful if you would review {obj} in clinic.",
    "{Poss} COVID swab was positive.",
]
CONTEXT_FORBIDDEN = re.compile(
    r"\b(left|right|upper|middle|mid|lower|zones?|bases?|basal|apex|apices|apical|thirds?|"
    r"fields?|regions?|lungs?|both|bilateral|unilateral|clear|spared|sparing|normal|unaffected|"
    r"whole|entire|all|throughout|one|two|three|four|five|six|single|area|areas)\b|\d",
    re.IGNORECASE,
)

# Hedging or anything that implies a place beyond the exact set.
FORBIDDEN = re.compile(
    r"most marked|predominan|mainly|particularly|especially|extending|possibl|probabl|likely|"
    r"\?|\bmay\b|\bmight\b|suggest|cannot|query|\blobes?\b|lingula|hilar|diffuse|minimal|subtle|"
    r"equivocal|questionable|\bcould\b|\bperhaps\b|widespread|elsewhere",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------
# Building blocks.  Each returns its text and records what it names.
# --------------------------------------------------------------------------

class Note:
    """Collects the text pieces of a note and what they name as involved or clear."""

    def __init__(self, inv):
        self.inv = inv
        self.truth = frozenset((s, z) for s, zs in inv.items() for z in zs)
        self.total = len(self.truth)
        self.involved = set()
        self.clear = set()
        self.counts = []          # (number, scope cells) claims
        self.clear_texts = []     # text of phrases that call something clear
        self.n_parts = 0          # location phrases in the findings sentence

    def add_inv(self, c):
        self.involved |= c

    def add_clear(self, c, text):
        self.clear |= c
        self.clear_texts.append(text)

    def uninvolved(self):
        return frozenset((s, z) for s in SIDES for z in ZONES) - self.truth


def pick_num_ok(rng, options, total, num_index):
    opts = [o for o in options if o[num_index] is None or o[num_index] == total]
    return rng.choice(opts)


def side_loc(rng, side, zs, total, joined=False):
    opts = SIDE_LOCS[zs]
    if joined:
        # no internal comma in a phrase that is joined to another lung's phrase
        opts = [o for o in opts if "," not in o[1]]
    np_, pp, plural, _ = pick_num_ok(rng, opts, total, 3)
    return dict(np=np_.format(s=side), pp=pp.format(s=side), plural=plural, cells=cells(side, zs))


def sym_loc(rng, zs, total, for_clear=False):
    opts = SYM_LOCS[zs]
    if for_clear:
        opts = [o for o in opts if "bilaterally" not in o[0] and "each lung" not in o[0]]
    np_, pp, plural, _ = pick_num_ok(rng, opts, total, 3)
    c = cells("left", zs) | cells("right", zs)
    return dict(np=np_, pp=pp, plural=plural, cells=c)


def own_pp(rng, zs, det, total):
    text, _ = pick_num_ok(rng, OWN_PPS[zs], total, 1)
    return text.format(d=det)


def own_np(rng, zs, total):
    np_, plural, _ = pick_num_ok(rng, OWN_NPS[zs], total, 2)
    return np_, plural


def cap(s):
    return s[0].upper() + s[1:]


def be(plural):
    return "were" if plural else "was"


def join_pp(rng, pps):
    if len(pps) == 1:
        return pps[0]
    sep = rng.choice([" and ", ", and ", ", and also ", ", as well as "])
    if (" and " in pps[0] or " and " in pps[1]) and sep == " and ":
        sep = ", and "
    return pps[0] + sep + pps[1]


def join_np(rng, nps):
    if len(nps) == 1:
        return nps[0]
    sep = rng.choice([" and ", ", and ", ", as well as ", " together with "])
    if (" and " in nps[0] or " and " in nps[1]) and sep == " and ":
        sep = ", and "
    return nps[0] + sep + nps[1]


def count_words(rng, n, digit_ok=True):
    """A number for a count claim, as a word (mostly) or a digit.

    Digits are only used where no spelled-out "six" stands beside them and not at the
    start of a sentence."""
    return str(n) if digit_ok and rng.random() < 0.35 else WORD_OF[n]


# --------------------------------------------------------------------------
# Findings sentences
# --------------------------------------------------------------------------

def involved_parts(rng, note, allow_sym=True):
    """Location phrases covering the involved cells: one per side, or one for both sides."""
    inv = note.inv
    sides = list(inv)
    if len(sides) == 2 and inv["left"] == inv["right"] and allow_sym and rng.random() < 0.75:
        return [sym_loc(rng, inv["left"], note.total)]
    rng.shuffle(sides)
    return [side_loc(rng, s, inv[s], note.total, joined=len(sides) == 2) for s in sides]


def record_parts(note, parts):
    note.n_parts = len(parts)
    for p in parts:
        note.add_inv(p["cells"])


def lead(rng, P):
    return rng.choice(LEADS).format(**P), rng.choice(VERBS)


def finding(rng):
    return rng.choice(FINDINGS)


def t_simple(rng, note, P):
    """{Lead} {verb} {finding} {pp} [and {pp}]."""
    parts = involved_parts(rng, note)
    record_parts(note, parts)
    ld, vb = lead(rng, P)
    f, _ = finding(rng)
    return "%s %s %s %s" % (ld, vb, f, join_pp(rng, [p["pp"] for p in parts])), True


def t_confined(rng, note, P):
    """{Lead} {verb} {finding} confined to {np}: implies everything else is clear."""
    parts = involved_parts(rng, note)
    record_parts(note, parts)
    note.add_clear(note.uninvolved(), "confined to")
    ld, vb = lead(rng, P)
    f, _ = finding(rng)
    return "%s %s %s confined to %s" % (ld, vb, f, join_np(rng, [p["np"] for p in parts])), True


def t_bilateral(rng, note, P):
    """{Lead} {verb} bilateral {finding}, involving {np} and {np}.  Two-sided notes only."""
    parts = involved_parts(rng, note)
    record_parts(note, parts)
    ld, vb = lead(rng, P)
    f, _ = finding(rng)
    if rng.random() < 0.5:
        how = rng.choice(["involving", "affecting", "with involvement of"])
        return "%s %s bilateral %s, %s %s" % (ld, vb, f, how, join_np(rng, [p["np"] for p in parts])), True
    return "%s %s bilateral %s %s" % (ld, vb, f, join_pp(rng, [p["pp"] for p in parts])), True


def t_of(rng, note, P):
    """{Lead} {verb} {noun} of {np} [and of {np}]."""
    parts = involved_parts(rng, note)
    record_parts(note, parts)
    ld, vb = lead(rng, P)
    noun = rng.choice(OF_FINDINGS)
    if note.total >= 3 and rng.random() < 0.4:
        noun = "extensive " + noun
    nps = [p["np"] for p in parts]
    body = nps[0] if len(nps) == 1 else nps[0] + rng.choice([" and of ", ", and of "]) + nps[1]
    return "%s %s %s of %s" % (ld, vb, noun, body), True


def t_passive(rng, note, P):
    """A chest radiograph was performed. {Finding} was seen {pp} [and {pp}]."""
    parts = involved_parts(rng, note)
    record_parts(note, parts)
    f, plural = finding(rng)
    intro = rng.choice(IMAGING_SENTENCES).format(**P)
    return "%s %s %s %s %s" % (intro, cap(f), be(plural), rng.choice(PASSIVE_VERBS),
                               join_pp(rng, [p["pp"] for p in parts])), True


def t_there(rng, note, P):
    """On {poss} admission chest radiograph, there was {finding} {pp}."""
    parts = involved_parts(rng, note)
    record_parts(note, parts)
    f, plural = finding(rng)
    lo = rng.choice(LEADS_ON).format(**P)
    return "%s, there %s %s %s" % (lo, be(plural), f, join_pp(rng, [p["pp"] for p in parts])), True


def t_two_sentences(rng, note, P):
    """{Lead} {verb} {finding} {pp}. {NP} was also involved.  Two-sided notes only."""
    parts = involved_parts(rng, note, allow_sym=False)
    record_parts(note, parts)
    ld, vb = lead(rng, P)
    f, _ = finding(rng)
    first = "%s %s %s %s." % (ld, vb, f, parts[0]["pp"])
    p2 = parts[1]
    r = rng.random()
    if r < 0.4:
        second = "%s %s also %s" % (cap(p2["np"]), be(p2["plural"]), rng.choice(["involved", "affected"]))
    elif r < 0.7:
        f2, pl2 = finding(rng)
        second = "There %s also %s %s" % (be(pl2), f2, p2["pp"])
    else:
        f2, pl2 = finding(rng)
        second = "%s %s also %s %s" % (cap(f2), be(pl2), rng.choice(PASSIVE_VERBS), p2["pp"])
    return first + " " + second, True


def t_lung_subject(rng, note, P):
    """On the admission film, the left lung showed {finding} {own}, and the right lung ..."""
    sides = list(note.inv)
    rng.shuffle(sides)
    note.n_parts = len(sides)
    lo = rng.choice(LEADS_ON).format(**P)
    clauses = []
    for s in sides:
        zs = note.inv[s]
        note.add_inv(cells(s, zs))
        f, _ = finding(rng)
        verb = rng.choice(["showed", "showed", "contained"])
        clauses.append("the %s lung %s %s %s" % (s, verb, f, own_pp(rng, zs, "its", note.total)))
    if len(sides) == 2:
        body = clauses[0] + rng.choice([", and ", ", while "]) + clauses[1]
    else:
        o = OTHER[sides[0]]
        if rng.random() < 0.6:
            state = rng.choice(["was clear", "was spared", "was unaffected", "was normal", "remained clear"])
            tail = "the %s lung %s" % (o, state)
            note.add_clear(cells(o, ZONES), tail)
            body = clauses[0] + rng.choice([", while ", ", and ", "; "]) + tail
        else:
            body = clauses[0]
    return "%s, %s" % (lo, body), True


def t_side_first(rng, note, P):
    """{Lead} {verb} {finding}. On the left, the base was involved; on the right, ..."""
    sides = list(note.inv)
    rng.shuffle(sides)
    ld, vb = lead(rng, P)
    f, _ = finding(rng)
    first = "%s %s %s." % (ld, vb, f)
    note.n_parts = len(sides)
    clauses = []
    for s in sides:
        zs = note.inv[s]
        note.add_inv(cells(s, zs))
        state = rng.choice(["involved", "affected"])
        if zs == ALL3 and rng.random() < 0.6:
            clauses.append(rng.choice(["The whole of the %s lung was %s" % (s, state),
                                       "The %s lung was %s throughout" % (s, state)]))
            continue
        np_, plural = own_np(rng, zs, note.total)
        lead_in = rng.choice(["On the %s, " % s, "In the %s lung, " % s])
        clauses.append("%s%s %s %s" % (lead_in, np_, be(plural), state))
    second = clauses[0]
    if len(clauses) == 2:
        second += "; " + clauses[1][0].lower() + clauses[1][1:]
    return first + " " + second, True


def t_adjective(rng, note, P):
    """{Lead} {verb} left basal consolidation [and right mid zone shadowing]."""
    inv = note.inv
    sides = list(inv)
    ld, vb = lead(rng, P)
    if len(sides) == 2 and inv["left"] == inv["right"] and SYM_ADJ[inv["left"]] and rng.random() < 0.7:
        zs = inv["left"]
        note.add_inv(cells("left", zs) | cells("right", zs))
        note.n_parts = 1
        f, _ = rng.choice(BARE_FINDINGS)
        return "%s %s %s %s" % (ld, vb, rng.choice(SYM_ADJ[zs]), f), True
    rng.shuffle(sides)
    note.n_parts = len(sides)
    phrases = []
    for s in sides:
        note.add_inv(cells(s, inv[s]))
        f, _ = rng.choice(BARE_FINDINGS)
        phrases.append("%s %s" % (rng.choice(SIDE_ADJ[inv[s]]).format(s=s), f))
    return "%s %s %s" % (ld, vb, join_np(rng, phrases)), True


def t_sided(rng, note, P):
    """{Lead} {verb} left-sided {finding} {the-own}.  One-sided notes, not whole lung."""
    (s,) = list(note.inv)
    zs = note.inv[s]
    note.add_inv(cells(s, zs))
    note.n_parts = 1
    ld, vb = lead(rng, P)
    f, _ = finding(rng)
    return "%s %s %s-sided %s %s" % (ld, vb, s, f, own_pp(rng, zs, "the", note.total)), True


def t_count(rng, note, P):
    """{Lead} {verb} {finding} in four of the six lung zones: {np} and {np}."""
    parts = involved_parts(rng, note)
    while any("six" in p["np"] for p in parts):   # the count is already given
        parts = involved_parts(rng, note)
    record_parts(note, parts)
    note.counts.append((note.total, "all"))
    ld, vb = lead(rng, P)
    f, _ = finding(rng)
    n = note.total
    nps = join_np(rng, [p["np"] for p in parts])
    zone_w = "zone" if n == 1 else "zones"
    if n == 6:
        return "%s %s %s involving all %s zones, that is %s" % (ld, vb, f, count_words(rng, n), nps), False
    r = rng.random()
    if r < 0.5:
        return "%s %s %s in %s of the six lung zones: %s" % (ld, vb, f, WORD_OF[n], nps), False
    return "%s %s %s involving %s %s, namely %s" % (ld, vb, f, count_words(rng, n), zone_w, nps), False


# --------------------------------------------------------------------------
# Clear statements and count sentences
# --------------------------------------------------------------------------

def clear_statement(rng, note, allow_tail):
    """A phrase calling some uninvolved part clear.  Returns (tail, sentence) forms or None."""
    inv = note.inv
    un = note.uninvolved()
    if not un:
        return None
    if len(inv) == 1:
        (s,) = list(inv)
        o = OTHER[s]
        if inv[s] != ALL3 and rng.random() < 0.3:
            return partial_clear(rng, note, s, allow_tail)
        note.add_clear(cells(o, ZONES), "%s lung" % o)
        if allow_tail and rng.random() < 0.55:
            tail = rng.choice([
                ", with a clear %s lung" % o,
                "; the %s lung was clear" % o,
                ", and the %s lung was clear" % o,
                ", sparing the %s lung" % o,
                "; the %s lung was unaffected" % o,
                ", while the %s lung was normal" % o,
            ])
            return ("tail", tail)
        sent = rng.choice([
            "The %s lung was clear." % o,
            "The %s lung was spared." % o,
            "The %s lung was normal." % o,
            "The %s lung was unaffected." % o,
            "The %s lung remained clear." % o,
        ])
        return ("sentence", sent)
    # two-sided
    r = rng.random()
    partial_sides = [s for s in SIDES if inv[s] != ALL3]
    if inv["left"] == inv["right"] and r < 0.4:
        zs = ALL3 - inv["left"]
        loc = sym_loc(rng, zs, None, for_clear=True)
        note.add_clear(loc["cells"], loc["np"])
        if allow_tail and rng.random() < 0.5:
            return ("tail", rng.choice([", sparing %s" % loc["np"], ", with sparing of %s" % loc["np"]]))
        return ("sentence", "%s %s %s." % (cap(loc["np"]), be(loc["plural"]),
                                           rng.choice(["clear", "spared", "normal"])))
    if r < 0.7 and partial_sides:
        return partial_clear(rng, note, rng.choice(partial_sides), allow_tail)
    note.add_clear(un, "otherwise")
    if allow_tail and rng.random() < 0.5:
        return ("tail", rng.choice(["; the lungs were otherwise clear", ", and the remaining zones were clear",
                                    "; the remaining lung zones were normal"]))
    return ("sentence", rng.choice(["The lungs were otherwise clear.", "The remaining zones were clear.",
                                    "The rest of the lung fields were clear.",
                                    "The remaining lung zones were unaffected."]))


def partial_clear(rng, note, s, allow_tail):
    """Name exactly the uninvolved zones of involved lung s as clear."""
    zs = ALL3 - note.inv[s]
    if rng.random() < 0.3:
        note.add_clear(cells(s, zs), "rest of the %s lung" % s)
        if allow_tail and rng.random() < 0.5:
            return ("tail", rng.choice([", with the rest of the %s lung clear" % s,
                                        "; the rest of the %s lung was clear" % s]))
        return ("sentence", rng.choice(["The rest of the %s lung was clear." % s,
                                        "The %s lung was otherwise normal." % s]))
    loc = side_loc(rng, s, zs, None)
    note.add_clear(loc["cells"], loc["np"])
    if allow_tail and rng.random() < 0.5:
        return ("tail", rng.choice([", sparing %s" % loc["np"], ", with sparing of %s" % loc["np"],
                                    ", with %s spared" % loc["np"]]))
    return ("sentence", "%s %s %s." % (cap(loc["np"]), be(loc["plural"]),
                                       rng.choice(["clear", "spared", "normal", "unaffected"])))


def count_sentence(rng, note):
    n = note.total
    note.counts.append((n, "all"))
    if n == 6:
        return rng.choice(["All six zones were involved.", "All %s lung zones were involved." % count_words(rng, 6)])
    if n == 1:
        return rng.choice(["Only one zone was involved.", "A single lung zone was involved."])
    return rng.choice([
        "In total, %s of the six lung zones were involved." % WORD_OF[n],
        "%s zones were involved in total." % cap(WORD_OF[n]),
        "In total, %s zones were involved." % count_words(rng, n),
        "This amounted to %s involved zones." % count_words(rng, n),
        "%s of the six zones were affected." % cap(WORD_OF[n]),
    ])


# --------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------

def build_note(rng, inv):
    note = Note(inv)
    P = rng.choice(PERSONS)
    two_sided = len(inv) == 2
    whole_one = (not two_sided) and list(inv.values())[0] == ALL3
    adj_ok = all(SIDE_ADJ[z] for z in inv.values()) or (
        two_sided and inv["left"] == inv["right"] and SYM_ADJ[inv["left"]])

    templates = [(t_simple, 5), (t_of, 2), (t_passive, 3), (t_there, 2), (t_lung_subject, 2)]
    if note.total > 1:
        templates.append((t_count, 1))
    if not (two_sided and inv["left"] == inv["right"] == ALL3):
        templates.append((t_side_first, 1))
    if ALL3 not in inv.values():
        templates.append((t_confined, 2))
    if two_sided:
        templates += [(t_bilateral, 3), (t_two_sentences, 2)]
    elif not whole_one:
        templates.append((t_sided, 2))
    if adj_ok:
        templates.append((t_adjective, 2))
    fns, weights = zip(*templates)
    fn = rng.choices(fns, weights=weights)[0]
    body, tail_ok = fn(rng, note, P)

    # optional clear statement ("confined to" already implies everything else is clear)
    sentences = []
    p_clear = 0.55 if not two_sided else 0.2
    if fn is not t_confined and not note.clear and rng.random() < p_clear:
        # a tail naming particular zones only follows a single location phrase;
        # after two phrases it would be unclear which one it qualifies
        cs = clear_statement(rng, note, tail_ok and note.n_parts == 1)
        if cs is not None:
            kind, text = cs
            if kind == "tail":
                body = body + text
            else:
                body = body + "."
                sentences.append(text)
    if not body.endswith("."):
        body += "."
    out = [body] + sentences

    if fn is not t_count and not NUMBER_TOKEN.search(" ".join(out)) and rng.random() < 0.12:
        out.append(count_sentence(rng, note))

    r = rng.random()
    if r < 0.35:
        out.insert(0, rng.choice(PRE_CONTEXT).format(**P))
    elif r < 0.6:
        out.append(rng.choice(POST_CONTEXT).format(**P))
    elif r < 0.68:
        out.insert(0, rng.choice(PRE_CONTEXT).format(**P))
        out.append(rng.choice(POST_CONTEXT).format(**P))
    return " ".join(out), note


NUMBER_TOKEN = re.compile(r"\b(one|two|three|four|five|six|[0-9]+)\b", re.IGNORECASE)
DENOMINATOR = re.compile(r"\bof the six( lung)? zones\b", re.IGNORECASE)


def check_note(text, note):
    """Per-row faithfulness checks; raise AssertionError on any failure."""
    assert note.involved == set(note.truth), (text, sorted(note.involved), sorted(note.truth))
    assert not (note.clear & note.truth), (text, sorted(note.clear & note.truth))
    for n, scope in note.counts:
        assert scope == "all" and n == note.total, (text, n, note.total)
    assert not FORBIDDEN.search(text), (text, FORBIDDEN.search(text).group(0))
    # every number in the text is the involved-zone count (or "six" in "of the six zones")
    for m in NUMBER_TOKEN.finditer(DENOMINATOR.sub("", text)):
        tok = m.group(1).lower()
        val = int(tok) if tok.isdigit() else NUM_WORDS[tok]
        assert val == note.total, (text, tok, note.total)
    lower = text.lower()
    if len(note.inv) == 1:
        (s,) = list(note.inv)
        o = OTHER[s]
        assert re.search(r"\b%s\b" % s, lower), text
        for bad in ("bilateral", "both", "each lung", "bibasal"):
            assert bad not in lower, (text, bad)
        # the other side may only be named as a whole lung that is called clear
        if re.search(r"\b%s\b" % o, lower):
            assert cells(o, ZONES) <= note.clear, (text, o)
            assert len(re.findall(r"\b%s\b" % o, lower)) == len(re.findall(r"\b%s lung\b" % o, lower)), text
    else:
        if not re.search(r"\b(both|bilateral|bilaterally|bibasal|each lung|six)\b", lower):
            assert re.search(r"\bleft\b", lower) and re.search(r"\bright\b", lower), text
    assert text.strip() == text and "  " not in text and ",," not in text and ".." not in text, text
    assert text[0].isupper() and text.endswith("."), text


def check_context():
    for t in PRE_CONTEXT + POST_CONTEXT + IMAGING_SENTENCES + LEADS + LEADS_ON:
        for P in PERSONS:
            s = t.format(**P)
            # leads and imaging sentences may say "chest", "film", "radiograph" but no place
            assert not CONTEXT_FORBIDDEN.search(s), (s, CONTEXT_FORBIDDEN.search(s).group(0))
            assert not FORBIDDEN.search(s), s


def find_data(path, script_dir):
    candidates = [path]
    if not os.path.isabs(path):
        candidates.append(os.path.join(script_dir, "..", "..", path))
    for c in candidates:
        f = os.path.join(c, "Test_Folder", "Test_text_cleaned.csv")
        if os.path.isfile(f):
            return f
    sys.exit("cannot find Test_Folder/Test_text_cleaned.csv under %s" % " or ".join(candidates))


def main():
    script_dir = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/qata-cov19",
                    help="QaTa-COV19 folder (tried from the current directory, then the repository root)")
    ap.add_argument("--out", default=script_dir, help="output folder (default: next to this script)")
    ap.add_argument("--seed", default="20250307", help="random seed (default 20250307)")
    args = ap.parse_args()

    check_context()
    src = find_data(args.data, script_dir)
    with open(src, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header != ["Image", "Description"]:
            sys.exit("unexpected header %r in %s" % (header, src))
        rows = [r for r in reader]
    for r in rows:
        if len(r) != 2 or not r[0] or not r[1]:
            sys.exit("malformed row %r in %s" % (r, src))

    rng = random.Random("%s-narrative" % args.seed)
    out_rows = []
    one_sided = 0
    for key, caption in rows:
        inv = parse_caption(caption.strip())
        one_sided += len(inv) == 1
        text, note = build_note(rng, inv)
        check_note(text, note)
        out_rows.append((key, text))

    keys_in = [r[0] for r in rows]
    keys_out = [r[0] for r in out_rows]
    assert keys_in == keys_out and len(set(keys_out)) == len(keys_out)
    assert all(k and t for k, t in out_rows)

    out_path = os.path.join(args.out, "narrative.csv")
    with open(out_path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["Image", "Description"])
        w.writerows(out_rows)

    # read back
    with open(out_path, newline="", encoding="utf-8") as fh:
        back = list(csv.reader(fh))
    assert back[0] == ["Image", "Description"]
    assert [r[0] for r in back[1:]] == keys_in
    assert all(len(r) == 2 and r[1] for r in back[1:])
    print("narrative.csv: %d rows (%d one-sided) -> %s" % (len(out_rows), one_sided, out_path))


if __name__ == "__main__":
    main()
