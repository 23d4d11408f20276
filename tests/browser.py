"""Open a report in headless Chromium as a person would: console errors, images, a screenshot.

Tests call :func:`check_page`; it skips (with the reason) when no Chromium can be found.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

_PROBE = """
<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  document.title = 'OPTIMORPH:' + JSON.stringify({images: imgs.length, bad: bad});
});
</script>
"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check_page(page: Path, tmp_path: Path) -> dict:
    """Load ``page``: assert no console errors, every image decoded, a non-blank screenshot.

    Returns ``{"images": n, "screenshot": path}``.
    """
    exe = chromium()
    if exe is None:
        pytest.skip("chromium not installed (Debian package 'chromium'; .ci/run installs it)")
    # A copy with a probe script: the report itself has no script, by design.
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    flags = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars"]
    dom = subprocess.run(
        [exe, *flags, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
         "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line]
    assert not console, console
    start = dom.stdout.find("OPTIMORPH:")
    assert start >= 0, dom.stdout[:500]
    status = json.loads(dom.stdout[start + 10 : dom.stdout.index("</title>", start)])
    assert status["bad"] == [], f"images that did not decode: {status['bad']}"
    shot = tmp_path / f"{page.stem}.png"
    subprocess.run(
        [exe, *flags, "--window-size=1280,2000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    from PIL import Image  # matplotlib depends on Pillow

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert len(np.unique(pixels)) > 16, "the screenshot is blank"
    return {"images": status["images"], "screenshot": shot}
