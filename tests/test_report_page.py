"""The report's HTML page: self-contained, verdict first, every category explained, and
rendered by headless Chromium (every image loads, the verdict is visible).

The Chromium test needs Debian's ``chromium`` (``.ci/run`` installs it); without it the test
is skipped locally but fails under CI (``S2TRACE_CI=1``).  Its screenshots are kept under
``S2TRACE_ARTIFACTS`` (default: ``test-artifacts/`` in the repository), and the path is
printed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from s2trace.jobs.report import build_report

REPO = Path(__file__).resolve().parents[1]
BUGGY = REPO / "sample-traces" / "synthetic" / "buggy"
LIFECYCLE = REPO / "sample-traces" / "qemu-pkvm-7.3-lifecycle"
ARTIFACTS = Path(os.environ.get("S2TRACE_ARTIFACTS", REPO / "test-artifacts"))
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = {}
    for folder in (BUGGY, LIFECYCLE):
        d = tmp_path_factory.mktemp(folder.name)
        build_report(folder, out_dir=d)
        out[folder.name] = d / "report.html"
    return out


def test_page_is_self_contained_and_ordered(pages):
    text = pages["buggy"].read_text()
    assert text.index('id=verdict class="bad"') < text.index("<h2>Plots")
    assert text.index("<h2>Plots") < text.index("<h2>Ownership in the dump")
    assert text.index("<h2>Violations") < text.index("<h2>Trace against dump")
    # images are embedded, and every one has its PNG beside the page
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for png in re.findall(r'<a href="([^"]+\.png)">', text):
        assert (pages["buggy"].parent / png).exists()
    # tables link to the files beside the page; addresses in hex
    for table in ("violations.csv", "intervals.parquet", "map.csv"):
        assert f'href="{table}"' in text and (pages["buggy"].parent / table).exists()
    assert "<td class=n>0x44000000</td>" in text
    assert "shared_page_donated" in text and "3 ownership violation(s)" in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from elsewhere


def test_page_explains_every_category_it_shows(pages):
    text = pages["qemu-pkvm-7.3-lifecycle"].read_text()
    assert 'id=verdict class="ok"' in text
    assert "host/unknown" in text and "MMIO" in text
    assert "<b>untraced</b>" in text
    assert "<b>incomplete</b>" in text  # in the words list
    report_txt = (pages["qemu-pkvm-7.3-lifecycle"].parent / "report.txt").read_text()
    assert "host/unknown: host-mapped" in report_txt and "MMIO" in report_txt


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("S2TRACE_CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed")
    return exe


def _run(exe: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="s2trace-chromium-") as profile:
        return subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.mark.parametrize("name", ["buggy", "qemu-pkvm-7.3-lifecycle"])
def test_chromium_renders_the_page(pages, name):
    exe = _chromium()
    url = pages[name].as_uri()
    dom = _run(exe, "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    total = int(re.search(r'data-images="(\d+)"', body.group(1)).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body.group(1)).group(1))
    assert total >= 3 and loaded == total, f"{loaded} of {total} images loaded"
    assert re.search(r'id="verdict"', dom.stdout)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"report-{name}.png"
    run = _run(exe, "--window-size=1280,1800", f"--screenshot={shot}", url)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    print(f"screenshot: {shot}")
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]
    # the verdict banner is the first coloured block at the top: green for OK, red otherwise
    top = img[40:200]
    want = (0.89, 0.96, 0.88) if name != "buggy" else (0.99, 0.89, 0.88)
    hit = np.all(np.abs(top - np.array(want)) < 0.03, axis=-1)
    assert hit.mean() > 0.2, "verdict banner not visible at the top of the page"
