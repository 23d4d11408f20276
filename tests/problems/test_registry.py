"""problem() and list_problems(): names, argument checking, canonical names, user factories."""

from pathlib import Path

import numpy as np
import pytest

from optimorph import spec
from optimorph.problems import Problem, list_problems, problem
from optimorph.spec import Call, SpecError

NAMES = [
    "two-moons",
    "stretched-moons",
    "quadratic",
    "least-squares",
    "logistic",
    "digits",
    "mnist1d",
    "fashion-mnist",
    "mnist",
    "modular-addition",
]


@pytest.fixture
def repo_on_path(monkeypatch):
    # `python -m pytest` puts the repository root on sys.path; plain `pytest` may not.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))
    previous = spec.allow_imports(True)  # user factories are opt-in
    yield
    spec.allow_imports(previous)


def test_list_problems_gives_names_params_and_descriptions():
    infos = list_problems()
    assert [i.name for i in infos] == NAMES
    moons = infos[0]
    assert [str(p) for p in moons.params][:3] == [
        "n: int = 500",
        "noise: float = 0.1",
        "flip: float = 0.1",
    ]
    assert "widths: list[int] = [64, 64]" in [str(p) for p in moons.params]
    assert all(i.description and "\n" not in i.description for i in infos)


def test_unknown_name_lists_valid_names():
    with pytest.raises(SpecError, match="unknown problem 'two-moon'; valid: " + ", ".join(NAMES)):
        problem("two-moon(n=5)")


def test_unknown_argument_lists_valid_arguments_with_types_and_defaults():
    with pytest.raises(SpecError) as err:
        problem("two-moons(noize=0.2)")
    message = str(err.value)
    assert "two-moons has no argument noize" in message
    assert "n: int = 500, noise: float = 0.1, flip: float = 0.1" in message
    assert "activation: relu|tanh|gelu" in message


@pytest.mark.parametrize(
    "spec, text",
    [
        ("two-moons(n='many')", "n must be int, got 'many' \\(str\\)"),
        ("two-moons(n=10.5)", "n must be int, got 10.5"),
        ("two-moons(noise=true)", "noise must be float, got True \\(bool\\)"),
        ("two-moons(activation=swish)", "activation must be relu\\|tanh"),
        ("logistic(dataset=mnist)", "dataset must be breast_cancer\\|digits\\|wine\\|iris"),
        ("two-moons(widths=64)", "widths must be list\\[int\\]"),
        ("two-moons(500)", "keyword arguments only"),
        ("two-moons(n=", "cannot parse"),
    ],
)
def test_malformed_arguments(spec, text):
    with pytest.raises(SpecError, match=text):
        problem(spec)


def test_coercion_and_canonical_name():
    p = problem("two-moons(n=5e2, widths=(32,), activation='tanh', noise=0)")
    assert p.name == "two-moons(n=500, noise=0.0, flip=0.1, widths=[32], activation='tanh')"
    assert p.info["n_params"] == 2 * 32 + 32 + 32 * 2 + 2
    rebuilt = problem(p.name)
    assert rebuilt.name == p.name
    np.testing.assert_array_equal(rebuilt.train[0], p.train[0])


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("fashion-mnist", "mnist")])
def test_every_default_name_round_trips(name):
    built = problem(name)
    assert problem(built.name).name == built.name
    assert built.name.startswith(name)


def test_overrides_and_call_objects():
    assert problem("quadratic(dim=3)", dim=4).name == "quadratic(dim=4, kappa=100.0)"
    assert problem(Call("quadratic", (), {"kappa": 2})).name == "quadratic(dim=100, kappa=2.0)"


def test_problem_instance_is_returned_as_is():
    p = problem("quadratic(dim=2)")
    assert problem(p) is p
    with pytest.raises(SpecError, match="already built"):
        problem(p, dim=3)


def test_user_factory_by_import_path(repo_on_path):
    p = problem("tests.problems.factory_mod:make(n=6, scale=2.0)")
    assert isinstance(p, Problem)
    assert p.name == "tests.problems.factory_mod:make(n=6, scale=2.0)"
    assert p.n_train == 6
    assert float(p.loss({"w": np.float32(2.0)}, p.train)) == 0.0
    assert (
        problem("tests.problems.factory_mod:make", n=3).name
        == "tests.problems.factory_mod:make(n=3)"
    )


def test_user_factory_errors(repo_on_path):
    with pytest.raises(SpecError, match="returned int, not a Problem"):
        problem("tests.problems.factory_mod:not_a_problem")
    with pytest.raises(SpecError, match="has no attribute 'missing'"):
        problem("tests.problems.factory_mod:missing")
    with pytest.raises(SpecError, match=r"cannot import module 'no_such_pkg\.mod'.*PYTHONPATH"):
        problem("no_such_pkg.mod:make")
