#!/usr/bin/env python3
"""Held-out rewordings of the QaTa-COV19 test notes, for scoring only.

Reads the 600 cleaned test captions (`Test_Folder/Test_text_cleaned.csv`), parses each one
into the lung zones it names ({left: zones, right: zones}, sides kept exactly as written), and
writes five suites of the same 600 rows, in the same order, with the same `Image` keys:

  report.csv       radiology-report prose
  telegraphic.csv  terse clinician shorthand
  mixed.csv        prose and shorthand mixed, varied casing, explicit negation of uninvolved lungs
  negation.csv     the caption verbatim, plus a sentence negating the other lung (one-sided notes)
  swap.csv         the caption with "left" and "right" exchanged

plus `one_sided.txt` (Image keys of the notes that involve exactly one lung).

Standard library only; the output is deterministic for a given --seed.

    python3 bench/wordings/make_wordings.py [--data ../shared/data/qata-cov19] [--out bench/wordings]
"""

import argparse
import csv
import os
import random
import re
import sys

DEFAULT_SEED = 20250131
ZONES = ("upper", "middle", "lower")
SIDES = ("left", "right")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
WORD_NUMBERS = {w: n for n, w in NUMBER_WORDS.items()}
OTHER = {"left": "right", "right": "left"}

# --------------------------------------------------------------------------------------------
# Parsing the cleaned caption format (one fixed pattern; anything else is an error).
# --------------------------------------------------------------------------------------------

CAPTION_RE = re.compile(
    r"^(bilateral|unilateral) pulmonary infection, ([a-z]+) infected (areas?), (.+)\.$"
)
PART_RE = re.compile(r"^((?:upper|middle|lower)(?: (?:upper|middle|lower))*) (left|right) lung$")


class CaptionError(ValueError):
    pass


def parse_caption(text):
    """Return {"left": frozenset(zones), "right": frozenset(zones)} or raise CaptionError."""
    m = CAPTION_RE.match(text.strip())
    if not m:
        raise CaptionError("caption does not match the cleaned format: %r" % text)
    laterality, count_word, noun, body = m.groups()
    if count_word not in WORD_NUMBERS:
        raise CaptionError("unknown count word %r in %r" % (count_word, text))
    count = WORD_NUMBERS[count_word]
    if (count == 1) != (noun == "area"):
        raise CaptionError("area/areas does not agree with the count in %r" % text)
    found = {"left": frozenset(), "right": frozenset()}
    seen = []
    for part in body.split(" and "):
        pm = PART_RE.match(part)
        if not pm:
            raise CaptionError("cannot parse location %r in %r" % (part, text))
        words = pm.group(1).split()
        side = pm.group(2)
        if side in seen:
            raise CaptionError("side %r named twice in %r" % (side, text))
        if len(set(words)) != len(words):
            raise CaptionError("zone repeated in %r" % text)
        seen.append(side)
        found[side] = frozenset(words)
    total = sum(len(z) for z in found.values())
    if total != count:
        raise CaptionError("count %d does not equal the %d zones named in %r" % (count, total, text))
    if (laterality == "bilateral") != (len(seen) == 2):
        raise CaptionError("laterality word disagrees with the sides named in %r" % text)
    return found


def ordered(zones):
    return [z for z in ZONES if z in zones]


def involved_sides(st):
    return [s for s in SIDES if st[s]]


def n_zones(st):
    return sum(len(st[s]) for s in SIDES)


def one_sided(st):
    return len(involved_sides(st)) == 1


# --------------------------------------------------------------------------------------------
# Small text helpers.
# --------------------------------------------------------------------------------------------


def join_and(items):
    items = list(items)
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def cap(s):
    return s[:1].upper() + s[1:] if s else s


def plural(n, one, many):
    return one if n == 1 else many


def finish(s):
    s = s.strip()
    s = re.sub(r"\s+", " ", s)
    if not s.endswith("."):
        s += "."
    return s


# --------------------------------------------------------------------------------------------
# Suite 1: radiology-report prose.
# --------------------------------------------------------------------------------------------

# (noun phrase, is_plural)
REPORT_FINDINGS = [
    ("airspace opacities", True),
    ("patchy airspace opacification", False),
    ("consolidation", False),
    ("patchy consolidation", False),
    ("ground-glass opacities", True),
    ("ground-glass change", False),
    ("airspace disease", False),
    ("ill-defined opacities", True),
    ("hazy opacification", False),
    ("mixed ground-glass and consolidative opacities", True),
    ("increased airspace shadowing", False),
    ("patchy opacities", True),
    ("confluent consolidation", False),
    ("hazy ground-glass opacity", False),
]

