"""pKVM page-ownership transition rules, as data, and their lookup tables.

One :class:`Rule` per (operation, initiator, completer) and kernel-version span says which
states the kernel requires before the transition (its :class:`Check`\\ s, in the order the
kernel makes them) and which state the page is in afterwards.  :func:`rule_table` compiles the
rules that apply to one kernel into small numpy tables over the page states, which the replay
engine (:mod:`s2trace.trace.replay`) applies to whole arrays of pages at once.

What was verified, and against what (facts in ``docs/kernel-facts.md``):

* share / unshare / donate and the NOPAGE meta-state of ``pkvm_mem_transition``
  (arch/arm64/kvm/hyp/nvhe/mem_protect.c, v5.17-v6.13; docs/kernel-facts.md §KF-3.1).
  Completer-side checks run there only with ``CONFIG_NVHE_EL2_DEBUG``; the replay still
  refuses such a transition (it leaves the two sides inconsistent) and says so in the
  violation's detail (``enforced="debug"``).
* the per-function rules of v6.14-7.1 (``__pkvm_host_share_hyp`` ...
  ``__pkvm_host_reclaim_page_guest``; mem_protect.c, read for v6.14, v6.16 and 7.1;
  docs/kernel-facts.md §KF-3.2).  ``host_share_guest_count``: the host stays SHARED_OWNED
  while it is > 0.
* which pairs exist in which version: host->hyp share v5.15 (unshare v5.17), host<->hyp donate
  v6.2 (and ``__pkvm_mark_hyp`` in v5.13-v5.14), host->FF-A share v6.5, np-guest share v6.14,
  protected-guest donate/share/reclaim 7.1 (docs/kernel-facts.md §KF-2.1, §KF-3.1, §KF-3.2).
* the host-side ``kvm_share_hyp`` count (arch/arm64/kvm/mmu.c, v5.17+;
  docs/kernel-facts.md §KF-3.4) is not a page state: the replay keeps it separately
  (``counted`` transitions), see :mod:`s2trace.trace.replay`.

Not modelled (no trace event reports them): the hypervisor's pin refcount (``-EBUSY`` on
unshare while pinned), the guest-IPA side of guest transitions (whether the guest IPA is
already mapped), permissions (``prot`` must be ``PAGE_HYP``).  ``unshare guest->host`` is the
generic unshare rule (§KF-3.1) applied to the 7.1 guest-initiated share; the 7.1 mem_protect.c
has no such function (``__pkvm_guest_unshare_host`` exists only in Android trees), so the rule
is unverified (docs/kernel-facts.md §KF-3.2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from s2trace.errors import InputError

__all__ = [
    "BASE_STATES",
    "COMPONENTS",
    "HOST_STATES",
    "OPS",
    "RULES",
    "Check",
    "PageState",
    "Rule",
    "RuleTable",
    "kernel_family",
    "owned_by",
    "parse_kernel",
    "rule_table",
    "rules_for",
]

Version = tuple[int, int]

COMPONENTS: tuple[str, ...] = ("host", "hyp", "guest", "ffa")
HOST_STATES: tuple[str, ...] = ("owned", "shared_owned", "shared_borrowed", "nopage")
OPS: tuple[str, ...] = (
    "share",
    "unshare",
    "donate",
    "reclaim",
    "access_fault",
    "lost",
    "confirm",
)
"""``confirm``: an event that shows a transition already replayed (a ``free_pages`` of a page
the teardown hypercall gave back); it changes nothing and is never refused."""


@dataclass(frozen=True, slots=True)
class PageState:
    """Ownership of one page as the replay tracks it (one value per page and time).

    ``peer`` is the other component involved: the share completer while the host shares the
    page, else the owner.  A component that is neither the host nor the peer cannot reach the
    page (NOPAGE).
    """

    name: str
    owner: str
    host_state: str
    peer: str | None = None
    peer_state: str | None = None

    def state_of(self, component: str) -> str:
        """The pKVM page state of ``component`` (host, hyp, guest, ffa) for this page."""
        if component == "host":
            return self.host_state
        if component == self.peer and self.peer_state is not None:
            return self.peer_state
        return "nopage"

    def describe(self) -> str:
        """``owner hyp: host nopage, hyp owned`` -- both sides, for messages."""
        text = f"owner {self.owner}: host {self.host_state}"
        if self.peer is not None:
            text += f", {self.peer} {self.peer_state}"
        return text


def owned_by(owner: str) -> PageState:
    """The state of a page donated to ``owner`` (the host cannot reach it)."""
    return PageState(f"{owner}_owned", owner, "nopage", owner, "owned")


# The states the rules below can produce.  ``shared_guest`` carries host_share_guest_count
# (>= 1) beside it; the engine keeps the count.  Order matters only for the tables' indices.
BASE_STATES: tuple[PageState, ...] = (
    PageState("host_owned", "host", "owned"),
    PageState("shared_hyp", "host", "shared_owned", "hyp", "shared_borrowed"),
    PageState("shared_ffa", "host", "shared_owned", "ffa", "shared_borrowed"),
    PageState("shared_guest", "host", "shared_owned", "guest", "shared_borrowed"),
    owned_by("hyp"),
    owned_by("guest"),
    owned_by("ffa"),
    PageState("hyp_shared_host", "hyp", "shared_borrowed", "hyp", "shared_owned"),
    PageState("guest_shared_host", "guest", "shared_borrowed", "guest", "shared_owned"),
)


@dataclass(frozen=True, slots=True)
class Check:
    """One precondition: ``component`` must be in one of ``accept`` (state, peer or None).

    ``name`` is what VIOLATIONS reports when the check fails; ``found_names`` gives a more
    precise name for some found states (e.g. ``double_unshare`` when the host finds its page
    already OWNED).  ``enforced``: ``always`` (the kernel refuses), ``debug`` (the kernel checks
    only with CONFIG_NVHE_EL2_DEBUG) or ``model`` (the kernel does not check; s2trace does,
    because passing it would leave the two sides inconsistent).
    """

    name: str
    component: str
    accept: tuple[tuple[str, str | None], ...]
    found_names: tuple[tuple[str, str], ...] = ()
    enforced: str = "always"

    def passes(self, state: PageState) -> bool:
        found = state.state_of(self.component)
        return any(found == s and (peer is None or state.peer == peer) for s, peer in self.accept)

    def name_for(self, state: PageState) -> str:
        found = state.state_of(self.component)
        return dict(self.found_names).get(found, self.name)

    def expected(self) -> str:
        parts = [s if p is None else f"{s} (with {p})" for s, p in self.accept]
        return f"{self.component} " + " or ".join(parts) if parts else "nothing"


@dataclass(frozen=True, slots=True)
class Rule:
    """One transition of one kernel-version span.

    ``result`` names the state after success (``None``: a marker that never changes the
    state); ``count`` is the change of host_share_guest_count (+1 share, -1 unshare, which
    returns the page to ``result`` only when the count reaches 0).
    """

    op: str
    initiator: str | None
    completer: str | None
    since: Version
    until: Version | None
    checks: tuple[Check, ...]
    result: str | None
    function: str
    source: str
    count: int = 0

    @property
    def key(self) -> tuple[str, str | None, str | None]:
        return (self.op, self.initiator, self.completer)

    @property
    def label(self) -> str:
        if self.initiator is None:
            return self.op
        return f"{self.op} {self.initiator}→{self.completer}"

    def applies_to(self, version: Version) -> bool:
        return self.since <= version and (self.until is None or version < self.until)

    def span(self) -> str:
        end = "" if self.until is None else f" until {self.until[0]}.{self.until[1]}"
        return f"Linux {self.since[0]}.{self.since[1]}+{end}"


# -- checks -------------------------------------------------------------------------------------
def _host_owned(name: str = "host_not_owned", *, donate: bool = False) -> Check:
    found = (("shared_owned", "shared_page_donated"),) if donate else ()
    return Check(name, "host", (("owned", None),), found)


def _nopage(component: str, enforced: str = "always") -> Check:
    return Check("completer_not_nopage", component, (("nopage", None),), enforced=enforced)


def _host_shared(peer: str | None = None) -> Check:
    """The host must share the page (with ``peer``: np-guest unshare checks the guest count)."""
    return Check("not_shared", "host", (("shared_owned", peer),), (("owned", "double_unshare"),))


def _borrowed(component: str, enforced: str = "always") -> Check:
    return Check(
        "completer_not_borrowed", component, (("shared_borrowed", None),), enforced=enforced
    )


def _owns(component: str, states: tuple[str, ...] = ("owned",)) -> Check:
    return Check(f"{component}_not_owned", component, tuple((s, None) for s in states))


_HOST_REACHES = Check(
    "host_access_not_owned",
    "host",
    (("owned", None), ("shared_owned", None), ("shared_borrowed", None)),
)


def _rule(
    what: str,
    span: str,
    checks: tuple[Check, ...],
    result: str | None,
    function: str,
    source: str,
    count: int = 0,
) -> Rule:
    """``_rule("share host hyp", "6.14-", ...)``: a compact spelling for the table below."""
    op, initiator, completer = what.split()
    since, _, until = span.partition("-")

    def version(text: str) -> Version:
        major, minor = text.split(".")
        return int(major), int(minor)

    return Rule(
        op,
        initiator,
        completer,
        version(since),
        version(until) if until else None,
        checks,
        result,
        function,
        source,
        count,
    )


_F31 = "mem_protect.c v5.17-v6.13, pkvm_mem_transition; docs/kernel-facts.md §KF-3.1"
_F32 = "mem_protect.c v6.14-7.1; docs/kernel-facts.md §KF-3.2"
_F31_F32 = "mem_protect.c v6.5-7.1; docs/kernel-facts.md §KF-3.1, §KF-3.2"
_F_MARK = "mem_protect.c v5.13-v5.14, __pkvm_mark_hyp; docs/kernel-facts.md §KF-3.1"
_F_DIRECT = "mem_protect.c v5.15-v5.16, direct share; docs/kernel-facts.md §KF-3.1"
_GUEST_SHARE_HOST = Check("host_not_owned", "host", (("owned", None), ("shared_owned", "guest")))
_GUEST_SHARED = Check(
    "not_shared", "guest", (("shared_owned", None),), (("owned", "double_unshare"),)
)
_GUEST_GONE = Check("completer_not_nopage", "host", (("nopage", None), ("shared_borrowed", None)))

# Versions: "since-until" (until excluded, open when empty).  One line per rule:
#   transition, versions, checks in the kernel's order, state after, kernel function, source.
# fmt: off
RULES: tuple[Rule, ...] = (
    # host <-> hyp
    _rule("donate host hyp", "5.13-5.15", (_host_owned(donate=True),),
          "hyp_owned", "__pkvm_mark_hyp", _F_MARK),
    _rule("share host hyp", "5.15-5.17", (_host_owned(),),
          "shared_hyp", "__pkvm_host_share_hyp", _F_DIRECT),
    _rule("share host hyp", "5.17-6.14", (_host_owned(), _nopage("hyp", "debug")),
          "shared_hyp", "__pkvm_host_share_hyp", _F31),
    _rule("unshare host hyp", "5.17-6.14", (_host_shared(), _borrowed("hyp", "debug")),
          "host_owned", "__pkvm_host_unshare_hyp", _F31),
    _rule("donate host hyp", "6.2-6.14", (_host_owned(donate=True), _nopage("hyp", "debug")),
          "hyp_owned", "__pkvm_host_donate_hyp", _F31),
    _rule("reclaim hyp host", "6.2-6.14", (_owns("hyp"), _nopage("host", "debug")),
          "host_owned", "__pkvm_hyp_donate_host", _F31),
    _rule("share host hyp", "6.14-", (_host_owned(), _nopage("hyp")),
          "shared_hyp", "__pkvm_host_share_hyp", _F32),
    _rule("unshare host hyp", "6.14-", (_host_shared(), _borrowed("hyp")),
          "host_owned", "__pkvm_host_unshare_hyp", _F32),
    _rule("donate host hyp", "6.14-", (_host_owned(donate=True), _nopage("hyp")),
          "hyp_owned", "__pkvm_host_donate_hyp", _F32),
    _rule("reclaim hyp host", "6.14-", (_owns("hyp"), _nopage("host")),
          "host_owned", "__pkvm_hyp_donate_host", _F32),
    # host -> FF-A (the Secure side keeps no state at EL2: only the host side is checked)
    _rule("share host ffa", "6.5-", (_host_owned(),),
          "shared_ffa", "__pkvm_host_share_ffa", _F31_F32),
    _rule("unshare host ffa", "6.5-", (_host_shared(), _borrowed("ffa", "model")),
          "host_owned", "__pkvm_host_unshare_ffa", _F31_F32),
    # host -> np-guest, counted in host_share_guest_count
    _rule("share host guest", "6.14-", (_GUEST_SHARE_HOST,),
          "shared_guest", "__pkvm_host_share_guest", _F32, count=+1),
    _rule("unshare host guest", "6.14-", (_host_shared("guest"),),
          "host_owned", "__pkvm_host_unshare_guest", _F32, count=-1),
    # host <-> protected guest
    _rule("donate host guest", "7.1-", (_host_owned(donate=True),),
          "guest_owned", "__pkvm_host_donate_guest", _F32),
    _rule("share guest host", "7.1-", (_owns("guest"), _nopage("host")),
          "guest_shared_host", "__pkvm_guest_share_host", _F32),
    _rule("unshare guest host", "7.1-", (_GUEST_SHARED, _borrowed("host")),
          "guest_owned", "(generic unshare rule; no 7.1 mainline function)", _F31),
    _rule("reclaim guest host", "7.1-", (_owns("guest", ("owned", "shared_owned")), _GUEST_GONE),
          "host_owned", "__pkvm_host_reclaim_page_guest / __pkvm_host_force_reclaim_page_guest",
          _F32),
    # a host stage-2 abort: a marker, checked but never changing the state
    Rule("access_fault", None, None, (5, 13), None, (_HOST_REACHES,), None,
         "handle_host_mem_abort", "mem_protect.c v5.13-7.1; docs/kernel-facts.md §KF-2.6"),
)
# fmt: on

# Pseudo rules the engine uses besides the kernel's.
_NEVER = ()
NOOP = Rule("noop", None, None, (0, 0), None, (), None, "-", "s2trace")
LOST = Rule("lost", None, None, (0, 0), None, (), None, "-", "s2trace")
UNSUPPORTED = Rule(
    "unsupported",
    None,
    None,
    (0, 0),
    None,
    (Check("unsupported_transition", "host", _NEVER),),
    None,
    "-",
    "s2trace",
)
UNSHARE_NOT_SHARED = Rule(
    "unshare",
    "host",
    "hyp",
    (5, 17),
    None,
    (Check("unshare_not_shared", "host", _NEVER),),
    None,
    "unshare_pfn_hyp",
    "arch/arm64/kvm/mmu.c v5.17+; docs/kernel-facts.md §KF-3.4",
)

# Host-side kvm_share_hyp/kvm_unshare_hyp per-PFN count, from v5.17 (arch/arm64/kvm/mmu.c;
# docs/kernel-facts.md §KF-3.4).
COUNTED_SINCE: Version = (5, 17)

_FAMILIES: tuple[tuple[Version, str], ...] = (
    ((5, 13), "5.13-5.14: __pkvm_mark_hyp only"),
    ((5, 15), "5.15-5.16: host->hyp share"),
    ((5, 17), "5.17-6.13: pkvm_mem_transition (share/unshare/donate, FF-A from 6.5)"),
    ((6, 14), "6.14-7.0: per-function transitions, host state in hyp_vmemmap, np-guest shares"),
    ((7, 1), "7.1+: protected-guest donate/share/reclaim"),
)


def parse_kernel(kernel: str | tuple[int, int]) -> Version:
    """``"6.12"``, ``"7.3.4+deb13"`` or ``(6, 12)`` -> ``(6, 12)``; InputError if not pKVM."""
    if isinstance(kernel, tuple):
        version = (int(kernel[0]), int(kernel[1]))
    else:
        m = re.match(r"\s*(?:linux-)?(\d+)\.(\d+)", str(kernel))
        if m is None:
            raise InputError(f"kernel {kernel!r}: expected a version such as 6.12 or 7.3.4")
        version = (int(m.group(1)), int(m.group(2)))
    if version < (5, 13):
        raise InputError(f"kernel {kernel!r}: pKVM page ownership exists from Linux 5.13")
    return version


def kernel_family(version: Version) -> str:
    """The description of the version span ``version`` falls in."""
    return [text for since, text in _FAMILIES if since <= version][-1]


def rules_for(version: Version) -> tuple[Rule, ...]:
    """The kernel rules that apply to ``version``."""
    return tuple(r for r in RULES if r.applies_to(version))


def _spans_of(key: tuple[str | None, str | None, str | None]) -> str:
    spans = [r.span() for r in RULES if r.key == key]
    return ", ".join(spans)


@dataclass(frozen=True)
class RuleTable:
    """The rules of one kernel as arrays over page states (rule id x base state id).

    ``fail[r, s]`` is the code of the first check rule ``r`` breaks in state ``s`` (0: none),
    ``target[r, s]`` the state after it (``s`` itself when it fails or is a marker),
    ``delta[r]`` its change of host_share_guest_count and ``mutates[r]`` whether it can change
    anything at all.  ``pre[r]`` is the state rule ``r`` requires before it (its precondition:
    the first state, in ``states`` order, that passes every check; -1 for markers), which the
    replay takes as a page's state before its first transition.  Codes index ``check_names``.
    """

    version: Version
    states: tuple[PageState, ...]
    rules: tuple[Rule, ...]
    fail: np.ndarray
    target: np.ndarray
    delta: np.ndarray
    mutates: np.ndarray
    check_names: tuple[str, ...]
    pre: np.ndarray
    ids: dict[tuple[str, str | None, str | None], int] = field(repr=False)

    # -- well-known ids ------------------------------------------------------------------------
    @property
    def noop(self) -> int:
        return self.rules.index(NOOP)

    @property
    def lost(self) -> int:
        return self.rules.index(LOST)

    @property
    def unsupported(self) -> int:
        return self.rules.index(UNSUPPORTED)

    @property
    def unshare_not_shared(self) -> int:
        return self.rules.index(UNSHARE_NOT_SHARED)

    def state_id(self, name: str) -> int:
        return [s.name for s in self.states].index(name)

    @property
    def shared_guest(self) -> int:
        return self.state_id("shared_guest")

    def rule_id(self, op: str, initiator: str | None, completer: str | None) -> int:
        """Rule id of a transition; donations back to the host are reclaims."""
        if op == "access_fault":
            return self.ids[("access_fault", None, None)]
        if op == "lost":
            return self.lost
        if op == "confirm":
            return self.noop
        if op == "donate" and completer == "host":
            op = "reclaim"
        return self.ids.get((op, initiator, completer), self.unsupported)

    def counted_ids(self) -> tuple[int, int]:
        """Rule ids of host->hyp share and unshare (-1 where the kernel lacks them)."""
        return (
            self.ids.get(("share", "host", "hyp"), -1),
            self.ids.get(("unshare", "host", "hyp"), -1),
        )

    # -- applying ----------------------------------------------------------------------------------
    def apply(
        self, rule: np.ndarray, base: np.ndarray, count: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply rules elementwise: (new base, new guest count, check code; 0 = accepted).

        The single definition of what a rule does to (state, host_share_guest_count); both
        engines of the replay use it (the scan engine through tables built from it).
        """
        code = self.fail[rule, base]
        ok = code == 0
        new_base = np.where(ok, self.target[rule, base], base)
        delta = self.delta[rule]
        new_count = np.where(ok, count + delta, count)
        shared = self.shared_guest
        # a guest unshare brings the page back to the host only at count 0
        new_base = np.where(ok & (delta < 0) & (new_count > 0), shared, new_base)
        new_count = np.where(new_base == shared, new_count, 0)
        return new_base, new_count, code

    def detail(self, rule_id: int, base: int) -> str:
        """One sentence for a violation: the transition, what was expected, what was found."""
        rule = self.rules[rule_id]
        state = self.states[base]
        check = next(c for c in rule.checks if not c.passes(state))
        if check.name == "unshare_not_shared":
            return (
                "unshare host→hyp (kvm_unshare_hyp): the host's share count of this page is 0, "
                "so unshare_pfn_hyp hits WARN_ON and fails: unshared more often than shared "
                f"({state.describe()})"
            )
        found = state.state_of(check.component)
        text = (
            f"{rule.label} ({rule.function}): expected {check.expected()}, "
            f"found {check.component} {found} ({state.describe()})"
        )
        if check.name == "host_access_not_owned":
            text += (
                "; up to 7.0 the hypervisor BUG()s on such an abort, 7.1+ injects it into the host"
            )
        if check.enforced == "debug":
            text += "; this kernel checks the completer only with CONFIG_NVHE_EL2_DEBUG"
        elif check.enforced == "model":
            text += "; the kernel checks only the host side here, s2trace checks both"
        return text

    def unsupported_detail(
        self, op: str | None, initiator: str | None, completer: str | None, kernel: str
    ) -> str:
        """Why a transition the kernel does not have was refused."""
        key = ("reclaim" if op == "donate" and completer == "host" else op, initiator, completer)
        spans = _spans_of(key)
        where = f" (it exists in {spans})" if spans else " (no pKVM kernel has it)"
        return f"{op} {initiator}→{completer} is not a pKVM transition of Linux {kernel}{where}"


