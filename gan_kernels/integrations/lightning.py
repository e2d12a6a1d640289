"""GAN in Lightning: ``GANCallback``.

    from gan_kernels.integrations.lightning import GANCallback
    trainer = lightning.Trainer(..., callbacks=[GANCallback()])

When training starts the callback attaches GAN (:func:`gan_kernels.attach`) to the torch
optimizer inside each of Lightning's ``LightningOptimizer``. GAN then runs inside that optimizer's
step, once the gradients are final: after Lightning's closure (backward, then
``on_before_optimizer_step``, then gradient clipping: Lightning clips *after* that event, inside
the step, so GAN cannot run in the event itself), after the unscaling of 16-bit mixed precision,
and not at all on a step the scaler skips. At the
Trainer's logging steps (``log_every_n_steps``; only there, so that nothing is read back from the
device at other steps) ``gan/alpha`` and ``gan/global_grad_std`` are logged through
``pl_module.log``. The ``GANState`` is saved in the checkpoint (the callback's state, and the
optimizer's state dict) and restored when training resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

try:
    from lightning.pytorch import Callback
except ImportError as error:  # pragma: no cover - exercised without the library
    raise ImportError("gan_kernels.integrations.lightning needs Lightning: pip install 'gan-kernels[lightning]'") from error

from ..hooks import Attachment, attach, innermost
from ..rule import Rule


class GANCallback(Callback):
    """Apply GAN to every optimizer of a Lightning run (see the module's documentation).

    Args:
        mode, backend, eligible, rule: as for :class:`gan_kernels.GAN`.

    Attributes:
        attachments: one :class:`gan_kernels.hooks.Attachment` per optimizer while training runs
            (their ``gan_state`` and ``last_stats``), in the order of ``trainer.optimizers``.
    """

    def __init__(
        self,
        mode: str = "gan",
        backend: str = "auto",
        eligible: Callable[[Tensor], bool] | None = None,
        rule: Rule | None = None,
    ) -> None:
        self.mode, self.backend, self.eligible, self.rule = mode, backend, eligible, rule
        self.attachments: list[Attachment] = []
        self.saved: list[dict] = []  # GANStates restored from a checkpoint, for optimizers not yet seen

    def on_train_start(self, trainer, pl_module) -> None:
        for i, optimizer in enumerate(trainer.optimizers):
            attachment = attach(
                innermost(optimizer), mode=self.mode, backend=self.backend, eligible=self.eligible, rule=self.rule
            )
            if i < len(self.saved):
                attachment.gan_state.load_state_dict(self.saved[i])
            self.attachments.append(attachment)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.attachments or trainer.global_step % trainer.log_every_n_steps:
            return
        for i, attachment in enumerate(self.attachments):
            stats = attachment.last_stats
            if stats is not None:
                suffix = f"_{i}" if len(self.attachments) > 1 else ""
                pl_module.log(f"gan/alpha{suffix}", stats.alpha, on_step=True, on_epoch=False)
                pl_module.log(f"gan/global_grad_std{suffix}", stats.global_std, on_step=True, on_epoch=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.saved = self.state_dict()["gan_states"]
        for attachment in self.attachments:
            attachment.remove()
        self.attachments = []

    def state_dict(self) -> dict[str, Any]:
        """The ``GANState`` of every optimizer, saved in Lightning's checkpoints."""
        return {"gan_states": [a.gan_state.state_dict() for a in self.attachments] or self.saved}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved = list(state_dict["gan_states"])
        for attachment, saved in zip(self.attachments, self.saved):
            attachment.gan_state.load_state_dict(saved)