# Findings that read well after a zone adjective ("left lower zone consolidation").
ADJ_FINDINGS = [
    ("consolidation", False),
    ("opacities", True),
    ("airspace opacities", True),
    ("ground-glass opacities", True),
    ("airspace disease", False),
    ("opacification", False),
    ("ground-glass change", False),
]

SEEN_VERBS = ["seen", "noted", "present", "demonstrated", "evident", "identified"]
IMPRESSIONS = [
    ", in keeping with infection",
    ", consistent with pneumonia",
    ", compatible with an infective process",
    ", likely infective in aetiology",
    ", in keeping with viral pneumonia",
]


def zone_words(zones, mid):
    return [mid if z == "middle" else z for z in ordered(zones)]


def side_np(side, zones, rng, mid, style):
    """Noun phrase for the zones of one side, e.g. 'the left mid and lower zones'."""
    zs = ordered(zones)
    if len(zs) == 3:
        return rng.choice([
            "all three zones of the %s lung" % side,
            "the entire %s lung" % side,
            "all zones of the %s lung" % side,
            "the %s upper, %s and lower zones" % (side, mid),
            "the whole of the %s lung" % side,
        ])
    zl = join_and(zone_words(zs, mid))
    zn = plural(len(zs), "zone", "zones")
    if style == "anatomic":
        parts = []
        for z in zs:
            parts.append({"upper": "apex", "middle": "%s zone" % mid, "lower": "base"}[z])
        if zs == ["lower"]:
            return rng.choice(["the %s base" % side, "the %s lung base" % side])
        if zs == ["upper"]:
            return rng.choice(["the %s apex" % side, "the %s lung apex" % side])
        return "the %s %s" % (side, join_and(parts))
    if style == "of":
        return "the %s %s of the %s lung" % (zl, zn, side)
    return "the %s %s %s" % (side, zl, zn)


def side_pp(side, zones, rng, mid, style):
    """Locative phrase for one side, e.g. 'in the left lower zone', 'throughout the left lung'."""
    if len(zones) == 3 and rng.random() < 0.6:
        return rng.choice([
            "throughout the %s lung" % side,
            "in all zones of the %s lung" % side,
            "across all three zones of the %s lung" % side,
            "diffusely throughout the %s lung" % side,
        ])
    np_ = side_np(side, zones, rng, mid, style)
    prep = "at" if np_.endswith(("base", "apex")) and " and " not in np_ and rng.random() < 0.5 else "in"
    return "%s %s" % (prep, np_)


def both_np(zones, rng, mid):
    """Noun phrase for the same zones on both sides."""
    zs = ordered(zones)
    if len(zs) == 3:
        return rng.choice(["all zones of both lungs", "both lungs in their entirety",
                           "all six lung zones", "every zone of both lungs"])
    if zs == ["lower"]:
        return rng.choice(["both lung bases", "both bases", "both lower zones"])
    if zs == ["upper"]:
        return rng.choice(["both apices", "both upper zones", "both lung apices"])
    zl = join_and(zone_words(zs, mid))
    zn = plural(len(zs), "zone", "zones")
    if zs == ["middle"]:
        return rng.choice(["both %s zones" % mid, "the %s zones of both lungs" % mid])
    if zs == ["upper", "lower"] and rng.random() < 0.4:
        return "both apices and both bases"
    return rng.choice(["the %s %s of both lungs" % (zl, zn), "the %s zones bilaterally" % zl])


def both_pp(zones, rng, mid):
    zs = ordered(zones)
    if len(zs) == 3:
        return rng.choice([
            "throughout both lungs",
            "diffusely throughout both lungs",
            "in all zones bilaterally",
            "in every zone of both lungs",
            "throughout both lungs, involving every zone",
        ])
    if rng.random() < 0.35:
        zl = join_and(zone_words(zs, mid))
        return rng.choice(["bilaterally in the %s zones" % zl, "in the %s zones bilaterally" % zl])
    np_ = both_np(zones, rng, mid)
    prep = "at" if np_.endswith(("bases", "apices")) and " and " not in np_ and rng.random() < 0.5 else "in"
    return "%s %s" % (prep, np_)


