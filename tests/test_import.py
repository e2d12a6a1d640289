"""``import gan_kernels`` stays cheap: it loads neither Triton nor torch._dynamo (each fresh process
compared with one that imports torch alone), while the operator torch.compile traces to is
registered by the import and a compiled call in a fresh process still takes it or, with a rule
of one's own, still stops under fullgraph=True saying why."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
WATCHED = ("triton", "torch._dynamo", "gan_kernels.kernels", "gan_kernels.kernels.launch", "gan_kernels.outside_graph")


def run_fresh(code: str) -> str:
    """``code`` in a fresh interpreter started from the repository root (the checkout's package)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def loaded_after(imports: str) -> dict[str, bool]:
    code = f"import json, sys\n{imports}\nprint(json.dumps({{m: m in sys.modules for m in {WATCHED!r}}}))"
    return json.loads(run_fresh(code).strip().splitlines()[-1])


def test_import_loads_neither_triton_nor_dynamo_nor_the_kernels():
    baseline = loaded_after("import torch")
    with_package = loaded_after("import torch\nimport gan_kernels\nfrom gan_kernels import *")
    added = sorted(m for m in WATCHED if with_package[m] and not baseline[m])
    assert added == []


def test_import_registers_the_operator():
    out = run_fresh("import torch, gan_kernels\nprint(torch.ops.gan_kernels.gan_step.default)")
    assert "gan_kernels.gan_step.default" in out


def test_compiled_call_in_a_fresh_process_is_one_operator():
    code = """
import torch
from gan_kernels import GANState, gan_

def run(g, state):
    return gan_(g, state, backend="torch").alpha * 2

ours, theirs = [torch.randn(7, 3), torch.randn(5)], [torch.randn(7, 3), torch.randn(5)]
for a, b in zip(ours, theirs):
    b.copy_(a)
compiled = torch.compile(run, backend="aot_eager", fullgraph=True)
print(torch.equal(compiled(ours, GANState()), run(theirs, GANState())) and all(map(torch.equal, ours, theirs)))
"""
    assert run_fresh(code).strip().splitlines()[-1] == "True"


def test_a_rule_of_ones_own_under_fullgraph_names_the_reason_in_a_fresh_process():
    """The first traced call with a rule loads the eager step's module while tracing; the error
    still gives the reason (on a torch whose torch.compiler.disable takes one)."""
    code = """
import torch
from gan_kernels import GANState, gan_

def halve(sigma, exponent):
    return sigma * 0 + 0.5, exponent

try:
    torch.compile(lambda g, s: gan_(g, s, backend="torch", rule=halve).alpha, backend="eager", fullgraph=True)([torch.randn(4)], GANState())
except Exception as error:
    print("a rule of one's own is a Python callable" in str(error))
else:
    print("compiled")
"""
    last = run_fresh(code).strip().splitlines()[-1]
    if "reason" in inspect.signature(torch.compiler.disable).parameters:
        assert last == "True"
    else:
        assert last in ("True", "False")
