"""The HTML report: one self-contained file with embedded figures and escaped text."""

import base64
import re

import pytest

from optimorph.report.figures import save_figures

from optimorph.report import write_report
from optimorph.results import write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(result, tmp_path_factory):
    run_dir = write_run(result, tmp_path_factory.mktemp("run"))
    save_figures(result, run_dir)
    sections = [("Notes <draft>", "<p>extra <b>fragment</b></p>")]
    path = write_report(run_dir, title="Two <moons>", sections=sections)
    return run_dir, path, path.read_text(encoding="utf-8")


def test_report_is_one_file_with_embedded_pngs(report):
    run_dir, path, page = report
    assert path == run_dir / "report.html"
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(list(run_dir.glob("*.png"))) == 3
    assert all(base64.b64decode(img).startswith(PNG_MAGIC) for img in images)


def test_report_has_no_external_resources(report):
    page = report[2]
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page


def test_report_escapes_text(report):
    page = report[2]
    assert "sgd&lt;momentum&gt;(lr=$0.1)" in page
    assert "sgd<momentum>" not in page
    assert "<title>Two &lt;moons&gt;</title>" in page
    assert "<h2>Notes &lt;draft&gt;</h2>" in page
    assert "<p>extra <b>fragment</b></p>" in page  # fragments are HTML, inserted as given


def test_report_shows_config_and_summary(report):
    page = report[2]
    for text in ("two-moons(n=500)", "fp32", "batch_size", "jaxlib", "devices", "1 / 3"):
        assert text in page, text
    assert "seed 1 at step 23" in page


def test_a_run_states_its_state_memory_per_parameter(tmp_path):
    import optimorph
    from optimorph.results.rundir import read_config

    prob = optimorph.problem("least-squares(n=64, d=300)")
    result = optimorph.train(
        prob, ["adam(lr=0.01)", "sgd(lr=0.01)"], steps=4, batch_size=16,
        precision="fp32,state=mxfp8e4m3(axis=0)", progress=False,
    )  # fmt: skip
    # w is 300 x 1: m and v in MXFP8, 10 blocks of 32 down axis 0 with an 8-bit scale each; sgd
    # has no state.
    adam = 2 * (300 * 8 + 10 * 8) / 8 / 300
    assert result.config["state_bytes_per_param"] == [adam, 0.0]
    run_dir = write_run(result, tmp_path / "run", problem=prob)
    assert read_config(run_dir)["config"]["state_bytes_per_param"] == [adam, 0.0]
    page = write_report(run_dir).read_text(encoding="utf-8")
    assert "<th>state bytes / param</th>" in page
    assert f'<td class="num">{adam:.4g}</td>' in page and '<td class="num">0</td>' in page