def both_adjectival(zones, rng, mid):
    """Adjectival location for the same zones on both sides, e.g. 'bibasal', 'bilateral mid zone'."""
    zs = ordered(zones)
    if zs == ["lower"] and rng.random() < 0.5:
        return rng.choice(["bibasal", "bilateral basal"])
    if zs == ["upper"] and rng.random() < 0.5:
        return rng.choice(["biapical", "bilateral apical"])
    if len(zs) == 3:
        return "diffuse bilateral"
    return "bilateral %s %s" % (join_and(zone_words(zs, mid)), "zone")


def side_adjectival(side, zones, rng, mid):
    zs = ordered(zones)
    if zs == ["lower"] and rng.random() < 0.4:
        return "%s basal" % side
    if zs == ["upper"] and rng.random() < 0.4:
        return "%s apical" % side
    if len(zs) == 3:
        return None
    return "%s %s zone" % (side, join_and(zone_words(zs, mid)))


def location_pp(st, rng, mid, style, order):
    """Locative phrase covering the whole structure."""
    sides = [s for s in order if st[s]]
    if len(sides) == 2 and st["left"] == st["right"] and rng.random() < 0.8:
        return both_pp(st["left"], rng, mid)
    pps = [side_pp(s, st[s], rng, mid, style) for s in sides]
    if len(pps) == 2 and pps[0].startswith("in ") and pps[1].startswith("in ") and rng.random() < 0.5:
        pps[1] = pps[1][3:]
    return " and ".join(pps)


def location_np(st, rng, mid, style, order):
    sides = [s for s in order if st[s]]
    if len(sides) == 2 and st["left"] == st["right"] and rng.random() < 0.8:
        return both_np(st["left"], rng, mid)
    return " and ".join(side_np(s, st[s], rng, mid, style) for s in sides)


def be(is_plural):
    return "are" if is_plural else "is"


def side_subject_clause(side, zones, rng, mid):
    """A clause with the lung as subject: 'The left lung shows consolidation in its lower zone'."""
    f, _ = rng.choice(REPORT_FINDINGS)
    verb = rng.choice(["shows", "demonstrates", "contains", "has"])
    zs = ordered(zones)
    if len(zs) == 3:
        tail = rng.choice(["in all three zones", "throughout", "in every zone",
                           "in its upper, %s and lower zones" % mid])
        return "The %s lung %s %s %s" % (side, verb, f, tail)
    zl = join_and(zone_words(zs, mid))
    if zs == ["lower"] and rng.random() < 0.4:
        return "The %s lung %s %s at its base" % (side, verb, f)
    if zs == ["upper"] and rng.random() < 0.4:
        return "The %s lung %s %s at its apex" % (side, verb, f)
    return "The %s lung %s %s in its %s %s" % (side, verb, f, zl, plural(len(zs), "zone", "zones"))


def side_clause(side, zones, rng, mid, style):
    """An independent sentence about one side."""
    k = rng.randrange(5)
    if k == 0:
        return side_subject_clause(side, zones, rng, mid)
    f, pl = rng.choice(REPORT_FINDINGS)
    pp = side_pp(side, zones, rng, mid, style)
    if k == 1:
        return "There %s %s %s" % (be(pl), f, pp)
    if k == 2:
        return "%s %s %s %s" % (cap(f), be(pl), rng.choice(SEEN_VERBS), pp)
    if k == 3:
        adj = side_adjectival(side, zones, rng, mid)
        if adj:
            af, _ = rng.choice(ADJ_FINDINGS)
            return "%s %s" % (cap(adj), af)
        return "%s %s" % (cap(f), pp)
    return "%s %s" % (cap(f), pp)


