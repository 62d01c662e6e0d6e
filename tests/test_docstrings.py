"""The public API documents itself (Google style): every public op, RoutedDiT, sample and the
guidance rules have docstrings with Args:, Returns: and Raises: sections, so `help(...)` shows
shapes, dtypes and errors, and a new public op or rule cannot land without them."""
import inspect
import re

import pytest

from sgkernels import guidance, ops
from sgkernels.model import RoutedDiT
from sgkernels.sampling.sampler import sample

NO_TENSORS = {"use_backend"}       # a context manager over a backend name: no shapes to document
OPS = sorted(set(ops.__all__) - NO_TENSORS)
RULES = [getattr(guidance, name) for name in guidance.__all__
         if isinstance(getattr(guidance, name), type)
         and issubclass(getattr(guidance, name), guidance.Guidance)
         and getattr(guidance, name) is not guidance.Guidance]


def sections(obj) -> str:
    doc = inspect.getdoc(obj)
    assert doc, f"{obj.__qualname__} has no docstring"
    return doc


def check(obj, *names):
    doc = sections(obj)
    missing = [name for name in names if not re.search(rf"^{name}:$", doc, re.MULTILINE)]
    assert not missing, f"{obj.__qualname__}: docstring lacks {missing}"


@pytest.mark.parametrize("name", OPS)
def test_public_ops_document_args_returns_raises(name):
    op = getattr(ops, name)
    check(op, "Args", "Returns", "Raises")
    doc = sections(op)
    assert "TypeError" in doc and "ValueError" in doc       # every op validates its inputs


def test_routed_dit_documents_constructor_forward_and_counts():
    check(RoutedDiT, "Args", "Raises")
    check(RoutedDiT.forward, "Args", "Returns", "Raises")
    check(RoutedDiT.record_token_counts, "Returns")


def test_sample_documents_args_returns_raises():
    check(sample, "Args", "Returns", "Raises")
    assert "FloatingPointError" in sections(sample)


def test_guidance_rules_are_all_checked():
    assert {r.__name__ for r in RULES} == {"Unguided", "CFG", "AutoGuidance", "SparseGuidance",
                                           "CFGSparseGuidance"}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_guidance_rules_document_constructor(rule):
    check(rule, "Args", "Raises")


@pytest.mark.parametrize("method", [guidance.Guidance.terms, guidance.Guidance.branches,
                                    guidance.SparseGuidance.sg_flops,
                                    guidance.SparseGuidance.sg_fid, guidance.Schedule.parse],
                         ids=lambda m: m.__qualname__)
def test_guidance_methods_document_args_returns_raises(method):
    check(method, "Args", "Returns", "Raises")


def test_schedule_and_validate_document_args_raises():
    check(guidance.Schedule, "Args", "Raises")
    check(guidance.Guidance.validate, "Args", "Raises")
