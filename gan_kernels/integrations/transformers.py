"""GAN in Hugging Face's ``Trainer``: ``GANCallback``.

    from gan_kernels.integrations.transformers import GANCallback
    trainer = Trainer(model, args, train_dataset=..., callbacks=[GANCallback()])

The callback attaches GAN (:func:`gan_kernels.attach`) to the torch optimizer inside the Trainer's
(accelerate's ``AcceleratedOptimizer``) when training begins. GAN then runs inside that optimizer's
step: after gradient accumulation, after gradient clipping, after a loss scaler has unscaled the
gradients (``fp16``), and not at all on a step the scaler skips — whether clipping is on or off,
which is where the Trainer's own ``on_pre_optimizer_step`` event falls short (with clipping off and
a scaler, the gradients are still scaled there). At the Trainer's logging steps (and only there,
so that nothing is read back from the device at other steps) ``gan/alpha`` and
``gan/global_grad_std`` join the logs. The ``GANState`` is saved with every checkpoint (in the
optimizer's state dict and in the Trainer's state) and restored when training resumes.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as error:  # pragma: no cover - exercised without the library
    raise ImportError(
        "gan_kernels.integrations.transformers needs Hugging Face transformers: pip install 'gan-kernels[hf]'"
    ) from error

from ..hooks import Attachment, attach, innermost
from ..rule import Rule


class GANCallback(TrainerCallback, ExportableState):
    """Apply GAN to the ``Trainer``'s optimizer (see the module's documentation).

    Args:
        mode, backend, eligible, rule: as for :class:`gan_kernels.GAN`.

    Attributes:
        attachment: the :class:`gan_kernels.hooks.Attachment` while training runs (its
            ``gan_state`` and ``last_stats``), else None.
    """

    def __init__(
        self,
        mode: str = "gan",
        backend: str = "auto",
        eligible: Callable[[Tensor], bool] | None = None,
        rule: Rule | None = None,
    ) -> None:
        self.mode, self.backend, self.eligible, self.rule = mode, backend, eligible, rule
        self.attachment: Attachment | None = None
        self.gan_state: dict | None = None  # the state saved in the Trainer's, for a resumed run

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None:
            raise RuntimeError("GANCallback needs the Trainer's optimizer at the start of training")
        inner = innermost(optimizer)
        if self.attachment is not None and self.attachment.optimizer is not inner:
            self.attachment.remove()
            self.attachment = None
        if self.attachment is None:
            self.attachment = attach(inner, mode=self.mode, backend=self.backend, eligible=self.eligible, rule=self.rule)
        saved = state.stateful_callbacks.get(type(self).__name__)
        saved = saved[0] if isinstance(saved, list) else saved
        values = (saved or {}).get("attributes", {}).get("gan_state") or self.gan_state
        if values is not None:
            self.attachment.gan_state.load_state_dict(values)

    def on_log(self, args, state, control, logs=None, **kwargs):
        stats = self.attachment.last_stats if self.attachment is not None else None
        if stats is None or logs is None or "loss" not in logs:
            return
        values = {"gan/alpha": stats.alpha.item(), "gan/global_grad_std": stats.global_std.item()}
        logs.update(values)
        if state.log_history:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        if self.attachment is not None:
            self.gan_state = self.state()["attributes"]["gan_state"]
            self.attachment.remove()
            self.attachment = None

    def state(self) -> dict:
        """What the Trainer saves with each checkpoint: the arguments and the ``GANState``."""
        gan_state = self.gan_state
        if self.attachment is not None:
            saved = self.attachment.gan_state.state_dict()
            gan_state = {"exponent": saved["exponent"].item(), "step": int(saved["step"].item())}
        return {"args": {"mode": self.mode, "backend": self.backend}, "attributes": {"gan_state": gan_state}}