def make_report(st, rng):
    mid = rng.choice(["mid", "mid", "middle"])
    style = rng.choice(["side-first", "side-first", "of", "anatomic"])
    order = list(SIDES) if rng.random() < 0.6 else list(reversed(SIDES))
    sides = [s for s in order if st[s]]
    same_both = len(sides) == 2 and st["left"] == st["right"]
    f, pl = rng.choice(REPORT_FINDINGS)
    n = n_zones(st)
    k = rng.randrange(9)
    if k == 0:
        s = "%s %s" % (cap(f), location_pp(st, rng, mid, style, order))
    elif k == 1:
        s = "There %s %s %s" % (be(pl), f, location_pp(st, rng, mid, style, order))
    elif k == 2:
        s = "%s %s %s %s" % (cap(f), be(pl), rng.choice(SEEN_VERBS),
                             location_pp(st, rng, mid, style, order))
    elif k == 3:
        pp = location_pp(st, rng, mid, style, order)
        s = "%s, there %s %s" % (cap(pp), be(pl), f)
    elif k == 4:
        s = "%s %s %s" % (cap(f), rng.choice(["involving", "affecting", "within"]),
                          location_np(st, rng, mid, style, order))
    elif k == 5:
        lead = rng.choice(["The chest radiograph shows", "Frontal chest radiograph demonstrates",
                           "The radiograph shows", "AP chest film demonstrates",
                           "Chest X-ray shows"])
        s = "%s %s %s" % (lead, f, location_pp(st, rng, mid, style, order))
    elif k == 6:
        if n == 1:
            head = rng.choice(["A single lung zone is involved", "One zone is involved"])
        else:
            head = "%s lung zones are involved" % cap(NUMBER_WORDS[n])
        s = "%s, with %s %s" % (head, f, location_pp(st, rng, mid, style, order))
    elif k == 7 and same_both:
        af, _ = rng.choice(ADJ_FINDINGS)
        s = "%s %s" % (cap(both_adjectival(st["left"], rng, mid)), af)
    elif k == 7 or k == 8:
        if len(sides) == 2:
            clauses = [side_clause(sd, st[sd], rng, mid, style) for sd in sides]
            return " ".join(finish(c) for c in clauses)
        s = side_clause(sides[0], st[sides[0]], rng, mid, style)
    else:  # pragma: no cover
        raise AssertionError(k)
    if rng.random() < 0.25:
        s += rng.choice(IMPRESSIONS)
    return finish(s)


# --------------------------------------------------------------------------------------------
# Suite 2: telegraphic shorthand.
# --------------------------------------------------------------------------------------------

SHORT_FINDINGS = ["opac", "opacities", "consol", "GGO", "patchy opac", "airspace opac",
                  "infiltrates", "consolidation", "GGO/consol", "airspace shadowing"]
SHORT_ZONE = {"upper": "upp", "middle": "mid", "lower": "lwr"}
CODE = {"upper": "U", "middle": "M", "lower": "L"}
SHORT_SIDE = {"L": {"left": "L", "right": "R"}, "Lt": {"left": "Lt", "right": "Rt"}}


def codes(side, zones):
    return ["%s%sZ" % (side[0].upper(), CODE[z]) for z in ordered(zones)]


def short_side(side, zones, rng, sidestyle, form, code_sep=None):
    """Shorthand for one side's zones: 'L mid/lwr', 'LMZ/LLZ', 'Rt lwr zone', 'L all zones'."""
    S = SHORT_SIDE[sidestyle][side]
    zs = ordered(zones)
    if form == "code":
        return (code_sep or rng.choice(["/", "+", ", "])).join(codes(side, zones))
    if len(zs) == 3 and rng.random() < 0.6:
        return rng.choice(["%s all zones" % S, "%s whole lung" % S, "whole %s lung" % S,
                           "%s upp/mid/lwr" % S, "%s all 3 zones" % S])
    sep = rng.choice(["/", "/", "+"])
    zl = sep.join(SHORT_ZONE[z] for z in zs)
    suffix = rng.choice(["", "", " zone" if len(zs) == 1 else " zones"])
    return "%s %s%s" % (S, zl, suffix)


def short_both(zones, rng):
    zs = ordered(zones)
    if zs == ["lower"] and rng.random() < 0.4:
        return "bibasal"
    if len(zs) == 3:
        return rng.choice(["bilat all zones", "diffuse bilat", "all zones bilat", "both lungs all zones"])
    zl = "/".join(SHORT_ZONE[z] for z in zs)
    return rng.choice(["bilat %s" % zl, "bilat %s zones" % zl, "%s zones bilat" % zl])


def short_count(n, rng):
    return rng.choice([
        "x%d" % n,
        "%d %s" % (n, plural(n, "area", "areas")),
        "%d %s" % (n, plural(n, "zone", "zones")),
        "(%d %s)" % (n, plural(n, "zone", "zones")),
        "%d %s involved" % (n, plural(n, "zone", "zones")),
    ])


