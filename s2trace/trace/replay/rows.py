"""Replay, step 1: transitions -> per-row arrays.

Internal to :mod:`s2trace.trace.replay`.  Rows are put in replay order (``ts``, then
``event_index``, then input order), each gets its rule id (one lookup per distinct
(op, initiator, completer)), its kvm_share_hyp counting kind and its multi-page coupling mode;
malformed rows are recorded as problems and skipped.  :mod:`~s2trace.trace.replay.segments`
then makes one entry per (segment, row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from s2trace.columns import TRANSITIONS
from s2trace.errors import InputError, Problem, ProblemLog
from s2trace.pkvm.rules import BASE_STATES, COUNTED_SINCE, OPS, RuleTable

_END = np.iinfo(np.int64).max  # "no later transition" sequence number
_MAX_ENTRIES = 1 << 30  # more (segment, row) entries than this is certainly a wrong size
_ATOMIC, _PREFIX, _EACH = 0, 1, 2
_STATE_INDEX = {s.name: i for i, s in enumerate(BASE_STATES)}
_HOST_OWNED = _STATE_INDEX["host_owned"]
_SHARED_HYP = _STATE_INDEX["shared_hyp"]
_SHARED_GUEST = _STATE_INDEX["shared_guest"]


@dataclass
class _Rows:
    ts: np.ndarray
    event_index: np.ndarray
    line: np.ndarray
    rid: np.ndarray  # rule id (int16)
    ckind: np.ndarray  # 0 plain, 1 counted share, 2 counted unshare
    mode: np.ndarray  # _ATOMIC / _PREFIX / _EACH
    first: np.ndarray  # first page
    npages: np.ndarray  # pages to explode (0 for skipped rows and global lost markers)
    global_lost: np.ndarray  # seq numbers of size-0 lost markers
    t_earliest: np.ndarray  # earliest time each transition can have happened
    basis: np.ndarray  # basis code of each row (index into basis_texts)
    basis_texts: list[str]  # what rows rest on: "trace" or a rule in words


#: Basis of a transition row that made no claim (frames built before the column existed).
TRACE_BASIS = "trace"


def _with_grounds(transitions: pd.DataFrame) -> pd.DataFrame:
    """A TRANSITIONS frame from before ``t_earliest`` and ``basis`` existed gets them: the
    event pins the transition (``t_earliest = ts``) and the trace is its basis."""
    missing = [c for c in ("t_earliest", "basis") if c not in transitions]
    if not missing or any(c not in transitions for c in TRANSITIONS.names if c not in missing):
        return transitions
    extra: dict[str, Any] = {}
    if "t_earliest" in missing:
        extra["t_earliest"] = transitions["ts"].to_numpy(dtype=np.float64, na_value=np.nan)
    if "basis" in missing:
        extra["basis"] = pd.Categorical([TRACE_BASIS] * len(transitions))
    return transitions.assign(**extra)[TRANSITIONS.names]


def _sorted(transitions: pd.DataFrame) -> pd.DataFrame:
    transitions = _with_grounds(transitions)
    try:
        TRANSITIONS.check(transitions)
    except ValueError as exc:
        raise InputError(f"replay: transitions frame: {exc}") from None
    ts = transitions["ts"].to_numpy(dtype=np.float64, na_value=np.nan)
    ev = transitions["event_index"].to_numpy(dtype=np.int64)
    if len(ts) < 2 or bool(
        np.all((ts[1:] > ts[:-1]) | ((ts[1:] == ts[:-1]) & (ev[1:] >= ev[:-1])))
    ):
        return transitions.reset_index(drop=True)  # already in replay order (trace file order)
    order = np.lexsort((ev, ts))  # stable: ties keep input order; NaN sorts last
    return transitions.iloc[order].reset_index(drop=True)


def _str_array(col: pd.Series) -> np.ndarray:
    return col.astype("object").where(col.notna(), None).to_numpy()


def _codes(col: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Categorical codes (-1 = <NA>) and categories of a column, without per-row objects."""
    cat = col.astype("category") if not isinstance(col.dtype, pd.CategoricalDtype) else col
    return cat.cat.codes.to_numpy(dtype=np.int64), [str(c) for c in cat.cat.categories]


