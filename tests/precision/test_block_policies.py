"""Block formats inside precision policies: the spec syntax, errors, memory, and a training run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimorph
from optimorph.engine.step import apply_update, gradient, run_keys, start
from optimorph.precision import parse_format, precision, state_bytes_per_param
from optimorph.precision.block import CODE_MAPS, CodeMapFormat, MXFormat


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("fp32,m=mxfp8e4m3,v=bnb8(block=256)", "fp32,m=mxfp8e4m3,v=bnb8"),
        ("fp32,grads=mxfp4", "fp32,grads=mxfp4"),
        ("fp32,m=fp8e4m3,v=fp16", "fp32,m=fp8e4m3,v=fp16"),
        ("bf16,state=bnb8(block=2048, signed=true)", "bf16,state=bnb8(block=2048,signed=true)"),
        ("fp32,grads=mxfp4e2m1(scale=ceil,axis=0)", "fp32,grads=mxfp4(axis=0,scale=ceil)"),
        ("mxint8(block=16),state=fp32", "mxint8(block=16),state=fp32"),
        ("fp32,state=ao4,rounding=stochastic", "fp32,state=ao4,rounding=stochastic"),
        ("fp32,v=bnb8(min_size=4096)", "fp32,v=bnb8(min_size=4096)"),
        ("fp32,v=bnb8(min_size=0)", "fp32,v=bnb8"),
    ],
)
def test_block_specs_round_trip(spec, canonical):
    policy = precision(spec)
    assert policy.name == canonical
    assert precision(canonical) == policy and hash(precision(canonical)) == hash(policy)


def test_block_formats_take_their_roles():
    p = precision("bf16,m=mxfp8e4m3,v=bnb8")
    assert p.compute_dtype == np.float32  # a block format is stored in float32
    assert isinstance(p.slots["m"], MXFormat) and isinstance(p.slots["v"], CodeMapFormat)
    assert p.state_format((jax.tree_util.GetAttrKey("v"),)).signed is False  # auto: unsigned
    assert p.state_format((jax.tree_util.GetAttrKey("m"),)) == p.slots["m"]
    assert precision("fp32,state=bnb8").state_format((jax.tree_util.GetAttrKey("mu"),)).signed


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fp32,m=mxfp9", "valid formats: .*mxfp8e4m3"),
        ("fp32,v=bnb8(block=0)", "block must be >= 1"),
        ("fp32,v=bnb8(block=x)", "block, axis and min_size must be integers"),
        ("fp32,v=bnb8(min_size=-1)", "min_size must be >= 0"),
        ("fp32,v=bnb8(axis=0)", "unknown option 'axis'; bnb8 takes block, signed, min_size"),
        ("fp32,m=mxfp4(scale=up)", "scale must be one of floor, ceil, even"),
        ("fp32,m=fp8e4m3(block=32)", "fp8e4m3 takes none"),
        ("fp32,v=bnb8(signed=maybe)", "signed must be auto, true or false"),
        ("fp32,v=bnb8(block=256", "unbalanced '\\('"),
        ("fp32,v=bnb8)", "unbalanced '\\)'"),
        ("fp32,count=mxfp4", "count holds scalars"),
        ("fp32,hparams=bnb8", "hparams holds scalars"),
        ("mxfp4,kahan=true", "kahan=true needs a scalar params format"),
    ],
)
def test_bad_block_specs_say_what_is_valid(spec, message):
    with pytest.raises(ValueError, match=message):
        precision(spec)


def test_state_bytes_per_param():
    params = {"w": jnp.zeros((1024, 64)), "b": jnp.zeros(64)}
    n = 1024 * 64 + 64
    adam = optax.adam(1e-3)
    assert state_bytes_per_param("fp32", adam, params) == 8.0
    assert state_bytes_per_param("bf16", adam, params) == 4.0
    assert state_bytes_per_param("fp32,mu=bnb8,nu=bnb8", adam, params) == 2 * (
        (8 * n + 32 * (1024 * 64 // 256 + 1)) / 8 / n
    )  # the 64 biases fill one padded block
    assert state_bytes_per_param("fp32,state=ao4", adam, params) == pytest.approx(1.0625, 1e-3)
    assert state_bytes_per_param("fp32,state=mxfp8e4m3", adam, params) == 2 * (8 + 8 / 32) / 8
    fp8 = state_bytes_per_param("fp32,mu=fp8e4m3,nu=fp16", adam, params)
    assert fp8 == (8 * n + 2 * 32 + 16 * n) / 8 / n  # one float32 scale per tensor (w, b)
    assert state_bytes_per_param("fp32", optax.sgd(0.1), params) == 0.0
    assert state_bytes_per_param("e5m2", adam, params) == 2.0  # an emulated format's own width
    kept = state_bytes_per_param("fp32,state=bnb8(min_size=4096)", adam, params)
    assert kept == 2 * (8 * 1024 * 64 + 32 * (1024 * 64 // 256) + 32 * 64) / 8 / n  # b: fp32


def test_a_min_size_keeps_small_tensors_in_float32_and_quantizes_the_rest():
    # bitsandbytes' min_8bit_size: a tensor under min_size elements is stored in float32 (a
    # float64 one rounded to it), a larger one exactly as without the option.
    fmt = CodeMapFormat("bnb8", min_size=4096)
    rng = np.random.default_rng(0)
    small = jnp.asarray(rng.standard_normal(4095), jnp.float32)
    np.testing.assert_array_equal(fmt.round(small), small)
    wide = jnp.asarray(rng.standard_normal(100) * (1 + 2.0**-40), jnp.float64)
    np.testing.assert_array_equal(fmt.round(wide), np.asarray(wide).astype(np.float32))
    big = jnp.asarray(rng.standard_normal((64, 64)), jnp.float32)
    plain = CodeMapFormat("bnb8").round(big)
    np.testing.assert_array_equal(fmt.round(big), plain)
    assert not np.array_equal(plain, big)  # the large tensor is quantized
    assert not np.array_equal(CodeMapFormat("bnb8").round(small), small)


def test_block_params_and_grads_round_every_step():
    p = precision("fp32,params=mxfp8e4m3,grads=mxfp4,rounding=stochastic")
    x = jnp.linspace(-1, 1, 100, dtype=jnp.float32)
    g = p.round_grads({"w": x}, jax.random.key(0))["w"]
    for block in np.split(np.abs(np.asarray(g))[:96], 3):
        assert len(np.unique(block)) <= 8  # E2M1 has 8 magnitudes under one block scale
    new, _ = p.apply_updates({"w": x}, {"w": x * 1e-3}, key=jax.random.key(1))
    assert new["w"].dtype == jnp.float32
    np.testing.assert_array_equal(parse_format("mxfp8e4m3").round(new["w"]), new["w"])


def blockwise_reference(x: np.ndarray, codes: np.ndarray, block: int) -> np.ndarray:
    """Nearest code to x / absmax per block of the flattened tensor, times absmax (float32)."""
    flat = x.astype(np.float32).reshape(-1)
    out = np.empty_like(flat)
    for i in range(0, len(flat), block):
        b = flat[i : i + block]
        amax = np.max(np.abs(b))
        normed = b / amax if amax > 0 else np.zeros_like(b)
        idx = np.argmin(np.abs(normed[:, None].astype(np.float64) - codes), axis=1)
        out[i : i + block] = codes[idx] * amax
    return out.reshape(x.shape)


def test_adam_with_8bit_states_trains_and_holds_representable_values():
    spec = "fp32,m=bnb8(block=256),v=bnb8(block=256)"
    prob = optimorph.problem("least-squares(n=400, d=300)")  # 300 params: the 2nd block padded
    result = optimorph.train(
        prob, "adam(lr=0.01)", seeds=[0], steps=300, batch_size=50, precision=spec, progress=False
    )
    loss = result.train_loss[0, 0]
    assert np.isfinite(loss).all() and loss[-1] < 0.2 * loss[0]

    policy, tx = precision(spec), optimorph.optimizer("adam(lr=0.01)")
    keys = run_keys(jax.random.key(0))
    params, state, _ = start(prob.init, tx, policy, keys)
    x, y = prob.train
    step = jax.jit(
        lambda params, state, batch: apply_update(
            tx, policy, params, state, None, gradient(prob.loss, policy, params, batch)[1]
        )
    )
    for t in range(20):
        batch = (x[t * 20 : (t + 1) * 20], y[t * 20 : (t + 1) * 20])
        params, state, _, _ = step(params, state, batch)
    _, grads, params_c = gradient(prob.loss, policy, params, batch)
    _, raw = tx.update(grads, policy.to_compute(state), params_c)  # before rounding
    stored = apply_update(tx, policy, params, state, None, grads).state
    for slot, signed in (("m", True), ("v", False)):
        held = np.asarray(jax.tree.leaves(getattr(stored, slot))[0])
        want = blockwise_reference(
            np.asarray(jax.tree.leaves(getattr(raw, slot))[0]), CODE_MAPS["bnb8", signed], 256
        )
        np.testing.assert_array_equal(held, want)
        assert len(np.unique(held.reshape(-1)[:256])) <= 256 and held.any()
    assert (np.asarray(jax.tree.leaves(stored.v)[0]) >= 0).all()


def test_the_updates_role_rounds_the_update_before_it_is_added():
    policy = precision("fp32,updates=bf16")
    assert policy.name == "fp32,updates=bf16" and precision(policy.name) == policy
    assert precision("fp32").updates is None  # by default the update is not rounded
    tx = optax.sgd(1.0)
    params = {"w": jnp.ones(3, jnp.float32)}
    g = jnp.asarray([1e-3 * (1 + 2**-12), 0.3, -7.77], jnp.float32)
    both = jax.jit(lambda g: [apply_update(tx, p, params, tx.init(params), None, {"w": g})
                              for p in (policy, precision("fp32"))])  # fmt: skip
    out, plain = both(g)
    want_u = np.asarray((-g).astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(out.updates["w"], want_u)
    np.testing.assert_array_equal(out.params["w"], np.float32(1) + want_u)
    np.testing.assert_array_equal(plain.updates["w"], -g)
