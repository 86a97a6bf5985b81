from sdft.config.reference import render
from tests.conftest import REPO


def test_readme_config_reference_is_current():
    assert render() in (REPO / "README.md").read_text(), "regenerate with: python -m sdft.config.reference"


def test_readme_test_command_is_what_ci_runs():
    assert "python -m pytest -q tests" in (REPO / "README.md").read_text()
    assert "python -m pytest -q tests" in (REPO / ".ci" / "run").read_text()
