"""Test configuration: float64 available, strict rank promotion, warnings as errors (pyproject)."""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def check_page(tmp_path):
    """``check_page(page)``: open a report in headless Chromium (tests/browser.py)."""
    import browser

    return lambda page: browser.check_page(page, tmp_path)
