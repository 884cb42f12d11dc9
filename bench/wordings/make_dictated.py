#!/usr/bin/env python3
"""Write the "dictated / ward-round" held-out wording suite of the QaTa-COV19 test notes.

Reads `Test_Folder/Test_text_cleaned.csv` under `--data`, parses every caption with a tiny parser
of its one fixed pattern, e.g.

    bilateral pulmonary infection, four infected areas, upper middle lower left lung and lower right lung.
    unilateral pulmonary infection, one infected area, middle right lung.

into the zones (upper / middle / lower) involved in each lung, keeping "left" and "right" exactly as
written, and stops with an error on anything else. It then writes `dictated.csv` (header
`Image,Description`, the same 600 keys in the same order) next to this script: each note is
rewritten the way a doctor dictates a film or writes a quick ward-round / handover note.

Every rewritten note names exactly the involved sides and zones of its caption, no more and no
fewer; anything it calls clear / fine / OK / spared is uninvolved; any count it gives equals the
number of involved zones. The builder records, for each phrase it emits, which (side, zone) pairs
the phrase claims as involved or as clear, and the script asserts both sets against the parse
before writing a row.

Standard library only; deterministic for a given `--seed`.

    python3 bench/wordings/make_dictated.py      # --data ../shared/data/qata-cov19 --seed 20250214
"""

import argparse
import csv
import random
import re
import sys
from pathlib import Path

ZONES = ("upper", "middle", "lower")
SIDES = ("left", "right")
COUNT_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
NUM_WORDS = {v: k for k, v in COUNT_WORDS.items()}

# ---------------------------------------------------------------------------------------------
# Parser of the fixed caption pattern. Anything that does not fit exactly is an error.
# ---------------------------------------------------------------------------------------------

CAPTION_RE = re.compile(
    r"(unilateral|bilateral) pulmonary infection, "
    r"(one|two|three|four|five|six) infected (area|areas), "
    r"(.+)\."
)
PART_RE = re.compile(r"((?:upper|middle|lower)(?: (?:upper|middle|lower))*) (left|right) lung")


class CaptionError(ValueError):
    pass


def parse_caption(text):
    """Return {"left": frozenset(zones), "right": frozenset(zones)} for one cleaned caption."""
    m = CAPTION_RE.fullmatch(text)
    if not m:
        raise CaptionError(f"caption does not fit the fixed pattern: {text!r}")
    laterality, count_word, noun, locations = m.groups()
    involved = {}
    for part in locations.split(" and "):
        pm = PART_RE.fullmatch(part)
        if not pm:
            raise CaptionError(f"bad location {part!r} in caption {text!r}")
        zones = pm.group(1).split()
        side = pm.group(2)
        if len(set(zones)) != len(zones):
            raise CaptionError(f"repeated zone in {part!r} of caption {text!r}")
        if zones != sorted(zones, key=ZONES.index):
            raise CaptionError(f"zones out of upper/middle/lower order in {part!r} of {text!r}")
        if side in involved:
            raise CaptionError(f"side {side!r} named twice in caption {text!r}")
        involved[side] = frozenset(zones)
    n = sum(len(z) for z in involved.values())
    if COUNT_WORDS[count_word] != n:
        raise CaptionError(f"count {count_word!r} != {n} zones named in caption {text!r}")
    if (noun == "area") != (n == 1):
        raise CaptionError(f"'{noun}' does not agree with {n} zones in caption {text!r}")
    if (laterality == "bilateral") != (len(involved) == 2):
        raise CaptionError(f"{laterality!r} does not agree with sides named in caption {text!r}")
    return {s: involved.get(s, frozenset()) for s in SIDES}


# ---------------------------------------------------------------------------------------------
# Vocabulary of the dictated / ward-round family.
# ---------------------------------------------------------------------------------------------

SIDE_FORMS = {
    "full": {"left": "left", "right": "right"},
    "L": {"left": "L", "right": "R"},
    "Lt": {"left": "Lt", "right": "Rt"},
}

