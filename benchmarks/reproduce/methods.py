"""The guidance methods compared by the Fashion-MNIST reproduction, with their scale grids.

Each method is evaluated on one trained model ("routed": TREAD r_{1->2} at 0.5, or "dense": the
same network trained without routes) and is swept over a small grid of scales; a grid point is a
tuple (one weight, or (w_cfg, w_sg) for the CFG+SG rules). With D_s / D_w the main model at
γ_strong / γ_weak and D_early the early checkpoint (sgkernels.guidance has the formulas):

    unguided        D(c), dense                          CFG          ω D(c) + (1−ω) D(∅), dense
    autoguidance    ω D(c) + (1−ω) D_early(c), dense      sg-a-b       ω D_s(c) + (1−ω) D_w(c),
    sg-early        SG with D_w from the early checkpoint,                γ_s = a, γ_w = b
                    γ_w cosine 0.6 → 0, γ_s cosine 0 → 0.6 (SparseGuidance.sg_fid)
    cfgsg-RULE      CFGSparseGuidance(w_cfg, w_sg, 0.5, 0.9, RULE)

The CFG+SG grids are chosen so that every rule spans about the same CFG-equivalent strength:
with γ_s = γ_w the rules reduce to CFG at w_cfg (direct), 1 + w_cfg (inner), w_cfg + w_sg
(compositional) and w_sg (ip2p).

At 196 tokens (TABLES[196], a sampled image costs ~4x more) the table is cut to what the
comparison needs: the two milder SG pairs and the two best rules at 49 tokens (direct, inner) as
candidates of a group, where only the member with the lowest sweep value gets a final
(Method.group); grids ascending in guidance strength from below the 49-token optima, swept with
`--stop-past-minimum` (the walk ends at the first point worse than its predecessor). The first
sweep put CFG's optimum at ω ≤ 1.5 (the 49-token optimum was 2), so every grid starts lower; the
second put CFG, AutoGuidance, SG γ 0.5/0.9 and inner at their low edges, so every grid starts at
ω 1.1 (rules: 0.25 of SG on top of CFG 1.1 for direct, 0.1 + 0.25 for inner).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from sgkernels.guidance import CFG, AutoGuidance, CFGSparseGuidance, SparseGuidance, Unguided

RULE_GRIDS = {
    "direct": ((1.25, 0.5), (1.5, 0.5), (1.5, 1.0), (2.0, 1.0), (2.0, 2.0), (3.0, 1.0)),
    "inner": ((0.25, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0), (1.5, 1.0), (1.0, 2.0)),
    "compositional": ((1.0, 0.5), (1.0, 1.0), (1.5, 0.5), (1.5, 1.0), (2.0, 1.0), (1.5, 1.5)),
    "ip2p": ((1.5, 1.5), (2.0, 1.5), (1.5, 2.0), (2.0, 2.0), (2.5, 2.5)),
}
# Where a sweep put a method's optimum at an edge of its grid, the grid was extended there: SG and
# direct at the top and the early-checkpoint methods at the bottom (first sweep), then SG γ 0/0.5
# and 0.2/0.6 at ω 8 and inner, compositional and ip2p past their best corner (second sweep).
CFG_GRID = ((1.25,), (1.5,), (2.0,), (3.0,))
SG_GRID = ((1.5,), (2.0,), (3.0,), (4.0,), (6.0,))
SG_SMALL_GRID = ((1.5,), (2.0,), (3.0,), (4.0,), (6.0,), (8.0,))
EARLY_GRID = ((1.25,), (1.5,), (2.0,), (3.0,))


@dataclass(frozen=True)
class Method:
    """name: folder name; model: "routed" | "dense"; build(scale, early) -> Guidance;
    grid: scale tuples of the sweep; headline: gets Inception FID in the final stage;
    group: candidates of one slot (e.g. "the best milder SG pair"): only the group's member with
    the lowest sweep value gets a final."""

    name: str
    model: str
    label: str
    build: Callable
    grid: tuple
    headline: bool = False
    group: str = ""


def scale_key(scale: tuple) -> str:
    """Folder / JSON key of a grid point: '2.0', '1.5_0.5', or 'none' for the empty scale."""
    return "_".join(f"{float(s):g}" for s in scale) or "none"


def _sg(gs: float, gw: float) -> Method:
    return Method(f"sg-{gs:g}-{gw:g}", "routed", f"SG γ {gs:g}/{gw:g}",
                  lambda s, early: SparseGuidance(s[0], gs, gw), SG_GRID if gs == 0.5 else
                  SG_SMALL_GRID, headline=(gs, gw) == (0.5, 0.9))


def _rule(rule: str) -> Method:
    return Method(f"cfgsg-{rule}", "routed", f"CFG+SG {rule}",
                  lambda s, early: CFGSparseGuidance(s[0], s[1], 0.5, 0.9, rule=rule),
                  RULE_GRIDS[rule], headline=rule == "direct")


# Ordered so that a partial run covers the headline comparison first.
METHODS = (
    Method("unguided", "routed", "unguided", lambda s, early: Unguided(), ((),), headline=True),
    Method("cfg", "routed", "CFG", lambda s, early: CFG(s[0]), CFG_GRID, headline=True),
    _sg(0.5, 0.9),
    _rule("direct"),
    Method("autoguidance", "routed", "AutoGuidance (early ckpt)",
           lambda s, early: AutoGuidance(early, s[0]), EARLY_GRID),
    Method("sg-early", "routed", "SG, early ckpt as weak",
           lambda s, early: SparseGuidance.sg_fid(s[0], early), EARLY_GRID),
    _sg(0.0, 0.5),
    _sg(0.2, 0.6),
    _rule("inner"),
    _rule("compositional"),
    _rule("ip2p"),
    Method("dense-unguided", "dense", "dense: unguided", lambda s, early: Unguided(), ((),)),
    Method("dense-cfg", "dense", "dense: CFG", lambda s, early: CFG(s[0]), CFG_GRID),
)
BY_NAME = {m.name: m for m in METHODS}


def _at_196(name: str, grid: tuple, group: str = "") -> Method:
    m = BY_NAME[name]
    return replace(m, grid=grid, group=group, headline=m.headline or bool(group))


LOW_CFG = ((1.1,), (1.25,), (1.5,), (2.0,), (2.5,), (3.0,))
LOW_SG = ((1.1,), (1.25,), (1.5,), (2.0,), (3.0,), (4.0,), (6.0,))
TABLES = {
    49: METHODS,
    196: (
        BY_NAME["unguided"],
        _at_196("cfg", LOW_CFG),
        _at_196("sg-0.5-0.9", LOW_SG),
        _at_196("cfgsg-direct", ((1.1, 0.25), (1.25, 0.25), (1.25, 0.5), (1.5, 0.5), (1.5, 1.0),
                                 (2.0, 1.0), (2.0, 2.0)), "rule"),
        _at_196("cfgsg-inner", ((0.1, 0.25), (0.25, 0.25), (0.25, 0.5), (0.5, 0.5), (0.5, 1.0),
                                (1.0, 1.0), (1.5, 1.0)), "rule"),
        _at_196("autoguidance", LOW_CFG),
        _at_196("sg-early", LOW_CFG),
        _at_196("sg-0-0.5", LOW_SG, "sg-mild"),
        _at_196("sg-0.2-0.6", LOW_SG + ((8.0,),), "sg-mild"),
        BY_NAME["dense-unguided"],
        _at_196("dense-cfg", LOW_CFG),
    ),
}


def select(names: str | None, tokens: int = 49) -> tuple[Method, ...]:
    """The methods of the token count's table, or the comma-separated `names` of it in table
    order."""
    if tokens not in TABLES:
        raise ValueError(f"--tokens: expected one of {sorted(TABLES)}, got {tokens}")
    table = TABLES[tokens]
    if not names:
        return table
    valid = [m.name for m in table]
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in wanted if n not in valid]
    if bad:
        raise ValueError(f"--methods: unknown {bad} at {tokens} tokens; valid names: "
                         f"{', '.join(valid)}")
    return tuple(m for m in table if m.name in wanted)
