"""Evaluate a generated image set against a reference set.

Metrics (names as in the CLI):
    fid   Fréchet distance of Inception-v3 pool3 features (TF FID weights, see inception.py)
    cfd   Fréchet distance of the Fashion-MNIST classifier's 128-d features (classifier.py)
    kid   KID (unbiased cubic-kernel MMD^2 over subsets) in the chosen feature `space`
    prdc  precision, recall, density, coverage (k-NN, Naeem et al. 2020) in the chosen `space`
    acc   class agreement: fraction of samples the classifier assigns to their conditioning label

Reference features are cached (cache.feature_stats); generated features are computed once and
every bootstrap replicate (bootstrap.py) resamples their rows, so intervals cost no extra
network passes. The point estimate of each metric uses the full generated set. A reference
with precomputed statistics (ImageSet.stats: an ADM reference batch's Inception mu and sigma)
gives fid from them; kid / prdc in that space still need its images.
"""
from __future__ import annotations

import time

import numpy as np

from .bootstrap import bootstrap as run_bootstrap
from .cache import feature_stats
from .frechet import FrechetReference, gaussian_stats
from .images import ImageSet
from .kid import KIDReference
from .prdc import PRDCResampler, prdc

METRICS = ("fid", "cfd", "kid", "prdc", "acc")
FRECHET = {"fid": "inception", "cfd": "classifier"}      # Fréchet metric -> its feature space
SPACES = ("classifier", "inception")
PRDC_NAMES = ("precision", "recall", "density", "coverage")


def parse_metrics(metrics) -> tuple[str, ...]:
    names = tuple(m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics))
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise ValueError(f"metrics: expected a non-empty subset of {METRICS}, got {names}")
    return tuple(dict.fromkeys(names))


