"""`python -m sgkernels sample ...`: sample N images with CFG / AutoGuidance / Sparse Guidance.

Examples:
    python -m sgkernels sample --ckpt runs/fm/checkpoints/latest.pt --num 1000 --all-classes \\
        --guidance sg --scale 2.0 --gamma-strong 0.5 --gamma-weak 0.9 --out samples/sg
    python -m sgkernels sample --ckpt late.pt --weak-ckpt early.pt --guidance sg --scale 2 \\
        --gamma-strong cosine:0:0.6 --gamma-weak cosine:0.6:0 --allow-inverted --out samples/fid
    torchrun --nproc_per_node 4 -m sgkernels sample --ckpt ... -n 50000 --out samples/cfg
    python -m sgkernels sample --ckpt runs/t2i/checkpoints/latest.pt --prompt "a red shoe" \\
        --paper hpsv3 --out samples/t2i

Text-to-image checkpoints take --prompt (repeatable) or --prompts FILE (one per line) instead of
labels; the prompts are cycled over the images (arr_1 then holds prompt indices, and
OUT/prompts.txt the prompts). Their features come from the checkpoint's text encoder (or
--text-encoder: a local model directory or a package shipping the weights; never downloaded);
the null condition of CFG is the empty caption. --paper applies the paper's T2I settings as
flag defaults (explicit flags override them):
    hpsv3    --guidance sg --scale 1.8 --gamma-strong 0.1 --gamma-weak 0.8
    geneval  --guidance cfg+sg --cfg-scale 2.5 --sg-scale 2.5 --gamma-strong 0.2 --gamma-weak 0.7
The paper reports one ω 2.5 for GenEval's CFG+SG; geneval sets BOTH weights, w_cfg and w_sg, to
2.5 under the --rule in use (direct by default).

Writes OUT/samples.npz (uint8 [N, H, W, C] in arr_0, labels in arr_1, -1 for an unconditional
model; images in [-1, 1] model space mapped by round((x + 1)·127.5)), OUT/grid.png and
OUT/sampling.json (arguments, GFLOPs and NFE per image per step). Models whose samples are not
1- or 3-channel images (latents) get float32 OUT/latents.npz instead of the npz and grid.

Official DiT / SiT checkpoints (docs/interop.md) load through sgkernels.model.load_official:
--ckpt-kind auto tells a sgkernels checkpoint from an official training checkpoint (SiT's args
have path_type); a bare official state dict needs --ckpt-kind sit. Only SiT weights (velocity,
t in [0, 1], t = 1 data) can be sampled; DiT's predict DDPM noise. --routes a:b[,c:d] makes
blocks a..b of a dense official model a route, so Sparse Guidance can drop tokens there:
    python -m sgkernels sample --ckpt SiT-XL-2-256x256.pt --ckpt-kind sit --routes 2:24 \\
        --guidance sg --scale 2 --gamma-strong 0.5 --gamma-weak 0.9 -n 50000 --out samples/sit

Errors: a bad flag value, a missing or corrupt checkpoint / prompts file or a checkpoint of
another model is ONE line on stderr naming the flag or file, exit status 2, when run as
`python -m sgkernels sample` (add --debug for the traceback); samples that become NaN / inf end
the run with one line naming the image and step, exit status 1.

Seeds: images are cut into global batches of --batch; batch j draws its noise and token
selections from torch.Generator seeded with seed·2^32 + j. Under torchrun, rank r samples the
batches j ≡ r (mod world size) and writes its part; rank 0 merges the parts in image order, so
the output does not depend on the number of ranks.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..guidance import (CFG, RULES, AutoGuidance, CFGSparseGuidance, Schedule, SparseGuidance,
                        Unguided)
from ..runtime.device import setup_distributed
from ..runtime.images import IMAGE_CHANNELS, save_grid, to_uint8
from . import io
from .graphs import GraphCache
from .sampler import sample
from .solvers import SOLVERS

GUIDANCES = ("none", "cfg", "sg", "cfg+sg", "autoguidance")
PAPER_SETTINGS = {
    "hpsv3": dict(guidance="sg", scale=1.8, gamma_strong=Schedule.constant(0.1),
                  gamma_weak=Schedule.constant(0.8)),
    "geneval": dict(guidance="cfg+sg", cfg_scale=2.5, sg_scale=2.5,
                    gamma_strong=Schedule.constant(0.2), gamma_weak=Schedule.constant(0.7)),
}
SEED_STRIDE = 2 ** 32
CKPT_KINDS = ("auto", "sgkernels", "sit", "dit")
DIT_REFUSED = ("official DiT checkpoints predict DDPM noise at steps 0..999, not the flow "
               "velocity these samplers integrate, so they cannot be sampled here (load them "
               "with sgkernels.model.load_official(path, 'dit'); SiT checkpoints can be sampled)")


def paper_flags(name: str) -> str:
    """The flags --paper `name` stands for, e.g. '--guidance sg --scale 1.8 ...'."""
    return " ".join(f"--{k.replace('_', '-')} "
                    f"{v.start if isinstance(v, Schedule) else v}"
                    for k, v in PAPER_SETTINGS[name].items())


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'lo,hi', got {text!r}") from None
    return lo, hi


def _labels(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def _routes(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"expected 'a:b[,c:d]' block ranges, got {text!r}")
    return pairs


def _schedule(text: str) -> Schedule:
    try:
        return Schedule.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sgkernels sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="training checkpoint (sgkernels.model.from_checkpoint) or "
                     "official DiT / SiT checkpoint (sgkernels.model.load_official)")
    src.add_argument("--model", help="preset name, randomly initialised from --seed (tests)")
    a("--weights", default="ema", choices=("ema", "model"), help="checkpoint weights to load")
    a("--ckpt-kind", default="auto", choices=CKPT_KINDS,
      help="what --ckpt (and --weak-ckpt) is: auto (default), sgkernels, sit (official SiT); "
           "dit (official DiT) is refused: it predicts noise, not a velocity")
    a("--routes", type=_routes, default=None,
      help="official checkpoints: blocks 'a:b[,c:d]' (0-based, inclusive) become routes that "
           "guidance may drop tokens in (the model was trained dense: your choice)")
    a("--num", "--num-samples", "-n", dest="num", type=int, default=64,
      help="number of images (under torchrun write -n or --num-samples: torchrun's own parser "
           "rejects --num as ambiguous with its --numa-binding)")
    lab = p.add_mutually_exclusive_group()
    lab.add_argument("--labels", type=_labels, help="comma-separated class labels, cycled")
    lab.add_argument("--all-classes", action="store_true",
                     help="labels 0..K-1 cycled over the images (the default)")
    a("--steps", type=int, default=40)
    a("--solver", default="euler", choices=SOLVERS)
    a("--guidance", default="none", choices=GUIDANCES)
    a("--scale", type=float, help="ω of cfg, sg and autoguidance")
    a("--cfg-scale", type=float, help="w_cfg of cfg+sg")
    a("--sg-scale", type=float, help="w_sg of cfg+sg")
    a("--gamma", type=_schedule, default=Schedule.constant(0.0),
      help="drop rate of unguided / cfg sampling: 0.5, linear:a:b, cosine:a:b (default 0)")
    a("--gamma-strong", type=_schedule, default=Schedule.constant(0.5), help="(default 0.5)")
    a("--gamma-weak", type=_schedule, default=Schedule.constant(0.9), help="(default 0.9)")
    a("--allow-inverted", action="store_true", help="allow gamma_strong > gamma_weak")
    a("--rule", default="direct", choices=RULES, help="cfg+sg combination rule")
    a("--weak-ckpt", help="weak model for autoguidance, or the weak branch of sg / cfg+sg")
    a("--interval", type=_pair, help="guidance interval 'lo,hi' in t (t = 1 is data)")
    a("--seed", type=int, default=0)
    a("--batch", type=int, default=32, help="images per forward batch (per rank)")
    a("--out", default="samples")
    a("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    a("--grid", type=int, default=64, help="images in grid.png (first ones)")
    a("--no-progress", dest="progress", action="store_false")
    a("--compile", action="store_true",
      help="torch.compile the models' transformer blocks (dynamic token counts: a bounded "
      "number of graphs for any drop rates; the first batch pays the compile time)")
    a("--cuda-graphs", action="store_true",
      help="CUDA: replay one captured CUDA graph per guided-step shape (batch and drop "
      "rates), captured once for all batches of the run")
    a("--prompt", dest="prompt", action="append", help="text prompt (repeatable; T2I models)")
    a("--prompts", dest="prompts_file", help="file of prompts, one per line (T2I models)")
    a("--text-encoder", help="text encoder path or package (default: the checkpoint's)")
    a("--debug", action="store_true",
      help="full tracebacks and SGKERNELS_DEBUG=1 value checks (python -m sgkernels ...)")
    a("--paper", choices=tuple(PAPER_SETTINGS),
      help="paper T2I guidance settings as flag defaults: " + "; ".join(
          f"{name} = {paper_flags(name)}" for name in PAPER_SETTINGS) +
      " (geneval: both w_cfg and w_sg are 2.5, under --rule); explicit flags override")
    return p


def parse(p: argparse.ArgumentParser, argv):
    """Arguments, with --paper settings as defaults that explicit flags override."""
    known, _ = p.parse_known_args(argv)
    if known.paper is not None:
        p.set_defaults(**PAPER_SETTINGS[known.paper])
    return p.parse_args(argv)


def _check_args(p: argparse.ArgumentParser, args) -> None:
    for name in ("num", "steps", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.seed < 2 ** 31:
        p.error(f"--seed must be in [0, 2^31), got {args.seed}")
    if args.grid < 0:
        p.error(f"--grid must be >= 0, got {args.grid}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"--out {args.out} is a file; expected a folder (created if missing)")
    needs = {"cfg": ["scale"], "sg": ["scale"], "autoguidance": ["scale"],
             "cfg+sg": ["cfg_scale", "sg_scale"]}.get(args.guidance, [])
    for name in needs:
        if getattr(args, name) is None:
            p.error(f"--guidance {args.guidance} needs --{name.replace('_', '-')}")
    if args.guidance == "autoguidance" and args.weak_ckpt is None:
        p.error("--guidance autoguidance needs --weak-ckpt")
    if args.gamma != Schedule.constant(0.0) and args.guidance not in ("none", "cfg"):
        p.error(f"--gamma sets unguided / cfg sampling; --guidance {args.guidance} uses "
                f"--gamma-strong / --gamma-weak (autoguidance is dense)")
    if args.weak_ckpt is not None and args.guidance in ("none", "cfg"):
        p.error(f"--weak-ckpt is not used by --guidance {args.guidance}")
    if args.ckpt is None and (args.ckpt_kind != "auto" or args.routes is not None):
        p.error("--ckpt-kind / --routes describe a --ckpt file")
    if args.ckpt_kind == "dit":
        p.error(DIT_REFUSED)


def build_guidance(args, weak_model=None):
    """The guidance object the arguments describe (None for plain dense sampling)."""
    g = args.guidance
    if g == "none":
        return None if args.gamma == Schedule.constant(0.0) else Unguided(args.gamma)
    if g == "cfg":
        return CFG(args.scale, gamma=args.gamma, interval=args.interval)
    if g == "autoguidance":
        return AutoGuidance(weak_model, args.scale, interval=args.interval)
    sparse = dict(interval=args.interval, weak_model=weak_model,
                  allow_inverted=args.allow_inverted)
    if g == "sg":
        return SparseGuidance(args.scale, args.gamma_strong, args.gamma_weak, **sparse)
    return CFGSparseGuidance(args.cfg_scale, args.sg_scale, args.gamma_strong, args.gamma_weak,
                             rule=args.rule, **sparse)


def _prompts(args) -> list[str] | None:
    prompts = list(args.prompt or [])
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts file not found: {path}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"--prompts {path}: expected a UTF-8 text file, one prompt per "
                             f"line") from None
        prompts += [line.strip() for line in lines if line.strip()]
        if not prompts:
            raise ValueError(f"--prompts {path} holds no prompts (expected one per line)")
    return prompts or None


def _text_meta(args) -> dict:
    """The checkpoint's text-encoder settings (args["text"]), or {} (random --model)."""
    if args.ckpt is None:
        return {}
    from sgkernels.model.checkpoint import read_checkpoint
    return dict(read_checkpoint(args.ckpt)["args"].get("text") or {})


