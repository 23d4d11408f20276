"""The README's Python example runs as shown and gives the results it states."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_example_runs_as_written():
    text = README.read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    result, c, r = namespace["result"], namespace["c"], namespace["r"]
    assert result.train_loss.shape == (3, 5, 5000)
    assert np.isfinite(result.train_loss).all()
    assert np.nanmean(result.evals["test/accuracy"][:, :, -1]) > 0.8
    assert c.pairs["fp32"][0].equivalent and c.pairs["fp32"][0].a == "my-adam"
    assert (r.probes["inst_gap"] <= 0).all()
