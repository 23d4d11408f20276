"""Equivalence classes: graph construction, components, non-transitive triples, the text table."""

import itertools

import pytest

from optimorph.equivalence.classes import (
    class_table,
    components,
    equivalence_graph,
    non_transitive_triples,
)

NAMES = ["adam", "momentum", "sgd", "signsgd", "lion", "newton"]


def test_components_of_a_known_graph():
    g = equivalence_graph(
        NAMES,
        {
            ("signsgd", "adam"): True,  # given out of order: members still follow NAMES
            ("lion", "signsgd"): True,
            (1, 2): True,
            ("adam", "sgd"): False,
            (5, 0): False,
        },
    )
    assert components(g) == [["adam", "signsgd", "lion"], ["momentum", "sgd"], ["newton"]]
    assert g.edges() == [("adam", "signsgd"), ("momentum", "sgd"), ("signsgd", "lion")]


def test_components_partition_the_names():
    # Every pair of a 6-node graph decided by a fixed pattern: components must partition the
    # names, and two names share a component exactly when a path joins them.
    pairs = list(itertools.combinations(range(len(NAMES)), 2))
    g = equivalence_graph(NAMES, {p: (sum(p) % 4 == 1) for p in pairs})
    comps = components(g)
    assert sorted(n for c in comps for n in c) == sorted(NAMES)
    assert [c[0] for c in comps] == sorted((c[0] for c in comps), key=NAMES.index)
    for comp in comps:
        assert comp == sorted(comp, key=NAMES.index)
        reached, frontier = {comp[0]}, [comp[0]]
        while frontier:
            node = frontier.pop()
            new = {n for n in NAMES if g.adjacent(node, n)} - reached
            reached |= new
            frontier.extend(new)
        assert reached == set(comp)


def test_non_transitive_triple_detected():
    g = equivalence_graph(["a", "b", "c", "d"], {("a", "b"): True, ("b", "c"): True})
    assert non_transitive_triples(g) == [("a", "b", "c")]
    # The components still join all three: the classes are connected, not transitive.
    assert components(g) == [["a", "b", "c"], ["d"]]


def test_cliques_have_no_non_transitive_triples():
    clique = {p: True for p in itertools.combinations("abc", 2)}
    assert non_transitive_triples(equivalence_graph(list("abcd"), clique)) == []


def test_star_lists_each_broken_pair_once():
    g = equivalence_graph(list("hxyz"), {("h", n): True for n in "xyz"})
    assert non_transitive_triples(g) == [("x", "h", "y"), ("x", "h", "z"), ("y", "h", "z")]


def test_graph_is_undirected_and_ignores_self_pairs():
    g = equivalence_graph(["a", "b"], {("b", "a"): True, ("a", "a"): True})
    assert g.adjacent("a", "b") and g.adjacent("b", "a")
    assert not g.adjacent("a", "a")
    both = equivalence_graph(["a", "b"], {("a", "b"): True, (1, 0): True})
    assert both.edges() == [("a", "b")]


@pytest.mark.parametrize(
    "names, verdicts, match",
    [
        (["a", "b"], {("a", "c"): True}, "unknown name 'c'"),
        (["a", "b"], {(0, 2): True}, "out of range"),
        (["a", "b"], {("a", "b"): True, ("b", "a"): False}, "conflicting"),
        (["a", "a"], {}, "distinct"),
        (["a", "b"], {("a",): True}, "pairs"),
    ],
)
def test_bad_input_raises(names, verdicts, match):
    with pytest.raises(ValueError, match=match):
        equivalence_graph(names, verdicts)


def test_class_table():
    table = class_table(
        {
            "fp16": [["adam", "signsgd", "sgd"]],
            "fp32": [["adam", "signsgd"], ["sgd"]],
            "fp64": [["adam"], ["signsgd"], ["sgd"]],
        }
    )
    lines = table.splitlines()
    assert lines[0].split() == ["precision", "classes", "members"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split(maxsplit=2) == ["fp16", "1", "{adam, signsgd, sgd}"]
    assert lines[3].split(maxsplit=2) == ["fp32", "2", "{adam, signsgd}  {sgd}"]
    assert lines[4].split(maxsplit=2) == ["fp64", "3", "{adam}  {signsgd}  {sgd}"]
    # Columns line up: every row's member list starts at the same column.
    assert len({line.index(word) for line, word in zip(lines[2:], ["{", "{", "{"])}) == 1
