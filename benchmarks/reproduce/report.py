"""Stage `report`: tables, plots and sample grids from whatever the other stages cached.

Writes under OUT/report/: report.md (final table with bootstrap intervals, the paired
differences of paired.json, the sweep table, the status of every stage), final.csv and
sweep.csv, paired.png (forest plot of the paired differences), sweep.png (classifier FD over each
method's scale grid), cost.png (classifier FD against GFLOPs/step: the final value with its
interval where the final stage ran, else the best sweep value, drawn hollow), grids/<method>.png
(the first 100 samples, one column per class since sample i has label i mod 10; the best sweep
scale's samples where the final stage has not run) and samples.png (20 samples of every method).
A partial run gives a partial report; nothing is extrapolated.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from . import training
from .methods import BY_NAME, scale_key

LABELS = {name: m.label for name, m in BY_NAME.items()}

FINAL_COLUMNS = ("method", "model", "scale", "num", "fid", "num_fid", "cfd", "cfd_low",
                 "cfd_high", "kid", "precision", "recall", "density", "coverage", "acc",
                 "nfe_per_step", "gflops_per_step")
SWEEP_COLUMNS = ("method", "scale", "num", "cfd", "acc", "nfe_per_step", "gflops_per_step",
                 "seconds")


def load_samples(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return data["arr_0"], data["arr_1"]


def _json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def collect(out: Path, methods) -> tuple[list[dict], list[dict]]:
    """(final rows, sweep rows) of the methods, from the cached JSONs."""
    finals, sweeps = [], []
    for m in methods:
        for scale in m.grid:
            point = _json(out / "sweep" / m.name / f"{scale_key(scale)}.json")
            if point:
                sweeps.append({c: point.get(c) for c in SWEEP_COLUMNS} | {"method": m.name})
        rec = _json(out / "final" / m.name / "metrics.json")
        if rec is None:
            continue
        row = {"method": m.name, "model": m.model, "scale": scale_key(tuple(rec["scale"])),
               "num": rec["num"], "nfe_per_step": rec["nfe_per_step"],
               "gflops_per_step": rec["gflops_per_step"]}
        for name, v in rec["metrics"].items():
            row[name] = v["value"]
            if name == "cfd":
                row["cfd_low"], row["cfd_high"] = v.get("low"), v.get("high")
        fid = _json(out / "final" / m.name / "fid.json")
        if fid:
            row["fid"], row["num_fid"] = fid["metrics"]["fid"]["value"], fid["num"]
        finals.append(row)
    return finals, sweeps


def _fmt(v, digits=3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _ci(rec: dict, name: str) -> str:
    v = rec["metrics"].get(name)
    if v is None:
        return "—"
    if "low" in v:
        return f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"
    return f"{v['value']:.3f}"


def _status(out: Path) -> list[str]:
    lines = []
    for kind in training.KINDS:
        done = _json(training.run_dir(out, kind) / "done.json")
        if done:
            lines.append(f"* train/{kind}: finished at step {done['step']} after "
                         f"{done['trained_s']:.0f} s of training")
        else:
            lines.append(f"* train/{kind}: not finished")
    return lines


def _markdown(out: Path, methods, finals, sweeps) -> str:
    lines = ["# Fashion-MNIST reproduction: report", "", *_status(out), ""]
    done = {r["method"] for r in finals}
    missing = [m.name for m in methods if m.name not in done]
    lines += ["## Final (held-out split)", ""]
    if finals:
        lines += ["| method | model | scale | N | FID (N) | classifier FD [95% CI] | KID | "
                  "precision | recall | acc | NFE/step | GFLOPs/step |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in finals:
            rec = _json(out / "final" / row["method"] / "metrics.json")
            fid_rec = _json(out / "final" / row["method"] / "fid.json")
            fid = f"{_ci(fid_rec, 'fid')} ({fid_rec['num']})" if fid_rec else "—"
            lines.append(
                f"| {LABELS[row['method']]} | {row['model']} | {row['scale']} | {row['num']} | "
                f"{fid} | {_ci(rec, 'cfd')} | {_ci(rec, 'kid')} | {_ci(rec, 'precision')} | "
                f"{_ci(rec, 'recall')} | {_ci(rec, 'acc')} | {row['nfe_per_step']:.2f} | "
                f"{row['gflops_per_step']:.4f} |")
    lines += ["", f"Methods without a final row: {', '.join(missing) or 'none'}.", ""]
    lines += _paired_table(_json(out / "report" / "paired.json") or [])
    lines += ["## Sweep (validation split; criterion: classifier FD)", "",
              "| method | scale | N | classifier FD | acc | NFE/step | GFLOPs/step | s |",
              "|---|---|---|---|---|---|---|---|"]
    for p in sweeps:
        lines.append(f"| {LABELS[p['method']]} | {scale_key(tuple(p['scale']))} | {p['num']} | "
                     f"{_fmt(p['cfd'])} | {_fmt(p['acc'])} | {_fmt(p['nfe_per_step'], 2)} | "
                     f"{_fmt(p['gflops_per_step'], 4)} | {_fmt(p['seconds'], 0)} |")
    return "\n".join(lines) + "\n"


def _delta(v: dict | None, digits: int) -> str:
    if v is None:
        return "—"
    return f"{v['value']:+.{digits}f} [{v['low']:+.{digits}f}, {v['high']:+.{digits}f}]"


def _paired_table(rows: list[dict]) -> list[str]:
    """Markdown of paired.json (reproduce/paired.py); empty without rows."""
    if not rows:
        return []
    lines = ["## Paired differences A − B (same held-out samples; 95% bootstrap CI)", "",
             "Negative Δ classifier FD / Δ FID: A is closer to the test set. An interval that "
             "excludes 0 is a difference beyond the sampling noise.", "",
             "| A | B | N | Δ classifier FD | Δ acc | Δ FID (N) |", "|---|---|---|---|---|---|"]
    for r in rows:
        fid = f"{_delta(r.get('fid'), 2)} ({r['num_fid']})" if r.get("fid") else "—"
        lines.append(f"| {LABELS[r['a']]} | {LABELS[r['b']]} | "
                     f"{r['num']} | {_delta(r['cfd'], 2)} | {_delta(r['acc'], 3)} | {fid} |")
    return lines + [""]


def _csv(path: Path, columns, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: (scale_key(tuple(row[c])) if c == "scale" and
                                 isinstance(row[c], list) else row.get(c)) for c in columns})


def _plots(folder: Path, methods, finals, sweeps) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m in methods:
        pts = [p for p in sweeps if p["method"] == m.name]
        if pts:
            ax.plot(range(len(pts)), [p["cfd"] for p in pts], "o-", label=m.name)
    ax.set(xlabel="grid point (methods.py order)", ylabel="classifier FD (sweep)",
           yscale="log", title="scale sweep")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(folder / "sweep.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    final = {r["method"]: r for r in finals}
    for m in methods:
        if m.name in final:
            r = final[m.name]
            err = [[r["cfd"] - r["cfd_low"]], [r["cfd_high"] - r["cfd"]]] \
                if r.get("cfd_low") is not None else None
            ax.errorbar(r["gflops_per_step"], r["cfd"], yerr=err, fmt="o", capsize=3)
            ax.annotate(m.name, (r["gflops_per_step"], r["cfd"]), fontsize=7)
        else:
            pts = [p for p in sweeps if p["method"] == m.name]
            if pts:
                best = min(pts, key=lambda p: p["cfd"])
                ax.plot(best["gflops_per_step"], best["cfd"], "o", mfc="none")
                ax.annotate(m.name + " (sweep)", (best["gflops_per_step"], best["cfd"]),
                            fontsize=7)
    ax.set(xlabel="GFLOPs per image per step", ylabel="classifier FD", yscale="log",
           title="quality against sampling cost")
    fig.tight_layout()
    fig.savefig(folder / "cost.png", dpi=120)
    plt.close(fig)


def _paired_plot(path: Path, rows: list[dict]) -> None:
    """Forest plot of the paired Δ classifier FD (A − B) with 95% intervals."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    for i, r in enumerate(rows):
        d = r["cfd"]
        ax.errorbar(d["value"], i, xerr=[[d["value"] - d["low"]], [d["high"] - d["value"]]],
                    fmt="o", color="C0" if d["high"] < 0 else "C3" if d["low"] > 0 else "0.4",
                    capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)),
                  [f"{LABELS[r['a']]} − {LABELS[r['b']]}" for r in rows],
                  fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="Δ classifier FD (A − B); < 0: A better", title="paired differences, held-out")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _grids(out: Path, folder: Path, methods, sweeps) -> None:
    from sgkernels.runtime.images import save_grid
    (folder / "grids").mkdir(exist_ok=True)
    shown = []
    for m in methods:
        path = out / "final" / m.name / "samples.npz"
        if not path.exists():
            pts = [p for p in sweeps if p["method"] == m.name]
            if not pts:
                continue
            best = scale_key(tuple(min(pts, key=lambda p: p["cfd"])["scale"]))
            chunks = sorted((out / "sweep" / m.name / best).glob("*.npz"))
            if not chunks:
                continue
            path = chunks[0]
        images, _ = load_samples(path)
        save_grid(images[:100], folder / "grids" / f"{m.name}.png")
        shown.append((m.label + ("" if "final" in path.parts else " (sweep)"), images[:20]))
    if shown:
        _overview(folder / "samples.png", shown)


