"""Equivalence classes of optimizers: the graph of p-equivalent pairs (DESIGN.md section 3).

p-equivalence is decided pair by pair from trajectories and need not be transitive (A close to B
and B close to C can leave A and C apart by more than the threshold). So the report gives the
connected components of the graph as "classes" and lists the triples that break transitivity,
rather than pretending the relation is an equivalence relation. Dependency-free on purpose: the
graphs have a handful of nodes.

>>> g = equivalence_graph(["adam", "signsgd", "sgd"], {("adam", "signsgd"): True, (1, 2): False})
>>> components(g)
[['adam', 'signsgd'], ['sgd']]
>>> print(class_table({"fp16": components(g)}))
precision  classes  members
---------  -------  ----------------------
fp16             2  {adam, signsgd}  {sgd}
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Graph", "class_table", "components", "count_text", "equivalence_graph",
           "non_transitive_triples"]


@dataclass(frozen=True)
class Graph:
    """An undirected graph on named nodes, kept in the order the names were given.

    Attributes:
      names: the nodes, in order; every listing derived from the graph follows this order.
      adjacency: for each name, the set of names it is equivalent to (never itself).
    """

    names: tuple[str, ...]
    adjacency: Mapping[str, frozenset[str]]

    def adjacent(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are joined by an edge (``a`` is never adjacent to itself)."""
        return b in self.adjacency[a]

    def edges(self) -> list[tuple[str, str]]:
        """Every edge once, as (earlier name, later name), in the order of ``names``."""
        order = {name: i for i, name in enumerate(self.names)}
        return [
            (a, b)
            for a in self.names
            for b in self.names
            if order[a] < order[b] and self.adjacent(a, b)
        ]


def equivalence_graph(
    names: Sequence[str], equivalent: Mapping[tuple[Hashable, Hashable], bool]
) -> Graph:
    """The undirected graph with an edge between each pair marked equivalent.

    Args:
      names: the optimizers (distinct), in the order listings should follow.
      equivalent: verdicts keyed by pairs of names or of indices into ``names`` (mixing is
        allowed); True adds an edge, False records that the pair was tested and is not
        equivalent. Pairs not listed get no edge. A pair may be given in both directions (the
        verdict is symmetric), but the two verdicts must then agree. Pairs of a name with
        itself are ignored.

    Raises:
      ValueError: duplicate names, an unknown name or index, or conflicting verdicts for a pair.

    >>> equivalence_graph(["a", "b", "c"], {(0, 1): True, ("c", "b"): True}).edges()
    [('a', 'b'), ('b', 'c')]
    """
    names = tuple(names)
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct, got {list(names)}")
    verdicts: dict[frozenset[str], bool] = {}
    for key, verdict in equivalent.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"keys must be pairs (a, b), got {key!r}")
        a, b = (_resolve(names, k) for k in key)
        if a == b:
            continue
        pair = frozenset((a, b))
        verdict = bool(verdict)
        if verdicts.setdefault(pair, verdict) != verdict:
            raise ValueError(f"conflicting verdicts for the pair ({a!r}, {b!r})")
    adjacency: dict[str, set[str]] = {name: set() for name in names}
    for pair, verdict in verdicts.items():
        if verdict:
            a, b = pair
            adjacency[a].add(b)
            adjacency[b].add(a)
    return Graph(names, {name: frozenset(adj) for name, adj in adjacency.items()})


def components(graph: Graph) -> list[list[str]]:
    """Connected components: each in the order of ``graph.names``, ordered by their first member.

    Single nodes (an optimizer equivalent to no other) are components of their own.

    >>> g = equivalence_graph(list("abcd"), {("d", "b"): True})
    >>> components(g)
    [['a'], ['b', 'd'], ['c']]
    """
    order = {name: i for i, name in enumerate(graph.names)}
    seen: set[str] = set()
    result = []
    for start in graph.names:
        if start in seen:
            continue
        seen.add(start)
        stack, members = [start], []
        while stack:
            node = stack.pop()
            members.append(node)
            for other in graph.adjacency[node] - seen:
                seen.add(other)
                stack.append(other)
        result.append(sorted(members, key=order.__getitem__))
    return result


def count_text(count: int, spread: Sequence[int] | None = None, noun: str = "classes",
               brief: bool = False) -> str:  # fmt: skip
    """A class count with its range over the seed-split verdicts (``spread``: fewest, most;
    ``Classes.class_range``) when it has one; ``brief`` for a table cell.

    >>> count_text(5, (4, 7))
    '5 classes (4-7 if the seed-split verdicts went the other way)'
    >>> count_text(7, (7, 7)), count_text(3), count_text(5, [4, 7], noun="", brief=True)
    ('7 classes', '3 classes', '5 (4-7)')
    """
    text = f"{count} {noun}".strip()
    if not spread or tuple(spread) == (count, count):
        return text
    why = "" if brief else " if the seed-split verdicts went the other way"
    return f"{text} ({spread[0]}-{spread[1]}{why})"


def non_transitive_triples(graph: Graph) -> list[tuple[str, str, str]]:
    """Triples (a, b, c) with a ~ b and b ~ c but not a ~ c.

    Each such path is listed once, with a before c in ``graph.names``, ordered by the middle b
    and then by a and c. An empty list means every component is a clique, i.e. the relation is
    transitive on this graph and the components are true equivalence classes.

    >>> g = equivalence_graph(["a", "b", "c"], {("a", "b"): True, ("b", "c"): True})
    >>> non_transitive_triples(g)
    [('a', 'b', 'c')]
    """
    triples = []
    for b in graph.names:
        neighbors = [n for n in graph.names if graph.adjacent(b, n)]
        for i, a in enumerate(neighbors):
            for c in neighbors[i + 1 :]:
                if not graph.adjacent(a, c):
                    triples.append((a, b, c))
    return triples


def class_table(per_precision: Mapping[str, Sequence[Sequence[str]]]) -> str:
    """A plain-text table of the classes at each precision: one row per precision.

    Columns: the precision, the number of classes, and the classes as ``{a, b}`` groups. Rows
    follow the mapping's order.

    >>> print(class_table({"fp16": [["a", "b", "c"]], "fp64": [["a"], ["b", "c"]]}))
    precision  classes  members
    ---------  -------  -----------
    fp16             1  {a, b, c}
    fp64             2  {a}  {b, c}
    """
    header = ("precision", "classes", "members")
    rows = [
        (precision, str(len(classes)), "  ".join("{" + ", ".join(c) + "}" for c in classes))
        for precision, classes in per_precision.items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]

    def line(cells: Sequence[str], right: bool = False) -> str:
        # The count column is right-aligned in data rows so the digits line up.
        count = cells[1].rjust(widths[1]) if right else cells[1].ljust(widths[1])
        return f"{cells[0].ljust(widths[0])}  {count}  {cells[2]}".rstrip()

    rule = ["-" * w for w in widths]
    return "\n".join([line(header), line(rule), *(line(r, right=True) for r in rows)])


def _resolve(names: tuple[str, ...], key: Hashable) -> str:
    """A name from a name or an index into ``names``."""
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        if not 0 <= key < len(names):
            raise ValueError(f"index {key} out of range for {len(names)} names {list(names)}")
        return names[int(key)]
    if key not in names:
        raise ValueError(f"unknown name {key!r}; valid names are {list(names)}")
    return key
