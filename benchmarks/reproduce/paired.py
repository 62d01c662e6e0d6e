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

import numpy as np

from sgkernels.eval import FrechetReference, bootstrap
from sgkernels.eval.cache import cached_features

from .report import load_samples
from .scoring import FID_REPLICATES

# (A, B): each question the reading of the results asks.
PAIRS = (
    ("sg-0.5-0.9", "cfg"), ("sg-0-0.5", "cfg"), ("sg-0.2-0.6", "cfg"), ("sg-early", "cfg"),
    ("sg-early", "autoguidance"), ("autoguidance", "cfg"), ("cfgsg-direct", "cfg"),
    ("cfgsg-inner", "cfgsg-direct"), ("cfgsg-compositional", "cfgsg-direct"),
    ("cfgsg-ip2p", "cfgsg-direct"), ("cfgsg-ip2p", "cfg"), ("cfg", "unguided"),
    ("dense-cfg", "cfg"), ("dense-unguided", "unguided"),
)


def differences(a: dict, b: dict, references: dict, replicates: int, seed: int = 0) -> dict:
    """{metric: {"value", "low", "high", "std", "mean"}} of Δ = A − B. `a`, `b`: {"cfd": features
    [N, D], "fid": features [N', D'] (optional), "agree": 0/1 [N]} of the same N sample indices;
    `references`: {"cfd" / "fid": FrechetReference}."""
    n = len(a["agree"])
    if len(b["agree"]) != n or any(len(x["cfd"]) != n for x in (a, b)):
        raise ValueError(f"paired sets need the same number of samples, got {len(a['agree'])} "
                         f"and {len(b['agree'])}")
    fid = "fid" in a and "fid" in b and "fid" in references
    if fid and len(a["fid"]) != len(b["fid"]):
        raise ValueError(f"fid: paired features need the same N, got {len(a['fid'])} and "
                         f"{len(b['fid'])}")

    def delta(x_a, x_b, ref, idx):
        return ref.distance_to(x_a[idx]) - ref.distance_to(x_b[idx])

    def classifier(idx):
        return {"cfd": delta(a["cfd"], b["cfd"], references["cfd"], idx),
                "acc": float(a["agree"][idx].mean() - b["agree"][idx].mean())}

    def inception(idx):     # the FID features cover the first N' samples: a replicate's draws
        sub = idx[idx < len(a["fid"])]          # among those resample them (size ≈ N')
        return {"fid": delta(a["fid"], b["fid"], references["fid"], sub)}

    runs = [(classifier, replicates)] + [(inception, min(replicates, FID_REPLICATES))] * fid
    out = {}
    for statistic, reps in runs:
        estimate = statistic(np.arange(n))
        intervals = bootstrap(statistic, n, reps, seed=seed, estimate=estimate)
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
            rec["fid"] = self.scorer.inception(images[:num]).astype(np.float64)
        return rec


def compare(out: Path, scorer, replicates: int, log=print) -> list[dict]:
    """Rows {"a", "b", "num", "num_fid", metric: {...}} for every pair in PAIRS whose two final
    sample sets exist; written to OUT/report/paired.json."""
    out = Path(out)
    features = _Features(out, scorer)
    references = {"cfd": _reference(scorer.classifier, scorer)}
    rows = []
    for a_name, b_name in PAIRS:
        a, b = features(a_name), features(b_name)
        if a is None or b is None:
            continue
        if len(a["labels"]) != len(b["labels"]) or (a["labels"] != b["labels"]).any():
            raise ValueError(f"paired: {a_name} and {b_name} do not hold the same sample indices")
        if "fid" in a and "fid" in b and "fid" not in references:
            references["fid"] = _reference(scorer.inception, scorer)
        row = {"a": a_name, "b": b_name, "num": len(a["labels"]),
               "num_fid": len(a["fid"]) if "fid" in a and "fid" in b else 0,
               **differences(a, b, references, replicates)}
        rows.append(row)
        log(f"paired {a_name} − {b_name}: Δcfd {row['cfd']['value']:+.3f} "
            f"[{row['cfd']['low']:+.3f}, {row['cfd']['high']:+.3f}]")
    path = out / "report" / "paired.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))
    return rows


def _reference(extractor, scorer) -> FrechetReference:
    ref = scorer.reference
    stats = cached_features(extractor, ref.images, ref.digest())
    return FrechetReference(stats["mu"], stats["sigma"])
