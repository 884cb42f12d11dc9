#!/usr/bin/env python3
"""Summarises one results folder of bench/qata_real.sh into its summary.json.

Usage: python3 bench/summarize_qata.py bench/results/qata-real-STAMP [--one-sided FILE]

Every Dice is the per-image mean of the `evaluate` JSONs (LViT's protocol, the paper's), except
under "dice_pooled" (one Dice over all pixels). The one-sided subset means come from the
per-image CSVs, over the keys of `one_sided.txt` (one key per line, `#` comments; taken from the
folder, else bench/wordings/). Values whose file is absent are null; a subset key absent from a
CSV is an error. Standard library only.
"""

import argparse
import csv
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    sys.exit(f"error: {msg}")


def read_json(folder, name):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            fail(f"{path}: not JSON ({e})")


def field(folder, name, key="dice"):
    v = read_json(folder, name)
    return None if v is None else v.get(key)


def norm(key):
    """QaTa keys are mask names; a list may give them with or without the `mask_` prefix."""
    key = key.strip().lower()
    return key if key.startswith("mask_") else "mask_" + key


def subset_mean(folder, name, keys):
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    dice = {}
    with open(path, newline="") as f:
        for row, rec in enumerate(csv.DictReader(f), start=2):
            try:
                dice[norm(rec["key"])] = float(rec["dice"])
            except (KeyError, TypeError, ValueError):
                fail(f"{path}:{row}: expected `key` and a numeric `dice`")
    missing = [k for k in keys if k not in dice]
    if missing:
        fail(f"{path}: no row for `{missing[0]}` of the one-sided subset "
             f"({len(missing)} missing in all)")
    return sum(dice[k] for k in keys) / len(keys)


def read_keys(path):
    keys = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(norm(line))
    if not keys:
        fail(f"{path}: no keys")
    return list(dict.fromkeys(keys))


def minutes(folder):
    bench = read_json(folder, "bench.json")
    if bench is not None:
        return bench.get("minutes")
    # Older folders: the training budget recorded in the run's config.
    cfg = os.path.join(folder, "reclmis", "config.toml")
    if os.path.isfile(cfg):
        with open(cfg) as f:
            for line in f:
                name, _, value = line.partition("=")
                if name.strip() == "time_budget_s":
                    return float(value) / 60
    return None


# Suites that change what a note says on purpose (bench/wordings/README.md): scored like the
# wordings, reported apart from them.
PROBES = ("negation", "swap")


def summarize(folder, one_sided=None):
    wordings, probes = {}, {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("reclmis-wording-") and name.endswith(".json"):
            suite = name[len("reclmis-wording-"):-len(".json")]
            (probes if suite in PROBES else wordings)[suite] = field(folder, name)
    reclmis = {
        "val": field(folder, "reclmis-val-given.json"),
        "test_lvit": field(folder, "reclmis-test-given.json"),
        "test_cleaned": field(folder, "reclmis-test-cleaned-given.json"),
        "test_lvit_shuffled": field(folder, "reclmis-test-shuffled.json"),
        "test_lvit_empty": field(folder, "reclmis-test-empty.json"),
        "wordings": wordings,
        "probes": probes,
    }
    if one_sided is None:
        for candidate in (os.path.join(folder, "one_sided.txt"),
                          os.path.join(HERE, "wordings", "one_sided.txt")):
            if os.path.isfile(candidate):
                one_sided = candidate
                break
    if one_sided is not None:
        keys = read_keys(one_sided)
        subset = {"n": len(keys),
                  "test_cleaned": subset_mean(folder, "reclmis-test-cleaned-given.csv", keys)}
        for suite in PROBES:
            if suite in probes:
                subset[suite] = subset_mean(folder, f"reclmis-wording-{suite}.csv", keys)
        reclmis["one_sided"] = subset
    raw = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("reclmis-raw-") and name.endswith(".json"):
            raw[name[len("reclmis-raw-"):-len(".json")]] = field(folder, name)
    if raw:
        # The same checkpoint reading every note as written instead of canonical.
        reclmis["read_raw"] = raw
    val_para = {how: field(folder, f"reclmis-val-paraphrased-{how}.json")
                for how in ("canonical", "raw")}
    if any(v is not None for v in val_para.values()):
        reclmis["val_paraphrased"] = val_para
    reclmis["dice_pooled"] = {
        "test_lvit": field(folder, "reclmis-test-given.json", "dice_pooled"),
        "test_cleaned": field(folder, "reclmis-test-cleaned-given.json", "dice_pooled"),
    }
    fp16 = read_json(folder, "reclmis-fp16-test-given.json")
    weights = os.path.join(folder, "reclmis-best-fp16.safetensors")
    if fp16 is not None:
        reclmis["fp16_inference_only"] = {
            "test_lvit": fp16.get("dice"),
            "mb": round(os.path.getsize(weights) / 1e6, 2) if os.path.isfile(weights) else None,
        }
    bench = read_json(folder, "bench.json") or {}
    baseline = {
        "val": field(folder, "baseline-val-given.json"),
        "test_lvit": field(folder, "baseline-test-given.json"),
    }
    return {
        "minutes": minutes(folder),
        "cpu": bench.get("cpu"),
        "reclmis": reclmis,
        "baseline": baseline,
        "checks": checks(reclmis, baseline),
    }


def checks(r, baseline):
    """Issue 20's "Done means", each with the numbers it compares; null where one is missing."""
    def check(ok, **numbers):
        if any(v is None for v in numbers.values()):
            return {"pass": None, **numbers}
        return {"pass": bool(ok(**numbers)), **numbers}

    one = r.get("one_sided", {})
    out = {
        "test_lvit >= 0.80": check(lambda lvit: lvit >= 0.80, lvit=r["test_lvit"]),
        "test_lvit >= baseline + 0.03": check(
            lambda lvit, base: lvit >= base + 0.03, lvit=r["test_lvit"],
            base=baseline["test_lvit"]),
        "|test_lvit - test_cleaned| <= 0.02": check(
            lambda lvit, cleaned: abs(lvit - cleaned) <= 0.02, lvit=r["test_lvit"],
            cleaned=r["test_cleaned"]),
        "shuffled costs >= 0.05": check(
            lambda lvit, shuffled: lvit - shuffled >= 0.05, lvit=r["test_lvit"],
            shuffled=r["test_lvit_shuffled"]),
        "one-sided: negating the other side changes <= 0.01": check(
            lambda cleaned, negation: abs(cleaned - negation) <= 0.01,
            cleaned=one.get("test_cleaned"), negation=one.get("negation")),
        "one-sided: swapping sides costs >= 0.05": check(
            lambda cleaned, swap: cleaned - swap >= 0.05,
            cleaned=one.get("test_cleaned"), swap=one.get("swap")),
    }
    for suite, d in r["wordings"].items():
        out[f"wording {suite} >= test_cleaned - 0.03"] = check(
            lambda d, cleaned: d >= cleaned - 0.03, d=d, cleaned=r["test_cleaned"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a bench/results/qata-real-* folder")
    p.add_argument("--one-sided", help="keys of the one-sided subset (default: see above)")
    args = p.parse_args()
    if not os.path.isdir(args.folder):
        fail(f"{args.folder}: not a folder")
    if args.one_sided is not None and not os.path.isfile(args.one_sided):
        fail(f"{args.one_sided}: not found")
    summary = summarize(args.folder, args.one_sided)
    text = json.dumps(summary, indent=1) + "\n"
    # Written whole or not at all.
    path = os.path.join(args.folder, "summary.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
