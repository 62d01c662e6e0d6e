"""Command line: `python -m sgkernels COMMAND ...` (or the `sgkernels` script), COMMAND one of
train, sample, eval, plan, export, convert.

Errors of every command are turned into exit statuses HERE, in one place (docs/contracts.md,
"Input policy"): the commands raise exceptions, `main` prints ONE line on stderr

    sgkernels COMMAND: error: MESSAGE

and exits with
    2    a user mistake: a bad flag or flag value (argparse), ValueError, TypeError, a missing /
         unreadable path (FileNotFoundError, IsADirectoryError, NotADirectoryError,
         FileExistsError, PermissionError), SystemExit("message")
    1    FloatingPointError (a non-finite loss in training, non-finite samples), other OSError
         (e.g. a full disk), out of memory, any other exception ("internal error: TYPE: MESSAGE"; please report it)
    130  KeyboardInterrupt
`--debug` anywhere on the command line (or SGKERNELS_DEBUG=1) shows the full traceback instead
and turns on the device-side value checks of SGKERNELS_DEBUG=1 for the run.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

COMMANDS = {
    "train": ("sgkernels.train.cli", "train a routed DiT with flow matching"),
    "sample": ("sgkernels.sampling.cli", "sample images with CFG / AutoGuidance / Sparse Guidance"),
    "eval": ("sgkernels.eval.cli", "FID, classifier-feature metrics, precision/recall"),
    "plan": ("sgkernels.train.plan_cli", "per-GPU memory of a training run (ddp / fsdp)"),
    "export": ("sgkernels.train.export_cli", "a sharded (FSDP) checkpoint as one file"),
    "convert": ("sgkernels.model.convert_cli", "checkpoints to / from official DiT / SiT weights"),
}
USAGE_ERROR, FAILURE, INTERRUPTED = 2, 1, 130
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
               FileExistsError, PermissionError)


class UsageError(Exception):
    """A command-line parsing error (what argparse would print with the usage and exit 2)."""


def _usage():
    lines = ["usage: python -m sgkernels COMMAND [options] [--debug]", "", "commands:"]
    lines += [f"  {name:8s} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "--debug (on every command): full tracebacks and SGKERNELS_DEBUG=1 value checks"]
    return "\n".join(lines)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(error: BaseException) -> tuple[int, str] | None:
    """(exit status, message) of an exception escaping a command; None: let it propagate
    (SystemExit with a status, e.g. --help)."""
    if isinstance(error, SystemExit):
        if error.code is None or isinstance(error.code, int):
            return None
        return USAGE_ERROR, one_line(error.code)
    message = one_line(str(error)) or type(error).__name__
    if isinstance(error, UsageError):
        return USAGE_ERROR, f"{message} (see --help)"
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED, "interrupted"
    if isinstance(error, FloatingPointError):
        return FAILURE, message
    if isinstance(error, USER_ERRORS):
        return USAGE_ERROR, message
    if isinstance(error, OSError):                  # e.g. a full disk: the OS's message
        return FAILURE, message
    if type(error).__name__ == "OutOfMemoryError" or isinstance(error, MemoryError):
        return FAILURE, f"out of memory ({message.split('. ')[0]}): try a smaller --batch"
    return FAILURE, (f"internal error: {type(error).__name__}: {message} (run again with "
                     f"--debug for the traceback, and please report it)")


@contextlib.contextmanager
def _parser_errors_raise():
    """argparse errors raise UsageError (mapped to one line by `describe`) instead of printing
    the usage block and exiting; restored afterwards."""
    original = argparse.ArgumentParser.error

    def error(self, message):
        raise UsageError(message)

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def run(name: str, argv: list[str], debug: bool = False) -> int:
    """Run command `name` with argv, mapping its exceptions to one line and an exit status."""
    try:
        with _parser_errors_raise():
            module = importlib.import_module(COMMANDS[name][0])
            return module.main(argv) or 0
    except BaseException as e:          # noqa: BLE001 -- the one place errors become statuses
        outcome = describe(e)
        if debug or outcome is None:
            raise
        status, message = outcome
        print(f"sgkernels {name}: error: {message}", file=sys.stderr, flush=True)
        return status


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("SGKERNELS_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sgkernels: error: unknown command {name!r}; expected one of "
              f"{', '.join(COMMANDS)} (see --help)", file=sys.stderr)
        return USAGE_ERROR
    previous = os.environ.get("SGKERNELS_DEBUG")
    if debug:
        os.environ["SGKERNELS_DEBUG"] = "1"
    try:
        return run(name, rest, debug)
    finally:
        if previous is None:
            os.environ.pop("SGKERNELS_DEBUG", None)
        else:
            os.environ["SGKERNELS_DEBUG"] = previous


if __name__ == "__main__":
    sys.exit(main())
