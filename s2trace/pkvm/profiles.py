"""pKVM annotation profiles: the owner and page-state encodings, by kernel version, as data.

A :class:`Profile` is read from ``profiles.toml`` (shipped) or a user's TOML file with the same
keys; see the comment at the top of ``profiles.toml``.  It answers, for one descriptor, who owns
the page and in which state (:meth:`Profile.annotate`), and encodes the reverse for the builder
(:meth:`Profile.encode_invalid`, :meth:`Profile.encode_state`).  The numpy engine reads the same
fields and applies them to whole arrays.

Profiles may be parameterised on the command line: ``rfc-v3-prot-none,prot_none_bit=58``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from s2trace.arch.geometry import bits
from s2trace.errors import InputError
from s2trace.files import parse_toml, read_text, shown
from s2trace.numbers import quoted, read_int
from s2trace.pkvm.profile_schema import check_table, parse_override

__all__ = [
    "DEFAULT_PROFILE",
    "Annotation",
    "Profile",
    "get_profile",
    "load_profiles",
    "profile_for_kernel",
    "profile_names",
]

DEFAULT_PROFILE = "linux-5.15"

BitRange = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Annotation:
    """pKVM reading of one descriptor (``None`` where a field does not apply)."""

    owner: str | None = None
    owner_id: int | None = None
    page_state: str | None = None
    locked: bool | None = None
    inv_type: str | None = None
    vm_handle: int | None = None
    gfn: int | None = None
    note: bool | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    """One kernel's encoding of pKVM ownership in host stage-2 descriptors."""

    name: str
    kernels: str = ""
    mapped_owner: str = "host"
    owners: Mapping[int, str] = field(default_factory=lambda: {0: "host"})
    owner_bits: BitRange | None = None
    owner_type: int | None = None
    lock_bit: int | None = None
    note_bit: int | None = None
    type_bits: BitRange | None = None
    types: Mapping[int, str] = field(default_factory=dict)
    lock_type: int | None = None
    guest_owner: int | None = None
    handle_bits: BitRange | None = None
    gfn_bits: BitRange | None = None
    state_source: str = "pte"
    state_bits: BitRange | None = None
    states: Mapping[int, str] = field(default_factory=dict)
    prot_none_bit: int | None = None

    # -- names ------------------------------------------------------------------------------
    def owner_name(self, owner_id: int) -> str:
        """Owner name for an id; unknown ids read ``id:N`` (never an error)."""
        return self.owners.get(owner_id, f"id:{owner_id}")

    def type_name(self, value: int) -> str:
        if value == 0:
            return "none"
        return self.types.get(value, f"id:{value}")

    def state_name(self, value: int) -> str:
        return self.states.get(value, f"id:{value}")

    @property
    def mapped_owner_id(self) -> int | None:
        for k, v in self.owners.items():
            if v == self.mapped_owner:
                return k
        return None

    # -- decoding -----------------------------------------------------------------------------
    def annotate(self, raw: int, kind: str) -> Annotation:
        """pKVM meaning of a descriptor of ``kind`` (scalar path, used by the Construct engine)."""
        if kind in ("block", "page"):
            return Annotation(
                owner=self.mapped_owner,
                owner_id=self.mapped_owner_id,
                page_state=self._leaf_state(raw),
            )
        if kind != "invalid":
            return Annotation()
        return self._annotate_invalid(raw)

    def _leaf_state(self, raw: int) -> str | None:
        if self.state_source == "pte" and self.state_bits:
            return self.state_name(bits(raw, *self.state_bits))
        if self.state_source == "vmemmap":
            return "unknown"
        return None

    def _annotate_invalid(self, raw: int) -> Annotation:
        inv_type = bits(raw, *self.type_bits) if self.type_bits else None
        if self.lock_bit is not None:
            locked: bool | None = bool(raw >> self.lock_bit & 1)
        elif self.lock_type is not None:
            locked = inv_type == self.lock_type
        else:
            locked = None
        note = bool(raw >> self.note_bit & 1) if self.note_bit is not None else None
        type_name = self.type_name(inv_type) if inv_type is not None else None

        if self.prot_none_bit is not None and raw >> self.prot_none_bit & 1:
            return Annotation("inaccessible", None, "prot_none", locked, type_name, note=note)

        owner_id: int | None = None
        if self.owner_bits and (self.owner_type is None or inv_type == self.owner_type):
            owner_id = bits(raw, *self.owner_bits)
        elif raw == 0:
            owner_id = 0
        owner = self.owner_name(owner_id) if owner_id is not None else None

        handle = gfn = None
        if owner_id is not None and owner_id == self.guest_owner:
            handle = bits(raw, *self.handle_bits) if self.handle_bits else None
            gfn = bits(raw, *self.gfn_bits) if self.gfn_bits else None
        return Annotation(
            owner=owner,
            owner_id=owner_id,
            page_state=self._invalid_state(owner_id),
            locked=locked,
            inv_type=type_name,
            vm_handle=handle,
            gfn=gfn,
            note=note,
        )

    def _invalid_state(self, owner_id: int | None) -> str | None:
        """Host page state of an invalid entry.

        Owned by someone else: the host cannot reach it (NOPAGE).  Owned by the host (zero
        entry, not mapped yet): owned, when the PTE holds host states; unknown when they moved
        to the vmemmap (a shared page may sit behind a zero entry, seen on 7.3, §KF-2.8).
        """
        if owner_id is None or self.state_source == "none":
            return None
        if owner_id != self.mapped_owner_id:
            return "nopage"
        return "owned" if self.state_source == "pte" else "unknown"

    # -- encoding (the builder) -------------------------------------------------------------------
    def owner_id_of(self, owner: str | int) -> int:
        """Owner id for a name (``hyp``), an ``id:N`` spelling or a number."""
        if isinstance(owner, int):
            return owner
        text = owner.strip().lower()
        for k, v in self.owners.items():
            if v == text:
                return k
        if text.startswith("id:"):
            text = text[3:]
        number = read_int(text)
        if number is None or not 0 <= number < 1 << 64:
            known = ", ".join(self.owners.values())
            raise InputError(f"owner {quoted(owner)}: profile {self.name} knows {known}")
        return number

    def encode_invalid(
        self,
        owner: str | int | None = None,
        *,
        locked: bool = False,
        note: bool = False,
        inv_type: str | int | None = None,
        vm_handle: int = 0,
        gfn: int = 0,
        prot_none: bool = False,
    ) -> int:
        """An invalid descriptor carrying this annotation under this profile."""
        raw = 0
        if prot_none:
            raw |= 1 << self._bit(self.prot_none_bit, "prot_none")
        if inv_type is not None or (self.owner_type is not None and owner is not None):
            raw |= self._put(self._type_id(inv_type), self.type_bits, "type")
        if owner is not None:
            oid = self.owner_id_of(owner)
            raw |= self._put(oid, self.owner_bits, "owner")
            if oid == self.guest_owner and self.handle_bits:
                raw |= self._put(vm_handle, self.handle_bits, "vm_handle")
                raw |= self._put(gfn, self.gfn_bits, "gfn")
        if locked:
            if self.lock_bit is not None:
                raw |= 1 << self.lock_bit
            elif self.lock_type is not None and self.type_bits:
                raw |= self._put(self.lock_type, self.type_bits, "type")
            else:
                raise InputError(f"profile {self.name} has no lock marker")
        if note:
            raw |= 1 << self._bit(self.note_bit, "note")
        return raw

    def _type_id(self, inv_type: str | int | None) -> int:
        if inv_type is None:
            return self.owner_type or 0
        if isinstance(inv_type, int):
            return inv_type
        for k, v in self.types.items():
            if v == inv_type:
                return k
        raise InputError(
            f"invalid-entry type {inv_type!r}: profile {self.name} has "
            f"{', '.join(self.types.values()) or 'none'}"
        )

    def encode_state(self, state: str) -> int:
        """Descriptor bits that put ``state`` in a valid leaf (0 for ``owned``)."""
        if self.state_source != "pte" or not self.state_bits:
            if state == "owned":
                return 0
            raise InputError(f"profile {self.name} keeps no page state in the PTE")
        for k, v in self.states.items():
            if v == state:
                return self._put(k, self.state_bits, "state")
        raise InputError(
            f"page state {state!r}: profile {self.name} has {', '.join(self.states.values())}"
        )

    def _bit(self, bit: int | None, what: str) -> int:
        """The profile's ``what`` bit; InputError when the profile has none."""
        if bit is None:
            raise InputError(f"profile {self.name} has no {what} bit")
        return bit

    def _put(self, value: int, where: BitRange | None, what: str) -> int:
        if where is None:
            raise InputError(f"profile {self.name} has no {what} field")
        hi, lo = where
        if value < 0 or value >> (hi - lo + 1):
            raise InputError(f"{what} {value} ({value:#x}) does not fit in bits {hi}:{lo}")
        return value << lo


