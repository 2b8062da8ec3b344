"""Object names for the plots: what the trace's transitions say a range is.

The recipes of real kernels name the kernel path a transition came from; some paths allocate
one kind of object (``hyp_vm_donation``: the hyp VM or its stage-2 pgd, both allocated by
``pkvm_create_hyp_vm``; ``hyp_vcpu_donation``: a hyp vCPU,
``hyp_memcache_topup_page``: a memcache page).  ``kvm_share_hyp`` shares the host's struct kvm
(the page whose address is the VM handle a later ``hyp_vm_donation`` carries) and the vCPU
structs.  Transitions of recipes that name no object (s2trace's own tracepoint) are left
unnamed: the plots then show addresses only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from s2trace.columns import LABELS

__all__ = ["OBJECTS", "object_labels"]

#: Recipe -> the object its transitions move (facts: the pKVM VM creation path).
OBJECTS = {
    "hyp_vm_donation": "hyp VM or its pgd",
    "hyp_vcpu_donation": "hyp vCPU",
    "hyp_memcache_topup_page": "memcache page",
    "kvm_share_hyp": "vCPU (shared)",
    "guest_map": "guest page",
}


def object_labels(transitions: pd.DataFrame) -> pd.DataFrame:
    """LABELS rows (source ``trace``) naming the objects the transitions move."""
    recipe = transitions["recipe"].astype("object").fillna("").to_numpy()
    name = pd.Series(recipe).map(OBJECTS).to_numpy(dtype=object)
    addr = transitions["addr"].to_numpy(np.uint64)
    vm = transitions["vm"].astype("Int64")
    handles = set(vm[(recipe == "hyp_vm_donation") & vm.notna().to_numpy()].astype(int))
    is_kvm = (recipe == "kvm_share_hyp") & np.isin(addr.astype(np.int64), list(handles))
    name[is_kvm] = "struct kvm"
    named = pd.notna(name) & (transitions["op"].astype("object").to_numpy() != "reclaim")
    if not named.any():
        return LABELS.empty()
    vm_text = np.where(vm.notna().to_numpy(), " (VM " + vm.fillna(0).map(hex).to_numpy() + ")", "")
    name = np.where(named, name, "").astype(object)
    out = pd.DataFrame(
        {
            "start": addr[named],
            "end": addr[named] + transitions["size"].to_numpy(np.uint64)[named],
            "label": pd.array((name + vm_text)[named].astype(str), dtype="string"),
            "source": pd.Categorical(["trace"] * int(named.sum())),
        }
    ).drop_duplicates(["start", "end", "label"], ignore_index=True)
    return out
