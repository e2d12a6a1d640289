"""Plant the bugs the suite must catch, one at a time, and report whether the tests notice.

    python tests/mutation_check.py [--only SUBSTRING ...] [--jobs N] [--list]

Each mutant is one textual change to one file of the package (the fear, written as code). For
each, the repository is copied to a temporary folder, the change is made there, and the tests
that guard that behaviour run against the copy; the mutant is *caught* when they fail. The same
test selections run once unchanged first: a selection that fails without a mutant makes every
verdict meaningless, so the check stops there. A mutant whose text no longer occurs in the code
is reported as *stale* (the code moved on; update the mutant), never as caught.

This is slow (the kernel mutants run Triton's interpreter) and is not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("gan_kernels", "tests", "benchmarks", "examples", "docs", "pyproject.toml", "README.md", "CHANGELOG.md",
          "LICENSE", "MANIFEST.in", "Makefile", "mkdocs.yml")

FALLBACK = "gan_kernels/fallback.py"
APPLY = "gan_kernels/kernels/apply.py"
FINALIZE = "gan_kernels/kernels/finalize.py"
PLAN = "gan_kernels/plan.py"
UPDATE = "gan_kernels/kernels/update.py"
OPTIM = "gan_kernels/optim.py"
FUSED = "gan_kernels/kernels/fused.py"
LAYOUT = "gan_kernels/kernels/layout.py"
HOOKS = "gan_kernels/hooks.py"

FALLBACK_VALUES = ["tests/test_functional.py", "-k", "boundaries or multi_step or offset or mixed"]
KERNEL_VALUES = ["tests/test_kernels.py", "-k", "(tile_boundaries and single_read) or multi_step or offset"]
ADAMW_TESTS = ("tests/test_adamw.py", "-k", "every_mode or every_option or nonfinite or raw_gradient")
STEADY_TESTS = ("tests/test_steady_state.py",)
FSDP_TESTS = ("tests/test_fsdp.py",)


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = [
    Mutant(
        "fp16/bf16 outputs rounded twice: fallback, CPU apply of small tensors",
        FALLBACK,
        "                torch._foreach_copy_(small, self.rows)",
        "                torch._foreach_copy_(small, [(r / scale[0]).to(g.dtype).to(r.dtype) * scale[0] for r, g in zip(self.rows, small)])",
        (*FALLBACK_VALUES,),
    ),
    Mutant(
        "fp16/bf16 outputs rounded twice: fallback, CPU apply of large tensors",
        FALLBACK,
        "torch.add(offset, work.copy_(tile), alpha=scale, out=work)",
        "work.copy_(tile.sub_(shift)).mul_(scale)",
        (*FALLBACK_VALUES,),
    ),
    Mutant(
        "fp16/bf16 outputs rounded twice: fallback, device apply",
        FALLBACK,
        "((g.to(acc) - shift) * scale).to(g.dtype)",
        "(g - shift.to(g.dtype)) * scale.to(g.dtype)",
        (*FALLBACK_VALUES,),
    ),
    Mutant(
        "fp16/bf16 outputs rounded twice: kernel apply",
        APPLY,
        "x = tl.load(block).to(tl.float32)",
        "x = (tl.load(block).to(tl.float32) - mean).to(DTYPE).to(tl.float32) + mean",
        (*KERNEL_VALUES,),
    ),
    Mutant(
        "mean rounded into the gradient dtype before subtracting: fallback",
        FALLBACK,
        "shift, scale = shift.item(), scale.item()",
        "shift, scale = shift.to(g.dtype).item(), scale.item()",
        (*FALLBACK_VALUES,),
    ),
    Mutant(
        "mean rounded into the gradient dtype before subtracting: kernel apply",
        APPLY,
        "mean = tl.load(means + slot)",
        "mean = tl.load(means + slot).to(DTYPE).to(tl.float32)",
        (*KERNEL_VALUES,),
    ),
    Mutant(
        "stored exponent ignored: fallback",
        "gan_kernels/rule.py",
        "    alpha, exponent = evaluate(rule, sigma, state.exponent)",
        "    alpha, exponent = evaluate(rule, sigma, state.exponent + float('nan'))",
        ("tests/test_functional.py", "-k", "multi_step"),
    ),
    Mutant(
        "stored exponent ignored: kernels",
        FINALIZE,
        "autoscale(sigma, old_exponent)",
        "autoscale(sigma, old_exponent + float('nan'))",
        ("tests/test_kernels.py", "-k", "multi_step or repeated_steps"),
    ),
    Mutant(
        "non-finite step written by the fallback's device apply",
        FALLBACK,
        "torch.where(keep, row.to(g.dtype), g, out=g)",
        "g.copy_(row)",
        ("tests/test_functional.py", "-k", "nonfinite"),
    ),
    Mutant(
        "plan key without the sizes (a stale plan for a larger or smaller tensor)",
        PLAN,
        "tuple(map(_size, grads)), ",
        "",
        ("tests/test_plan.py", "tests/test_kernels.py", "-k", "size or share_a_pointer or overlapping"),
    ),
    Mutant(
        "plan key without the strides",
        PLAN,
        "tuple(map(_stride, grads)), ",
        "",
        ("tests/test_plan.py", "-k", "strides"),
    ),
    Mutant(
        "plan key without the dtypes",
        PLAN,
        "tuple(map(_dtype, grads)), ",
        "",
        ("tests/test_plan.py", "tests/test_kernels.py", "-k", "dtype or share_a_pointer"),
    ),
    Mutant(
        "plan key without the devices",
        PLAN,
        ", tuple(map(_device, grads))",
        "",
        ("tests/test_plan.py", "-k", "device"),
    ),
    Mutant(
        "the last step's plan reused without comparing pointers",
        PLAN,
        "plan is None or plan.ptrs != ptrs or plan.backend != backend",
        "plan is None or plan.backend != backend",
        ("tests/test_plan.py", "-k", "reallocated"),
    ),
    Mutant(
        "mode gc removes one mean per tensor (the old meaning) in the fallback, small tensors",
        FALLBACK,
        "                block.sub_(block.mean(2, keepdim=True))",
        "                pass",
        ("tests/test_functional.py", "-k", "gc"),
    ),
    Mutant(
        "mode gc removes one mean per tensor (the old meaning) in the fallback, large tensors",
        FALLBACK,
        "result = (x - row_means(x)).to(g.dtype)",
        "result = (x - x.mean()).to(g.dtype)",
        ("tests/test_functional.py", "-k", "gc"),
    ),
    Mutant(
        "mode gc removes one mean per tensor (the old meaning) in the reference",
        "gan_kernels/reference.py",
        "y = x - row_means(x)",
        "y = x - mean",
        ("tests/test_reference.py", "-k", "gc"),
    ),
    Mutant(
        "fused AdamW: weight decay not applied",
        UPDATE,
        "    p = p * decay\n",
        "",
        ADAMW_TESTS,
    ),
    Mutant(
        "fused AdamW: the GAN transform skipped",
        UPDATE,
        "        g = transform(g, tl.load(means + slot), tl.load(alpha), tl.load(stds + slot), MODE)",
        "        g = g * 1.0",
        ADAMW_TESTS,
    ),
    Mutant(
        "fused AdamW: maximize ignored",
        UPDATE,
        "        g = -g",
        "        g = g * 1.0",
        ADAMW_TESTS,
    ),
    Mutant(
        "fused AdamW: amsgrad's running max not kept",
        UPDATE,
        "vmax = tl.maximum(_load(vmax_at, inside, FULL), v)",
        "vmax = v",
        ADAMW_TESTS,
    ),
    Mutant(
        "fused AdamW: parameter steps not advanced by the finalize",
        FINALIZE,
        "tl.store(at, tl.load(at, mask=listed, other=0.0) + 1.0, mask=listed)",
        "tl.store(at, tl.load(at, mask=listed, other=0.0), mask=listed)",
        ADAMW_TESTS,
    ),
    Mutant(
        "fused AdamW: the update writes on a non-finite step",
        UPDATE,
        "    if tl.load(nonfinite) == 0:",
        "    if tl.load(nonfinite) >= 0:",
        ADAMW_TESTS,
    ),
    Mutant(
        "GANAdamW's fallback steps AdamW on a non-finite step",
        "gan_kernels/optim.py",
        "found_inf=stats.nonfinite.to(torch.float32) if group_fused else None",
        "found_inf=None",
        ADAMW_TESTS,
    ),
    Mutant(
        "GANAdamW's fallback transforms p.grad in place",
        "gan_kernels/optim.py",
        "        scratch = self._copies(params, grads, eligible)\n        stats = gan_(scratch",
        "        scratch = [g for g, slot in zip(grads, eligible) if slot >= 0]\n        stats = gan_(scratch",
        ADAMW_TESTS,
    ),
    Mutant(
        "GANAdamW over FSDP2 takes each rank's local-shard statistics",
        "gan_kernels/optim.py",
        "stats = gan_dtensors_(chosen, self.gan_state, self.mode, self.rule, local_shards=scratch)",
        "stats = gan_(scratch, self.gan_state, mode=self.mode, rule=self.rule)",
        FSDP_TESTS,
    ),
    Mutant(
        "GANAdamW over FSDP2 skips the collective on a rank whose eligible shards are all empty",
        "gan_kernels/optim.py",
        "        if chosen:\n            # Validates",
        "        if any(g.to_local().numel() for g in chosen):\n            # Validates",
        FSDP_TESTS,
    ),
    Mutant(
        "attach: GAN before a step's closure computed the gradients",
        "gan_kernels/hooks.py",
        "        if closure is None:\n            self._apply(optimizer)\n            return None",
        "        if True:\n            self._apply(optimizer)\n            return None",
        ("tests/test_hooks.py", "tests/test_integrations.py", "-k", "closure or lightning"),
    ),
    Mutant(
        "attach: GAN on scaled gradients when the optimizer unscales by itself",
        "gan_kernels/hooks.py",
        'scale = getattr(optimizer, "grad_scale", None)',
        "scale = None",
        ("tests/test_hooks.py", "-k", "scaler"),
    ),
    Mutant(
        "attach: the GANState left out of the optimizer's state dict",
        "gan_kernels/hooks.py",
        '        state_dict["gan"] = self.gan_state.state_dict()\n',
        "",
        ("tests/test_hooks.py", "tests/test_integrations.py", "-k", "checkpoint"),
    ),
    Mutant(
        "finalize's arrival counter not reset after a step",
        FINALIZE,
        "            tl.store(arrivals, 0)\n",
        "",
        ("tests/test_kernels.py", "-k", "repeated_steps"),
    ),
    Mutant(
        "statistics not float64 when a float64 gradient is present",
        "gan_kernels/validation.py",
        "torch.float64 if any(g.dtype == torch.float64 for g in grads)",
        "torch.float64 if all(g.dtype == torch.float64 for g in grads)",
        ("tests/test_functional.py", "-k", "float64"),
    ),
    Mutant(
        "compile fake implementation wrong for float64 lists",
        "gan_kernels/functional.py",
        "dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32",
        "dtype = torch.float32",
        ("tests/test_compile.py", "-k", "opcheck"),
    ),
    Mutant(
        "loading a plain optimizer's state dict resets the GAN state",
        "gan_kernels/optim.py",
        "            self.optimizer.load_state_dict(state_dict)\n            if gan_state is not None:\n                self.gan_state.load_state_dict(gan_state)",
        "            self.optimizer.load_state_dict(state_dict)\n            self.gan_state.load_state_dict(gan_state or GANState().state_dict())",
        ("tests/test_optim.py", "-k", "state_dict"),
    ),
    Mutant(
        "sparse gradients made eligible by default",
        "gan_kernels/optim.py",
        "grad is not None and grad.ndim > 1 and not grad.is_sparse",
        "grad is not None and grad.ndim > 1",
        ("tests/test_optim.py", "-k", "sparse"),
    ),
    Mutant(
        "a rule of one's own ignored by the kernels (the built-in one runs instead)",
        "gan_kernels/kernels/launch.py",
        "        builtin = rule is None\n",
        "        builtin, rule = True, None\n",
        ("tests/test_rule.py", "-k", "same_result_on_every_backend"),
    ),
    Mutant(
        "a rule's exponent stored on a non-finite step",
        "gan_kernels/rule.py",
        "    state.exponent.copy_(torch.where(nonfinite, state.exponent, exponent))",
        "    state.exponent.copy_(exponent)",
        ("tests/test_rule.py", "-k", "finite_steps_only"),
    ),
    Mutant(
        "fused AdamW with a rule of one's own: parameter steps not advanced",
        "gan_kernels/kernels/fused.py",
        "            torch._foreach_add_(steps, (~stats.nonfinite).to(torch.float32))",
        "            pass",
        ("tests/test_rule.py", "-k", "entry_point"),
    ),
    Mutant(
        "attach: the rule not passed on",
        "gan_kernels/hooks.py",
        "step(grads, self.gan_state, self.mode, self.backend, self._plan, self.rule)",
        "step(grads, self.gan_state, self.mode, self.backend, self._plan)",
        ("tests/test_rule.py", "-k", "entry_point"),
    ),
    Mutant(
        "state-dict post hooks registered on GAN never called",
        "gan_kernels/optim.py",
        "    for hook in optimizer._optimizer_state_dict_post_hooks.values():",
        "    for hook in ():",
        ("tests/test_optim.py", "-k", "hooks_are_honoured"),
    ),
    Mutant(
        "GANState.load_state_dict replaces its tensors instead of copying into them",
        "gan_kernels/state.py",
        "        self.exponent.copy_(exponent)",
        "        self.exponent = exponent.to(self.device, torch.float64)",
        ("tests/test_state.py",),
    ),
    Mutant(
        "repr(GANState) reads device tensors",
        "gan_kernels/state.py",
        '        if self.exponent.device.type != "cpu" or self.step.device.type != "cpu":',
        "        if False:",
        ("tests/test_state.py",),
    ),
    Mutant(
        "the kernels chosen on a GPU older than compute capability 7.0",
        "gan_kernels/plan.py",
        "    if capability < MIN_CAPABILITY:",
        "    if False:",
        ("tests/test_validation.py", "-k", "gpu_is_checked"),
    ),
    Mutant(
        "coherence pairs g_t with the wrong step back",
        "gan_kernels/telemetry.py",
        "            slot = (self._ring_head - m) % slots",
        "            slot = (self._ring_head - m + 1) % slots",
        ("tests/test_telemetry.py", "-k", "lags"),
    ),
    Mutant(
        "the coherence ring holds max(lags) copies, one too few",
        "gan_kernels/telemetry.py",
        "        slots = self.lags[-1] + 1",
        "        slots = self.lags[-1]",
        ("tests/test_telemetry.py", "-k", "lags"),
    ),
    Mutant(
        "coherence pairs gradients across a change of the eligible tensors",
        "gan_kernels/telemetry.py",
        "            self._ring_head = self._ring_filled = 0",
        "            self._ring_head = 0",
        ("tests/test_telemetry.py", "-k", "named_by_step or lags"),
    ),
    Mutant(
        "the probe runs in training mode (dropout, BatchNorm statistics updated)",
        "gan_kernels/telemetry.py",
        "        model.eval()",
        "        pass",
        ("tests/test_telemetry.py", "-k", "function_step"),
    ),
    Mutant(
        "module modes not restored after the probe",
        "gan_kernels/telemetry.py",
        "                module.training = training",
        "                pass",
        ("tests/test_telemetry.py", "-k", "function_step"),
    ),
    Mutant(
        "the function-space step summed over the probe examples, not averaged",
        "gan_kernels/telemetry.py",
        " / math.sqrt(outputs.shape[0])",
        "",
        ("tests/test_telemetry.py", "-k", "function_step"),
    ),
    Mutant(
        "the function-space step measured from the first probe at every probe",
        "gan_kernels/telemetry.py",
        "        self._probe_outputs = outputs",
        "        pass",
        ("tests/test_telemetry.py", "-k", "function_step"),
    ),
    Mutant(
        "AdaFom's second moment an exponential average instead of the mean of all past steps",
        "gan_kernels/adafom.py",
        "                avg_sq.mul_(1 - 1 / t).addcmul_(grad, grad, value=1 / t)",
        "                avg_sq.mul_(0.999).addcmul_(grad, grad, value=0.001)",
        ("tests/test_adafom.py",),
    ),
    Mutant(
        "AdaFom's t advances for a parameter without a gradient",
        "gan_kernels/adafom.py",
        "                if p.grad is None:\n                    continue",
        "                if p.grad is None:\n                    p.grad = torch.zeros_like(p)",
        ("tests/test_adafom.py",),
    ),
    Mutant(
        "the demo's deficit ends one epoch early",
        "examples/train.py",
        "    return range(first, last + 1)",
        "    return range(first, last)",
        ("tests/test_demo.py", "-k", "deficit"),
    ),
    Mutant(
        "the deficit's blur kernel not normalised",
        "examples/data.py",
        "    kernel = (kernel / kernel.sum())",
        "    kernel = (kernel / kernel.max())",
        ("tests/test_examples_data.py", "-k", "blur"),
    ),
    Mutant(
        "the demo's gan-adafom wraps AdamW",
        "examples/train.py",
        '    if method in ("adafom", "gan-adafom"):',
        '    if method == "adafom":',
        ("tests/test_demo.py", "-k", "adafom"),
    ),
    Mutant(
        "the study skips the late deficit",
        "examples/critical_period.py",
        '        argv += ["--deficit-epochs", getattr(args, deficit)]',
        '        argv += ["--deficit-epochs", args.early]',
        ("tests/test_critical_period.py", "-k", "every_method"),
    ),
    Mutant(
        "GANAdamW's steady state keeps its layout when a state entry is set, replaced or removed",
        OPTIM,
        "        if self._state_writes[0] != held.state_writes:",
        "        if False:",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's state loaded from a checkpoint is kept in torch's defaultdict, whose writes go unseen",
        OPTIM,
        "        self.state = _TrackedStates(self._state_writes, self.state)",
        "        pass",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's state dict holds its own dict class, which torch.load(weights_only=True) refuses",
        OPTIM,
        '            state_dict["state"] = {key: dict(value) for key, value in state_dict["state"].items()}\n',
        "",
        STEADY_TESTS,
    ),
    Mutant(
        "a copy of GANAdamW (copy.deepcopy, pickle) keeps only what torch's Optimizer keeps",
        OPTIM,
        '    def __getstate__(self) -> dict[str, Any]:\n        """Everything but the cached plan',
        '    def _getstate(self) -> dict[str, Any]:\n        """Everything but the cached plan',
        ("tests/test_adamw.py", "-k", "checkpoints"),
    ),
    Mutant(
        "GANAdamW's steady state compares the parameters only as far as the shorter list goes",
        OPTIM,
        "        if list(map(len, map(_params_of, groups))) != held.group_sizes:",
        "        if len(groups) != len(held.group_sizes):",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's state dicts do not count a write through update()",
        OPTIM,
        "    def update(self, *args, **kwargs) -> None:\n        self._written()",
        "    def update(self, *args, **kwargs) -> None:\n        pass",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's state loaded from a checkpoint is kept in plain dicts, whose writes go unseen",
        OPTIM,
        "        if type(state) is not _TrackedState:",
        "        if state is None:",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's steady state keeps its layout when a parameter's storage is swapped",
        OPTIM,
        "list(map(_data_ptr, chain(grads, held.params))) != held.ptrs",
        "list(map(_data_ptr, grads)) != held.ptrs[:len(grads)]",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's steady state ignores new strides of non-contiguous gradients",
        OPTIM,
        " if held.contiguous else list(map(_stride, grads)) == held.grad_strides",
        " if held.contiguous else True",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's steady state ignores a contiguous gradient turned non-contiguous",
        OPTIM,
        "not (all(map(_is_contiguous, grads)) if held.contiguous",
        "not (True if held.contiguous",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's steady state ignores a gradient that appeared on a parameter that had none",
        OPTIM,
        "        if held.absent and any(map(_not_none, map(_grad, held.absent))):",
        "        if False:",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's steady state keeps its layout when a group's amsgrad is turned on",
        OPTIM,
        "        if list(map(_amsgrad_of, groups)) != held.amsgrad:",
        "        if False:",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW lets amsgrad read a max_exp_avg_sq that a parameter's state lacks",
        OPTIM,
        '        elif group["amsgrad"] and "max_exp_avg_sq" not in state:',
        "        elif False:",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's steady state ignores a custom eligibility's new answer",
        OPTIM,
        "if self.eligible is not default_eligible and [bool(self.eligible(p)) for p in held.params] != held.flags:",
        "if False:",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's steady state ignores a switched backend",
        OPTIM,
        "held.backend != self.backend or ",
        "",
        STEADY_TESTS,
    ),
    Mutant(
        "GANAdamW's fallback hands torch's fused AdamW gradients strided unlike their parameters",
        OPTIM,
        "self._scratch = [torch.empty_like(p, memory_format=torch.preserve_format) for p, _ in chosen]",
        "self._scratch = [torch.empty_like(g, memory_format=torch.preserve_format) for _, g in chosen]",
        STEADY_TESTS,
    ),
    Mutant(
        "fused AdamW: the hyper-parameter table not refreshed when a float value changes",
        FUSED,
        "        if values != self.hyper_values:",
        "        if self.hyper_values is None:",
        STEADY_TESTS,
    ),
    Mutant(
        "fused AdamW: tensor-valued hyper-parameters never copied to the device",
        FUSED,
        "        for row, column, value in tensors:",
        "        for row, column, value in tensors[:0]:",
        STEADY_TESTS,
    ),
    Mutant(
        "fused AdamW: amsgrad's denominator from v instead of its running max",
        UPDATE,
        "        denominator = tl.sqrt(vmax) / correction + eps",
        "        denominator = tl.sqrt(v) / correction + eps",
        STEADY_TESTS,
    ),
    Mutant(
        "fused AdamW: the second moment's bias correction uses beta1",
        UPDATE,
        "correction = tl.sqrt(1.0 - tl.exp(step * tl.log(beta2)))",
        "correction = tl.sqrt(1.0 - tl.exp(step * tl.log(beta1)))",
        STEADY_TESTS,
    ),
    Mutant(
        "fused AdamW: weight decay not scaled by the learning rate",
        UPDATE,
        "decay = (1.0 - lr * tl.load(row + WEIGHT_DECAY))",
        "decay = (1.0 - tl.load(row + WEIGHT_DECAY))",
        STEADY_TESTS,
    ),
    Mutant(
        "fused AdamW: the first eligible parameter left untransformed",
        UPDATE,
        "    if slot >= 0:",
        "    if slot > 0:",
        STEADY_TESTS,
    ),
    Mutant(
        "update layout: a partial last tile dropped",
        LAYOUT,
        "        tiles = (numels[index] + tile - 1) // tile",
        "        tiles = numels[index] // tile",
        STEADY_TESTS,
    ),
    Mutant(
        "update layout: eligibility slots not taken per dtype (mixed-dtype parameters)",
        LAYOUT,
        "first_tile, tile_tensor, eligible_t[index], group_t[index]]",
        "first_tile, tile_tensor, eligible_t[:len(indices)], group_t[index]]",
        STEADY_TESTS,
    ),
    Mutant(
        "update layout: group rows not taken per dtype (mixed-dtype parameter groups)",
        LAYOUT,
        "first_tile, tile_tensor, eligible_t[index], group_t[index]]",
        "first_tile, tile_tensor, eligible_t[index], group_t[:len(indices)]]",
        STEADY_TESTS,
    ),
    Mutant(
        "plan lookup: the last step's plan reused for another backend",
        PLAN,
        "plan.ptrs != ptrs or plan.backend != backend",
        "plan.ptrs != ptrs",
        STEADY_TESTS,
    ),
    Mutant(
        "attach: a closure given by keyword runs without GAN",
        HOOKS,
        '            return args, {**kwargs, "closure": with_gan}',
        "            return args, kwargs",
        ("tests/test_hooks.py", "-k", "closure"),
    ),
    Mutant(
        "attach: gradients left unscaled after GAN on an optimizer that unscales by itself",
        HOOKS,
        "        if scale is not None and grads:\n            torch._foreach_mul_(grads, scale)",
        "        if False:\n            torch._foreach_mul_(grads, scale)",
        ("tests/test_hooks.py",),
    ),
    Mutant(
        "documentation: a code block that raises passes",
        "tests/markdown_blocks.py",
        "        exec(code, namespace)\n    except Exception as error:",
        "        exec(code, namespace)\n    except Exception as error:\n        return\n    except BaseException as error:",
        ("tests/test_doc_blocks.py",),
    ),
    Mutant(
        "documentation site: the repository files a page links to are not published",
        "docs/hooks.py",
        "    if path.is_relative_to(docs_dir) or not path.is_relative_to(REPOSITORY) or not path.is_file():",
        "    if True:",
        ("tests/test_docs_site.py",),
    ),
    Mutant(
        "sdist: the tests' conftest left out",
        "MANIFEST.in",
        "graft tests\n",
        "graft tests\nexclude tests/conftest.py\n",
        ("tests/test_packaging.py",),
    ),
    Mutant(
        "train.py's checkpoints: the checksum is not checked",
        "examples/checkpoints.py",
        '    if hashlib.sha256(body).hexdigest() != record.get("sha256"):',
        "    if False:",
        ("tests/test_train_at_scale.py", "-k", "corrupt"),
    ),
    Mutant(
        "train.py --resume: the random states are not restored",
        "examples/train.py",
        '        checkpoints.set_rng_state(state["rng"], {"data": self.shuffle})',
        "        pass",
        ("tests/test_train_at_scale.py", "-k", "killed"),
    ),
]