def short_location(st, rng, sidestyle, order, allow_both=True):
    sides = [s for s in order if st[s]]
    if len(sides) == 2 and st["left"] == st["right"] and allow_both and rng.random() < 0.7:
        return short_both(st["left"], rng), True
    if rng.random() < 0.35:
        # Zone codes: either one flat list ("LUZ, LMZ, RLZ") or sides split by a semicolon.
        if rng.random() < 0.6:
            inner = between = rng.choice(["/", ", ", "+", " "])
        else:
            inner, between = rng.choice(["/", "+"]), "; "
        return between.join(short_side(s, st[s], rng, sidestyle, "code", inner) for s in sides), False
    sep = rng.choice(["; ", ", ", " + ", " & "])
    return sep.join(short_side(s, st[s], rng, sidestyle, "words") for s in sides), False


def make_telegraphic(st, rng):
    sidestyle = rng.choice(["L", "L", "Lt"])
    order = list(SIDES) if rng.random() < 0.65 else list(reversed(SIDES))
    sides = [s for s in order if st[s]]
    n = n_zones(st)
    f = rng.choice(SHORT_FINDINGS)
    if len(sides) == 2:
        lat = rng.choice(["bilat", "bilat", "B/L"])
    else:
        S = SHORT_SIDE[sidestyle][sides[0]]
        lat = rng.choice(["unilat", "%s-sided" % S, "%s sided" % S])
    count = short_count(n, rng) if rng.random() < 0.55 else ""
    k = rng.randrange(6)
    if k == 0:
        loc, _ = short_location(st, rng, sidestyle, order)
        s = "%s %s" % (f, loc)
        if count:
            s += "; " + count
    elif k == 1:
        loc, is_both = short_location(st, rng, sidestyle, order)
        if is_both:
            s = "%s %s" % (f, loc)
        else:
            s = "%s %s: %s" % (lat, f, loc)
        if count:
            s += "; " + count
    elif k == 2:
        loc, _ = short_location(st, rng, sidestyle, order)
        s = "%s %s" % (loc, f)
        if count:
            s += " " + count
    elif k == 3:
        loc, _ = short_location(st, rng, sidestyle, order)
        s = "%s %s %s" % (rng.choice(["CXR:", "CXR -", "CXR"]), f, loc)
        if count:
            s += ", " + count
    elif k == 4 and len(sides) == 2:
        parts = []
        for sd in sides:
            form = "code" if rng.random() < 0.3 else "words"
            parts.append("%s %s" % (short_side(sd, st[sd], rng, sidestyle, form), rng.choice(SHORT_FINDINGS)))
        s = "; ".join(parts)
        if count:
            s += "; " + count
    else:
        loc, _ = short_location(st, rng, sidestyle, order)
        s = "%s %s %s" % (rng.choice(["infective change", "infx change", "inf change", "PNA changes"]), loc, count)
        s = s.strip()
    return re.sub(r"\s+", " ", s).strip()


# --------------------------------------------------------------------------------------------
# Suite 3: mixed prose and shorthand, varied casing, explicit negation of uninvolved parts.
# --------------------------------------------------------------------------------------------

CLEAR_LUNG = [
    "The {side} lung is clear",
    "{Side} lung clear",
    "{S} lung clear",
    "{S} lung NAD",
    "No opacity in the {side} lung",
    "the {side} lung is spared",
    "{side} lung normal",
    "{Side} lung free of opacity",
    "no {side}-sided involvement",
    "{S} side clear",
    "the {side} lung appears normal",
    "{side} lung unremarkable",
    "{S} lung spared",
    "nothing on the {side}",
]


def clear_lung(side, rng, sidestyle):
    t = rng.choice(CLEAR_LUNG)
    return t.format(side=side, Side=cap(side), S=SHORT_SIDE[sidestyle][side])


