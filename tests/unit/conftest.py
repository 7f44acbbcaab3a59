"""Shared setup for the fast unit tier."""


def pytest_configure(config):
    # Also declared in pyproject.toml; registered here too so this tier runs from any rootdir.
    config.addinivalue_line("markers", "slow: slower model-training checks (still part of make test)")
