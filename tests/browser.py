"""Open a report in headless Chromium as a person would: console errors, images, a layout that
fits a 1280 px window (no sideways scrolling, no word broken mid-word), a screenshot.

Tests call :func:`check_page`; it skips (with the reason) when no Chromium can be found.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

# What a reader at WIDTH px sees: a horizontal scrollbar, a word of a table cell broken over two
# lines or running out of its cell ("equivale/nt", "signsgd(lr=0.0/1)"), a figure shrunk below
# three quarters of its size (its text too small to read). Words end at spaces and after , / |
# (where the pages offer a line break).
_LAYOUT = r"""
function layout() {
  const root = document.documentElement;
  const broken = [];
  for (const cell of document.querySelectorAll('td, th')) {
    const box = cell.getBoundingClientRect();
    const style = getComputedStyle(cell);
    const right = box.right - parseFloat(style.paddingRight) - parseFloat(style.borderRightWidth);
    const walk = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walk.nextNode(); node; node = walk.nextNode()) {
      const words = /[^\s,\/|]+[,\/|]*/g;
      for (let m = words.exec(node.data); m; m = words.exec(node.data)) {
        const range = document.createRange();
        range.setStart(node, m.index);
        range.setEnd(node, m.index + m[0].length);
        const rects = Array.from(range.getClientRects()).filter(r => r.width > 0);
        const lines = new Set(rects.map(r => Math.round(r.top)));
        const over = rects.some(r => r.right > right + 1);
        if (lines.size > 1 || over) {
          broken.push({word: m[0], cell: cell.textContent.slice(0, 80),
                       why: lines.size > 1 ? 'broken over lines' : 'wider than its cell'});
        }
      }
    }
  }
  const shrunk = Array.from(document.images)
    .filter(i => i.naturalWidth > 0 && i.width < 0.75 * i.naturalWidth)
    .map(i => ({alt: i.alt, natural: i.naturalWidth, shown: i.width}));
  return {scrollWidth: root.scrollWidth, clientWidth: root.clientWidth,
          broken: broken.slice(0, 20), n_broken: broken.length, shrunk: shrunk};
}
"""
_PROBE = """
<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  document.title = 'OPTIMORPH:' + JSON.stringify({images: imgs.length, bad: bad,
                                                 layout: layout()});
});
""" + _LAYOUT + """
</script>
"""


_FLAGS = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars"]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


WIDTH = 1280
"""The window width pages are checked at (px): a laptop screen."""


def probe_page(page: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """Load ``page`` at ``WIDTH`` px: ``({"images", "bad", "layout"}, console errors)``.

    ``layout`` has the page's ``scrollWidth`` and ``clientWidth``, the words of table cells
    ``broken`` over two lines or wider than their cell, and the figures ``shrunk`` to less than
    three quarters of their width. Skips when there is no Chromium.
    """
    exe = chromium()
    if exe is None:
        pytest.skip("chromium not installed (Debian package 'chromium'; .ci/run installs it)")
    # A copy with a probe script: the report itself has no script, by design.
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom = subprocess.run(
        [exe, *_FLAGS, f"--window-size={WIDTH},2000", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line]
    start = dom.stdout.find("OPTIMORPH:")
    assert start >= 0, dom.stdout[:500]
    # The title is serialized as HTML text: '&' and '<' of cell texts come back as entities.
    text = html.unescape(dom.stdout[start + 10 : dom.stdout.index("</title>", start)])
    return json.loads(text), console


def check_page(page: Path, tmp_path: Path) -> dict:
    """Load ``page``: assert no console errors, every image decoded, no horizontal scrollbar at
    ``WIDTH`` px, no table cell narrower than one of its words, no figure shrunk to less than
    three quarters of its width, and a non-blank screenshot.

    Returns ``{"images": n, "screenshot": path, "layout": ...}`` (see :func:`probe_page`).
    """
    status, console = probe_page(page, tmp_path)
    exe = chromium()
    assert not console, console
    assert status["bad"] == [], f"images that did not decode: {status['bad']}"
    assert_readable(status["layout"], page)
    shot = tmp_path / f"{page.stem}.png"
    subprocess.run(
        [exe, *_FLAGS, f"--window-size={WIDTH},2000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    from PIL import Image  # matplotlib depends on Pillow

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert len(np.unique(pixels)) > 16, "the screenshot is blank"
    return {"images": status["images"], "screenshot": shot, "layout": status["layout"]}


def assert_readable(layout: dict, page: Path) -> None:
    """The layout checks of :func:`check_page`, each failure naming what to look at."""
    wide, seen = layout["scrollWidth"], layout["clientWidth"]
    assert wide <= seen, f"{page}: scrolls sideways at {WIDTH} px ({wide} px wide > {seen} px)"
    assert not layout["broken"], (
        f"{page}: {layout['n_broken']} words of table cells broken or cut off, e.g. "
        f"{layout['broken'][:5]}"
    )
    shrunk = layout["shrunk"]
    assert not shrunk, f"{page}: figures shown at under 3/4 of their size: {shrunk}"