def _overview(path: Path, shown) -> None:
    """One figure: per method its first 20 samples as 2 rows × 10 classes."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(shown), 1, figsize=(6, 1.3 * len(shown)), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], shown):
        n, h, w, _ = images.shape
        rows = [np.concatenate(list(images[r * 10:(r + 1) * 10, ..., 0]), axis=1)
                for r in range(n // 10)]
        ax.imshow(np.concatenate(rows, axis=0), cmap="gray", vmin=0, vmax=255)
        ax.set_title(label, fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out: Path, methods, log=print) -> Path:
    """Write the report of the cached results; returns report.md's path."""
    out = Path(out)
    folder = out / "report"
    folder.mkdir(parents=True, exist_ok=True)
    finals, sweeps = collect(out, methods)
    (folder / "report.md").write_text(_markdown(out, methods, finals, sweeps))
    _csv(folder / "final.csv", FINAL_COLUMNS, finals)
    _csv(folder / "sweep.csv", SWEEP_COLUMNS, sweeps)
    _plots(folder, methods, finals, sweeps)
    pairs = _json(folder / "paired.json")
    if pairs:
        _paired_plot(folder / "paired.png", pairs)
    _grids(out, folder, methods, sweeps)
    log(f"report: {len(finals)} final rows, {len(sweeps)} sweep points -> {folder}")
    return folder / "report.md"