def spared_zones(side, zones, rng, mid, name_side, sidestyle):
    """Phrase negating exactly the uninvolved zones of an involved side.

    Always introduced by "sparing"/"with" or put in brackets, so that it cannot be read as
    part of a preceding list of involved zones.
    """
    un = [z for z in ZONES if z not in zones]
    assert un and len(un) < 3
    S = SHORT_SIDE[sidestyle][side]
    anat = {"upper": "apex", "middle": "%s zone" % mid, "lower": "base"}
    zn = plural(len(un), "zone", "zones")
    if name_side:
        k = rng.randrange(5)
        if k == 0:
            return ", sparing the %s %s %s" % (side, join_and(zone_words(un, mid)), zn)
        if k == 1:
            return " (%s %s spared)" % (S, "/".join(SHORT_ZONE[z] for z in un))
        if k == 2:
            return " (%s clear)" % "/".join(codes(side, un))
        if k == 3:
            return ", with the %s %s %s" % (side, join_and(anat[z] for z in un),
                                            rng.choice(["clear", "spared"]))
        return ", sparing the %s %s" % (side, join_and(anat[z] for z in un))
    k = rng.randrange(4)
    if k == 0:
        return ", sparing the %s" % join_and(anat[z] for z in un)
    if k == 1:
        return " (%s %s spared)" % (join_and(zone_words(un, mid)), zn)
    if k == 2:
        return ", with the %s %s" % (join_and(anat[z] for z in un), rng.choice(["clear", "spared"]))
    return " (%s spared)" % "/".join(SHORT_ZONE[z] for z in un)


def mixed_count(n, rng):
    word = rng.random() < 0.5
    num = NUMBER_WORDS[n] if word else str(n)
    return rng.choice([
        "%s %s" % (num, plural(n, "zone", "zones")),
        "%s %s involved" % (num, plural(n, "zone", "zones")),
        "%s affected %s" % (num, plural(n, "area", "areas")),
        "%s %s" % (num, plural(n, "area", "areas")),
    ])


def mixed_side(side, zones, rng, mid, sidestyle):
    """One side's location, in prose or shorthand at random."""
    if rng.random() < 0.5:
        style = rng.choice(["side-first", "of", "anatomic"])
        return side_pp(side, zones, rng, mid, style)
    form = "code" if rng.random() < 0.4 else "words"
    return short_side(side, zones, rng, sidestyle, form)


def recase(s, rng):
    k = rng.random()
    if k < 0.18:
        return s.lower()
    if k < 0.33:
        return s.upper()
    if k < 0.43:
        # Capitalise each word (keeps all-caps abbreviations as they are).
        def title(w):
            if w.isupper():
                return w
            i = next((j for j, ch in enumerate(w) if ch.isalpha()), 0)
            return w[:i] + w[i:i + 1].upper() + w[i + 1:]
        return " ".join(title(w) for w in s.split(" "))
    return s


def make_mixed(st, rng):
    mid = rng.choice(["mid", "middle"])
    sidestyle = rng.choice(["L", "Lt"])
    order = list(SIDES) if rng.random() < 0.55 else list(reversed(SIDES))
    sides = [s for s in order if st[s]]
    n = n_zones(st)
    f = rng.choice([x[0] for x in REPORT_FINDINGS] + SHORT_FINDINGS)
    pieces = []
    # Involved part.
    if len(sides) == 2 and st["left"] == st["right"] and rng.random() < 0.5:
        if rng.random() < 0.5:
            loc = both_pp(st["left"], rng, mid)
        else:
            loc, _ = short_location(st, rng, sidestyle, order)
        main = "%s %s" % (f, loc)
    else:
        locs = []
        with_spared = False
        for sd in sides:
            loc = mixed_side(sd, st[sd], rng, mid, sidestyle)
            if len(st[sd]) < 3 and rng.random() < 0.35:
                loc += spared_zones(sd, st[sd], rng, mid, len(sides) == 2 or rng.random() < 0.4,
                                    sidestyle)
                with_spared = True
            locs.append(loc)
        joiner = ""
        if len(locs) == 2:
            joiner = "; " if with_spared else rng.choice([" and ", "; ", ", "])
        main = "%s %s" % (f, joiner.join(locs))
        if len(sides) == 2 and rng.random() < 0.4:
            main = rng.choice(["bilateral ", "bilat ", "Bilateral "]) + main
        elif len(sides) == 1 and rng.random() < 0.3:
            main = rng.choice(["unilateral ", "unilat ", "%s-sided " % sides[0]]) + main
    pieces.append(cap(main))
    if rng.random() < 0.5:
        c = mixed_count(n, rng)
        if rng.random() < 0.5:
            pieces[-1] += " (%s)" % c
        else:
            pieces.append(cap(c))
    # Negated part: for one-sided notes the other lung is always stated to be clear.
    if len(sides) == 1:
        other = OTHER[sides[0]]
        neg = clear_lung(other, rng, sidestyle)
        if rng.random() < 0.3:
            pieces.insert(0, cap(neg))
        else:
            pieces.append(cap(neg))
    sep = rng.choice([". ", ". ", "; "])
    s = sep.join(pieces)
    return finish(recase(s, rng))


