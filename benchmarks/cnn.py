"""A CNN's gradient and Hessian-vector product, standalone and inside a compiled loop.

The Fashion-MNIST CNN of ``optimorph.problems.models.cnn`` (28x28x1 -> 16 -> 32 channels, 3x3,
stride 2) on ``--batch`` random images, float32. Each row times one evaluation (best of
``--repeats``) of:

* ``lax.conv``: the layers as ``lax.conv_general_dilated`` (the peer, measured in the same run);
* ``conv2d_same``: optimorph's convolution (strided slices and one matrix product);

once as a plain jitted call and once per iteration of a ``fori_loop`` (the trainer runs every
step and every probe inside one). On XLA's CPU backend the convolution op falls off a cliff in
the loop; ``conv2d_same`` must not.

    .venv/bin/python benchmarks/cnn.py [--batch 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time


def best_time(fn, arg, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(arg))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop", type=int, default=3, help="iterations of the fori_loop")
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import optax
    from jax.flatten_util import ravel_pytree

    from optimorph.problems import models

    def lax_conv(x, w, stride):
        return jax.lax.conv_general_dilated(
            x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )  # fmt: skip

    init, apply = models.cnn((28, 28, 1), 10)
    params = init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (args.batch, 28, 28, 1))
    y = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(jax.random.key(3), flat.shape)

    def loss_with(conv):
        def forward(p, images):
            h = images
            for name in ("conv0", "conv1"):
                h = jax.nn.relu(conv(h, p[name]["w"], 2) + p[name]["b"])
            h = h.reshape(h.shape[0], -1)
            return jnp.dot(h, p["dense0"]["w"], precision="highest") + p["dense0"]["b"]

        def loss(w):
            logits = forward(unravel(w), x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        return loss

    print(f"{'conv':>12} {'what':>5} {'standalone ms':>14} {'in loop ms':>11} {'loop / alone':>13}")
    for name, conv in (("lax.conv", lax_conv), ("conv2d_same", models.conv2d_same)):
        grad = jax.grad(loss_with(conv))

        def hvp(u, grad=grad):
            return jax.jvp(grad, (flat,), (u,))[1]

        for what, fn in (("grad", grad), ("hvp", hvp)):
            alone = best_time(jax.jit(fn), flat if what == "grad" else v, args.repeats)

            def looped(u, fn=fn):
                return jax.lax.fori_loop(0, args.loop, lambda i, w: w - 1e-3 * fn(w), u)

            inside = best_time(jax.jit(looped), flat if what == "grad" else v, args.repeats)
            inside /= args.loop
            print(f"{name:>12} {what:>5} {1e3 * alone:>14.1f} {1e3 * inside:>11.1f} "
                  f"{inside / alone:>13.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
