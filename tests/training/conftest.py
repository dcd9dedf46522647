"""Fixtures for the training tests (the helpers live in tests/helpers.py)."""

import pytest

from ..helpers import PatternDataset


@pytest.fixture
def dataset():
    return PatternDataset()
