"""Command line: `python -m sgkernels {train,sample,eval} ...` (or the `sgkernels` script)."""
import importlib
import sys

COMMANDS = {
    "train": ("sgkernels.train.cli", "train a routed DiT with flow matching"),
    "sample": ("sgkernels.sampling.cli", "sample images with CFG / AutoGuidance / Sparse Guidance"),
    "eval": ("sgkernels.eval.cli", "FID, classifier-feature metrics, precision/recall"),
}


def _usage():
    lines = ["usage: python -m sgkernels COMMAND [options]", "", "commands:"]
    lines += [f"  {name:8s} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sgkernels: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