def copy_repository(destination: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, destination / name)


def run_tests(folder: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess:
    """The test selection, against the package in ``folder`` (which comes first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(folder), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)


def imported_from(folder: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run([sys.executable, "-c", "import gan_kernels; print(gan_kernels.__file__)"],
                          cwd=folder, env=env, capture_output=True, text=True, check=True).stdout.strip()


def verdict(mutant: Mutant) -> str:
    with tempfile.TemporaryDirectory(prefix="gan-mutant-") as tmp:
        folder = Path(tmp)
        copy_repository(folder)
        target = folder / mutant.path
        text = target.read_text()
        if text.count(mutant.old) != 1:
            return f"stale ({text.count(mutant.old)} occurrences of the planted text)"
        target.write_text(text.replace(mutant.old, mutant.new))
        if not imported_from(folder).startswith(str(folder)):
            return "error: the copy's package was not the one imported"
        result = run_tests(folder, mutant.tests)
        if result.returncode == 0:
            return "MISSED"
        if result.returncode == 1:
            return "caught"
        if result.returncode < 0:  # the tests died on a signal (a wild read, say): the suite fails
            return f"caught (the tests crashed: signal {-result.returncode})"
        return f"error (pytest exit {result.returncode}): {result.stdout.strip().splitlines()[-1:]}"


def baseline(selections: set[tuple[str, ...]]) -> list[str]:
    """The selections that fail without any mutant."""
    with tempfile.TemporaryDirectory(prefix="gan-baseline-") as tmp:
        folder = Path(tmp)
        copy_repository(folder)
        return [" ".join(tests) for tests in sorted(selections) if run_tests(folder, tests).returncode != 0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="SUBSTRING", help="run the mutants whose name contains one of these")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants run at once (default: the CPU count)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(s in m.name for s in args.only)]
    if args.list:
        print("\n".join(m.name for m in mutants))
        return 0
    failing = baseline({m.tests for m in mutants})
    if failing:
        print("the unmutated suite fails these selections, so no verdict is possible:", *failing, sep="\n  ")
        return 2
    with ThreadPoolExecutor(args.jobs) as pool:
        verdicts = list(pool.map(verdict, mutants))
    width = max(len(m.name) for m in mutants)
    print(f"| {'planted bug'.ljust(width)} | verdict |")
    print(f"| {'-' * width} | ------- |")
    for mutant, result in zip(mutants, verdicts):
        print(f"| {mutant.name.ljust(width)} | {result} |")
    return 0 if all(v.startswith("caught") for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