def rule_table(version: Version, extra_states: Iterable[PageState] = ()) -> RuleTable:
    """Compile the rules of ``version`` into a :class:`RuleTable` over the base states."""
    return _rule_table(version, tuple(extra_states))


def _precondition(r: int, rule: Rule, fail: np.ndarray) -> int:
    """The first state rule ``r`` accepts (-1: none, or a marker that changes nothing)."""
    ok = np.flatnonzero(fail[r] == 0) if rule.result is not None else np.zeros(0, np.intp)
    return int(ok[0]) if len(ok) else -1


@lru_cache(maxsize=64)
def _rule_table(version: Version, extra_states: tuple[PageState, ...]) -> RuleTable:
    states = BASE_STATES + extra_states
    kernel_rules = rules_for(version)
    rules = (*kernel_rules, NOOP, LOST, UNSUPPORTED, UNSHARE_NOT_SHARED)
    names: list[str] = [""]
    for rule in rules:
        for check in rule.checks:
            for n in {check.name, *dict(check.found_names).values()}:
                if n not in names:
                    names.append(n)
    index = {s.name: i for i, s in enumerate(states)}
    fail = np.zeros((len(rules), len(states)), dtype=np.int16)
    target = np.tile(np.arange(len(states), dtype=np.int16), (len(rules), 1))
    for r, rule in enumerate(rules):
        for s, state in enumerate(states):
            broken = next((c for c in rule.checks if not c.passes(state)), None)
            if broken is not None:
                fail[r, s] = names.index(broken.name_for(state))
            elif rule.result is not None:
                target[r, s] = index[rule.result]
    ids = {rule.key: i for i, rule in enumerate(kernel_rules)}
    return RuleTable(
        version=version,
        states=states,
        rules=rules,
        fail=fail,
        target=target,
        delta=np.array([r.count for r in rules], dtype=np.int8),
        mutates=np.array([r.result is not None for r in rules], dtype=bool),
        check_names=tuple(names),
        pre=np.array([_precondition(r, rule, fail) for r, rule in enumerate(rules)], np.int16),
        ids=ids,
    )
