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
optimizer's state dict and in the Trainer's state) and restored when training resumes. An
optimizer that already runs GAN (``GAN``, ``GANAdamW``, attached) gets no second one: the
callback logs and checkpoints that GAN instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as error:  # pragma: no cover - exercised without the library
    raise ImportError(
        "gan_kernels.integrations.transformers needs Hugging Face transformers: install the "
        "package's hf extra (from a checkout: pip install '.[hf]')"
    ) from error

from ..hooks import Attachment, innermost, use_or_attach
from ..rule import Rule


class GANCallback(TrainerCallback, ExportableState):
    """Apply GAN to the ``Trainer``'s optimizer (see the module's documentation).

    GAN is applied once: when the Trainer's optimizer already runs GAN (a ``GAN`` or ``GANAdamW``
    given as ``optimizers=``, or one GAN is attached to), the callback attaches nothing and logs,
    saves and restores the GAN already there. Its options must then be that GAN's (mode, backend,
    eligible, rule; defaults included), else ``on_train_begin`` raises ``RuntimeError`` naming them.

    Args:
        mode: the mode, as for :class:`gan_kernels.GAN`.
        backend: the backend, as for :class:`gan_kernels.GAN`.
        eligible: the eligibility rule, as for :class:`gan_kernels.GAN`.
        rule: the alpha rule, as for :class:`gan_kernels.GAN`.

    Attributes:
        gan: the GAN in use while training runs (the attachment made, or the ``GAN``,
            ``GANAdamW`` or attachment already there; each has ``gan_state`` and ``last_stats``),
            else None.
        attachment: the :class:`gan_kernels.hooks.Attachment` the callback made, else None.
    """

    def __init__(
        self,
        mode: str = "gan",
        backend: str = "auto",
        eligible: Callable[[Tensor], bool] | None = None,
        rule: Rule | None = None,
    ) -> None:
        self.mode, self.backend, self.eligible, self.rule = mode, backend, eligible, rule
        self.gan: Any = None
        self.attachment: Attachment | None = None
        self.gan_state: dict | None = None  # the state saved in the Trainer's, for a resumed run

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None:
            raise RuntimeError("GANCallback needs the Trainer's optimizer at the start of training")
        if self.attachment is not None and self.attachment.optimizer is not innermost(optimizer):
            self.attachment.remove()
            self.attachment = self.gan = None
        if self.attachment is None:
            self.gan, self.attachment = use_or_attach(
                optimizer, mode=self.mode, backend=self.backend, eligible=self.eligible, rule=self.rule
            )
        saved = state.stateful_callbacks.get(type(self).__name__)
        saved = saved[0] if isinstance(saved, list) else saved
        values = (saved or {}).get("attributes", {}).get("gan_state") or self.gan_state
        if values is not None:
            self.gan.gan_state.load_state_dict(values)

    def on_log(self, args, state, control, logs=None, **kwargs):
        stats = self.gan.last_stats if self.gan is not None else None
        if stats is None or logs is None or "loss" not in logs:
            return
        values = {"gan/alpha": stats.alpha.item(), "gan/global_grad_std": stats.global_std.item()}
        logs.update(values)
        if state.log_history:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        if self.gan is not None:
            self.gan_state = self.state()["attributes"]["gan_state"]
            if self.attachment is not None:  # a GAN that was there before training stays
                self.attachment.remove()
            self.attachment = self.gan = None

    def state(self) -> dict:
        """What the Trainer saves with each checkpoint: the arguments and the ``GANState``."""
        gan_state = self.gan_state
        if self.gan is not None:
            saved = self.gan.gan_state.state_dict()
            gan_state = {"exponent": saved["exponent"].item(), "step": int(saved["step"].item())}
        return {"args": {"mode": self.mode, "backend": self.backend}, "attributes": {"gan_state": gan_state}}