def _check_options(metrics, k, kid_subsets, kid_subset_size, bootstrap, alpha) -> None:
    """The numeric options, up front (before any feature extraction)."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    checks = [("bootstrap", bootstrap, is_int(bootstrap) and (bootstrap == 0 or bootstrap >= 2),
               "0 (none) or an int >= 2"),
              ("alpha", alpha, isinstance(alpha, (int, float)) and 0 < alpha < 1, "in (0, 1)")]
    if "prdc" in metrics:
        checks.append(("k", k, is_int(k) and k >= 1, "an int >= 1"))
    if "kid" in metrics:
        checks += [("kid_subsets", kid_subsets, is_int(kid_subsets) and kid_subsets >= 1,
                    "an int >= 1"),
                   ("kid_subset_size", kid_subset_size,
                    is_int(kid_subset_size) and kid_subset_size >= 2, "an int >= 2")]
    for name, value, ok, expected in checks:
        if not ok:
            raise ValueError(f"{name}: expected {expected}, got {value!r}")


def _check_labels(samples: ImageSet) -> np.ndarray:
    if samples.labels is None:
        raise ValueError(f"acc: {samples.name} has no labels (arr_1, or integer-named "
                         "sub-folders); leave acc out of the metrics")
    if samples.labels.min() < 0 or samples.labels.max() > 9:
        raise ValueError(f"acc: labels must be Fashion-MNIST classes 0..9 (unconditional "
                         f"samples have no class), got {samples.labels.min()}.."
                         f"{samples.labels.max()}")
    return samples.labels


def _statistics(metrics, gen, ref, space, k, kid_subsets, kid_subset_size, seed, agree,
                bootstrap):
    """(point, boot): functions idx -> {metric: value} for the estimate and the replicates."""
    point, boot = [], []
    for metric, name in FRECHET.items():
        if metric in metrics:
            fr = FrechetReference(ref[name]["mu"], ref[name]["sigma"])
            fn = (lambda idx, fr=fr, f=gen[name], m=metric:
                  {m: fr.distance(*gaussian_stats(f[idx]))})
            point.append(fn)
            boot.append(fn)
    if {"kid", "prdc"} & set(metrics):
        real, feats = ref[space]["features"].astype(np.float64), gen[space]
    if "kid" in metrics:
        kr = KIDReference(real, kid_subsets, kid_subset_size, seed)
        fn = (lambda idx: {"kid": kr(feats[idx], gen_ids=idx)[0]})
        point.append(fn)
        boot.append(fn)
    if "prdc" in metrics:
        point.append(lambda idx: prdc(real, feats[idx], k, fake_ids=idx))
        if bootstrap:
            boot.append(PRDCResampler(real, feats, k))
    if "acc" in metrics:
        fn = (lambda idx: {"acc": float(agree[idx].mean())})
        point.append(fn)
        boot.append(fn)
    return point, boot


def _reference(name: str, extractor, reference: ImageSet, metrics, space: str) -> dict | None:
    """The reference in feature space `name`: its precomputed {"mu", "sigma"} when only a
    Fréchet distance uses them, else {"features", "mu", "sigma"} (cached); None when no metric
    compares with the reference in that space (acc)."""
    features = name == space and bool({"kid", "prdc"} & set(metrics))
    frechet = [m for m, n in FRECHET.items() if n == name and m in metrics]
    if not (features or frechet):
        return None
    stats = (reference.stats or {}).get(name)
    if stats is not None and not features:
        return stats
    if reference.images is None:
        raise ValueError(f"ref: {reference.name} holds only precomputed statistics (mu, sigma of "
                         f"{'/'.join(reference.stats)} features: fid); "
                         f"{'kid / prdc' if features else frechet[0]} in the {name} space "
                         f"need its images (arr_0)")
    return feature_stats(extractor, reference.images, reference.digest())


def _extractors(metrics, space, classifier, inception, device, log) -> dict:
    """The feature extractors the metrics need, by space name, created only when needed."""
    needs = {"inception": "fid" in metrics, "classifier": bool({"cfd", "acc"} & set(metrics))}
    needs[space] |= bool({"kid", "prdc"} & set(metrics))
    out = {}
    if needs["classifier"]:
        if classifier is None:
            from .classifier import ClassifierFeatures
            classifier = ClassifierFeatures(log=log)
        out["classifier"] = classifier
    if needs["inception"]:
        if inception is None:
            from .inception import InceptionFeatures
            inception = InceptionFeatures(device=device)
        out["inception"] = inception
    return out


def evaluate(samples: ImageSet, reference: ImageSet, metrics=METRICS, *, space="classifier",
             k: int = 5, kid_subsets: int = 100, kid_subset_size: int = 1000,
             bootstrap: int = 0, alpha: float = 0.05, seed: int = 0, device="cpu",
             classifier=None, inception=None, log=print) -> dict:
    """{"metrics": {name: {"value", and with bootstrap "low", "high", "std"}}, "info": {...}}.

    `classifier` / `inception`: feature extractors (default: the cached ClassifierFeatures and
    InceptionFeatures on `device`); they are created only when a requested metric needs them.
    """
    metrics = parse_metrics(metrics)
    if space not in SPACES:
        raise ValueError(f"space: expected one of {SPACES}, got {space!r}")
    _check_options(metrics, k, kid_subsets, kid_subset_size, bootstrap, alpha)
    if samples.images is None:
        raise ValueError(f"samples: {samples.name} holds statistics only; expected images")
    labels = _check_labels(samples) if "acc" in metrics else None
    n = len(samples)
    info = {"samples": samples.name, "num_samples": n, "reference": reference.name,
            "num_reference": None if reference.images is None else len(reference),
            "space": space, "k": k, "seconds": {}}
    extractors = _extractors(metrics, space, classifier, inception, device, log)
    if "classifier" in extractors:
        info["classifier"] = extractors["classifier"].info
    if "inception" in extractors:
        info["inception"] = str(getattr(extractors["inception"], "path", "custom"))
    gen, ref = {}, {}
    for name, ex in extractors.items():
        start = time.perf_counter()
        ref[name] = _reference(name, ex, reference, metrics, space)
        if ref[name] is not None and "features" not in ref[name]:
            info.setdefault("precomputed", []).append(name)
            log(f"{name} reference: the precomputed mu, sigma of {reference.name}")
        mid = time.perf_counter()
        gen[name] = ex(samples.images).astype(np.float64)
        info["seconds"][f"{name}_reference"] = round(mid - start, 3)
        info["seconds"][f"{name}_samples"] = round(time.perf_counter() - mid, 3)
        log(f"{name} features: {n} samples in {time.perf_counter() - mid:.1f} s")
    agree = None
    if "acc" in metrics:
        agree = (extractors["classifier"].predict(samples.images) == labels).astype(np.float64)
    point, boot = _statistics(metrics, gen, ref, space, k, kid_subsets, kid_subset_size, seed,
                              agree, bootstrap)

    start = time.perf_counter()
    everything = np.arange(n)
    out = {}
    for fn in point:
        out.update({m: {"value": float(v)} for m, v in fn(everything).items()})
    if bootstrap:
        intervals = run_bootstrap(lambda idx: {m: v for fn in boot for m, v in fn(idx).items()},
                                  n, bootstrap, seed, alpha,
                                  estimate={m: r["value"] for m, r in out.items()})
        for m, ci in intervals.items():
            out[m].update(ci)
        info["bootstrap"] = {"replicates": bootstrap, "alpha": alpha, "seed": seed}
    info["seconds"]["metrics"] = round(time.perf_counter() - start, 3)
    return {"metrics": out, "info": info}