def _encode_prompts(args, config, prompts, device):
    """(features of each prompt, features of the null caption), both on device."""
    from sgkernels.text import DEFAULT_ENCODER, SYSTEM_PROMPT, TextEncoder
    meta = _text_meta(args)
    encoder = TextEncoder(args.text_encoder or meta.get("encoder", DEFAULT_ENCODER), device,
                          max_length=int(meta.get("max_length", config.text_len)),
                          system_prompt=meta.get("system_prompt", SYSTEM_PROMPT))
    if encoder.dim != config.text_dim:
        raise ValueError(f"--text-encoder: the text encoder gives features of width "
                         f"{encoder.dim}, the model expects text_dim {config.text_dim}")
    return encoder.encode(prompts), encoder.null()


def _load(args, path, device, flag="--ckpt"):
    from sgkernels.model.official import load_model
    try:
        model, kind = load_model(path, args.ckpt_kind, ema=args.weights == "ema",
                                 routes=args.routes)
        if kind == "dit":
            raise ValueError(f"{path} holds official DiT weights: {DIT_REFUSED}")
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"{flag}: {e}") from e
    return model.to(device)


def _build_model(args, device):
    if args.ckpt is not None:
        return _load(args, args.ckpt, device)
    from sgkernels import presets
    from sgkernels.model import RoutedDiT
    try:
        config = presets.get(args.model)
    except ValueError as e:
        raise ValueError(f"--model: {e}") from e
    torch.manual_seed(args.seed)            # the same random weights on every rank
    return RoutedDiT(config).to(device).eval()


