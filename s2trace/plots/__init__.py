"""Plots of an ownership timeline: churn, owners over time and the address × time map.

Every function takes DataFrames of the public API (TRANSITIONS, INTERVALS, VIOLATIONS) and
returns a :class:`matplotlib.figure.Figure`; nothing is shown or saved here.  matplotlib is
imported inside the functions, with the headless Agg backend, so importing s2trace (or decoding
a dump) never imports it.

* :func:`plot_churn` -- bytes (or pages) donated, shared, unshared and reclaimed per time bin,
  stacked by operation (top) and by peer (bottom);
* :func:`plot_owners` -- bytes per owner and state as a stacked area over time;
* :func:`plot_map` -- an address × time raster coloured by owner/state, its area given to the
  ranges that change (quiet ranges folded into labelled bands, :mod:`.focus`);
* :func:`plot_page` -- one page's owner/state over time with the transitions that touched it.

Time axes are in the trace's own seconds; titles name the capture, kernel and time span
(``meta``).  All of them overlay violations (red crosses) and access faults (black
triangles), and take a time window (``t_from``, ``t_to``) and a cursor (``at``).  Only the
pages a trace touches are in the timeline; the others are host owned throughout and are
left out of the byte counts.

Binning is vectorised: ``np.histogram`` for the churn, a sorted sweep of interval starts and
ends for the areas, and a 2-D difference array (summed area of every interval over every
raster cell) for the map -- no Python loop per page, interval or transition.

Modules: :mod:`.style` (state labels, colours, marker styles), :mod:`.units` (byte and time
formatting), :mod:`.axes` (time window and clock, compressed address axis),
:mod:`.figure` (the Agg figure, legend, ticks), :mod:`.marks` (violations, faults, lost
events, cursor), :mod:`.churn`, :mod:`.owners`, :mod:`.raster` (area per cell) and
:mod:`.ownership_map`.
"""

from __future__ import annotations

from s2trace.plots.axes import AddressAxis
from s2trace.plots.churn import default_bin, plot_churn
from s2trace.plots.owners import owner_series, plot_owners
from s2trace.plots.ownership_map import plot_map
from s2trace.plots.page import plot_page
from s2trace.plots.raster import rasterize
from s2trace.plots.style import CHURN_OPS, state_labels

__all__ = [
    "CHURN_OPS",
    "AddressAxis",
    "default_bin",
    "owner_series",
    "plot_churn",
    "plot_map",
    "plot_owners",
    "plot_page",
    "rasterize",
    "state_labels",
]