# Single-zone nouns, used as "<side> <noun>" ("left base", "R mid zone").
ZONE_NOUN = {
    "upper": ["upper zone", "upper zone", "apex"],
    "middle": ["mid zone", "mid zone", "midzone", "middle zone"],
    "lower": ["lower zone", "base", "base", "lower zone"],
}
# Adjectives for "<a> and <b> zones".
ZONE_ADJ = {"upper": ["upper"], "middle": ["mid", "mid", "middle"], "lower": ["lower"]}
# Both lungs, one zone.
ZONE_BOTH = {
    "upper": ["both apices", "both upper zones"],
    "middle": ["both mid zones", "both midzones", "both middle zones"],
    "lower": ["both bases", "both lower zones", "both lung bases", "both bases"],
}
ZONE_BOTH_PLAIN = {"upper": "apices", "middle": "mid zones", "lower": "bases"}

FINDINGS_SING = [
    "consolidation", "patchy consolidation", "shadowing", "patchy shadowing",
    "airspace shadowing", "haziness", "hazy shadowing", "ground-glass haziness",
    "hazy opacification", "patchy airspace shadowing",
]
FINDINGS_PLUR = [
    "changes", "patchy changes", "patches of consolidation", "infiltrates",
    "patchy infiltrates", "opacities", "patchy opacities", "hazy patches",
    "airspace changes", "infective changes",
]

PREFIXES = [
    "CXR today:", "CXR:", "CXR -", "Chest film reviewed —", "Portable CXR:", "AP chest film:",
    "Today's CXR:", "Film from this morning:", "CXR reviewed on ward round:", "Ward round — CXR:",
    "Chest X-ray:", "Reviewed CXR with the reg —", "Repeat CXR:", "Portable film today -",
    "CXR this am:", "Post-take CXR:",
]
PER_SIDE_LEADS = ["CXR reviewed.", "CXR today —", "Film reviewed on ward round.", "Chest film -",
                  "Today's CXR —", "Portable CXR."]
SEEN_VERBS = ["seen in", "noted in", "present in", "visible in", "in"]
ACTIVE_VERBS = ["affecting", "involving", "in", "across"]
LOOK_ADJ = ["hazy", "patchy", "consolidated", "shadowed", "a bit hazy", "patchy and hazy"]
TAILS = [
    "Likely infective.", "In keeping with infection.", "?COVID.", "Looks infective.",
    "Discussed with the reg.", "Consistent with COVID pneumonitis.", "For review by the reg.",
]