def _image_labels(args, num_classes: int) -> np.ndarray:
    labels = args.labels if args.labels is not None else list(range(num_classes))
    bad = [y for y in labels if not 0 <= y < num_classes]
    if num_classes == 0:
        if args.labels is not None:
            raise ValueError("--labels: the model is unconditional (num_classes=0) and takes no "
                             "labels")
        return np.full(args.num, -1, dtype=np.int64)      # arr_1: -1 = no class
    if bad or not labels:
        raise ValueError(f"--labels must be in [0, {num_classes}), got {labels}")
    return np.resize(np.asarray(labels, dtype=np.int64), args.num)


def _cost(config, guidance, args, text=None) -> dict:
    from sgkernels.flops import sampling_gflops
    from sgkernels.flops.sampling import sampling_nfe
    if text is not None:                    # count the prompts' mean number of text tokens
        config = config.replace(text_len=max(1, round(sum(text.lengths) / len(text.lengths))))
    return {"gflops_per_image_step": sampling_gflops(config, guidance, args.steps, args.solver),
            "nfe_per_step": sampling_nfe(guidance, args.steps, args.solver)}


def _sample_rank(args, model, guidance, labels, rank, world, device, text=None):
    """This rank's batches: (samples, labels, global indices); uint8 images or float latents."""
    config = model.config
    shape = (config.in_channels, config.input_size, config.input_size)
    starts = list(range(0, args.num, args.batch))
    mine = [j for j in range(len(starts)) if j % world == rank]
    if args.progress and rank == 0:
        from tqdm.auto import tqdm
        mine = tqdm(mine, desc=f"sampling on {world} rank(s)", unit="batch")
    images, indices = [], []
    graphs = GraphCache() if args.cuda_graphs else False     # shared by the batches
    for j in mine:
        index = np.arange(starts[j], min(starts[j] + args.batch, args.num))
        gen = torch.Generator().manual_seed(args.seed * SEED_STRIDE + j)
        noise = torch.randn((len(index), *shape), generator=gen).to(device)
        if text is None:
            y = torch.from_numpy(labels[index]).to(device) if config.num_classes else None
            cond = {}
        else:                               # labels hold prompt indices
            y, cond = None, {"text": text[0].select(labels[index]), "null_text": text[1]}
        x = sample(model, noise, y, steps=args.steps, solver=args.solver, guidance=guidance,
                   generator=gen, compile=args.compile, cuda_graphs=graphs, **cond)
        images.append(to_uint8(x) if shape[0] in IMAGE_CHANNELS else x.float().cpu().numpy())
        indices.append(index)
    if not images:                          # more ranks than batches
        return None
    index = np.concatenate(indices)
    return np.concatenate(images), labels[index], index


