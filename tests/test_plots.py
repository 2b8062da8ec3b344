"""Plots: hand-checked binning and sweeps, the raster's area rule, and every plot rendered to
PNG (not blank; expected title, axis labels and legend entries) from the bundled samples, a
small hand-made timeline and a million-page one."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2trace import plots
from s2trace.cli.main import main
from s2trace.jobs import analyze
from s2trace.trace import make_transitions, replay, transitions_frame

REPO = Path(__file__).resolve().parents[1]
SAMPLES = {v: REPO / "sample-traces" / f"qemu-pkvm-{v}" for v in ("6.12", "7.3")}
P = 4096


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    """Hand-made 7.3 timeline: donations, a guest share, a reclaim, one refused donation
    (violation), one refused access fault (fault + violation) and a lost-events marker."""
    tr = make_transitions(
        [
            dict(op="donate", addr=0x1000, size=3 * P, ts=0.0),  # 0x1000-0x3fff -> hyp
            dict(op="donate", addr=0x2000, ts=1.0),  # refused: host_not_owned
            dict(op="access_fault", addr=0x2000, ts=2.0),  # refused: host cannot reach it
            dict(op="share", addr=0x9000, completer="guest", ts=3.0, vm=3),
            dict(op="reclaim", addr=0x1000, initiator="hyp", completer="host", ts=4.0),
            dict(op="lost", ts=5.0),
        ]
    )
    return replay(tr, kernel="7.3")


@pytest.fixture(scope="module")
def million():
    """A million pages donated to hyp in 4096 chunks of 256 pages at t = chunk number / 1000,
    chunks with odd numbers reclaimed 1 s later."""
    n = 4096
    chunk = np.arange(n)
    base = 0x4000_0000 + chunk.astype(np.uint64) * np.uint64(256 * P)
    odd = chunk % 2 == 1
    tr = transitions_frame(
        op=["donate"] * n + ["reclaim"] * int(odd.sum()),
        addr=np.concatenate([base, base[odd]]),
        size=256 * P,
        ts=np.concatenate([chunk / 1000.0, chunk[odd] / 1000.0 + 1.0]),
        initiator=["host"] * n + ["hyp"] * int(odd.sum()),
        completer=["hyp"] * n + ["host"] * int(odd.sum()),
    )
    return replay(tr, kernel="6.12")


@pytest.fixture(scope="module", params=sorted(SAMPLES))
def sample(request):
    return analyze(SAMPLES[request.param], use_cache=False, grounds=False)


def pixels(fig) -> np.ndarray:
    """Render to PNG and read it back (RGB, 0..1)."""
    import matplotlib.image as mpimg

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    buf.seek(0)
    return mpimg.imread(buf)[..., :3]


def assert_not_blank(fig) -> None:
    """Something beyond frames and text is drawn: coloured (saturated) pixels."""
    img = pixels(fig)
    saturation = img.max(axis=-1) - img.min(axis=-1)
    assert np.mean(np.any(img < 0.97, axis=-1)) > 0.05
    assert np.mean(saturation > 0.15) > 0.01, "no coloured data pixels"


def legend_texts(ax) -> list[str]:
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


# ---------------------------------------------------------------------------------------------
# no matplotlib on import
# ---------------------------------------------------------------------------------------------
def test_importing_s2trace_does_not_import_matplotlib():
    code = (
        "import sys, s2trace, s2trace.plots, s2trace.trace, s2trace.decode, s2trace.export, "
        "s2trace.cli.main; print(any(m.startswith('matplotlib') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# helpers, hand-checked
# ---------------------------------------------------------------------------------------------
def test_default_bin_is_1_2_5():
    assert plots.default_bin(0.0, 0.011) == pytest.approx(5e-4)  # 11 ms / 40 -> 500 µs
    assert plots.default_bin(10.0, 50.0) == pytest.approx(1.0)
    assert plots.default_bin(0.0, 7.0) == pytest.approx(0.2)


def test_state_labels(small):
    codes, labels, colors = plots.state_labels(small.intervals)
    assert labels == ["host owned", "host, shared with guest", "hyp owned"]
    assert len(set(colors)) == 3
    assert [labels[c] for c in codes[:2]] == ["host owned", "hyp owned"]


def test_owner_series_hand_checked(small):
    levels, labels, _ = plots.owner_series(small.intervals, np.array([-1.0, 0.0, 3.5, 4.0, 9.0]))
    got = {lab: levels[:, i].tolist() for i, lab in enumerate(labels)}
    k = P
    # 0x1000-0x3fff (3 pages) + 0x9000 (1 page) are the touched pages
    assert got["host owned"] == [4 * k, 1 * k, 0, 1 * k, 1 * k]
    assert got["hyp owned"] == [0, 3 * k, 3 * k, 2 * k, 2 * k]
    assert got["host, shared with guest"] == [0, 0, 1 * k, 1 * k, 1 * k]
    assert np.all(levels.sum(axis=1) == 4 * k)  # touched bytes are conserved


def test_address_axis_cuts_large_gaps():
    start = np.array([0x1000, 0x3000, 0x1_0000_0000], dtype=np.float64)
    end = start + P
    axis = plots.AddressAxis.from_ranges(start, end, 100)
    # 0x2000..0x3000 is a one-page gap (kept); 4 GiB gap is cut
    assert axis.start.tolist() == [0x1000, 0x1_0000_0000]
    assert axis.end.tolist() == [0x4000, 0x1_0000_1000]
    assert axis.rows == 100 and np.all(np.diff(axis.row) >= 1)
    y = axis(np.array([0x1000, 0x4000, 0x1_0000_0000, 0x8000]))
    assert y[0] == 0 and y[2] == axis.row[1] and np.isnan(y[3])
    assert y[1] == pytest.approx(axis.row[1])


def test_address_axis_keeps_at_most_max_cuts():
    start = np.arange(40, dtype=np.float64) * (1 << 30)
    axis = plots.AddressAxis.from_ranges(start, start + P, 200, max_cuts=5)
    assert len(axis.start) == 6
    assert np.all(np.diff(axis.row) >= 200 * 0.25 / 6 - 1)  # small regions keep rows
    assert axis.row[-1] == 200


def test_rasterize_exact_cells():
    # one rectangle covering rows 0.5..2.0 and columns 1.0..1.5 of a 3x3 grid
    area = plots.rasterize(
        np.array([0.5]),
        np.array([2.0]),
        np.array([1.0]),
        np.array([1.5]),
        np.array([0]),
        1,
        (3, 3),
    )[0]
    expected = np.zeros((3, 3))
    expected[0, 1] = 0.25
    expected[1, 1] = 0.5
    np.testing.assert_allclose(area, expected, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 8),
            st.floats(0, 8),
            st.floats(0, 12),
            st.floats(0, 12),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_rasterize_conserves_area(rects):
    a = np.array(rects)
    y0, y1 = np.minimum(a[:, 0], a[:, 1]), np.maximum(a[:, 0], a[:, 1])
    x0, x1 = np.minimum(a[:, 2], a[:, 3]), np.maximum(a[:, 2], a[:, 3])
    code = a[:, 4].astype(np.int64)
    area = plots.rasterize(y0, y1, x0, x1, code, 3, (8, 12), chunk=7)
    for k in range(3):
        want = float(np.sum(((y1 - y0) * (x1 - x0))[code == k]))
        assert area[k].sum() == pytest.approx(want, abs=1e-9)
    assert area.min() >= -1e-9


# ---------------------------------------------------------------------------------------------
# churn
# ---------------------------------------------------------------------------------------------
def test_churn_bars_hand_checked(small):
    fig = plots.plot_churn(small.transitions, small.violations, bin_width=1.0, unit="pages")
    ax_op, ax_peer = fig.axes
    # bar centres are bin centres on an axis in seconds from t = 0: bin k is [k, k + 1)
    heights = {
        c.get_label(): {round(p.get_x() + p.get_width() / 2 - 0.5): p.get_height() for p in c}
        for c in ax_op.containers
    }
    # donate 3 pages at 0 and 1 page (refused, still attempted) at 1
    assert [heights["donate"].get(k, 0) for k in range(5)] == [3, 1, 0, 0, 0]
    assert [heights["share"].get(k, 0) for k in range(5)] == [0, 0, 0, 1, 0]
    assert [heights["reclaim"].get(k, 0) for k in range(5)] == [0, 0, 0, 0, 1]
    peers = {c.get_label() for c in ax_peer.containers}
    assert peers == {"hyp", "guest vm 3"}
    assert legend_texts(ax_op) == [
        "donate",
        "share",
        "reclaim",
        "violation (2)",
        "access fault (1)",
        "lost events (1)",
    ]
    assert fig._suptitle.get_text() == "Ownership churn per 1 s bin — t 0.00–5.00 s"
    assert ax_op.get_ylabel() == ax_peer.get_ylabel() == "pages per bin"
    assert ax_peer.get_xlabel() == "trace time (s)"
    assert_not_blank(fig)


def test_churn_bytes_unit_and_window(small):
    fig = plots.plot_churn(small.transitions, t_from=2.5, t_to=4.5, bin_width=0.5)
    ax_op = fig.axes[0]
    assert ax_op.get_ylabel() == "bytes per bin (KiB)"
    assert {c.get_label() for c in ax_op.containers} == {"share", "reclaim"}
    total = sum(p.get_height() for c in ax_op.containers for p in c.patches)
    assert total == pytest.approx(8.0)  # 4 KiB share + 4 KiB reclaim


def test_churn_errors(small):
    with pytest.raises(ValueError, match="unit"):
        plots.plot_churn(small.transitions, unit="kb")
    with pytest.raises(ValueError, match="window"):
        plots.plot_churn(small.transitions, t_from=3.0, t_to=1.0)


def test_churn_empty_window_says_so(small):
    fig = plots.plot_churn(small.transitions, t_from=100.0, t_to=101.0)
    assert "no donations" in fig.axes[0].texts[0].get_text()


# ---------------------------------------------------------------------------------------------
# owners and map on the small timeline
# ---------------------------------------------------------------------------------------------
def test_owners_plot(small):
    fig = plots.plot_owners(
        small.intervals,
        small.violations,
        transitions=small.transitions,
        at=2,
        meta={"capture": "/x/small", "kernel": "7.3"},
    )
    ax = fig.axes[0]
    assert ax.get_title(loc="left") == "pages that are not host owned throughout the window"
    assert fig._suptitle.get_text() == "Ownership over time — small, kernel 7.3, t 0.00–5.00 s"
    assert ax.get_ylabel() == "bytes (KiB)"
    assert ax.get_xlabel() == "trace time (s)"
    assert legend_texts(ax) == [
        "hyp owned",
        "host, shared with guest",
        "host owned",
        "violation (2)",
        "access fault (1)",
        "lost events (1)",
        "t = 2.000000 s",
    ]
    assert_not_blank(fig)


def test_map_plot(small):
    fig = plots.plot_map(small.intervals, small.violations, transitions=small.transitions)
    ax = fig.axes[0]
    assert ax.get_title(loc="left") == "Ownership map — t 0.00–5.00 s"
    assert ax.get_ylabel() == "physical address"
    assert ax.get_xlabel() == "trace time (s)"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    # 0x4000-0x8fff is a 5-page gap (> 2 pages): cut, and the cut says so
    assert labels[0] == "0x1000" and labels[-1] == "0xa000" and "0x9000" in labels
    assert all(t.startswith("0x") for t in labels)
    assert "20 KiB unchanged (cut)" in [t.get_text() for t in ax.texts]
    texts = legend_texts(ax)
    assert {"host owned", "hyp owned", "host, shared with guest"} <= set(texts)
    # the refused access fault is a violation too: drawn once, as the violation
    assert "violation (2)" in texts and not any(t.startswith("access fault") for t in texts)
    # the violation markers sit on the page 0x2000 (second of the 0x1000-0x3fff segment),
    # annotated with their check and page
    (vio,) = [line for line in ax.lines if line.get_label() == "violation (2)"]
    axis_rows = ax.get_ylim()[1]
    y = vio.get_ydata()
    assert np.all((y > 0) & (y < axis_rows))
    assert any("0x2000" in t.get_text() for t in ax.texts)
    assert_not_blank(fig)


def test_map_folds_quiet_ranges_and_names_objects():
    """A 10 MiB range donated once and never touched again becomes one labelled band; the
    pages that change get the rows; labels name objects beside the map."""
    big = 10 << 20
    tr = make_transitions(
        [dict(op="donate", addr=0x7F000000, size=big, ts=0.1)]
        + [dict(op="share", addr=0x44000000, ts=1.0 + k) for k in range(3)]
        + [dict(op="unshare", addr=0x44000000, ts=1.5 + k) for k in range(3)]
    )
    tl = replay(tr, kernel="6.12")
    import pandas as pd

    labels = pd.DataFrame(
        {
            "start": [0x44000000, 0x7F000000],
            "end": [0x44001000, 0x7F000000 + big],
            "label": ["struct kvm", "hyp carve-out"],
        }
    )
    fig = plots.plot_map(tl.intervals, transitions=tl.transitions, labels=labels)
    ax, names = fig.axes[0], fig.axes[1]
    band = [t.get_text() for t in ax.texts if "folded" in t.get_text()]
    assert band == ["10 MiB hyp carve-out since t = 0.100 s, unchanged (folded)"]
    assert "struct kvm" in [t.get_text() for t in names.texts]
    # the band is thin: the one changing page has most rows
    rows = ax.get_ylim()[1]
    ticks = dict(zip([t.get_text() for t in ax.get_yticklabels()], ax.get_yticks(), strict=True))
    assert ticks["0x7f000000"] > 0.8 * rows


def test_map_range_zoom_and_page_plot(small):
    fig = plots.plot_map(
        small.intervals,
        small.violations,
        transitions=small.transitions,
        addr_range=(0x9000, 0xA000),
    )
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "0x9000" and "0x1000" not in labels
    with pytest.raises(ValueError, match="touches nothing"):
        plots.plot_map(small.intervals, addr_range=(0x100000, 0x200000))
    fig = plots.plot_page(small.intervals, small.transitions, 0x2000, small.violations)
    ax = fig.axes[0]
    assert ax.get_title(loc="left").startswith("Page 0x2000")
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "donate host→hyp" in texts and "host_not_owned" in texts
    with pytest.raises(ValueError, match="never touches"):
        plots.plot_page(small.intervals, small.transitions, 0x50000)


def test_churn_breaks_the_boot_donation():
    tr = make_transitions(
        [dict(op="donate", addr=0x7F000000, size=10 << 20, ts=0.0)]
        + [dict(op="share", addr=0x44000000 + k * P, ts=1.0 + k) for k in range(5)]
    )
    fig = plots.plot_churn(tr, bin_width=1.0)
    ax_op = fig.axes[0]
    assert ax_op.get_ylim()[1] < 10  # KiB: the 4 KiB shares fill the axis
    assert any("10 MiB" in t.get_text() for t in ax_op.texts)


def test_map_majority_rule():
    """A cell 3/4 hyp owned shows hyp; a cell 1/4 hyp owned shows host owned."""
    tr = make_transitions(
        [
            dict(op="donate", addr=0x0, size=3 * P, ts=0.0),
            dict(op="donate", addr=0x8000 * 2, size=P, ts=0.0),
            dict(op="share", addr=0x8000 * 2 + 3 * P, size=P, ts=1.0),
        ]
    )
    tl = replay(tr)
    fig = plots.plot_map(tl.intervals, t_from=0.0, t_to=2.0, max_pixels=4 * 50)
    img = fig.axes[0].images[0].get_array()
    _, labels, colors = plots.state_labels(tl.intervals)
    from matplotlib.colors import to_rgb

    hyp = np.array(to_rgb(colors[labels.index("hyp owned")]))
    host = np.array(to_rgb(colors[labels.index("host owned")]))
    # rows: the first region (0x0-0x3fff) and the second (0x10000-0x13fff)
    assert np.allclose(img[0, 10], hyp)  # first cell of region 1: hyp pages 0-2
    column = img[:, 10]
    assert any(np.allclose(c, host) for c in column)


# ---------------------------------------------------------------------------------------------
# the bundled samples and a million pages
# ---------------------------------------------------------------------------------------------
def test_sample_plots_render(sample):
    for fig in (
        plots.plot_churn(sample.transitions, sample.violations),
        plots.plot_owners(sample.intervals, sample.violations, transitions=sample.transitions),
        plots.plot_map(sample.intervals, sample.violations, transitions=sample.transitions),
    ):
        assert_not_blank(fig)
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert all(t.startswith("0x") for t in ticks)
    starts = sample.intervals["addr_start"].astype(int)
    assert f"{int(starts.max()):#x}" in " ".join(ticks) or len(ticks) >= 4


def test_million_page_map(million):
    assert int(million.intervals["size"].sum()) >= (1 << 20) * P  # a million touched pages
    fig = plots.plot_map(million.intervals, million.violations, transitions=million.transitions)
    img = fig.axes[0].images[0].get_array()
    rows, cols = img.shape[:2]
    assert rows * cols <= 600_000
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks[0] == "0x40000000"
    assert len(ticks) >= 4 and len(set(ticks)) == len(ticks)
    _, labels, colors = plots.state_labels(million.intervals)
    from matplotlib.colors import to_rgb

    hyp = np.array(to_rgb(colors[labels.index("hyp owned")]))
    # at the end every even chunk is still donated: half the last column is hyp
    frac = np.mean(np.all(np.isclose(img[:, -1], hyp), axis=-1))
    assert 0.3 < frac < 0.7
    assert_not_blank(fig)


def test_million_page_owners_and_churn(million):
    fig = plots.plot_owners(million.intervals)
    assert legend_texts(fig.axes[0]) == ["hyp owned", "host owned"]
    assert fig.axes[0].get_ylabel() == "bytes (GiB)"
    fig = plots.plot_churn(million.transitions, unit="pages")
    total = sum(p.get_height() for c in fig.axes[0].containers for p in c.patches)
    assert total == 4096 * 256 + 2048 * 256


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "suffix"), [("churn", ".png"), ("owners", ".png"), ("map", ".png"), ("map", ".svg")]
)
def test_cli_plot(tmp_path, capsys, kind, suffix):
    sample = SAMPLES["7.3"]
    out = tmp_path / f"plot{suffix}"
    code = main(
        ["plot", str(sample), "--kind", kind, "-o", str(out), "--no-cache", "--at", "72.55"]
    )
    assert code == 0
    head = out.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in out.read_bytes()


def test_cli_plot_errors(tmp_path, capsys):
    sample = str(SAMPLES["6.12"])
    code = main(["plot", sample, "--kind", "map", "-o", str(tmp_path / "x.gif")])
    assert code == 2 and "unknown image type" in capsys.readouterr().err
    code = main(["plot", sample, "--kind", "map", "--from", "soon", "-o", str(tmp_path / "x.png")])
    assert code == 2 and "--from" in capsys.readouterr().err
    out = tmp_path / "x.png"
    code = main(["plot", sample, "--kind", "churn", "--from", "19", "--to", "18", "-o", str(out)])
    assert code == 2 and "empty time window" in capsys.readouterr().err
    assert not out.exists()
