"""What the command imports before it answers (issue 21, start-up time): listings and help import
neither JAX nor the recipe modules where they do not need them, and training starts without the
report code."""

import ast
import subprocess
import sys

import pytest

HEAVY = ("jax", "numpy", "scipy", "ml_dtypes", "matplotlib", "optax", "pyarrow", "duckdb")


def _imported_by(argv: list[str], names=HEAVY) -> tuple[str, list[str]]:
    """The stdout of ``optimorph ARGV`` run in a fresh process, and which of ``names`` it
    imported."""
    code = (
        "import sys\n"
        "from optimorph import cli\n"
        "try:\n"
        f"    code = cli.main({argv!r})\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        f"print('@@', code, [m for m in {tuple(names)!r} if m in sys.modules])\n"
    )
    # not check=True: the assert below shows the child's stderr
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out, _, last = proc.stdout.rstrip("\n").rpartition("\n")
    marker, code, loaded = last.split(" ", 2)
    assert marker == "@@" and code in ("0", "None"), (proc.stdout[-2000:], proc.stderr[-2000:])
    return out, ast.literal_eval(loaded)


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["list", "recipes"], ["run", "--help"], ["run"]],
    ids=lambda argv: " ".join(argv),
)
def test_help_and_recipe_listings_import_nothing_heavy(argv):
    out, loaded = _imported_by(argv, HEAVY + ("optimorph.experiments.tour",))
    assert loaded == []
    if argv != ["--help"]:
        assert "batch-size" in out and "implementations" in out


@pytest.mark.parametrize("what", ["optimizers", "problems"])
def test_listing_a_zoo_imports_its_registry_but_no_recipe_or_report_code(what):
    names = ("scipy", "matplotlib", "optimorph.report", "optimorph.experiments.tour")
    out, loaded = _imported_by(["list", what], names)
    assert loaded == [] and out.count("\n") > 10


def test_train_starts_without_the_report_code(tmp_path):
    """The first step comes before matplotlib is imported: ``optimorph.engine.train`` replaced
    by one that reports what is imported when training would start."""
    code = (
        "import sys\n"
        "import optimorph.engine\n"
        "def train(*args, **kwargs):\n"
        "    print('@@', [m for m in ('matplotlib', 'optimorph.report') if m in sys.modules])\n"
        "    raise SystemExit(0)\n"
        "optimorph.engine.train = train\n"
        "from optimorph import cli\n"
        "cli.main(['train', '--problem', 'two-moons(n=64)', '--optimizer', 'sgd', '--steps', '2',"
        f" '--quiet', '--out', {str(tmp_path / 'run')!r}])\n"
    )
    # not check=True: the assert below shows the child's stderr
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "@@ []"
