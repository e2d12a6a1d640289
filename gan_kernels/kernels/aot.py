"""Compile every kernel ahead of time for a GPU architecture and report what the compiler made.

    python -m gan_kernels.kernels.aot [--arch 90] [--json PATH]

No GPU is needed: ``triton.compile`` targets ``GPUTarget("cuda", arch, 32)`` on any machine, and the
Triton wheel carries ``ptxas`` and ``cuobjdump``. One row per kernel variant: registers per thread,
local memory (spills), shared memory, and the number of 16-byte vector loads and stores in the
PTX. This catches what the interpreter accepts but the compiler rejects, and shows the memory
access a GPU will see.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import apply, finalize, stats, update
from .launch import FINALIZE_CHUNK, FINALIZE_WARPS, NUM_WARPS, TRITON_DTYPES
from .layout import tile_elements, update_tile_elements

TABLE = "*i64"
FLOATS = "*fp32"
VECTOR_LOAD = re.compile(r"ld\.global(?:\.[\w:]+)*\.v4\.")
VECTOR_STORE = re.compile(r"st\.global(?:\.[\w:]+)*\.v4\.")
RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


STATS_FORMS = {"single_read": stats.SINGLE_READ, "tile_sums": stats.TILE_SUMS, "deviations": stats.DEVIATIONS}
FINALIZE_PHASES = {"chan": finalize.CHAN, "means_only": finalize.MEANS_ONLY, "about_tensor_mean": finalize.ABOUT_TENSOR_MEAN}


def signature(kernel, types: dict[str, str]) -> dict[str, str]:
    """The kernel's arguments in order: the type named in ``types``, else ``constexpr``."""
    return {name: types.get(name, "constexpr") for name in kernel.arg_names}


def variants():
    """(name, kernel, signature, constexprs, num_warps) for every specialisation the launcher uses."""
    tables = dict.fromkeys(("ptrs", "numels", "first_tile", "tile_tensor", "index"), TABLE)
    stats_types = {**tables, **dict.fromkeys(("tensor_means", "part_means", "part_m2"), FLOATS), "part_offset": "i64"}
    apply_types = {**tables, **dict.fromkeys(("means", "stds", "alpha"), FLOATS), "nonfinite": "*i1"}
    finalize_types = {
        **dict.fromkeys(("part_means", "part_m2", "tensor_m2", "means", "stds", "global_std", "alpha"), FLOATS),
        **dict.fromkeys(("first_part", "numels", "tile_elems", "step", "param_steps"), TABLE),
        "num_tensors": "i32", "total_elements": "i64", "nonfinite": "*i1", "exponent": "*fp64", "arrivals": "*i32",
        "num_params": "i32",
    }
    update_types = {
        **dict.fromkeys(("p_ptrs", "g_ptrs", "m_ptrs", "v_ptrs", "vmax_ptrs", "step_ptrs", "numels", "first_tile",
                         "tile_tensor", "eligible", "group"), TABLE),
        **dict.fromkeys(("means", "stds", "alpha"), FLOATS), "hyper": "*fp64", "nonfinite": "*i1",
    }
    for torch_dtype, dtype in TRITON_DTYPES.items():
        block = tile_elements(torch_dtype)
        for form_name, form in STATS_FORMS.items():
            yield (f"stats[{form_name},{dtype}]", stats.tile_stats_kernel,
                   signature(stats.tile_stats_kernel, stats_types),
                   {"FORM": form.value, "DTYPE": dtype, "BLOCK": block}, NUM_WARPS)
        for mode_name, mode in apply.MODES.items():
            yield (f"apply[{mode_name},{dtype}]", apply.apply_kernel,
                   signature(apply.apply_kernel, apply_types),
                   {"MODE": mode, "DTYPE": dtype, "BLOCK": block}, NUM_WARPS)
        for mode_name, mode in apply.MODES.items():
            yield (f"adamw[{mode_name},{dtype}]", update.adamw_update_kernel,
                   signature(update.adamw_update_kernel, update_types),
                   {"MODE": mode, "DTYPE": dtype, "BLOCK": update_tile_elements(torch_dtype)}, NUM_WARPS)
    finalize_signature = signature(finalize.finalize_kernel, finalize_types)
    variants = [(name, phase, False, True) for name, phase in FINALIZE_PHASES.items()]
    variants += [("chan,param_steps", finalize.CHAN, True, True), ("chan,own_rule", finalize.CHAN, False, False)]
    for name, phase, param_steps, builtin_rule in variants:
        yield (f"finalize[{name}]", finalize.finalize_kernel, finalize_signature,
               {"PHASE": phase.value, "GAN_MODE": True, "CHUNK": FINALIZE_CHUNK, "PARAM_STEPS": param_steps,
                "BUILTIN_RULE": builtin_rule}, FINALIZE_WARPS)


def cuobjdump() -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def compile_report(arch: int) -> list[dict]:
    """Compile every variant for ``sm_{arch}``; one dict per variant."""
    rows = []
    target = GPUTarget("cuda", arch, 32)
    for name, kernel, signature, constexprs, num_warps in variants():
        pointers = [i for i, kind in enumerate(signature.values()) if kind.startswith("*")]
        source = ASTSource(kernel, signature, constexprs=constexprs,
                           attrs={(i,): [["tt.divisibility", 16]] for i in pointers})
        compiled = triton.compile(source, target=target, options={"num_warps": num_warps})
        ptx = compiled.asm["ptx"]
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(compiled.asm["cubin"])
            cubin.flush()
            usage = subprocess.run([cuobjdump(), "--dump-resource-usage", cubin.name],
                                   capture_output=True, text=True, check=True).stdout
        registers, stack, shared, local = map(int, RESOURCES.search(usage).groups())
        rows.append({
            "kernel": name, "arch": f"sm_{arch}", "num_warps": num_warps, "registers": registers,
            "local_bytes": local, "stack_bytes": stack, "shared_bytes": shared,
            "vector_loads": len(VECTOR_LOAD.findall(ptx)), "vector_stores": len(VECTOR_STORE.findall(ptx)),
        })
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 (A100) or 90 (H100)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 replaces the compiler with the interpreter; unset it to compile")
    rows = compile_report(args.arch)
    columns = ["kernel", "arch", "num_warps", "registers", "local_bytes", "shared_bytes", "vector_loads", "vector_stores"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