# -- loading ---------------------------------------------------------------------------------
#: Largest profiles file read (a profile is a few hundred bytes).
PROFILES_FILE_LIMIT = 1 << 20


def _from_table(name: str, table: Any, origin: str) -> Profile:
    return Profile(name=name, **check_table(name, table, origin))


def load_profiles(path: str | Path | None = None) -> dict[str, Profile]:
    """Profiles from a TOML file (the shipped ``profiles.toml`` when ``path`` is None), every
    key checked (:mod:`s2trace.pkvm.profile_schema`)."""
    if path is None:
        text = resources.files("s2trace.pkvm").joinpath("profiles.toml").read_text()
        origin = "profiles.toml"
    else:
        text = read_text(path, "a profiles file (UTF-8 TOML)", limit=PROFILES_FILE_LIMIT)
        origin = shown(path)
    data = parse_toml(text, origin)
    return {name: _from_table(name, table, origin) for name, table in data.items()}


@lru_cache(maxsize=1)
def _builtin() -> dict[str, Profile]:
    return load_profiles()


def profile_names() -> list[str]:
    """Names of the shipped profiles."""
    return list(_builtin())


def get_profile(spec: str | Profile = DEFAULT_PROFILE, extra: str | Path | None = None) -> Profile:
    """A profile by name, with optional ``,key=value`` overrides.

    Example: ``rfc-v3-prot-none,prot_none_bit=58``.

    ``extra`` names a user TOML file whose profiles are added to (or replace) the shipped ones.
    """
    if isinstance(spec, Profile):
        return spec
    table = dict(_builtin())
    if extra is not None:
        table.update(load_profiles(extra))
    name, *params = [p.strip() for p in spec.split(",")]
    if name not in table:
        raise InputError(f"profile {quoted(name)}: expected one of {', '.join(table)}")
    overrides = dict(parse_override(spec, param) for param in params)
    return replace(table[name], **overrides) if overrides else table[name]


def profile_for_kernel(version: str) -> str:
    """The annotation profile of a mainline kernel version (§KF-2.1)."""
    m = re.match(r"(\d+)\.(\d+)", version.strip(), re.ASCII)
    if not m:
        raise InputError(f"kernel version {version!r}: expected MAJOR.MINOR[...]")
    v = (int(m.group(1)), int(m.group(2)))
    if v < (5, 15):
        return "linux-5.13"
    if v < (6, 14):
        return "linux-5.15"
    if v < (7, 1):
        return "linux-6.14"
    return "linux-7.1"