def main(argv=None) -> int:
    p = parser()
    args = parse(p, argv)
    _check_args(p, args)
    prompts = _prompts(args)
    ranks = setup_distributed(args.device)
    rank, world, device = ranks.rank, ranks.world_size, ranks.device
    model = _build_model(args, device)
    weak = _load(args, args.weak_ckpt, device, "--weak-ckpt") if args.weak_ckpt else None
    if weak is not None:
        for key in ("in_channels", "input_size", "num_classes", "text_conditioned"):
            if getattr(weak.config, key) != getattr(model.config, key):
                raise ValueError(f"--weak-ckpt {args.weak_ckpt}: a model of another kind than "
                                 f"the main one (config.{key} {getattr(weak.config, key)} vs "
                                 f"{getattr(model.config, key)})")
    try:
        guidance = build_guidance(args, weak)
    except (TypeError, ValueError) as e:
        p.error(str(e))
    text = None
    if model.config.text_conditioned:
        if prompts is None or args.labels is not None or args.all_classes:
            p.error("a text-to-image model needs --prompt or --prompts (and no --labels)")
        text = _encode_prompts(args, model.config, prompts, device)
        labels = np.resize(np.arange(len(prompts), dtype=np.int64), args.num)
    elif prompts is not None:
        p.error("--prompt / --prompts need a text-conditioned (T2I) model")
    else:
        labels = _image_labels(args, model.config.num_classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "samples.npz" if model.config.in_channels in IMAGE_CHANNELS else "latents.npz"

    part = _sample_rank(args, model, guidance, labels, rank, world, device, text)
    if world > 1:
        if part is not None:
            np.savez(io.part_path(out, rank), *part)
        dist.barrier()
    if rank == 0:
        arrays, ys = io.merge_parts(out, world) if world > 1 else part[:2]
        np.savez(out / name, arrays, ys)
        if name == "samples.npz":
            save_grid(arrays[: args.grid], out / "grid.png")
        if text is not None:
            (out / "prompts.txt").write_text("".join(f"{q}\n" for q in prompts))
        info = {"args": {k: (str(v) if isinstance(v, Schedule) else v)
                         for k, v in vars(args).items()},
                "world_size": world, "num": int(len(arrays)), "output": name,
                "guidance": repr(guidance),
                **_cost(model.config, guidance, args, None if text is None else text[0])}
        (out / "sampling.json").write_text(json.dumps(info, indent=2))
        print(f"wrote {len(arrays)} samples to {out / name}; "
              f"{info['gflops_per_image_step']:.3f} GFLOPs and {info['nfe_per_step']:.2f} "
              f"model evaluations per image per step")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0