class Note:
    """Builds one note and records what it claims, for the faithfulness assertions."""

    def __init__(self, involved, rng, side_form):
        self.inv = involved
        self.rng = rng
        self.sf = side_form
        self.covered = set()  # (side, zone) said to be involved
        self.cleared = set()  # (side, zone) said to be clear

    # -- small helpers ------------------------------------------------------------------------
    def pick(self, seq):
        return self.rng.choice(seq)

    def chance(self, p):
        return self.rng.random() < p

    def sw(self, side):
        return SIDE_FORMS[self.sf][side]

    def sides_involved(self):
        return [s for s in SIDES if self.inv[s]]

    def uninvolved(self):
        return {(s, z) for s in SIDES for z in ZONES if z not in self.inv[s]}

    def n_zones(self):
        return sum(len(self.inv[s]) for s in SIDES)

    def finding(self):
        if self.chance(0.5):
            return self.pick(FINDINGS_SING), False
        return self.pick(FINDINGS_PLUR), True

    def cover(self, side, zones):
        self.covered |= {(side, z) for z in zones}

    def clear(self, side, zones):
        self.cleared |= {(side, z) for z in zones}

    # -- one lung -----------------------------------------------------------------------------
    def side_np(self, side, zones, article=True):
        """Noun phrase naming exactly `zones` of `side`. Returns (text, plural)."""
        self.cover(side, zones)
        zs = sorted(zones, key=ZONES.index)
        sw, full = self.sw(side), side
        the = "the " if article else ""
        if len(zs) == 3:
            if article:
                opts = [
                    (f"the whole of the {full} lung", False), (f"all of the {full} lung", False),
                    (f"the entire {full} lung", False), (f"all three {full} zones", True),
                    (f"the whole {sw} lung", False), (f"all zones of the {full} lung", True),
                ]
            else:
                opts = [
                    (f"whole {sw} lung", False), (f"entire {sw} lung", False),
                    (f"all of {sw} lung", False), (f"all three {sw} zones", True),
                ]
            return self.pick(opts)
        if len(zs) == 1:
            noun = self.pick(ZONE_NOUN[zs[0]])
            opts = [(f"{the}{sw} {noun}", False)]
            if article and self.chance(0.25):
                opts = [(f"the {noun} on the {full}", False)]
            return self.pick(opts)
        a, b = zs
        adj_a, adj_b = self.pick(ZONE_ADJ[a]), self.pick(ZONE_ADJ[b])
        zone_s = self.pick(["zones", "zones", "zone"])
        opts = [
            (f"{the}{sw} {adj_a} and {adj_b} {zone_s}", True),
            # one zone at a time, either order: "the left base and left mid zone"
            (self._split_pair(side, zs, the), True),
        ]
        if (a, b) == ("middle", "lower"):
            opts += [(f"{the}{sw} mid zone and base", True), (f"{the}{sw} mid to lower zone", False)]
        elif (a, b) == ("upper", "middle"):
            opts += [(f"{the}{sw} apex and mid zone", True)]
        elif (a, b) == ("upper", "lower"):
            opts += [(f"{the}{sw} apex and base", True), (f"{the}{sw} upper zone and base", True)]
        if article:
            opts += [
                (f"the {adj_a} and {adj_b} zones of the {full} lung", True),
                (f"the {adj_a} and {adj_b} zones on the {full}", True),
            ]
        return self.pick(opts)

    def _split_pair(self, side, zs, the):
        sw = self.sw(side)
        names = [f"{sw} {self.pick(ZONE_NOUN[z])}" for z in zs]
        if self.chance(0.5):
            names.reverse()
        return f"{the}{names[0]} and {names[1]}"

    def local_phrase(self, side):
        """Zone phrase with no side word, for "Left lung: consolidation <phrase>"."""
        zones = self.inv[side]
        self.cover(side, zones)
        zs = sorted(zones, key=ZONES.index)
        if len(zs) == 3:
            return self.pick(["throughout", "in all zones", "in all three zones", "throughout the lung"])
        if len(zs) == 1:
            z = zs[0]
            base = {
                "upper": ["at the apex", "in the upper zone"],
                "middle": ["in the mid zone", "mid zone", "in the midzone"],
                "lower": ["at the base", "in the lower zone", "at the base"],
            }[z]
            phrase = self.pick(base)
            if self.chance(0.3):
                phrase += " only"
                self.clear(side, set(ZONES) - zones)
            return phrase
        a, b = zs
        opts = [f"in the {self.pick(ZONE_ADJ[a])} and {self.pick(ZONE_ADJ[b])} zones"]
        if (a, b) == ("middle", "lower"):
            opts += ["mid zone and base", "mid and lower zones"]
        elif (a, b) == ("upper", "middle"):
            opts += ["upper and mid zones", "apex and mid zone"]
        elif (a, b) == ("upper", "lower"):
            opts += ["at the apex and base", "upper and lower zones"]
        return self.pick(opts)

    # -- both lungs ---------------------------------------------------------------------------
    def both_np(self, zones, article=True):
        """Both lungs with the same zones. Returns (text, plural)."""
        for s in SIDES:
            self.cover(s, zones)
        zs = sorted(zones, key=ZONES.index)
        the = "the " if article else ""
        if len(zs) == 3:
            if article:
                opts = [("all zones of both lungs", True), ("the whole of both lungs", False),
                        ("all six zones", True), ("every zone of both lungs", False)]
            else:
                opts = [("both lungs throughout", True), ("all six zones", True),
                        ("all zones both lungs", True)]
            return self.pick(opts)
        if len(zs) == 1:
            z = zs[0]
            opts = list(ZONE_BOTH[z]) + [f"{the}{self.pick(ZONE_ADJ[z])} zones bilaterally"]
            return self.pick(opts), True
        a, b = zs
        adj_a, adj_b = self.pick(ZONE_ADJ[a]), self.pick(ZONE_ADJ[b])
        opts = [
            f"{the}{adj_a} and {adj_b} zones bilaterally",
            f"both {ZONE_BOTH_PLAIN[a]} and both {ZONE_BOTH_PLAIN[b]}",
        ]
        if article:
            opts.append(f"the {adj_a} and {adj_b} zones of both lungs")
        return self.pick(opts), True

    def all_np(self, article=True):
        """Noun phrase naming every involved zone of the note. Returns (text, plural)."""
        sides = self.sides_involved()
        if len(sides) == 2 and self.inv["left"] == self.inv["right"] and self.chance(0.7):
            return self.both_np(self.inv["left"], article)
        if self.chance(0.5):
            sides = list(reversed(sides))
        parts = [self.side_np(s, self.inv[s], article) for s in sides]
        if len(parts) == 1:
            return parts[0]
        texts = [t for t, _ in parts]
        if any(" and " in t for t in texts):
            joiner = self.pick([", plus ", " as well as ", ", and also ", " plus ", " + "])
        else:
            joiner = self.pick([" and ", " and ", ", plus ", " as well as ", " + ", " and also "])
        return joiner.join(texts), True

    # -- clear / count statements --------------------------------------------------------------
    def clear_clause(self):
        """A statement that names only uninvolved zones as clear, or None."""
        unin = self.uninvolved()
        if not unin:
            return None
        kinds = ["general"]
        empty = [s for s in SIDES if not self.inv[s]]
        partial = [s for s in SIDES if 0 < len(self.inv[s]) < 3]
        common = [z for z in ZONES if all(z not in self.inv[s] for s in SIDES)]
        if empty:
            kinds += ["other_lung"] * 4
        if partial and self.inv["left"] != self.inv["right"]:
            kinds += ["partial"] * 2
        if common and not empty:
            kinds.append("common")
        kind = self.pick(kinds)
        if kind == "general":
            self.cleared |= unin
            return self.pick(["otherwise clear", "lungs otherwise clear", "rest of the lungs clear",
                              "nothing elsewhere", "elsewhere clear", "rest of the chest clear",
                              "lung fields otherwise clear"])
        if kind == "other_lung":
            s = empty[0]
            self.clear(s, ZONES)
            sw = self.sw(s)
            return self.pick([
                f"{sw} lung looks OK", f"{sw} lung clear", f"{s} side is clear",
                f"{s} lung is clear", f"nothing on the {s}", f"{s} lung fine",
                f"{s} lung spared", f"no changes on the {s}", f"{s} lung unremarkable",
                f"{s} lung looks fine", f"{s} side OK", f"{s} lung looks clear",
            ])
        if kind == "partial":
            s = self.pick(partial)
            rest = set(ZONES) - self.inv[s]
            self.clear(s, rest)
            sw = self.sw(s)
            opts = [f"rest of the {s} lung is clear", f"rest of the {s} lung clear",
                    f"{s} lung otherwise clear", f"remainder of the {s} lung OK"]
            rest_s = sorted(rest, key=ZONES.index)
            if len(rest_s) == 1:
                noun = self.pick(ZONE_NOUN[rest_s[0]])
                opts += [f"{sw} {noun} clear", f"{sw} {noun} spared", f"{s} {noun} looks OK"]
            else:
                a, b = rest_s
                opts += [f"{sw} {self.pick(ZONE_ADJ[a])} and {self.pick(ZONE_ADJ[b])} zones clear",
                         f"{s} {self.pick(ZONE_ADJ[a])} and {self.pick(ZONE_ADJ[b])} zones fine"]
            return self.pick(opts)
        # common: a zone uninvolved in both lungs
        zs = [z for z in common if self.chance(0.7)] or common[:1]
        for s in SIDES:
            self.clear(s, zs)
        if len(zs) == 1:
            z = zs[0]
            return self.pick([f"{ZONE_BOTH[z][0]} clear", f"{ZONE_BOTH_PLAIN[z]} clear",
                              f"{ZONE_ADJ[z][0]} zones spared"])
        a, b = zs[0], zs[1]
        return f"{ZONE_BOTH_PLAIN[a]} and {ZONE_BOTH_PLAIN[b]} clear"

    def count_word(self):
        n = self.n_zones()
        return NUM_WORDS[n] if self.chance(0.5) else str(n)

    def count_clause(self):
        n = self.n_zones()
        c = self.count_word()
        zone = "zone" if n == 1 else "zones"
        opts = [f"{c} {zone} involved", f"{c} {zone} affected", f"{c} {zone} in total"]
        if n > 1:
            opts.append(f"{n}/6 zones")
        return self.pick(opts)


