"""A recipe's figures and page, drawn from its run directory only (no recomputation).

The page puts the answer first: how many of the source's claims held, then the findings table,
then the recipe's tables and figures, then the settings (quick or full, every departure from the
source a named setting) and the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from optimorph.report.curves import loss_figure, probe_figure, smoothness_figure
from optimorph.report.figures import save_figure
from optimorph.report.style import MAX_WIDTH, figure_title, series_style
from optimorph.report.html import (
    CAPTIONS,
    cell_text,
    REPORT_FILE,
    figure_html,
    format_number,
    findings_table,
    mapping_table,
    rows_table,
    write_page,
)
from optimorph.equivalence.classes import count_text
from optimorph.experiments.findings import tally
from optimorph.results import store
from optimorph.results.rundir import read_config, read_run

__all__ = ["write_recipe_report", "FIGURES"]

_PANEL = (5.5, 4.2)


def write_recipe_report(run_dir: str | os.PathLike) -> Path:
    """Redraw the figures of a recipe run directory and write its ``report.html``."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    name = config.get("recipe", "?")
    findings = store.read_json(run_dir, "findings") if (run_dir / "findings.json").exists() else []
    figures = FIGURES.get(name, lambda d: [])(run_dir)
    scale = config.get("scale") or ("quick" if config.get("quick") else "full")
    reduced = f" ({scale} scale: reduced settings, see below)" if scale != "full" else ""
    body = [
        f"<h1>optimorph recipe: {name} ({scale} scale)</h1>",
        f"<p class='lead'>Claims of {config.get('source', 'the source')}: {tally(findings)}"
        f"{reduced}.</p>",
        f"<p>{config.get('summary', '')}</p>" if config.get("summary") else "",
        "<h2>Findings</h2>",
        findings_table(findings) if findings else "<p>No findings stored (run unfinished?).</p>",
    ]
    body += _TABLES.get(name, lambda d: [])(run_dir)
    body += _stored_tables(run_dir, skip=_SHOWN_BY_TABLES.get(name, ()))
    if figures:
        body.append("<h2>Figures</h2>")
        body += [figure_html(path, caption) for path, caption in figures]
    body += ["<h2>Settings</h2>", mapping_table({"scale": scale})]
    body += [mapping_table(config.get("config", {}))]
    body += ["<h2>Environment</h2>", mapping_table(config.get("environment", {}))]
    return write_page(run_dir / REPORT_FILE, f"optimorph recipe: {name} ({scale} scale)", body)


