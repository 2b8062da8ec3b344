"""Every tabular result of s2trace, declared once.

Each stage of the pipeline returns a pandas DataFrame whose columns are declared here, with a
dtype and a one-line meaning.  ``docs/columns.md`` is generated from these declarations
(``python -m s2trace.columns``), and the tests check that every stage returns exactly the
declared columns, so this file is the contract.

Stages: descriptors (decode) -> ownership map (walk) ; events (trace readers) ->
transitions (recipes) -> intervals and violations (replay) -> map diffs (queries) ; the
hypervisor's view of a dump: hyp map (hyp stage 1), vmemmap, page states, ownership map with
vmemmap states, breaches (check) and labels (symbols).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

__all__ = [
    "BREACHES",
    "DESCRIPTOR",
    "EVENTS",
    "GUEST_PAGES",
    "HOST_STATE_MAP",
    "HYP_MAP",
    "INTERVALS",
    "LABELS",
    "MAP",
    "MAP_DIFF",
    "PAGE_STATES",
    "SCHEMAS",
    "SNAPSHOT",
    "TOPUPS",
    "TRANSITIONS",
    "VIOLATIONS",
    "VMEMMAP",
    "VMS",
    "Column",
    "Schema",
]


@dataclass(frozen=True, slots=True)
class Column:
    """One declared column: its name, pandas dtype and meaning."""

    name: str
    dtype: str
    doc: str


#: The empty frame of each schema, by name (with the schema it was made from).
_EMPTY: dict[str, tuple[Schema, pd.DataFrame]] = {}


@dataclass(frozen=True, slots=True)
class Schema:
    """An ordered set of declared columns for one kind of DataFrame."""

    name: str
    doc: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def dtypes(self) -> dict[str, str]:
        return {c.name: c.dtype for c in self.columns}

    def empty(self) -> pd.DataFrame:
        """A zero-row DataFrame with the declared columns and dtypes (a fresh copy of one
        made once per schema: building it parses every dtype, some milliseconds)."""
        made = _EMPTY.get(self.name)
        if made is None or made[0] is not self:
            frame = pd.DataFrame({c.name: pd.Series([], dtype=c.dtype) for c in self.columns})
            made = _EMPTY[self.name] = (self, frame)
        return made[1].copy()

    def check(self, df: pd.DataFrame) -> None:
        """Raise ``ValueError`` unless ``df`` has exactly the declared columns, in order."""
        if list(df.columns) != self.names:
            missing = [n for n in self.names if n not in df.columns]
            extra = [n for n in df.columns if n not in self.names]
            raise ValueError(f"{self.name}: columns differ (missing {missing}, extra {extra})")

    def markdown(self) -> str:
        rows = "\n".join(f"| `{c.name}` | {c.dtype} | {c.doc} |" for c in self.columns)
        return (
            f"## {self.name}\n\n{self.doc}\n\n| column | dtype | meaning |\n|---|---|---|\n{rows}\n"
        )


def _cols(*spec: tuple[str, str, str]) -> tuple[Column, ...]:
    return tuple(Column(*s) for s in spec)


CAT = "category"

DESCRIPTOR = Schema(
    "descriptors",
    "One row per decoded 64-bit stage-2 descriptor (`decode_array`, `s2trace decode`). "
    "Nullable columns are empty (<NA>) where a field does not apply to the kind. "
    "The JSON output of `s2trace decode --format json` uses exactly these keys.",
    _cols(
        ("raw", "uint64", "the descriptor as read (little-endian 64-bit word)"),
        ("level", "int8", "lookup level the descriptor was read at (-1..3)"),
        ("granule", CAT, "translation granule: 4k, 16k or 64k"),
        ("kind", CAT, "table, block, page, invalid or reserved (Arm ARM D8.3; §KF-1.1)"),
        ("oa", "UInt64", "output address of a block or page (52-bit pieces assembled)"),
        ("next_table", "UInt64", "next-level table address of a table descriptor"),
        ("size", "uint64", "bytes of input address space one entry at this level spans"),
        ("memattr", "UInt8", "MemAttr[3:0], bits 5:2 (raw value)"),
        ("memattr_name", CAT, "MemAttr meaning (with or without HCR_EL2.FWB)"),
        ("s2ap", CAT, "S2AP bits 7:6: none, ro, wo, rw"),
        ("sh", CAT, "SH bits 9:8: non, outer, inner, reserved; <NA> when DS=1"),
        ("af", "boolean", "access flag, bit 10"),
        ("nt", "boolean", "nT block-translation hint, bit 16 (blocks only)"),
        ("dbm", "boolean", "dirty-bit modifier, bit 51"),
        ("contiguous", "boolean", "contiguous hint, bit 52"),
        ("xn", "UInt8", "XN[1:0], bits 54:53 (raw value)"),
        ("xn_name", CAT, "XN meaning with FEAT_XNX: 'px ux', PXN, XN (PXN+UXN), UXN"),
        ("sw", "UInt8", "software bits 58:55 (raw value)"),
        ("pbha", "UInt8", "PBHA[3:0], bits 62:59 (raw value)"),
        ("res0", "uint64", "mask of bits set that the architecture reserves as RES0 here"),
        ("owner", CAT, "pKVM owner under the profile (host, hyp, guest, ffa, id:N)"),
        ("owner_id", "UInt32", "raw owner id from the profile's owner field"),
        ("page_state", CAT, "pKVM page state: owned, shared_owned, shared_borrowed, ..."),
        ("locked", "boolean", "invalid entry carries the profile's lock marker"),
        ("inv_type", CAT, "7.1+ invalid-entry type: none, locked, donation, poisoned, id:N"),
        ("vm_handle", "UInt16", "7.1+ donated-to-guest entry: the VM handle (bits 19:4)"),
        ("gfn", "UInt64", "7.1+ donated-to-guest entry: the guest frame number (bits 59:20)"),
        ("note", "boolean", "android profile: the MMIO note bit (bit 11) of an invalid entry"),
        ("fnxs", "boolean", "FnXS, bit 11 of a leaf (FEAT_XS; RES0 without it)"),
    ),
)

MAP = Schema(
    "ownership map",
    "One row per leaf (block or page) and per annotated (non-zero) invalid entry of a "
    "stage-2 walk (`walk`, `s2trace decode DUMP`). Zero entries appear only with `--all`. "
    "Coalesced maps merge adjacent rows with equal attributes; `raw`, `table_pa` and `index` "
    "then describe the first entry of the run.",
    _cols(
        ("ipa_start", "uint64", "first input (intermediate physical) address of the entry"),
        ("size", "uint64", "bytes of input address space covered"),
        ("oa", "UInt64", "output address (leaves only)"),
        ("level", "int8", "lookup level of the entry"),
        ("kind", CAT, "block, page, invalid (annotated) or reserved"),
        ("owner", CAT, "pKVM owner under the profile"),
        ("owner_id", "UInt32", "raw owner id"),
        ("page_state", CAT, "pKVM host page state (unknown where the PTE no longer holds it)"),
        ("s2ap", CAT, "stage-2 access permission"),
        ("memattr_name", CAT, "memory type"),
        ("xn", "UInt8", "XN[1:0] raw"),
        ("contiguous", "boolean", "contiguous hint"),
        ("table_pa", "uint64", "physical address of the table page holding the entry"),
        ("index", "uint16", "index of the entry within its table page"),
        ("raw", "uint64", "the descriptor"),
        ("locked", "boolean", "lock marker of an invalid entry"),
        ("inv_type", CAT, "7.1+ invalid-entry type"),
        ("vm_handle", "UInt16", "7.1+ guest-donation VM handle"),
        ("gfn", "UInt64", "7.1+ guest-donation guest frame number"),
    ),
)

EVENTS = Schema(
    "events",
    "One row per trace line that carries an event or a lost-events marker, in file order "
    "(`read_trace`). Unknown events are kept. `fields` is the text after the event name; "
    "recipes extract named fields from it.",
    _cols(
        ("ts", "float64", "timestamp in seconds, as printed by the tracer"),
        ("cpu", "Int16", "CPU number"),
        ("task", "string", "task name (comm); <NA> for hypervisor traces"),
        ("pid", "Int32", "process id; <NA> for hypervisor traces"),
        ("flags", "string", "latency flags column (irqs-off, need-resched, ...), if printed"),
        ("event", CAT, "event name; `lost_events` for a lost-events marker"),
        ("fields", "string", "the event's formatted fields (everything after the name)"),
        ("line", "int64", "1-based line number in the source file"),
        ("lost", "Int64", "number of events lost at this point (marker rows), else <NA>"),
    ),
)

TRANSITIONS = Schema(
    "transitions",
    "One row per ownership transition or marker derived from events by recipes "
    "(`to_transitions`). Addresses are physical and page aligned.",
    _cols(
        ("ts", "float64", "timestamp in seconds"),
        ("line", "int64", "source line of the event that completes the transition"),
        ("event_index", "int64", "row of the completing event in the events DataFrame"),
        ("op", CAT, "share, unshare, donate, reclaim, access_fault, lost"),
        ("initiator", CAT, "component giving: host, hyp, guest, ffa"),
        ("completer", CAT, "component receiving: host, hyp, guest, ffa"),
        ("addr", "uint64", "first physical address (page aligned)"),
        ("size", "uint64", "bytes (multiple of the page size)"),
        ("vm", "Int64", "VM the transition belongs to, where known"),
        ("gfn", "UInt64", "guest frame number for host<->guest transitions, where known"),
        (
            "counted",
            "boolean",
            "host keeps a per-PFN share count (kvm_share_hyp): only the "
            "0->1 share and the 1->0 unshare reach the hypervisor",
        ),
        ("recipe", CAT, "name of the recipe that produced the row"),
        (
            "t_earliest",
            "float64",
            "earliest time the transition can have happened: ts when the event itself pins "
            "it, else the start of the bracket (e.g. the last allocation before the hypercall)",
        ),
        (
            "basis",
            CAT,
            "what the row rests on: 'trace' (the event says so), or a kernel rule in words "
            "(e.g. the teardown hypercall gives back every page donated for the VM)",
        ),
    ),
)

INTERVALS = Schema(
    "intervals",
    "The ownership timeline: maximal page ranges with one ownership state during "
    "[t_start, t_end) (`replay`). Any question about time is a query on this table.",
    _cols(
        ("addr_start", "uint64", "first physical address of the range"),
        ("size", "uint64", "bytes"),
        ("owner", CAT, "owning component"),
        ("host_state", CAT, "host page state: owned, shared_owned, shared_borrowed, nopage"),
        ("peer", CAT, "the other component involved (share completer or owner), if any"),
        ("peer_state", CAT, "that component's page state"),
        (
            "t_start",
            "float64",
            "start time (seconds): the first event by which the transition has certainly "
            "happened; -inf for the state before the trace",
        ),
        ("t_end", "float64", "end time (seconds); +inf while still current"),
        (
            "t_earliest",
            "float64",
            "earliest time the transition can have happened (= t_start when one event pins "
            "it; < t_start when the trace only brackets it); -inf for the state before the trace",
        ),
        ("cause", "Int64", "source line of the event that started the interval (<NA>: initial)"),
        ("event_index", "Int64", "row of that event in the events table (<NA>: initial)"),
        (
            "basis",
            CAT,
            "what the state rests on: 'trace' (the line in cause), a kernel rule in words, "
            "the dump (named, and when it was taken), an evidence file and line (dmesg "
            "carve-out, kallsyms hyp sections), the first transition's precondition, or "
            "'assumed: ...'",
        ),
        ("incomplete", "boolean", "a lost-events gap may hide transitions of this range"),
    ),
)

VIOLATIONS = Schema(
    "violations",
    "Transitions the pKVM state machine refuses, with the kernel check they break "
    "(`replay`). Replay continues with the state unchanged, as the kernel would.",
    _cols(
        ("ts", "float64", "timestamp in seconds"),
        ("line", "int64", "source line"),
        ("event_index", "int64", "row in the events DataFrame"),
        ("op", CAT, "the refused operation"),
        ("initiator", CAT, "initiator"),
        ("completer", CAT, "completer"),
        ("addr", "uint64", "first physical address of the offending page"),
        ("size", "uint64", "bytes affected"),
        ("check", CAT, "the kernel precondition broken (e.g. host_not_owned)"),
        ("detail", "string", "one readable sentence: what was expected, what was found"),
    ),
)

# -- queries on the ownership timeline (s2trace.trace.queries) --------------------------------
SNAPSHOT = Schema(
    "ownership snapshot",
    "The ownership map a replayed timeline gives at one time (`snapshot`, `s2trace timeline "
    "--at`): the ownership map's columns as a host stage-2 dump would show them (pages the host "
    "lost are `kind` invalid with their owner; walk-only columns 0 or <NA>), plus what each "
    "row's state rests on. Pages nothing speaks for are left out.",
    (
        *MAP.columns,
        Column(
            "basis",
            CAT,
            "what the row's state rests on: 'trace line N' (the event on that line set it), a "
            "kernel rule in words with its trace line, the dump (named), an evidence file and "
            "line (dmesg carve-out, kallsyms hyp sections), the first transition's "
            "precondition with that transition's line, or 'assumed: ...'",
        ),
    ),
)

MAP_DIFF = Schema(
    "map diff",
    "Ranges where two ownership maps disagree on owner or host page state (`diff_maps`). "
    "`unknown` or <NA> page state on one side agrees with any state; a range one map does not "
    "cover reads owner host with no state there.",
    _cols(
        ("ipa_start", "uint64", "first address of the range"),
        ("size", "uint64", "bytes"),
        ("expected_owner", CAT, "owner in the expected map (<NA>: not covered)"),
        ("expected_state", CAT, "page state in the expected map"),
        ("actual_owner", CAT, "owner in the actual map (<NA>: not covered)"),
        ("actual_state", CAT, "page state in the actual map"),
    ),
)


# -- the hypervisor's own view of a dump (s2trace.hyp) -----------------------------------------
HYP_MAP = Schema(
    "hyp map",
    "One row per leaf of the hypervisor's EL2 stage 1 (`walk_hyp`, `s2trace hyp-map`), sorted by "
    "hyp VA. Permissions are read in the table's format (E2H=0 or E2H=1).",
    _cols(
        ("va_start", "uint64", "first hyp virtual address of the entry"),
        ("size", "uint64", "bytes of VA space covered"),
        ("pa", "uint64", "output (physical) address"),
        ("level", "int8", "lookup level of the entry"),
        ("kind", CAT, "block or page"),
        ("attrindx", "uint8", "AttrIndx, bits 4:2 (index into MAIR_EL2)"),
        ("memattr", CAT, "memory type from MAIR_EL2 (<NA> without MAIR)"),
        ("ap", CAT, "AP[2:1]: EL2 access, and EL0 access with E2H=1"),
        ("sh", CAT, "SH, bits 9:8; <NA> when DS=1"),
        ("af", "bool", "access flag, bit 10"),
        ("pxn", "bool", "EL2 may not execute (bit 53 with E2H=1, XN bit 54 with E2H=0)"),
        ("uxn", "boolean", "EL0 may not execute (bit 54 with E2H=1; <NA> with E2H=0)"),
        ("sw", "uint8", "software bits 58:55 (raw)"),
        ("hyp_state", CAT, "pKVM hyp page state from SW bits 56:55, or unknown"),
        ("table_pa", "uint64", "physical address of the table page holding the entry"),
        ("index", "uint16", "index of the entry in its table page"),
        ("raw", "uint64", "the descriptor"),
    ),
)


VMEMMAP = Schema(
    "vmemmap",
    "One row per page whose `struct hyp_page` was read (`read_vmemmap`), indexed by PFN. States "
    "are <NA> where the layout keeps none.",
    _cols(
        ("pa", "uint64", "physical address of the page"),
        ("refcount", "uint16", "hyp refcount"),
        ("order", "uint16", "buddy order (the layout's HYP_NO_ORDER when none)"),
        ("host_state", CAT, "host page state kept in the vmemmap (v6.14+)"),
        ("hyp_state", CAT, "hyp page state kept in the vmemmap (v6.16+)"),
        ("host_share_guest_count", "UInt32", "np-guests the page is shared with (v6.14+)"),
        ("raw", "uint64", "the entry's bytes as a little-endian integer"),
        ("entry_va", "uint64", "hyp VA of the entry"),
    ),
)


PAGE_STATES = Schema(
    "page states",
    "One row per physical page (`page_states`): the host stage-2 entry covering it, the hyp "
    "stage-1 leaf mapping it, its struct hyp_page, and each side's effective state.",
    _cols(
        ("pa", "uint64", "physical address of the page"),
        ("host_raw", "UInt64", "host stage-2 descriptor covering the page (<NA>: none)"),
        ("host_kind", CAT, "block, page, invalid or reserved; <NA> without entry"),
        ("host_owner_id", "UInt32", "owner id of an annotated invalid host entry"),
        ("host_s2ap", CAT, "host stage-2 access permission of a valid leaf"),
        ("host_xn", "UInt8", "host stage-2 XN[1:0] of a valid leaf"),
        ("host_pte_state", CAT, "host state from host stage-2 bits 56:55"),
        ("hyp_va", "UInt64", "hyp VA of the (first) hyp stage-1 leaf mapping the page"),
        ("hyp_raw", "UInt64", "that hyp stage-1 descriptor (<NA>: not mapped)"),
        ("hyp_ap", CAT, "its AP (EL2 access)"),
        ("hyp_pxn", "boolean", "its EL2 execute-never"),
        ("hyp_aliases", "uint16", "hyp stage-1 leaves mapping the page"),
        ("hyp_pte_state", CAT, "hyp state from hyp stage-1 bits 56:55"),
        ("hyp_alias_conflict", "bool", "leaves mapping the page disagree on the state"),
        ("vmemmap_raw", "UInt64", "the struct hyp_page bytes (<NA>: not read)"),
        ("vm_host_state", CAT, "host state kept in the vmemmap"),
        ("vm_hyp_state", CAT, "hyp state kept in the vmemmap"),
        ("host_share_guest_count", "UInt32", "np-guests the page is shared with"),
        ("host_state", CAT, "effective host state (from its source of truth)"),
        ("hyp_state", CAT, "effective hyp state (from its source of truth)"),
    ),
)


HOST_STATE_MAP = Schema(
    "ownership map with vmemmap states",
    "The ownership map (MAP columns) with page_state filled from hyp_vmemmap (6.14+) and two "
    "more columns; blocks are split where the states inside them differ (`apply_states`).",
    MAP.columns
    + _cols(
        ("hyp_state", CAT, "hyp page state (vmemmap or hyp stage-1 SW bits)"),
        ("host_share_guest_count", "UInt32", "np-guests the page is shared with"),
    ),
)


BREACHES = Schema(
    "breaches",
    "One row per page (or host entry, for host_identity) that breaks a pKVM bookkeeping "
    "invariant (`check_states`, `s2trace check`), with every side's raw entry.",
    _cols(
        ("invariant", CAT, "name of the broken invariant (INVARIANTS)"),
        ("pa", "uint64", "physical address of the page (IPA of the entry for identity)"),
        ("size", "uint64", "bytes concerned"),
        ("host_raw", "UInt64", "host stage-2 descriptor covering the page"),
        ("hyp_va", "UInt64", "hyp VA of the hyp stage-1 leaf mapping the page"),
        ("hyp_raw", "UInt64", "that hyp stage-1 descriptor"),
        ("vmemmap_raw", "UInt64", "the page's struct hyp_page bytes"),
        ("host_state", CAT, "effective host state"),
        ("hyp_state", CAT, "effective hyp state"),
        ("detail", "string", "what was expected and what was found"),
    ),
)


LABELS = Schema(
    "labels",
    "Labelled physical ranges from the evidence of a capture (`s2trace.hyp.symbols`).",
    _cols(
        ("start", "uint64", "first physical address"),
        ("end", "uint64", "first physical address after the range"),
        ("label", "string", "what the range is"),
        ("source", CAT, "kallsyms, percpu, iomem, dmesg or trace"),
    ),
)


TOPUPS = Schema(
    "memcache top-ups",
    "Hyp memcache top-ups in a trace whose pages no transition names (`unnamed_topups`).",
    (
        Column("ts", "float64", "time of the top-up"),
        Column("line", "int64", "source line"),
        Column("pages", "Int64", "min_pages asked for (<NA> when the event does not say)"),
    ),
)


VMS = Schema(
    "guest VMs",
    "One row per VM in the hypervisor's vm_table (`find_guests`, `s2trace guests`).",
    (
        Column("handle", "uint32", "pKVM VM handle (vm_table slot + 0x1000)"),
        Column("hyp_va", "uint64", "hyp VA of the struct pkvm_hyp_vm"),
        Column("hyp_pa", "UInt64", "its physical address"),
        Column("host_kvm", "UInt64", "hyp VA of the host's struct kvm (kern_hyp_va)"),
        Column("pgd_va", "UInt64", "hyp VA of the guest stage-2 pgd"),
        Column("pgd_pa", "UInt64", "physical address of the guest stage-2 pgd"),
        Column("ia_bits", "UInt8", "guest IPA size in bits (kvm_pgtable.ia_bits)"),
        Column("start_level", "Int8", "first lookup level (kvm_pgtable.start_level)"),
        Column("vtcr", "UInt64", "VTCR_EL2 of the guest (kvm_s2_mmu.vtcr)"),
        Column("vmid", "UInt64", "kvm_s2_mmu.vmid"),
        Column("table_pages", "uint32", "stage-2 table pages walked"),
        Column("tables_hyp_owned", "UInt32", "of which the host stage 2 says hyp owns"),
        Column("pages_mapped", "uint64", "granule pages mapped in the guest stage 2"),
        Column("pages_shared", "uint64", "of which shared_borrowed (np-guest shares)"),
        Column("pages_donated", "uint64", "pages the host stage 2 annotates as this VM's"),
        Column("layout", "category", "struct layout used: a kernel version or 'scanned'"),
        Column("status", "category", "ok, or why the VM could not be read"),
    ),
)

GUEST_PAGES = Schema(
    "guest pages",
    "One row per guest stage-2 leaf (or non-zero invalid entry) and per host entry that "
    "names a guest: the reverse map gfn -> physical page (`find_guests`).",
    (
        Column("handle", "uint32", "VM handle"),
        Column("gfn", "uint64", "guest frame number (ipa >> 12 with 4K)"),
        Column("ipa", "uint64", "guest physical address"),
        Column("pa", "UInt64", "physical address (<NA>: not mapped)"),
        Column("size", "uint64", "bytes"),
        Column("state", "category", "guest page state, or the invalid type (poisoned ...)"),
        Column("source", "category", "guest-s2 or host-annotation"),
        Column("raw", "uint64", "the descriptor"),
    ),
)


SCHEMAS: tuple[Schema, ...] = (
    DESCRIPTOR,
    MAP,
    EVENTS,
    TRANSITIONS,
    INTERVALS,
    VIOLATIONS,
    MAP_DIFF,
    SNAPSHOT,
    HYP_MAP,
    VMEMMAP,
    PAGE_STATES,
    HOST_STATE_MAP,
    BREACHES,
    LABELS,
    TOPUPS,
    VMS,
    GUEST_PAGES,
)


#: Address-like columns (addresses, sizes, raw descriptors and register values) in every
#: schema and result table: shown as ``0x`` hex in every table, CSV and JSON a person reads
#: (:mod:`s2trace.render`); Parquet and DataFrames keep them as integers.
ADDRESS_COLUMNS = frozenset(
    {
        "actual_raw",
        "addr",
        "addr_start",
        "end",
        "expected_raw",
        "gfn",
        "handle",
        "host_kvm",
        "host_raw",
        "hyp_pa",
        "hyp_raw",
        "hyp_va",
        "ipa",
        "ipa_start",
        "next_table",
        "oa",
        "pa",
        "params_pa",
        "pgd_pa",
        "pgd_va",
        "raw",
        "res0",
        "size",
        "start",
        "table_pa",
        "va",
        "va_start",
        "vm_handle",
        "vmemmap_raw",
        "vtcr",
    }
)


def markdown() -> str:
    """All schemas as the Markdown of ``docs/columns.md``."""
    head = (
        "# s2trace DataFrame columns\n\nGenerated from `s2trace/columns.py`.  Address-like "
        "columns (" + ", ".join(f"`{c}`" for c in sorted(ADDRESS_COLUMNS)) + ") are integers "
        "in DataFrames and Parquet and `0x` hex in tables, CSV and JSON "
        "(`s2trace.render.hex_frame` does the same for a DataFrame).\n\n"
    )
    return head + "\n".join(s.markdown() for s in SCHEMAS)


if __name__ == "__main__":  # pragma: no cover - documentation generator
    print(markdown())
