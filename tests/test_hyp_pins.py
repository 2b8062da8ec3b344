"""Hypervisor events pin the hypercall the host only brackets (issue 15, point 3).

Host side: lines 36-45 of ``sample-traces/qemu-pkvm-7.3-lifecycle/ftrace.txt`` (VM 1's
``pkvm_create_hyp_vm`` with its two allocations, then ``pkvm_create_hyp_vcpu``), as the kernel
printed them (kernel/trace/trace_output.c).  Hypervisor side: lines synthesized in the layout
``[%03d]\\t%5llu.%06lu: <event> <fields>`` that the trace remote prints
(kernel/trace/trace_remote.c, 7.1 series; the same prefix in ACK's hyp_trace.c), with the fields
of ``kvm_hypevents.h``: 7.1 ``hyp_enter``/``hyp_exit`` ``reason=%s vcpu=%d``; ACK ``host_hcall``
``id=%u invalid=%u`` (written after the handler ran, hyp-main.c ``handle_host_hcall``) and
field-less ``hyp_enter``/``hyp_exit``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from s2trace.cli.main import cli
from s2trace.jobs.analyze import analyze
from s2trace.trace.queries import owner_at

LIFE = Path(__file__).resolve().parents[1] / "sample-traces" / "qemu-pkvm-7.3-lifecycle"
LM = (0xFFFF000000000000, 0x40000000)
PGD, VM, VCPU = 0x44F5C000, 0x44460000, 0x44F74000
# host: create_hyp_vm 43.079858, allocations return 43.079957 and 43.079990, returns 43.080810;
# create_hyp_vcpu 43.080858, its allocation returns 43.080970, it returns 43.081262 (all CPU 0)


def _host(tmp_path: Path) -> Path:
    lines = (LIFE / "ftrace.txt").read_text().splitlines(keepends=True)
    path = tmp_path / "host.txt"
    path.write_text("# tracer: nop\n" + "".join(lines[35:45]))
    return path


def _hyp(tmp_path: Path, body: list[str]) -> Path:
    path = tmp_path / "hyp.txt"
    path.write_text("".join(f"{line}\n" for line in body))
    return path


def _line(cpu: int, ts: float, text: str) -> str:
    sec, usec = divmod(round(ts * 1e6), 10**6)
    return f"[{cpu:03d}]\t{sec:5d}.{usec:06d}: {text}"


def _run(tmp_path, body, **kw):
    return analyze(
        _host(tmp_path),
        hyp_trace=_hyp(tmp_path, body),
        kernel="7.3",
        linear_map=LM,
        use_cache=False,
        **kw,
    )


def _donations(a):
    tr = a.transitions
    return tr[tr["op"].astype(str) == "donate"].set_index("addr")


def test_7_1_hvc_pins_init_vm_and_init_vcpu(tmp_path):
    body = [
        _line(0, 43.080100, "hyp_enter reason=hvc vcpu=0"),  # __pkvm_init_vm
        _line(0, 43.080700, "hyp_exit reason=eret_host vcpu=0"),
        _line(0, 43.081000, "hyp_enter reason=hvc vcpu=0"),  # __pkvm_init_vcpu
        _line(0, 43.081200, "hyp_exit reason=eret_host vcpu=0"),
    ]
    a = _run(tmp_path, body)
    d = _donations(a)
    for pa in (PGD, VM):
        assert (d.loc[pa, "t_earliest"], d.loc[pa, "ts"]) == (43.0801, 43.0807)
        assert str(d.loc[pa, "basis"]) == "trace: the hypervisor's hyp_enter reason=hvc"
        assert d.loc[pa, "line"] == 2  # hyp.txt line 2: the hyp_exit
    assert (d.loc[VCPU, "t_earliest"], d.loc[VCPU, "ts"]) == (43.081, 43.0812)
    ans = owner_at(a.timeline, PGD, 43.0808)
    assert ans.owner == "hyp" and ans.since == 43.0807 and ans.t_earliest == 43.0801
    assert ans.basis == "trace: the hypervisor's hyp_enter reason=hvc (trace line 2)"
    assert owner_at(a.timeline, PGD, 43.0806).owner == "host"


@pytest.mark.parametrize(
    "body",
    [
        # two HVCs of CPU 0 in the bracket: which one took the pages is unknown
        [
            _line(0, 43.080100, "hyp_enter reason=hvc vcpu=0"),
            _line(0, 43.080200, "hyp_exit reason=eret_host vcpu=0"),
            _line(0, 43.080300, "hyp_enter reason=hvc vcpu=0"),
            _line(0, 43.080400, "hyp_exit reason=eret_host vcpu=0"),
        ],
        # an HVC of another CPU: not this task's hypercall
        [
            _line(1, 43.080100, "hyp_enter reason=hvc vcpu=0"),
            _line(1, 43.080200, "hyp_exit reason=eret_host vcpu=0"),
        ],
        # not an HVC: a host stage-2 fault
        [
            _line(0, 43.080100, "hyp_enter reason=host_abort vcpu=0"),
            _line(0, 43.080200, "hyp_exit reason=eret_host vcpu=0"),
        ],
    ],
)
def test_no_pin_without_exactly_one_hypercall_of_the_task(tmp_path, body):
    d = _donations(_run(tmp_path, body))
    assert (d.loc[PGD, "t_earliest"], d.loc[PGD, "ts"]) == (43.07999, 43.08081)
    assert str(d.loc[PGD, "basis"]) == "trace"


def test_ack_host_hcall_pins_with_the_kernels_own_ids(tmp_path):
    names = [f"__call_{i}" for i in range(40)]
    names[24], names[25] = "__pkvm_init_vm", "__pkvm_init_vcpu"
    table = tmp_path / "hcalls.toml"
    table.write_text("names = [" + ", ".join(f'"{n}"' for n in names) + "]\n")
    body = [
        _line(0, 43.080100, "hyp_enter  "),
        _line(0, 43.080600, "host_hcall id=24 invalid=0"),
        _line(0, 43.080650, "hyp_exit  "),
        _line(0, 43.081000, "hyp_enter  "),
        _line(0, 43.081100, "host_hcall id=7 invalid=0"),  # another hypercall: no pin
        _line(0, 43.081150, "hyp_exit  "),
    ]
    a = _run(tmp_path, body, hypercalls=table)
    d = _donations(a)
    # written after the handler ran: certain there; it began at the CPU's hyp_enter
    assert (d.loc[PGD, "t_earliest"], d.loc[PGD, "ts"]) == (43.0801, 43.0806)
    assert str(d.loc[PGD, "basis"]).startswith("trace: the hypervisor's host_hcall")
    assert (d.loc[VCPU, "t_earliest"], d.loc[VCPU, "ts"]) == (43.08097, 43.081262)
    # without the table the ids cannot be named: no pin, and the header says so
    b = _run(tmp_path, body)
    assert str(_donations(b).loc[PGD, "basis"]) == "trace"
    assert "kvm_asm.h" in b.meta["hypercall_pins"]


def test_cli_takes_the_hyp_trace_and_the_hypercall_ids(tmp_path):
    """``--hyp-trace`` and ``--hypercalls`` on a trace command give the API's answer."""
    names = [f"__call_{i}" for i in range(40)]
    names[24] = "__pkvm_init_vm"
    table = tmp_path / "hcalls.toml"
    table.write_text("names = [" + ", ".join(f'"{n}"' for n in names) + "]\n")
    hyp = _hyp(
        tmp_path,
        [
            _line(0, 43.080100, "hyp_enter  "),
            _line(0, 43.080600, "host_hcall id=24 invalid=0"),
            _line(0, 43.080650, "hyp_exit  "),
        ],
    )
    args = [
        "owner", str(_host(tmp_path)), hex(PGD), "--at", "43.0807", "--json", "--kernel", "7.3",
        "--linear-map", "0xffff000000000000=0x40000000", "--no-cache",
    ]  # fmt: skip
    pinned = CliRunner().invoke(cli, [*args, "--hyp-trace", str(hyp), "--hypercalls", str(table)])
    assert pinned.exit_code == 0, pinned.output
    ans = json.loads(pinned.stdout)
    assert (ans["owner"], ans["since"], ans["t_earliest"]) == ("hyp", 43.0806, 43.0801)
    assert ans["basis"].startswith("trace: the hypervisor's host_hcall")
    bracketed = json.loads(CliRunner().invoke(cli, [*args, "--hyp-trace", str(hyp)]).stdout)
    assert bracketed["owner"] == "host"  # bracketed only: hyp's for certain from 43.08081