# ---------------------------------------------------------------------------------------------
# Sentence templates. Each returns the note text; casing is applied afterwards.
# ---------------------------------------------------------------------------------------------


def cap(s):
    return s[:1].upper() + s[1:] if s else s


def with_prefix(note, body, p=0.6):
    if note.chance(p):
        return f"{note.pick(PREFIXES)} {body}"
    return cap(body)


def attach_extras(note, text, p_clear, p_count):
    """Append an optional clear clause and an optional count; returns text ending in '.'."""
    if note.chance(p_clear):
        c = note.clear_clause()
        if c:
            sep = note.pick([", ", "; ", " — ", " - ", ". "])
            text += sep + (cap(c) if sep == ". " else c)
    if note.chance(p_count):
        c = note.count_clause()
        form = note.pick(["paren", "sentence", "dash"])
        if form == "paren":
            text += f" ({c})"
        elif form == "dash":
            text += f" — {c}"
        else:
            text += f". {cap(c)}"
    text = text.rstrip(".") + "."
    if note.chance(0.08):
        text += " " + note.pick(TAILS)
    return text


def t_finding_in(note):
    f, _ = note.finding()
    np_, _ = note.all_np()
    verb = note.pick(ACTIVE_VERBS)
    return attach_extras(note, with_prefix(note, f"{f} {verb} {np_}"), 0.35, 0.15)