# --------------------------------------------------------------------------------------------
# Suite 4: caption verbatim + negation of the uninvolved lung (one-sided notes only).
# --------------------------------------------------------------------------------------------

NEGATION_SENTENCES = [
    "The {side} lung is clear.",
    "No opacity is seen in the {side} lung.",
    "The {side} lung is normal.",
    "The {side} lung is spared.",
    "There is no involvement of the {side} lung.",
    "The {side} lung is free of opacities.",
    "No abnormality is seen in the {side} lung.",
    "{Side} lung clear.",
    "No {side}-sided infection.",
    "The {side} lung shows no infected area.",
    "The {side} lung appears unremarkable.",
    "No consolidation or ground-glass change on the {side}.",
]


def make_negation(caption, st, rng):
    sides = involved_sides(st)
    if len(sides) != 1:
        return caption
    other = OTHER[sides[0]]
    t = rng.choice(NEGATION_SENTENCES)
    return caption.rstrip() + " " + t.format(side=other, Side=cap(other))


# --------------------------------------------------------------------------------------------
# Suite 5: left/right swapped.
# --------------------------------------------------------------------------------------------

SWAP_RE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def make_swap(caption):
    def repl(m):
        w = m.group(0)
        o = OTHER[w.lower()]
        if w.isupper():
            return o.upper()
        if w[0].isupper():
            return cap(o)
        return o
    return SWAP_RE.sub(repl, caption)


# --------------------------------------------------------------------------------------------
# Driver.
# --------------------------------------------------------------------------------------------


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "Image" not in reader.fieldnames or "Description" not in reader.fieldnames:
            raise SystemExit("%s: expected columns Image,Description, got %r" % (path, reader.fieldnames))
        return [(r["Image"], r["Description"]) for r in reader]


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["Image", "Description"])
        for key, text in rows:
            if not key or not text or not text.strip():
                raise AssertionError("empty cell for %r" % key)
            w.writerow([key, text])


def main(argv=None):
    here = os.path.dirname(os.path.relpath(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join("..", "shared", "data", "qata-cov19"),
                    help="QaTa-COV19 folder holding Test_Folder/Test_text_cleaned.csv "
                         "(default: ../shared/data/qata-cov19, relative to the repository root)")
    ap.add_argument("--out", default=here or ".", help="output folder (default: this script's folder)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default %(default)s)")
    args = ap.parse_args(argv)

    src = os.path.join(args.data, "Test_Folder", "Test_text_cleaned.csv")
    rows = read_rows(src)
    parsed = []
    for i, (key, text) in enumerate(rows):
        try:
            parsed.append(parse_caption(text))
        except CaptionError as e:
            raise SystemExit("row %d (%s): %s" % (i + 2, key, e))

    suites = {
        "report": lambda cap_, st, rng: make_report(st, rng),
        "telegraphic": lambda cap_, st, rng: make_telegraphic(st, rng),
        "mixed": lambda cap_, st, rng: make_mixed(st, rng),
        "negation": lambda cap_, st, rng: make_negation(cap_, st, rng),
        "swap": lambda cap_, st, rng: make_swap(cap_),
    }
    os.makedirs(args.out, exist_ok=True)
    counts = {}
    for name, fn in suites.items():
        rng = random.Random("%d-%s" % (args.seed, name))
        out = [(key, fn(text, st, rng)) for (key, text), st in zip(rows, parsed)]
        write_csv(os.path.join(args.out, name + ".csv"), out)
        counts[name] = len(out)

    one = [key for (key, _), st in zip(rows, parsed) if one_sided(st)]
    with open(os.path.join(args.out, "one_sided.txt"), "w", encoding="utf-8") as fh:
        fh.write("".join(k + "\n" for k in one))

    left_only = sum(1 for st in parsed if one_sided(st) and st["left"])
    print("source: %s (%d notes), seed %d" % (src, len(rows), args.seed))
    for name, c in counts.items():
        print("  %-12s %d rows -> %s" % (name, c, os.path.join(args.out, name + ".csv")))
    print("one-sided notes: %d (left only %d, right only %d); two-sided: %d -> %s" % (
        len(one), left_only, len(one) - left_only, len(rows) - len(one),
        os.path.join(args.out, "one_sided.txt")))


if __name__ == "__main__":
    main()
