"""Hessian spectrum from Hessian-vector products against a dense float64 eigendecomposition."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import optimorph
from optimorph.probes import hessian


def _mlp_problem():
    prob = optimorph.problem("two-moons(n=64, widths=[6], activation=tanh)")
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), prob.init(jax.random.key(1)))
    batch = tuple(jnp.asarray(a, jnp.float64) if a.dtype.kind == "f" else jnp.asarray(a)
                  for a in prob.train)  # fmt: skip
    flat, unravel = ravel_pytree(params)
    dense = jax.hessian(lambda w: prob.loss(unravel(w), batch))(flat)
    return prob.loss, params, batch, np.linalg.eigvalsh(np.asarray(dense)), np.asarray(dense)


def test_lanczos_extremes_trace_and_density_match_the_dense_hessian():
    loss, params, batch, eig, dense = _mlp_problem()
    n = eig.size
    top, bottom = hessian.top_eigenvalues(loss, params, batch, k=3, steps=n)
    np.testing.assert_allclose(top, eig[::-1][:3], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(bottom, eig[:3], rtol=1e-8, atol=1e-10)
    assert eig[0] < 0 < eig[-1]  # a non-convex model: the most negative eigenvalue matters
    short = hessian.sharpness(loss, params, batch, steps=20)
    np.testing.assert_allclose(short, eig[-1], rtol=1e-6)  # 20 steps already reach the top
    trace, stderr = hessian.hutchinson_trace(loss, params, batch, samples=400)
    assert abs(trace - eig.sum()) < 4 * stderr + 1e-12
    grid, density = hessian.spectral_density(loss, params, batch, probes=4, steps=n)
    mass = float(np.sum(density) * (grid[1] - grid[0]))
    np.testing.assert_allclose(mass, 1.0, atol=0.02)


def test_preconditioned_sharpness_is_the_top_eigenvalue_of_p_half_h_p_half():
    loss, params, batch, eig, dense = _mlp_problem()
    rng = np.random.default_rng(0)
    p_flat = rng.uniform(0.5, 2.0, eig.size)
    _, unravel = ravel_pytree(params)
    scaled = dense / np.sqrt(np.outer(p_flat, p_flat))
    want = np.linalg.eigvalsh(scaled)[-1]
    got = hessian.sharpness(loss, params, batch, steps=eig.size,
                            preconditioner=unravel(jnp.asarray(p_flat)))  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_sharpness_of_a_cnn_on_float32_images():
    """The Hessian runs in float64 under x64: the images must follow (a convolution does not
    promote float32 inputs to float64 weights)."""
    import optimorph
    from optimorph.probes.trajectory import make_probes

    r = optimorph.train("digits(model=cnn)", "sgd(lr=0.01)", steps=4, batch_size=16,
                        probes=make_probes("sharpness", every=2), progress=False)  # fmt: skip
    values = r.probes["sharpness"][0, 0]
    assert np.isfinite(values[::2]).all() and (values[::2] > 0).all()


def test_layer_blocks_and_the_spectrum_summary_match_the_dense_hessian():
    """Each layer's top eigenvalue is that of its diagonal block of the dense Hessian; the
    summary's extremes, trace and density agree with the dense spectrum (mean of the density
    = tr(H) / n)."""
    loss, params, batch, eig, dense = _mlp_problem()
    sizes = {name: sum(x.size for x in jax.tree.leaves(params[name])) for name in sorted(params)}
    layers = hessian.layer_top_eigenvalues(loss, params, batch, steps=max(sizes.values()))
    offset = 0
    for name, size in sizes.items():
        block = dense[offset : offset + size, offset : offset + size]
        np.testing.assert_allclose(layers[name], np.linalg.eigvalsh(block)[-1], rtol=1e-8)
        offset += size
    assert sorted(layers) == sorted(params)
    summary = hessian.spectrum(loss, params, batch, k=2, steps=eig.size, samples=400)
    np.testing.assert_allclose(summary["top"], eig[::-1][:2], rtol=1e-8)
    np.testing.assert_allclose(summary["bottom"], eig[:2], rtol=1e-8, atol=1e-10)
    assert abs(summary["trace"] - eig.sum()) < 4 * summary["trace_se"] + 1e-12
    grid = np.asarray(summary["density"]["grid"])
    density = np.asarray(summary["density"]["values"])
    step = grid[1] - grid[0]
    mean = float(np.sum(grid * density) * step)
    np.testing.assert_allclose(mean, eig.mean(), atol=0.02 * (eig.max() - eig.min()))
    assert summary["n_params"] == eig.size


def test_hessian_of_a_saved_run_matches_the_dense_hessian_and_is_reported(tmp_path, check_page,
                                                                           monkeypatch):
    """`optimorph hessian RUN_DIR`: per optimizer and seed, the spectrum at the stored final
    parameters on the first examples, in float64, against jax.hessian of the same loss; then
    the figure and the report's table; and a run without parameters gets one clear error."""
    import json

    from optimorph import cli
    from optimorph.results.rundir import read_final_params

    out = tmp_path / "run"
    spec = "two-moons(n=80, widths=[5], activation=tanh)"
    argv = ["train", "--problem", spec, "--optimizer", "sgd(lr=0.2)", "--optimizer",
            "adam(lr=0.01)", "--seeds", "2", "--steps", "40", "--batch-size", "16", "--quiet",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    assert cli.main(["hessian", str(out), "--seeds", "2", "--examples", "50", "--k", "2",
                     "--samples", "300", "--quiet"]) == 0  # fmt: skip
    doc = json.loads((out / "hessian.json").read_text())
    assert doc["examples"] == 50 and len(doc["entries"]) == 4
    prob = optimorph.problem(spec)
    batch = tuple(jnp.asarray(a[:50], jnp.float64) if a.dtype.kind == "f" else jnp.asarray(a[:50])
                  for a in prob.train)  # fmt: skip
    template = prob.init(jax.random.key(0))
    for e in doc["entries"]:
        stacked = read_final_params(out, template, e["optimizer_index"])
        params = jax.tree.map(lambda a: jnp.asarray(a[e["seed"]], jnp.float64), stacked)
        flat, unravel = ravel_pytree(params)
        dense = np.asarray(jax.hessian(lambda w: prob.loss(unravel(w), batch))(flat))
        eig = np.linalg.eigvalsh(dense)
        assert e["n_params"] == eig.size == 27  # 2x5 + 5 + 5x2 + 2
        np.testing.assert_allclose(e["top"], eig[::-1][:2], rtol=1e-8)
        np.testing.assert_allclose(e["bottom"], eig[:2], rtol=1e-7, atol=1e-10)
        assert abs(e["trace"] - eig.sum()) < 4 * e["trace_se"] + 1e-12
        assert sorted(e["layers"]) == ["dense0", "dense1"]
    page = (out / "report.html").read_text()
    assert "Hessian at the final parameters" in page and (out / "hessian.png").exists()
    # A rerun with the same settings keeps every spectrum (nothing is recomputed).
    import optimorph.results.hessian as stored

    def no_spectrum(*args, **kwargs):
        raise AssertionError("recomputed a spectrum that was already stored")

    monkeypatch.setattr(stored, "spectrum", no_spectrum)
    again = stored.hessian_of_run(out, examples=50, k=2, samples=300, seeds=2, progress=False)
    assert again == doc
    assert check_page(out / "report.html")["images"] >= 4
    bare = tmp_path / "bare"
    bare.mkdir()
    assert cli.main(["hessian", str(bare)]) == 2
