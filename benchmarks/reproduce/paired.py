"""Paired comparisons of methods on the held-out split (written by the `report` stage).

Sample i of every method has the same noise and label (generate.py), so the difference of a
metric between two methods is measured far more precisely than either value alone: each
bootstrap replicate draws one index set idx and evaluates both methods on it,

    Δ(idx) = m(A[idx]) − m(B[idx]),   interval: Δ(all) ± z · std over replicates (bootstrap.py)

for the classifier FD (cfd), the class agreement (acc) and, where both methods have Inception
features of their first `num_fid` samples, FID (at most FID_REPLICATES replicates). Negative Δ of
cfd / FID means A is better.
"""
from __future__ import annotations

import json
from pathlib import Path

import common
import numpy as np

from sgkernels.eval import FrechetReference, bootstrap
from sgkernels.eval.cache import feature_stats

from .report import load_samples
from .scoring import FID_REPLICATES

# (A, B): each question the reading of the results asks.
PAIRS = (
    ("sg-0.5-0.9", "cfg"), ("sg-0-0.5", "cfg"), ("sg-0.2-0.6", "cfg"), ("sg-early", "cfg"),
    ("sg-0-0.5", "autoguidance"), ("sg-0.2-0.6", "autoguidance"),
    ("sg-early", "autoguidance"), ("autoguidance", "cfg"), ("cfgsg-direct", "cfg"),
    ("cfgsg-inner", "cfg"),
    ("cfgsg-inner", "cfgsg-direct"), ("cfgsg-compositional", "cfgsg-direct"),
    ("cfgsg-ip2p", "cfgsg-direct"), ("cfgsg-ip2p", "cfg"), ("cfg", "unguided"),
    ("dense-cfg", "cfg"), ("dense-unguided", "unguided"),
)


def differences(a: dict, b: dict, references: dict, replicates: int, seed: int = 0) -> dict:
    """{metric: {"value", "low", "high", "std", "mean"}} of Δ = A − B. `a`, `b`: {"cfd": features
    [N, D], "agree": 0/1 [N], optionally "fid": features [N', D'] of the first N'} of the same
    sample indices; `references`: {"cfd" / "fid": FrechetReference}. FID is resampled over its
    N' samples with at most FID_REPLICATES replicates (the same draws for A and B)."""
    n = len(a["agree"])
    if len(b["agree"]) != n or any(len(x["cfd"]) != n for x in (a, b)):
        raise ValueError(f"paired sets need the same number of samples, got {len(a['agree'])} "
                         f"and {len(b['agree'])}")
    if replicates < 2:
        raise ValueError(f"replicates: expected >= 2, got {replicates}")

    def delta(name):
        ref, x_a, x_b = references[name], a[name], b[name]
        return lambda idx: {name: ref.distance_to(x_a[idx]) - ref.distance_to(x_b[idx])}

    def agree(idx):
        return {"acc": float(a["agree"][idx].mean() - b["agree"][idx].mean())}

    runs = [(delta("cfd"), n, replicates), (agree, n, replicates)]
    if "fid" in a and "fid" in b:
        if len(a["fid"]) != len(b["fid"]):
            raise ValueError(f"fid: paired features need the same N, got {len(a['fid'])} and "
                             f"{len(b['fid'])}")
        runs.append((delta("fid"), len(a["fid"]), min(replicates, FID_REPLICATES)))
    out = {}
    for statistic, size, reps in runs:
        estimate = statistic(np.arange(size))
        intervals = bootstrap(statistic, size, reps, seed=seed, estimate=estimate)
        out.update({m: {"value": estimate[m], **intervals[m]} for m in estimate})
    return out


class _Features:
    """Per-method features of the final samples, computed once per report."""

    def __init__(self, out: Path, scorer):
        self.out, self.scorer, self._cache = out, scorer, {}

    def __call__(self, name: str) -> dict | None:
        if name not in self._cache:
            self._cache[name] = self._load(name)
        return self._cache[name]

    def _load(self, name: str) -> dict | None:
        folder = self.out / "final" / name
        if not (folder / "samples.npz").exists():
            return None
        images, labels = load_samples(folder / "samples.npz")
        clf = self.scorer.classifier
        rec = {"cfd": clf(images).astype(np.float64), "labels": labels,
               "agree": (clf.predict(images) == labels).astype(np.float64)}
        fid = folder / "fid.json"
        if fid.exists():
            num = json.loads(fid.read_text())["num"]
            try:
                rec["fid"] = self.scorer.inception(images[:num]).astype(np.float64)
            except FileNotFoundError as err:
                self.scorer.log(f"paired: no FID for {name} ({err})")
        return rec


def _pairs(out: Path) -> list[tuple[str, str]]:
    def done(name):
        return (out / "final" / name / "samples.npz").exists()
    return [(a, b) for a, b in PAIRS if done(a) and done(b)]


def compare(out: Path, get_scorer, replicates: int, log=print) -> list[dict]:
    """Rows {"a", "b", "num", "num_fid", metric: {...}} for every pair in PAIRS whose two final
    sample sets exist, written to OUT/report/paired.json. `get_scorer()` gives the Scorer; it is
    only called when a pair exists. FID is left out of a pair whose two fid.json files have
    different N, and of every pair when the Inception weights are missing."""
    out = Path(out)
    rows, pairs = [], _pairs(out)
    if pairs:
        scorer = get_scorer()
        features = _Features(out, scorer)
        references = {"cfd": _reference(scorer.classifier, scorer)}
        for a_name, b_name in pairs:
            a, b = features(a_name), features(b_name)
            if len(a["labels"]) != len(b["labels"]) or (a["labels"] != b["labels"]).any():
                raise ValueError(f"paired: {a_name} and {b_name} do not hold the same samples")
            a, b = _with_fid(a, b, a_name, b_name, scorer, references, log)
            row = {"a": a_name, "b": b_name, "num": len(a["labels"]),
                   "num_fid": len(a["fid"]) if "fid" in a else 0,
                   **differences(a, b, references, replicates)}
            rows.append(row)
            log(f"paired {a_name} − {b_name}: Δcfd {row['cfd']['value']:+.3f} "
                f"[{row['cfd']['low']:+.3f}, {row['cfd']['high']:+.3f}]")
    common.write_json(out / "report" / "paired.json", rows)
    return rows


def _with_fid(a, b, a_name, b_name, scorer, references, log) -> tuple[dict, dict]:
    """(a, b), without their "fid" features unless both have them for the same N."""
    def strip(x):
        return {k: v for k, v in x.items() if k != "fid"}
    if "fid" not in a or "fid" not in b:
        return strip(a), strip(b)
    if len(a["fid"]) != len(b["fid"]):
        log(f"paired {a_name} − {b_name}: FID left out (N {len(a['fid'])} != {len(b['fid'])})")
        return strip(a), strip(b)
    if "fid" not in references:
        references["fid"] = _reference(scorer.inception, scorer)
    return a, b


def _reference(extractor, scorer) -> FrechetReference:
    ref = scorer.reference
    stats = feature_stats(extractor, ref.images, ref.digest())
    return FrechetReference(stats["mu"], stats["sigma"])
