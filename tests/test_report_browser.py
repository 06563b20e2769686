"""The HTML report in a real browser: headless Chromium (Debian's package, which .ci/run
installs) lays the report out, and the formulas must come out at body-text size.

The page gets a script that measures, after load, the body's font size, the height of a line
of body text and every formula image; ``--dump-dom`` prints the page with the figures, and a
screenshot must show ink where the formulas are.  Skipped, saying why, where no Chromium is
installed.
"""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from graphnn.inspect.report import report
from tests.test_display import three_hidden_layers

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no headless Chromium here (.ci/run installs Debian's chromium)"
)

MEASURE = """
<script>
window.addEventListener("load", () => {
  const probe = document.createElement("p");
  probe.textContent = "Mg";
  document.body.appendChild(probe);
  const line = probe.getBoundingClientRect().height;
  const font = parseFloat(getComputedStyle(document.body).fontSize);
  const imgs = [...document.querySelectorAll("img")].map((i) => {
    const r = i.getBoundingClientRect();
    return { alt: i.alt, height: r.height, top: r.top + window.scrollY, left: r.left,
             width: r.width, loaded: i.complete && i.naturalWidth > 0 };
  });
  const out = document.createElement("pre");
  out.id = "measure";
  out.textContent = JSON.stringify({ font, line, imgs });
  document.body.appendChild(out);
});
</script>
"""

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
]


def _chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_formulas_render_at_body_text_height(tmp_path):
    page = report(three_hidden_layers(), "html").replace("</body>", MEASURE + "</body>")
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    run = _chromium(tmp_path, "--dump-dom", path.as_uri())
    found = re.search(r'<pre id="measure">(.*?)</pre>', run.stdout, re.S)
    assert found, run.stderr[-2000:]
    m = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert m["imgs"], "the report has no formula images"
    assert all(i["loaded"] for i in m["imgs"])  # every SVG decoded
    for img in m["imgs"]:
        # at least the height of the body's capital letters, at most a few lines: the bug was
        # math at a 6 px numerator next to 16 px text
        assert 0.9 * m["font"] <= img["height"] <= 4 * m["line"], (img, m["font"], m["line"])
    one_line = [i for i in m["imgs"] if i["alt"] == "1^T δ1"]
    assert one_line and one_line[0]["height"] <= 1.6 * m["line"]  # no fraction: one line

    # and the pixels: the screenshot has ink inside the first formula's box
    shot = tmp_path / "report.png"
    top = min(m["imgs"], key=lambda i: i["top"])
    height = int(top["top"] + top["height"] + 50)
    _chromium(tmp_path, f"--screenshot={shot}", f"--window-size=1200,{height}", path.as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3].mean(axis=2)  # 0 black .. 1 white
    box = pixels[
        int(top["top"]) : int(top["top"] + top["height"]),
        int(top["left"]) : int(top["left"] + top["width"]),
    ]
    assert box.size and np.mean(box < 0.5) > 0.01, "no ink where the first formula is"