def _stored_tables(run_dir: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Every ``table_<name>.json`` (a list of row dicts) of a recipe, as a table, but those in
    ``skip`` (drawn by the recipe's own entry of ``_TABLES``)."""
    out = []
    for path in sorted(run_dir.glob("table_*.json")):
        if path.stem[6:] in skip:
            continue
        rows = store.read_json(run_dir, path.stem)
        if rows:
            columns = list(rows[0])
            out += [f"<h2>Table: {path.stem[6:]}</h2>",
                    rows_table(columns, [[r.get(c, "") for c in columns] for r in rows])]  # fmt: skip
    return out


def _orthogonalization_figures(run_dir: Path) -> list[tuple[Path, str]]:
    rows = store.read_json(run_dir, "table_orthogonalizers")
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig = Figure(figsize=(MAX_WIDTH, _PANEL[1] + 0.6), layout="constrained")
    axes = fig.subplots(1, 3)
    x = np.arange(len(shapes))
    for i, m in enumerate(methods):
        for p, style in zip(precisions, ("-o", "--s", ":^"), strict=False):
            sel = {r["shape"]: r for r in rows if r["method"] == m and r["precision"] == p}
            err = [max(sel[s]["error"] or 0.0, 1e-16) for s in shapes]
            secs = [sel[s]["seconds"] * 1e3 for s in shapes]
            band = [(sel[s]["sigma_min"], sel[s]["sigma_max"]) for s in shapes]
            label = f"{m} ({p})"
            axes[0].plot(x, err, style, color=f"C{i}", label=label)
            axes[1].plot(x, secs, style, color=f"C{i}", label=label)
            lo, hi = (np.array(v) for v in zip(*band, strict=True))
            axes[2].vlines(x + 0.06 * (i - len(methods) / 2) + (0.02 if p != precisions[0] else 0),
                           lo, hi, color=f"C{i}", linestyles="solid" if p == precisions[0]
                           else "dashed", label=label, linewidth=2)  # fmt: skip
    axes[0].set(yscale="log", ylabel="||Q - U V^T||_F / ||U V^T||_F", title="error vs SVD")
    axes[1].set(yscale="log", ylabel="milliseconds per call (compiled, this CPU)", title="time")
    axes[2].set(ylabel="singular values of the output (min..max)", title="band reached")
    axes[2].axhline(1.0, color="black", linewidth=0.8)
    for ax in axes:
        ax.set_xticks(x, shapes, rotation=30)
        ax.set_xlabel("matrix shape (rows x columns)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="x-small", ncol=2)
    path = save_figure(fig, run_dir / "orthogonalization.png")
    return [(path, "Each orthogonalizer on a Gaussian matrix per shape and format (solid: "
             f"{precisions[0]}, dashed: the others); the input is rounded to the format; the "
             "error is against a float64 SVD.")]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# batch-size


def _cells(run_dir: Path) -> dict[int, dict]:
    sizes = read_config(run_dir)["config"]["batch_sizes"]
    return {b: store.read_arrays(run_dir, f"cells/B{b}") for b in sizes}


def _batch_size_figures(run_dir: Path) -> list[tuple[Path, str]]:
    cells = _cells(run_dir)
    sizes = sorted(cells)
    colors = _colors(len(sizes))
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for color, b in zip(colors, sizes, strict=True):
        c = cells[b]
        ax.plot(c["steps"], c["train_loss"], color=color, lw=1.2, label=f"B = {b}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (cross-entropy, nats)")
    ax.set_title("SGD on noisy two moons: training loss by batch size")
    ax.legend(fontsize="small", ncol=2, title="batch size")
    ax.grid(alpha=0.3, which="both")
    paths = [(save_figure(fig, run_dir / "batch_size_loss.png"), _loss_caption(cells[sizes[0]]))]

    fig = Figure(figsize=(2 * _PANEL[0], _PANEL[1]), layout="constrained")
    time_ax, acc_ax = fig.subplots(1, 2)
    walls = [float(cells[b]["wall"]) for b in sizes]
    time_ax.plot(sizes, walls, "o-", color="#333")
    time_ax.set_xscale("log")
    time_ax.set_yscale("log")
    time_ax.set_xlabel("batch size")
    time_ax.set_ylabel("wall time of the run (s)")
    time_ax.set_title("training time")
    time_ax.grid(alpha=0.3, which="both")
    _plain_ticks(time_ax)
    series = (("clean", "clean labels", "#1f77b4"), ("noisy", "flipped labels", "#d62728"))
    for key, label, color in series:
        mean = [cells[b][key].mean() for b in sizes]
        std = [cells[b][key].std(ddof=1) if cells[b][key].size > 1 else 0.0 for b in sizes]
        acc_ax.errorbar(sizes, mean, yerr=std, fmt="o-", color=color, capsize=3, label=label)
    acc_ax.set_xscale("log")
    acc_ax.set_xlabel("batch size")
    acc_ax.set_ylabel("test accuracy (fraction correct)")
    n_sets = cells[sizes[0]]["clean"].size
    acc_ax.set_title(f"test accuracy, mean ± std over {n_sets} fresh test sets")
    acc_ax.legend(fontsize="small")
    acc_ax.grid(alpha=0.3, which="both")
    _plain_ticks(acc_ax, y=False)
    paths.append(
        (
            save_figure(fig, run_dir / "batch_size_time_accuracy.png"),
            "Left: wall time of each run (compilation included). Right: accuracy of the final "
            f"model on {n_sets} fresh test sets of clean and of noisy labels (error bars: sample "
            "std over the test sets).",
        )
    )
    grids = sorted(run_dir.glob("boundary_B*.npz"), key=lambda p: int(p.stem[10:]))
    if grids:
        labels = [f"B = {p.stem[10:]}" for p in grids]
        arrays = [store.read_arrays(run_dir, p.stem) for p in grids]
        paths.append(
            (
                save_figure(_boundaries(arrays, labels), run_dir / "batch_size_boundaries.png"),
                "Decision boundaries (P(class 1) = 0.5, black) over the training points, whose "
                "colour is their label as trained on (flipped labels included).",
            )
        )
    return paths


def _batch_size_tables(run_dir: Path) -> list[str]:
    cells = _cells(run_dir)
    rows = [
        [
            b,
            float(np.mean(c["train_loss"][-10:])),
            float(c["train_accuracy"][-1]),
            float(c["clean"].mean()),
            float(c["noisy"].mean()),
            float(c["wall"]),
        ]
        for b, c in sorted(cells.items())
    ]
    out = [
        "<h2>Per batch size</h2>",
        rows_table(
            [
                "batch size",
                "final train loss",
                "train accuracy",
                "test acc. (clean)",
                "test acc. (noisy)",
                "wall time (s)",
            ],
            rows,
        ),  # fmt: skip
    ]
    if (run_dir / "timing.json").exists():
        t = store.read_json(run_dir, "timing")
        out += [
            "<h2>Speed against the textbook NumPy loop</h2>",
            rows_table(
                [
                    "NumPy loop, projected for the sweep (s)",
                    "optimorph, sum of cell times (s)",
                    "NumPy / optimorph time, median (min..max)",
                    "optimorph, wall clock (s)",
                ],
                [[t["numpy_projected_s"], t["optimorph_s"], _ratio_text(t),
                  t.get("optimorph_wall_s", "—")]],
            ),  # fmt: skip
            "<p>The NumPy loop (hand-written forward and backward, one minibatch per Python "
            "iteration) and optimorph (compiled first) are timed on a sample of steps at each "
            "batch size, in interleaved rounds so that a slow spell of the machine hits both; "
            "the ratio is NumPy's time over optimorph's for the same steps, one per round. The "
            "NumPy projection uses the median rates. optimorph's cells (compilation included) "
            "run on one process per core, so the wall clock is about the cell time divided by "
            "the cores (cells resumed from an earlier run count in the cell time, not in the "
            "wall clock).</p>",
        ]
    return out


def _ratio_text(timing: dict) -> str:
    """The speed ratio as ``median (min..max)``; runs stored before the interleaved samples
    have one ratio only."""
    samples = timing.get("speedup_samples")
    if not samples:
        return f"{timing['speedup']:.3g} (one sample)"
    return f"{np.median(samples):.3g} ({min(samples):.3g}..{max(samples):.3g})"


# ---------------------------------------------------------------------------------------------
# Recipes built on a train run directory


def _train_figures(prefix: str, title: str) -> Callable[[Path], list[tuple[Path, str]]]:
    def figures(run_dir: Path) -> list[tuple[Path, str]]:
        out = []
        train_dirs = [run_dir / "train"] if (run_dir / "train").is_dir() else []
        train_dirs += sorted(run_dir.glob("train-*"))
        for train_dir in train_dirs:
            name = train_dir.name[6:]  # "" for the single run directory "train"
            tag = f"{prefix}_{name}" if name else prefix
            result = read_run(train_dir)
            fig = loss_figure(result)
            figure_title(fig, f"{title}: {name}" if name else title)
            out.append(
                (
                    save_figure(fig, run_dir / f"{tag}_loss.png"),
                    "Left: training loss (mean over seeds, band: min-max over seeds). Right: "
                    "the headline evaluation metric at each evaluation."
                    + (f" Run: {result.config.get('problem', name)}." if name else ""),
                )
            )
            probes = probe_figure(result)
            if probes is not None:
                out.append(
                    (
                        save_figure(probes, run_dir / f"{tag}_probes.png"),
                        f"Trajectory probes of {result.config.get('problem', 'the run')}, per "
                        "optimizer: mean over seeds per window of steps, band min-max over "
                        "seeds; sharpness as markers where measured, beside each optimizer's "
                        "edge of stability (2/lr for plain gradient descent, 38/lr for Adam's "
                        "preconditioned sharpness).",
                    )
                )
            versus = smoothness_figure(result)
            if versus is not None:
                out.append((save_figure(versus, run_dir / f"{tag}_smoothness_vs_sharpness.png"),
                            CAPTIONS["smoothness_vs_sharpness.png"]))  # fmt: skip
        grids = sorted(run_dir.glob("boundary_*.npz"))
        if grids:
            arrays = [store.read_arrays(run_dir, p.stem) for p in grids]
            labels = [p.stem[9:] for p in grids]
            out.append(
                (
                    save_figure(_boundaries(arrays, labels), run_dir / f"{prefix}_boundaries.png"),
                    "Decision boundaries of seed 0 (P(class 1) = 0.5, black) over the training "
                    "points.",
                )
            )
        weights = sorted(run_dir.glob("weights_*.npz"))
        if weights:
            images = {p.stem[8:]: store.read_arrays(run_dir, p.stem)["images"] for p in weights}
            out.append(
                (
                    save_figure(_weight_images(images), run_dir / f"{prefix}_weights.png"),
                    "Each class's weight vector as a 28x28 image (seed 0; colour scale symmetric "
                    "per image, red positive, blue negative).",
                )
            )
        return out

    return figures


def _boundaries(arrays: list[dict], labels: list[str]) -> Figure:
    width = min(MAX_WIDTH, _PANEL[0] * len(arrays))
    fig = Figure(figsize=(width, width / len(arrays) * 0.75 + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(arrays)))
    for ax, grid, label in zip(axes, arrays, labels, strict=True):
        _boundary(ax, grid)
        ax.set_title(label)
    return fig


def _boundary(ax: Axes, grid: dict) -> None:
    ax.contourf(grid["x"], grid["y"], grid["p"], levels=np.linspace(0, 1, 11), cmap="RdBu_r",
                alpha=0.55)  # fmt: skip
    ax.contour(grid["x"], grid["y"], grid["p"], levels=[0.5], colors="k", linewidths=1.5)
    x, y = grid["train_x"], grid["train_y"]
    ax.scatter(x[:, 0], x[:, 1], c=np.where(y == 1, "#b2182b", "#2166ac"), s=9, edgecolors="w",
               linewidths=0.3)  # fmt: skip
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")


def _weight_images(images: dict[str, np.ndarray]) -> Figure:
    names = list(images)
    n_classes = images[names[0]].shape[0]
    side = min(1.3, MAX_WIDTH / n_classes)
    fig = Figure(figsize=(side * n_classes, (side + 0.25) * len(names)), layout="constrained")
    axes = fig.subplots(len(names), n_classes, squeeze=False)
    for r, name in enumerate(names):
        for c in range(n_classes):
            img = images[name][c]
            lim = float(np.abs(img).max()) or 1.0
            ax = axes[r, c]
            ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name.upper(), fontsize="large")
            if r == 0:
                ax.set_title(f"class {c}")
    return fig


def _loss_caption(cell: dict) -> str:
    steps = cell["steps"]
    window = int(steps[1] - steps[0]) if len(steps) > 1 else 1
    return (
        f"Training loss against step for every batch size (one seed, as in the source); each "
        f"point is the mean minibatch loss over {window} steps."
    )


def _plain_ticks(ax: Axes, x: bool = True, y: bool = True) -> None:
    """Log axes labelled 1, 2, 5, 10, ... rather than 3.6x10^0 (readable on narrow ranges)."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    for axis in [a for a, on in ((ax.xaxis, x), (ax.yaxis, y)) if on]:
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        formatter = ScalarFormatter()
        formatter.set_scientific(False)
        axis.set_major_formatter(formatter)
        axis.set_minor_formatter(NullFormatter())


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


FIGURES: dict[str, Callable[[Path], list[tuple[Path, str]]]] = {
    "batch-size": _batch_size_figures,
    "stretched-moons": _train_figures("stretched_moons", "SGD vs momentum on the stretched moons"),
    "linear-weights": _train_figures("linear_weights", "linear classifier: SGD vs Adam"),
    "optimizer-tour": _train_figures("optimizer_tour", "SGD, momentum, RMSprop and Adam"),
    "assumptions-convex": _train_figures("convex", "convex problems"),
    "assumptions-deep": _train_figures("deep", "deep networks"),
    "edge-of-stability": _train_figures("edge", "full-batch GD on a tanh MLP"),
    "norms-least-squares": _train_figures("norms", "steepest descent under each norm (tuned)"),
    "orthogonalization": _orthogonalization_figures,
    "modular-norm": _train_figures("modular", "an embedding model on modular addition"),
}
"""Per recipe: ``fn(run_dir) -> [(png path, caption)]`` drawn from stored results."""

_TABLES: dict[str, Callable[[Path], list[str]]] = {"batch-size": _batch_size_tables}


def _proposal16_figures(run_dir: Path) -> list[tuple[Path, str]]:
    from optimorph.report.equivalence_figures import divergence_grid
    from optimorph.results.equivalence_store import read_curves

    out = []
    for label in ("mlp", "cnn"):
        if not (run_dir / label / "curves.npz").exists():
            continue
        _, panels = read_curves(run_dir / label)
        grid = [
            {"t": p["t"], "d": p["d"], "floor_a": p["floor_a"], "floor_b": p["floor_b"],
             "labels": ("A", "B"), "pair": f"A: {p['a']}\nB: {p['b']}",
             "precision": p["precision"]}
            for p in panels if "sgd(lr=0.1)" in (p["a"], p["b"])
        ]  # fmt: skip
        if grid:
            path = save_figure(divergence_grid(grid), run_dir / f"{label}_divergence.png")
            out.append((path, f"{label.upper()}: trajectory distance d(t) of the pairs with "
                              "SGD against the rounding noise floor, per precision."))  # fmt: skip
    return out


def _seeds_against(v: dict) -> str:
    """How many seeds' own d/floor lie on the other side of C from the distance's verdict
    ("-" for a run from before the count)."""
    if "seeds_against" not in v:
        return "-"
    return f"{v['seeds_against']} of {len(v['ratio_per_seed'])}"


def _proposal16_tables(run_dir: Path) -> list[str]:
    doc = store.read_json(run_dir, "proposal16")
    out = []
    if doc.get("settings"):  # runs before scales existed have none
        out += ["<h2>Settings beside the proposal's</h2>",
                rows_table(["setting", "this run", "the proposal"], doc["settings"])]  # fmt: skip
    for label, res in doc["problems"].items():
        spread = res.get("class_range", {})  # runs before the seed-split ranges have none
        rows = [[p, count_text(len(cl), spread.get(p), noun="", brief=True),
                 " | ".join(" ~ ".join(c) for c in cl)] for p, cl in res["classes"].items()]
        params = f", {res['parameters']:,} parameters" if "parameters" in res else ""
        out += [
            f"<h2>Equivalence classes: {label} ({res['problem']}{params})</h2>",
            rows_table(["precision", "classes", "members"], rows),
        ]
        triples = [f"{p}: {a} ~ {b} and {b} ~ {c}, but not {a} ~ {c}"
                   for p, found in res.get("non_transitive", {}).items()
                   for a, b, c in found]  # fmt: skip
        if triples:  # a class is a connected component: say where it rests on a chain
            out.append("<p>Not transitive (a class joins these through the middle one): "
                       + "; ".join(cell_text(t) for t in triples) + ".</p>")
        split = [f"{p}: {v['a']} | {v['b']} {v['outcome']} at d/floor "
                 f"{v['distance_ratio']:.3g}, {v['seeds_against']} of {len(v['ratio_per_seed'])} "
                 "seeds on the other side of C"
                 for p, verdicts in res.get("pairs", {}).items() for v in verdicts
                 if v.get("alternative") is not None]  # fmt: skip
        if split:  # what the bracketed range rests on
            out.append("<p>Seed-split verdicts (the median over seeds decided them, some seeds' "
                       "own d/floor lie on the other side of C; in brackets above, the class "
                       "count had they gone the other way): "
                       + "; ".join(cell_text(t) for t in split) + ".</p>")
        closest = []
        for p, verdicts in res.get("pairs", {}).items():
            ranked = sorted((v for v in verdicts if v["distance_ratio"] is not None),
                            key=lambda v: v["distance_ratio"])[:3]  # fmt: skip
            closest += [[p, f"{v['a']} | {v['b']}", f"{v['distance_ratio']:.4g}", v["outcome"],
                         _seeds_against(v)] for v in ranked]  # fmt: skip
        if closest:
            out += [f"<h3>{label}: the closest pairs per precision</h3>",
                    rows_table(["precision", "pair", "d/floor", "verdict",
                                "seeds on the other side of C"], closest)]  # fmt: skip
    timing = doc.get("timing")
    if timing:
        rows = [[k, f"{v['wall_s']:.0f}", f"{v['compile_s']:.0f}"]
                for k, v in timing["phases"].items()]  # fmt: skip
        out += [
            "<h2>Where the time went</h2>",
            f"<p>{timing['wall_s']:.0f} s wall in {timing['workers']} worker processes; the "
            "phases are summed over the jobs (seconds of one process each), compilation "
            "included in each phase's time.</p>",
            rows_table(["phase", "seconds", "of which compiling"], rows),
        ]
    return out


FIGURES["proposal16"] = _proposal16_figures
_TABLES["proposal16"] = _proposal16_tables


def _low_bit_figures(run_dir: Path) -> list[tuple[Path, str]]:
    """The memory frontier (state bytes per parameter against d/floor) and d/floor against h,
    from ``table_verdicts.json``; diverged runs drawn at the top edge as crosses."""
    rows = [r for r in store.read_json(run_dir, "table_verdicts") if r["states"] != "fp32"]
    if not rows:
        return []
    C = read_config(run_dir)["config"].get("C", 10.0)
    head = rows[0]["params"]
    adam = rows[0]["optimizer"]
    sel = [r for r in rows if r["params"] == head and r["optimizer"] == adam]
    finite = [r["d_floor"] for r in sel if r["d_floor"] is not None and r["d_floor"] > 0]
    top = max([*finite, C]) * 3
    bottom = min([*finite, C]) / 3
    problems = list(dict.fromkeys(r["problem"] for r in sel))
    states = list(dict.fromkeys(r["states"] for r in sel))
    colors = _colors(len(problems))
    fig = Figure(figsize=(MAX_WIDTH, _PANEL[1] + 0.6), layout="constrained")
    front, by_h = fig.subplots(1, 2)
    markers = "osD^vP*X"
    for color, prob in zip(colors, problems, strict=True):
        pts = [r for r in sel if r["problem"] == prob]
        for r in pts:
            y = r["d_floor"] if r["d_floor"] is not None else top
            m = "x" if r["d_floor"] is None else markers[states.index(r["states"]) % len(markers)]
            front.scatter(r["bytes_per_param"], max(y, bottom), color=color, marker=m, s=36)
        front.plot([], [], color=color, label=prob)
    for s, m in zip(states, markers, strict=False):
        front.scatter([], [], color="grey", marker=m, label=s)
    front.axhline(C, color="black", lw=0.8, ls="--")
    front.set(xlim=(0, 8.5), yscale="log", ylim=(bottom / 1.5, top * 1.5),
              xlabel="optimizer state, bytes per parameter", ylabel="d / noise floor (max over t)",
              title=f"memory frontier ({adam}, {head} parameters)")  # fmt: skip
    front.legend(fontsize="x-small", ncol=2)
    front.grid(alpha=0.3, which="both")
    ls_rows = [r for r in sel if r["h"] is not None]
    for i, s in enumerate(states):
        pts = sorted((r["h"], r["d_floor"]) for r in ls_rows if r["states"] == s)
        if pts:
            hs = [h for h, _ in pts]
            ys = [max(y if y is not None else top, bottom) for _, y in pts]
            by_h.plot(hs, ys, marker=markers[i % len(markers)], color=f"C{i}", label=s)
    by_h.axhline(C, color="black", lw=0.8, ls="--")
    by_h.set(xscale="log", yscale="log", ylim=(bottom / 1.5, top * 1.5),
             xlabel="h (feature-scale spread of least squares)",
             ylabel="d / noise floor (max over t)", title="where equivalence stops as h grows")
    by_h.legend(fontsize="x-small", ncol=2)
    by_h.grid(alpha=0.3, which="both")
    path = save_figure(fig, run_dir / "low_bit_frontier.png")
    return [(path, f"Each low-bit state format against fp32 states ({adam}, {head} "
             f"parameters, median over seeds of d/floor, maximised over evaluations). Dashed: "
             f"C = {C:g}, the equivalence threshold (below: p-equivalent). Crosses at the top "
             "edge: the low-bit run diverged.")]  # fmt: skip


def _low_bit_tables(run_dir: Path) -> list[str]:
    """``table_verdicts.json`` in columns that fit a page: each state's policy once in its own
    table, the gap and its CI in one cell, the stalled fractions side by side."""
    rows = store.read_json(run_dir, "table_verdicts")
    if not rows:
        return []

    def num(x: float | None) -> str:
        return "n/a" if x is None else format_number(x)

    def stalled(r: dict) -> str:
        if r.get("stalled_ref") is None:
            return "n/a"
        return f"{r['stalled_ref']:.2f} / " + ("n/a" if r["stalled"] is None
                                                 else f"{r['stalled']:.2f}")  # fmt: skip

    def same(r: dict) -> bool:  # the reference, or a run bit for bit the reference's
        return r["states"] == "fp32" or r["d_floor"] == 0

    def gap(r: dict) -> str:
        if r["states"] == "fp32":
            return "(the reference)"
        if r["d_floor"] == 0:
            return "(identical to the reference)"
        if r["final_diff"] is None:
            return "n/a"
        return f"{r['final_diff']:+.3g} ({num(r['diff_ci_low'])}..{num(r['diff_ci_high'])})"

    columns = ["problem", "optimizer", "params", "states", "B / param",
               "stalled (fp32 / this)", "d/floor", "verdict", "final loss",
               "gap to fp32 states (95% CI)", "TOST p"]  # fmt: skip
    table = [[r["problem"], r["optimizer"], r["params"], r["states"], r["bytes_per_param"],
              stalled(r), num(r["d_floor"]), r["outcome"], num(r["final_loss"]), gap(r),
              "n/a" if same(r) else num(r["tost_p"])] for r in rows]  # fmt: skip
    policies = {(r["params"], r["states"]): r["policy"] for r in rows}
    return [
        "<h2>Table: verdicts</h2>",
        "<p>Against fp32 states at the same parameter format. Stalled: the fraction of nonzero "
        "updates that rounding to the parameter format absorbed, over seeds and steps (above "
        "0.5 the run counts as stalled, as in compare: its parameters mostly stopped "
        "moving). Gap: final loss minus the fp32-state run's, paired over seeds (no TOST for a "
        "run identical to it).</p>",
        rows_table(columns, table, nowrap=(5,)),
        "<h2>Table: policies</h2>",
        rows_table(["params", "states", "precision policy"],
                   [[p, st, pol] for (p, st), pol in policies.items()]),
    ]


FIGURES["low-bit-states"] = _low_bit_figures
_TABLES["low-bit-states"] = _low_bit_tables
_SHOWN_BY_TABLES = {"low-bit-states": ("verdicts",)}  # stored tables a _TABLES entry draws


def _mxfp4_figures(run_dir: Path) -> list[tuple[Path, str]]:
    """Per model (a row): d/floor of each MXFP4 variant against bf16 training over the steps,
    and its test loss minus bf16 training's (from ``curves_<model>.npz``)."""
    from optimorph.report.style import legend_above, legend_height, tidy_log_ticks

    paths = sorted(run_dir.glob("curves_*.npz"))
    if not paths:
        return []
    config = read_config(run_dir)["config"]
    C = config.get("C", 10.0)
    order = {m: i for i, m in enumerate(config.get("models", []))}  # as the recipe ran them
    paths.sort(key=lambda p: (order.get(p.stem[7:], len(order)), p.stem))
    curves = {p.stem[7:]: store.read_arrays(run_dir, p.stem) for p in paths}
    variants = list(dict.fromkeys(k[6:] for c in curves.values() for k in c if k[:6] == "ratio/"))
    ref, others = variants[0], variants[1:]
    ratios = [c[f"ratio/{v}"][1:] for c in curves.values() for v in others]
    finite = np.concatenate([r[np.isfinite(r) & (r > 0)] for r in ratios] + [np.array([C])])
    top, bottom = finite.max() * 3, finite.min() / 3
    height = _PANEL[1] * len(curves) + legend_height(others, MAX_WIDTH)
    fig = Figure(figsize=(MAX_WIDTH, height), layout="constrained")
    axes = fig.subplots(len(curves), 2, squeeze=False)
    handles = []
    for row, (model, c) in enumerate(curves.items()):
        ratio_ax, gap_ax = axes[row]
        t = c["t"]
        for i, v in enumerate(others):
            style = _mxfp4_style(v, i, others)
            r = c[f"ratio/{v}"][1:]
            (line,) = ratio_ax.plot(t[1:], np.clip(np.where(np.isfinite(r), r, top), bottom, top),
                                    marker=".", lw=1.2, **style)  # fmt: skip
            gap_ax.plot(t[1:], (c[f"loss/{v}"] - c[f"loss/{ref}"])[1:], marker=".", lw=1.2,
                        **style)  # fmt: skip
            if row == 0:
                handles.append(line)
        ratio_ax.axhline(C, color="black", lw=0.8, ls="--")
        gap_ax.axhline(0, color="black", lw=0.8)
        ratio_ax.set(yscale="log", ylim=(bottom / 1.5, top * 1.5), xlabel="step",
                     ylabel="d / noise floor", title=f"{model.upper()}: distance to {ref} "
                     "training (median over seeds)")  # fmt: skip
        gap_ax.set(xlabel="step", ylabel=f"test loss minus {ref}'s",
                   title=f"{model.upper()}: test loss gap (mean over seeds)")  # fmt: skip
        for ax in (ratio_ax, gap_ax):
            ax.grid(alpha=0.3, which="both")
        tidy_log_ticks(ratio_ax)
    legend_above(fig, handles, others, width=MAX_WIDTH,
                 title=f"MXFP4 gradients (solid), backward products (dashed, bwd-) and every "
                 f"product (gemms) against {ref} training")  # fmt: skip
    path = save_figure(fig, run_dir / "mxfp4_training.png")
    return [(path, f"Left: the distance of each MXFP4 variant's parameters to {ref} "
             "training's, over the rounding noise floor (median over seeds; black dashes: C = "
             f"{C:g}: above it the variant has parted from {ref} training; the top edge: a run "
             f"broke). Right: its test loss minus {ref} training's, same seeds (above 0: "
             "worse). Solid: the gradient stored in MXFP4; dashed (bwd-): the backward pass's "
             "products on MXFP4 operands, in the colour of the same rounding for the stored "
             "gradient.")]  # fmt: skip


def _mxfp4_style(variant: str, i: int, variants: list[str]) -> dict[str, str]:
    """A stored-gradient variant's colour (0 is the reference's elsewhere in the report); a
    backward-products variant (``bwd-...``) dashed, in its stored-gradient twin's colour;
    ``gemms`` (every product) black, dash-dotted."""
    if variant == "gemms":
        return {"color": "black", "linestyle": "-."}
    if not variant.startswith("bwd-"):
        return series_style(i + 1)
    twin = variant[4:].replace("-had", "-hadamard") if variant.endswith("-had") else variant[4:]
    style = series_style((variants.index(twin) if twin in variants else i) + 1)
    return {**style, "linestyle": "--"}


FIGURES["mxfp4-training"] = _mxfp4_figures


def _implementations_figures(run_dir: Path) -> list[tuple[Path, str]]:
    """The verdict of every pair at every precision, and where the pairs found different at
    the first precision part, slot by slot (from ``table_verdicts.json`` and ``cells/``)."""
    from optimorph.report.equivalence_figures import slot_ulps_figure, verdict_heatmap

    rows = store.read_json(run_dir, "table_verdicts")
    if not rows:
        return []
    precisions = list(dict.fromkeys(r["precision"] for r in rows))
    verdicts = {p: [{"a": r["A"], "b": r["B"], "outcome": r["verdict"],
                     "distance_ratio": r["d/floor"] if r["d/floor"] != "n/a" else None}
                    for r in rows if r["precision"] == p] for p in precisions}  # fmt: skip
    heatmap = save_figure(verdict_heatmap(verdicts), run_dir / "implementations_verdicts.png")
    out = [(heatmap, "Every pair at every precision: blue equivalent, orange different, grey "
                     "undecidable (both runs NaN/inf); the number is max over t of d / noise "
                     "floor (median over seeds).")]  # fmt: skip
    first = precisions[0]
    cells = [store.read_json(run_dir, p.with_suffix("").relative_to(run_dir).as_posix())
             for p in sorted((run_dir / "cells").glob(f"{first}-*.json"))]  # fmt: skip
    order = {(r["A"], r["B"]): k for k, r in enumerate(rows)}
    diagnosed = sorted((r for cell in cells for r in cell if r.get("diagnosis")),
                       key=lambda r: order.get((r["a"], r["b"]), 0))  # fmt: skip
    if diagnosed:
        shown = diagnosed[:_MAX_ULPS_PANELS]
        panels = [{"title": f"{r['family']}: A {r['a']}\nB {r['b']}\ncause: "
                            f"{r['diagnosis']['cause'] or 'none matched'}",
                   "ulps_per_slot": r["diagnosis"]["ulps_per_slot"],
                   "step": r["diagnosis"]["step"], "slot": r["diagnosis"]["slot"],
                   "limit": r["diagnosis"].get("limit")} for r in shown]  # fmt: skip
        path = save_figure(slot_ulps_figure(panels), run_dir / "implementations_parting.png")
        more = (f" The first {len(shown)} of {len(diagnosed)} are drawn."
                if len(diagnosed) > len(shown) else "")  # fmt: skip
        out.append((path, f"Where each pair found different at {first} parts: both trained from "
                          "the same initialisation on the same batches, each state slot "
                          "(aligned by role) compared at every step as the largest distance over "
                          "coordinates in ulps of the format; dashed: the distance above which a "
                          f"slot counts as parted; dotted: the step where they part.{more}"))
    return out


_MAX_ULPS_PANELS = 9
FIGURES["implementations"] = _implementations_figures
