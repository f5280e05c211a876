"""Comparison helpers for tests that check our results against the transformers reference."""

from __future__ import annotations

import numpy as np
import pytest


def assert_same(got, expected, path="result"):
    """Equal structure and values; floats within 1e-5."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and set(got) == set(expected), (path, got, expected)
        for k in expected:
            assert_same(got[k], expected[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (path, got, expected)
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same(g, e, f"{path}[{i}]")
    elif isinstance(expected, (float, np.floating)):
        assert isinstance(got, float), (path, type(got))
        assert got == pytest.approx(float(expected), rel=1e-5, abs=1e-7), path
    else:
        assert got == expected, (path, got, expected)
