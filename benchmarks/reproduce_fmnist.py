"""Small-scale reproduction of the Sparse Guidance comparison on Fashion-MNIST, resumable.

Stages (`--stage all` runs them in order; each skips work whose output exists under `--out`):

    train   routed (TREAD route at γ 0.5) and dense models through `python -m sgkernels train
            --resume`, early checkpoint kept (reproduce/training.py); `--tokens 49`: FMNIST-CPU/4
            (patch 4, r_{1->2} of 4 blocks), `--tokens 196`: FMNIST-CPU/2 (patch 2, r_{1->6} of
            8 blocks) with its own, shorter method table (reproduce/methods.py TABLES)
    sweep   per method and grid scale: `--num-sweep` samples of the validation split, scored by
            the classifier-feature Fréchet distance → sweep/<method>/<scale>.json; with
            `--stop-past-minimum` each grid in order up to the first point worse than its
            predecessor
    final   per method at its best sweep scale: `--num-final` samples of the held-out split
            (seeds disjoint from the sweep) → final/<method>/samples.npz + metrics.json
            (cfd, KID, precision/recall/density/coverage, class agreement, bootstrap intervals,
            NFE/step and GFLOPs/step from sgkernels.flops); Inception FID on the first
            `--num-fid` samples of the headline methods (every method with `--fid-all`)
            → final/<method>/fid.json and on the CFG+SG rule with the lowest final cfd
    cost    (only when named) the cost of a training and a sampled image, routed and dense, on
            one thread → cost.json: what sizes the experiment (reproduce/cost.py)
    report  paired differences between methods on the shared samples   (reproduce/paired.py),
            report.md, final.csv, plots and a sample grid per method   (reproduce/report.py)

All samples use `--sample-steps` Euler steps (40) and the same noise per sample index across
methods (reproduce/generate.py). Methods: reproduce/methods.py.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/reproduce_fmnist.py --stage train
    python benchmarks/reproduce_fmnist.py --stage sweep --num-sweep 500
    python benchmarks/reproduce_fmnist.py --stage final --num-final 5000 --num-fid 2000
    python benchmarks/reproduce_fmnist.py --stage report
    python benchmarks/reproduce_fmnist.py --quick --out runs/reproduce-quick   # smoke, ~1 min
    python benchmarks/reproduce_fmnist.py --tokens 196 --stage train           # runs/reproduce-196
    python benchmarks/reproduce_fmnist.py --tokens 196 --stage sweep --stop-past-minimum
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import common
from reproduce import methods as methods_mod
from reproduce import cost, paired, report, training
from reproduce.generate import generate

from sgkernels.runtime.files import savez_atomic

STAGES = ("train", "sweep", "final", "report")
EXTRA_STAGES = ("cost",)       # run only when named: --stage cost


class Reproduction:
    """Models (loaded on first use), the scorer and the cached stage outputs of one run folder."""

    def __init__(self, args, log=print):
        self.args, self.out, self.log = args, Path(args.out), log
        self._models, self._scorer = {}, None

    def model(self, kind: str):
        """"routed", "dense" (latest EMA weights) or "early" (the routed run's early step)."""
        if kind not in self._models:
            from sgkernels.model import from_checkpoint
            step = training.settings(self.args.quick)["early"] if kind == "early" else None
            path = training.checkpoint(self.out, "routed" if kind == "early" else kind, step)
            self._models[kind] = from_checkpoint(path, map_location=self.args.device)
        return self._models[kind]

    @property
    def scorer(self):
        if self._scorer is None:
            from reproduce.scoring import Scorer
            self._scorer = Scorer(self.out, self.args.quick, self.args.device, self.log)
        return self._scorer

    def guidance(self, method, scale):
        early = self.model("early") if method.name in ("autoguidance", "sg-early") else None
        return method.build(scale, early)

    def cost(self, method, scale) -> dict:
        from sgkernels.flops import sampling_gflops, sampling_nfe
        g, steps = self.guidance(method, scale), self.args.sample_steps
        return {"nfe_per_step": sampling_nfe(g, steps),
                "gflops_per_step": sampling_gflops(self.model(method.model).config, g, steps)}

    def sweep_path(self, method, scale) -> Path:
        return self.out / "sweep" / method.name / f"{methods_mod.scale_key(scale)}.json"

    def sweep_point(self, method, scale) -> dict:
        path = self.sweep_path(method, scale)
        if path.exists():
            cached = json.loads(path.read_text())
            if cached["num"] == self.args.num_sweep and cached["steps"] == self.args.sample_steps:
                return cached
        clock = common.Clock()
        images, labels = generate(self.model(method.model), self.guidance(method, scale),
                                  "sweep", self.args.num_sweep, path.with_suffix(""),
                                  self.args.sample_steps, self.log)
        point = {"method": method.name, "scale": list(scale), "num": self.args.num_sweep,
                 "steps": self.args.sample_steps, **self.scorer.sweep(images, labels, method.name),
                 **self.cost(method, scale), "seconds": clock.seconds()}
        common.write_json(path, point)
        self.log(f"sweep {method.name} {methods_mod.scale_key(scale)}: cfd {point['cfd']:.3f}")
        return point

    def sweep_points(self, method, compute: bool = False) -> list[dict] | None:
        """The method's sweep points in grid order (computed where missing if `compute`), None
        while one is missing. With --stop-past-minimum the walk ends at the first point worse
        than its predecessor: the grids ascend in guidance strength, so on a unimodal cfd curve
        the minimum is then bracketed, or on the grid's low edge."""
        points = []
        for scale in method.grid:
            if compute:
                points.append(self.sweep_point(method, scale))
            elif (path := self.sweep_path(method, scale)).exists():
                points.append(json.loads(path.read_text()))
            else:
                return None
            if (self.args.stop_past_minimum and len(points) > 1
                    and points[-1]["cfd"] > points[-2]["cfd"]):
                break
        best = min(range(len(points)), key=lambda i: points[i]["cfd"])
        if compute and best in (0, len(method.grid) - 1) and len(method.grid) > 1:
            self.log(f"sweep {method.name}: best cfd at the {'low' if best == 0 else 'high'} "
                     f"edge of the grid ({methods_mod.scale_key(method.grid[best])}): "
                     f"extend the grid there")
        return points

    def best_point(self, method) -> dict | None:
        """The sweep point with the lowest cfd, None while the sweep is incomplete."""
        points = self.sweep_points(method)
        return None if points is None else min(points, key=lambda p: p["cfd"])

    def best_scale(self, method) -> tuple | None:
        """Scale with the lowest sweep cfd, None while the sweep is incomplete."""
        point = self.best_point(method)
        return None if point is None else tuple(point["scale"])

    def group_winner(self, group: str) -> str | None:
        """Name of the member of `group` with the lowest best sweep cfd, None while any
        member's sweep is incomplete."""
        members = [m for m in methods_mod.select(None, self.args.tokens) if m.group == group]
        best = [self.best_point(m) for m in members]
        if any(b is None for b in best):
            return None
        return min(zip(best, members), key=lambda bm: bm[0]["cfd"])[1].name

    def final(self, method) -> None:
        folder = self.out / "final" / method.name
        scale = self.best_scale(method)
        if scale is None:
            self.log(f"final {method.name}: sweep incomplete, skipped")
            return
        if method.group:
            winner = self.group_winner(method.group)
            if winner != method.name:
                why = "sweeps of its group incomplete" if winner is None else f"{winner} is"
                self.log(f"final {method.name}: not the best of group {method.group} ({why}), "
                         f"skipped")
                return
        metrics_path = folder / "metrics.json"
        cached = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
        fresh = (cached is not None and cached["num"] == self.args.num_final
                 and tuple(cached["scale"]) == scale)
        if not fresh:
            clock = common.Clock()
            (folder / "fid.json").unlink(missing_ok=True)      # it scored the old samples
            images, labels = generate(self.model(method.model), self.guidance(method, scale),
                                      "final", self.args.num_final,
                                      folder / f"chunks-{methods_mod.scale_key(scale)}",
                                      self.args.sample_steps, self.log)
            savez_atomic(folder / "samples.npz", images, labels)
            result = self.scorer.final(images, labels, method.name, self.args.bootstrap)
            common.write_json(metrics_path, {
                "method": method.name, "scale": list(scale), "num": self.args.num_final,
                "steps": self.args.sample_steps, "bootstrap": self.args.bootstrap,
                "metrics": result["metrics"], **self.cost(method, scale),
                "seconds": clock.seconds()})
            self.log(f"final {method.name}: cfd {result['metrics']['cfd']['value']:.3f}")
        if (method.headline or self.args.fid_all) and self.args.num_fid > 0:
            self.fid(method, folder)

    def best_rule(self) -> methods_mod.Method | None:
        """The CFG+SG rule with the lowest final cfd once every rule has a final of
        `--num-final` samples (chosen on the held-out split it then gets FID on: the FID
        headline methods are fixed in advance, this one is picked by its held-out cfd)."""
        rules = [m for m in methods_mod.select(None, self.args.tokens)
                 if m.name.startswith("cfgsg-")]
        paths = [self.out / "final" / m.name / "metrics.json" for m in rules]
        if not all(p.exists() for p in paths):
            return None
        recs = [json.loads(p.read_text()) for p in paths]
        if any(r["num"] != self.args.num_final for r in recs):
            return None
        cfd = [r["metrics"]["cfd"]["value"] for r in recs]
        return rules[cfd.index(min(cfd))]

    def fid(self, method, folder: Path) -> None:
        path = folder / "fid.json"
        if path.exists() and json.loads(path.read_text())["num"] == self.args.num_fid:
            return
        images, labels = report.load_samples(folder / "samples.npz")
        if len(images) < self.args.num_fid:
            raise ValueError(f"--num-fid {self.args.num_fid} > --num-final {len(images)}")
        try:
            result = self.scorer.fid(images[:self.args.num_fid], labels[:self.args.num_fid],
                                     method.name, self.args.bootstrap)
        except FileNotFoundError as err:
            self.log(f"fid {method.name}: skipped ({err})")
            return
        common.write_json(path, {"num": self.args.num_fid, "metrics": result["metrics"]})


def run(args, log=print) -> None:
    stages = STAGES if args.stage == "all" else (args.stage,)
    chosen = methods_mod.select(args.methods, args.tokens)
    if args.quick:                       # one grid point per method keeps the smoke run short
        chosen = tuple(dataclasses.replace(m, grid=m.grid[:1]) for m in chosen)
    rep = Reproduction(args, log)
    if "cost" in stages:
        result = cost.measure(args.tokens)
        common.write_json(rep.out / "cost.json", result)
        log("\n" + cost.table(result))
    if "train" in stages:
        training.train(rep.out, args.train_minutes, args.quick, args.device, log, args.tokens)
    if "sweep" in stages:
        for method in chosen:
            rep.sweep_points(method, compute=True)
    if "final" in stages:
        for method in chosen:
            rep.final(method)
        best = rep.best_rule()
        if best is not None and not best.headline and args.num_fid > 0:
            rep.fid(best, rep.out / "final" / best.name)
    if "report" in stages:
        paired.compare(rep.out, lambda: rep.scorer, args.bootstrap, log)
        report.write(rep.out, chosen, log)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=("all",) + STAGES + EXTRA_STAGES, default="all",
                   help="cost: measure the cost per training and per sampled image first")
    p.add_argument("--tokens", type=int, choices=sorted(training.PRESETS), default=49,
                   help="49: FMNIST-CPU/4 (patch 4), 196: FMNIST-CPU/2 (patch 2)")
    common.add_common_flags(
        p, None, out_help="run folder (default runs/reproduce, runs/reproduce-196 at 196 tokens)",
        device="cpu", threads=False,
        quick_help="smoke run: 30 training steps, 64 samples, 4 sampling steps, the first grid "
                   "point of each method, stand-in classifier")
    p.add_argument("--num-sweep", type=int, default=None, help="default 500 (quick: 64)")
    p.add_argument("--num-final", type=int, default=None, help="default 5000 (quick: 64)")
    p.add_argument("--num-fid", type=int, default=None,
                   help="Inception FID samples of the headline methods (default 2000, quick 0)")
    p.add_argument("--fid-all", action="store_true",
                   help="Inception FID on every method's final, not only the headline ones")
    p.add_argument("--bootstrap", type=int, default=None, help="replicates (default 50, quick 10)")
    p.add_argument("--sample-steps", type=int, default=None, help="Euler steps (40; quick 4)")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="per run (20; 150 at 196 tokens; quick 2)")
    p.add_argument("--methods", default=None, help="comma-separated subset of the methods")
    p.add_argument("--stop-past-minimum", action="store_true",
                   help="sweep each grid in order only up to the first point worse than its "
                        "predecessor (pass it to the final stage too)")
    args = p.parse_args(argv)
    defaults = dict(num_sweep=(64, 500), num_final=(64, 5000), num_fid=(0, 2000),
                    bootstrap=(10, 50), sample_steps=(4, 40),
                    train_minutes=(2.0, 150.0 if args.tokens == 196 else 20.0))
    if args.out is None:
        args.out = "runs/reproduce" + ("-196" if args.tokens == 196 else "")
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("num_sweep", "num_final", "sample_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.bootstrap < 2:
        p.error(f"--bootstrap must be >= 2 (replicates of the intervals), got {args.bootstrap}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    clock = common.Clock()
    run(args, log=lambda msg: print(f"[{clock.elapsed():7.1f}s] {msg}", flush=True))


if __name__ == "__main__":
    main()