def t_telegraphic(note):
    # "CXR today: patchy changes R mid and lower zone, L lung looks OK"
    f, _ = note.finding()
    np_, _ = note.all_np(article=False)
    return attach_extras(note, with_prefix(note, f"{f} {np_}", 0.8), 0.45, 0.15)


def t_seen(note):
    f, plural = note.finding()
    np_, _ = note.all_np()
    verb = note.pick(SEEN_VERBS)
    if verb != "in" and note.chance(0.5):
        verb = ("are " if plural else "is ") + verb
    return attach_extras(note, with_prefix(note, f"{f} {verb} {np_}", 0.3), 0.35, 0.15)


def t_shows(note):
    f, _ = note.finding()
    np_, _ = note.all_np()
    lead = note.pick(["CXR shows", "Chest film shows", "X-ray shows", "Film shows",
                      "Today's film shows", "CXR today shows", "Chest X-ray shows"])
    return attach_extras(note, f"{lead} {f} {note.pick(['in', 'affecting', 'involving'])} {np_}",
                         0.35, 0.15)


def t_infection(note):
    np_, _ = note.all_np()
    body = note.pick([
        f"X-ray shows infection in {np_}", f"CXR consistent with infection in {np_}",
        f"looks like infection in {np_} on today's film", f"CXR: infection in {np_}",
        f"chest film suggests infection affecting {np_}",
    ])
    return attach_extras(note, cap(body), 0.3, 0.12)


def t_location_first(note):
    np_, plural = note.all_np()
    f, _ = note.finding()
    if note.chance(0.5):
        look = ("look " if plural else "looks ") + note.pick(LOOK_ADJ)
        body = with_prefix(note, f"{np_} {look}", 0.5)
    else:
        body = cap(f"{np_}: {f}")  # no "CXR:" lead, to avoid two colons in a row
    return attach_extras(note, body, 0.35, 0.12)


def t_per_side(note):
    """One clause per lung: "Left lung: consolidation mid zone and base. Right lung: clear." """
    order = list(SIDES) if note.chance(0.5) else list(reversed(SIDES))
    label_form = note.pick(["{S} lung", "{S}", "{S} side"])
    sep = note.pick([". ", "; ", " — "])
    clauses = []
    for s in order:
        label = label_form.format(S=cap(s) if sep == ". " or not clauses else s)
        if note.inv[s]:
            f, _ = note.finding()
            clauses.append(f"{label}: {f} {note.local_phrase(s)}")
        else:
            note.clear(s, ZONES)
            clauses.append(f"{label}: {note.pick(['clear', 'fine', 'looks OK', 'nothing', 'NAD', 'spared'])}")
    body = sep.join(clauses)
    if note.chance(0.4):
        body = f"{note.pick(PER_SIDE_LEADS)} {body}"
    return attach_extras(note, body, 0.0, 0.12)


def t_count_first(note):
    n = note.n_zones()
    c = note.count_word()
    zone = "zone" if n == 1 else "zones"
    f, _ = note.finding()
    np_, _ = note.all_np()
    body = note.pick([
        f"{c} {zone} involved — {f} in {np_}",
        f"{f} in {c} {zone}: {np_}",
        f"{c} {zone} affected; {f} {note.pick(ACTIVE_VERBS)} {np_}",
    ])
    return attach_extras(note, with_prefix(note, body, 0.4), 0.25, 0.0)


