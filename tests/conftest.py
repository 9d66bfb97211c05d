"""Test-session setup: the CPU backends the suites are parametrized over, a fixed seed per test, and the check
that the backends CI requires (FUSEDREG_REQUIRE) were built."""
import os

import pytest
import torch

import fusedreg

# Backends this install can run on CPU tensors; the suites are parametrized over them.
CPU_BACKENDS = [b for b in fusedreg.backends.available() if b != "cuda"]


def pytest_report_header(config):
    return [f"fusedreg backends: {fusedreg.backends.explain()}", f"torch {torch.__version__}"]


@pytest.fixture(params=CPU_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def ci():
    return os.environ.get("CI") == "true"


def pytest_sessionstart(session):
    # CI names the backends that must have been built (FUSEDREG_REQUIRE=cpp), so a broken build cannot pass
    # by falling back to the reference.
    required = [b for b in os.environ.get("FUSEDREG_REQUIRE", "").split(",") if b]
    missing = {b: fusedreg.backends.explain()[b] for b in required if b not in fusedreg.backends.available()}
    if missing:
        raise pytest.UsageError(f"required fusedreg backends are missing: {missing}")