def _rule_ids(tr: pd.DataFrame, table: RuleTable) -> np.ndarray:
    """Rule id of each row (-1: unknown op), one lookup per (op, initiator, completer) combo."""
    (oc, ocat), (ic, icat), (cc, ccat) = (_codes(tr[c]) for c in ("op", "initiator", "completer"))
    no, ni, nc = len(ocat) + 1, len(icat) + 1, len(ccat) + 1
    lookup = np.full(no * ni * nc, -1, dtype=np.int16)
    for o in range(no):
        for i in range(ni):
            for c in range(nc):
                op = ocat[o - 1] if o else None
                if op in OPS:
                    ini = icat[i - 1] if i else None
                    com = ccat[c - 1] if c else None
                    lookup[(o * ni + i) * nc + c] = table.rule_id(op, ini, com)
    return lookup[((oc + 1) * ni + (ic + 1)) * nc + (cc + 1)]


def _rows(tr: pd.DataFrame, table: RuleTable, page_size: int, log: ProblemLog) -> _Rows:
    n = len(tr)
    ts = tr["ts"].to_numpy(dtype=np.float64, na_value=np.nan)
    line = tr["line"].to_numpy(dtype=np.int64)
    addr = tr["addr"].to_numpy(dtype=np.uint64)
    size = tr["size"].to_numpy(dtype=np.uint64)
    counted = tr["counted"].fillna(False).to_numpy(dtype=bool)
    rid = _rule_ids(tr, table)
    bcodes, btexts = _codes(tr["basis"])
    if (bcodes < 0).any():
        bcodes = np.where(bcodes < 0, len(btexts), bcodes)
        btexts = [*btexts, TRACE_BASIS]
    is_lost = rid == table.lost
    is_fault = rid == table.rule_id("access_fault", None, None)
    ps = np.uint64(page_size)
    bad = np.zeros(n, dtype=bool)
    _problem(log, np.isnan(ts), line, "no_timestamp", "transition without a timestamp: skipped")
    bad |= np.isnan(ts)
    _problem(log, rid < 0, line, "unknown_op", "unknown transition op: skipped")
    bad |= rid < 0
    size = np.where(is_fault & (size == 0), ps, size)  # a fault names one address
    empty = (size == 0) & ~is_lost & ~bad
    _problem(log, empty, line, "empty_transition", "transition of size 0: skipped")
    bad |= empty
    unaligned = ((addr % ps != 0) | (size % ps != 0)) & ~bad & ~is_fault  # faults: any byte
    _problem(
        log,
        unaligned,
        line,
        "unaligned_transition",
        f"address or size not aligned to {page_size} bytes: widened to whole pages",
    )
    first = (addr // ps).astype(np.int64)
    stop = ((addr + size + ps - np.uint64(1)) // ps).astype(np.int64)
    npages = np.where(bad, 0, stop - first)
    global_lost = is_lost & (size == 0) & ~bad
    npages[global_lost] = 0
    share_id, unshare_id = table.counted_ids()
    ckind = np.zeros(n, dtype=np.int8)
    if table.version >= COUNTED_SINCE:
        ckind[counted & (rid == share_id) & (share_id >= 0)] = 1
        ckind[counted & (rid == unshare_id) & (unshare_id >= 0)] = 2
    # a refused multi-page hypercall changes none of its pages; markers couple nothing
    plain = np.where(table.mutates[np.maximum(rid, 0)], _ATOMIC, _EACH)
    mode = np.select([ckind == 1, ckind == 2], [_PREFIX, _EACH], plain).astype(np.int8)
    return _Rows(
        ts=ts,
        event_index=tr["event_index"].to_numpy(dtype=np.int64),
        line=line,
        rid=np.where(bad, table.noop, rid).astype(np.int16),
        ckind=ckind,
        mode=mode,
        first=first,
        npages=npages,
        global_lost=np.flatnonzero(global_lost),
        t_earliest=np.fmin(tr["t_earliest"].to_numpy(dtype=np.float64, na_value=np.nan), ts),
        basis=bcodes,
        basis_texts=btexts,
    )


def _problem(log: ProblemLog, mask: np.ndarray, line: np.ndarray, kind: str, detail: str) -> None:
    """Record one problem per masked row; ``where`` is the source line (Problem prints it in
    hex, so the detail repeats it in decimal)."""
    for where in line[mask]:
        log.add(Problem(kind, int(where), f"line {int(where)}: {detail}", source="transitions"))