def t_handover(note):
    f, _ = note.finding()
    np_, _ = note.all_np()
    lead = note.pick(["Handover:", "Handover -", "For handover:", "Evening handover:", "Ward round:"])
    mid = note.pick(["CXR shows", "film shows", "CXR has", "chest film with", "CXR today -"])
    return attach_extras(note, f"{lead} {mid} {f} in {np_}", 0.4, 0.12)


def t_whole_plus(note):
    # "Changes affecting the whole of the left lung plus the right upper zone"
    f, _ = note.finding()
    np_, _ = note.all_np()
    return attach_extras(note, cap(f"{f} {note.pick(['affecting', 'involving'])} {np_}"), 0.3, 0.12)


def t_bibasal(note):
    f, _ = note.finding()
    body = note.pick([f"bibasal {f}", f"{f} at both bases", f"bibasal {f} only"])
    for s in SIDES:
        note.cover(s, {"lower"})
    if body.endswith(" only"):
        for s in SIDES:
            note.clear(s, {"upper", "middle"})
    return attach_extras(note, with_prefix(note, body, 0.6), 0.3, 0.12)


TEMPLATES = [
    (t_finding_in, 4), (t_telegraphic, 3), (t_seen, 2), (t_shows, 3), (t_infection, 2),
    (t_location_first, 2), (t_per_side, 3), (t_count_first, 1), (t_handover, 2), (t_whole_plus, 2),
]


def dictate(involved, rng):
    casing = rng.choices(["as_is", "lower", "upper"], weights=[84, 10, 6])[0]
    # A lone "l" / "r" is too easy to misread in an all-lower-case row; use words or Lt/Rt there.
    side_form = rng.choice(["full", "Lt"] if casing == "lower" else ["full", "full", "L", "Lt"])
    note = Note(involved, rng, side_form)
    templates = list(TEMPLATES)
    if involved["left"] == involved["right"] == frozenset({"lower"}):
        templates.append((t_bibasal, 4))
    fns, weights = zip(*templates)
    text = rng.choices(fns, weights=weights)[0](note)
    check_claims(note, involved, text)
    text = re.sub(r"\s+", " ", text).strip()
    if casing == "lower":
        text = text.lower()
    elif casing == "upper":
        text = text.upper()
    return text


def check_claims(note, involved, text):
    truth = {(s, z) for s in SIDES for z in involved[s]}
    if note.covered != truth:
        raise AssertionError(f"note names {sorted(note.covered)} but caption has {sorted(truth)}: {text!r}")
    if note.cleared & truth:
        raise AssertionError(f"note calls involved zones clear {sorted(note.cleared & truth)}: {text!r}")


def main():
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/qata-cov19",
                    help="QaTa-COV19 folder (relative paths: from the current directory, "
                         "else from the repository root)")
    ap.add_argument("--out", default=str(here), help="output folder (default: next to this script)")
    ap.add_argument("--seed", default="20250214")
    args = ap.parse_args()

    data = Path(args.data)
    if not data.is_absolute() and not data.exists():
        data = here.parent.parent / args.data
    src = data / "Test_Folder" / "Test_text_cleaned.csv"
    with open(src, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != ["Image", "Description"]:
            sys.exit(f"unexpected header {reader.fieldnames} in {src}")
        rows = [(r["Image"], r["Description"]) for r in reader]

    rng = random.Random(f"{args.seed}-dictated")
    out_rows = []
    for image, caption in rows:
        if not image or not caption:
            sys.exit(f"empty cell in {src}: {image!r}, {caption!r}")
        out_rows.append((image, dictate(parse_caption(caption), rng)))

    keys = [k for k, _ in rows]
    assert [k for k, _ in out_rows] == keys, "keys changed"
    assert len(set(keys)) == len(keys), "duplicate keys in source"
    assert all(d.strip() for _, d in out_rows), "empty description"

    Path(args.out).mkdir(parents=True, exist_ok=True)
    out = Path(args.out) / "dictated.csv"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["Image", "Description"])
        w.writerows(out_rows)
    one_sided = sum(1 for _, c in rows if c.startswith("unilateral"))
    print(f"dictated.csv: {len(out_rows)} rows ({one_sided} one-sided), "
          f"{len(set(d for _, d in out_rows))} distinct notes -> {out}")


if __name__ == "__main__":
    main()
