"""``autoscope report``: a self-contained page from a recorded session, also from a damaged one."""

from __future__ import annotations

import base64
import re

from agent.cli import main


def test_report_is_self_contained_with_every_section(tmp_path):
    config = tmp_path / "small.toml"
    config.write_text("[field]\nfov_nm = 2.56\npixels = 128\n")
    record = tmp_path / "session"
    assert (
        main(
            ["run", "--policy", "defects", "--steps", "3", "--config", str(config), "--record", str(record), "--quiet"]
        )
        == 0
    )
    assert main(["report", str(record), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    for section in ("Specimen map", "Discovery curve", "Latency", "Frames", "Decisions", "Configuration"):
        assert f"<h2>{section}" in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3 + 3  # map, curve, histograms and one overlay per frame
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing outside the page
    assert page.count("<tr><td>") == 3  # one decision row per step


def test_report_of_a_cut_session_says_so(tmp_path):
    config = tmp_path / "small.toml"
    config.write_text("[field]\nfov_nm = 2.56\npixels = 128\n")
    record = tmp_path / "session"
    assert (
        main(["run", "--policy", "raster", "--steps", "3", "--config", str(config), "--record", str(record), "--quiet"])
        == 0
    )
    log = record / "session.log"
    data = log.read_bytes()
    log.write_bytes(data[: int(len(data) * 0.6)])  # cut inside a frame: the stop and summary records are lost
    assert main(["report", str(record)]) == 0
    page = (record / "report.html").read_text()
    assert "damaged" in page and "no stop record" in page
    assert "not a simulator" not in page and "no summary record: the session was cut" in page
