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
optimizer's state dict) and restored when training resumes. An optimizer that already runs GAN
(``GAN``, ``GANAdamW``, attached) gets no second one: the callback logs and checkpoints that GAN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

try:
    from lightning.pytorch import Callback
except ImportError as error:  # pragma: no cover - exercised without the library
    raise ImportError(
        "gan_kernels.integrations.lightning needs Lightning: install the package's lightning extra "
        "(from a checkout: pip install '.[lightning]')"
    ) from error

from ..hooks import Attachment, use_or_attach
from ..rule import Rule


class GANCallback(Callback):
    """Apply GAN to every optimizer of a Lightning run (see the module's documentation).

    GAN is applied once: an optimizer that already runs GAN (``configure_optimizers`` returned a
    ``GAN`` or ``GANAdamW``, or GAN is attached to it) gets no attachment; the callback logs,
    saves and restores the GAN already there. Its options must then be that GAN's (mode, backend,
    eligible, rule; defaults included), else ``on_train_start`` raises ``RuntimeError`` naming them.

    Args:
        mode: the mode, as for :class:`gan_kernels.GAN`.
        backend: the backend, as for :class:`gan_kernels.GAN`.
        eligible: the eligibility rule, as for :class:`gan_kernels.GAN`.
        rule: the alpha rule, as for :class:`gan_kernels.GAN`.

    Attributes:
        gans: the GAN in use for each optimizer while training runs, in the order of
            ``trainer.optimizers``: an attachment made by the callback, or the ``GAN``,
            ``GANAdamW`` or attachment already there (each has ``gan_state`` and ``last_stats``).
        attachments: the :class:`gan_kernels.hooks.Attachment` objects the callback made (removed
            when fitting ends).
    """

    def __init__(
        self,
        mode: str = "gan",
        backend: str = "auto",
        eligible: Callable[[Tensor], bool] | None = None,
        rule: Rule | None = None,
    ) -> None:
        self.mode, self.backend, self.eligible, self.rule = mode, backend, eligible, rule
        self.gans: list[Any] = []
        self.attachments: list[Attachment] = []
        self.saved: list[dict] = []  # GANStates restored from a checkpoint, for optimizers not yet seen

    def on_train_start(self, trainer, pl_module) -> None:
        for i, optimizer in enumerate(trainer.optimizers):
            gan, attachment = use_or_attach(
                optimizer, mode=self.mode, backend=self.backend, eligible=self.eligible, rule=self.rule
            )
            if i < len(self.saved):
                gan.gan_state.load_state_dict(self.saved[i])
            self.gans.append(gan)
            if attachment is not None:
                self.attachments.append(attachment)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.gans or trainer.global_step % trainer.log_every_n_steps:
            return
        for i, gan in enumerate(self.gans):
            stats = gan.last_stats
            if stats is not None:
                suffix = f"_{i}" if len(self.gans) > 1 else ""
                pl_module.log(f"gan/alpha{suffix}", stats.alpha, on_step=True, on_epoch=False)
                pl_module.log(f"gan/global_grad_std{suffix}", stats.global_std, on_step=True, on_epoch=False)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.saved = self.state_dict()["gan_states"]
        for attachment in self.attachments:  # a GAN that was there before fitting stays
            attachment.remove()
        self.gans, self.attachments = [], []

    def state_dict(self) -> dict[str, Any]:
        """The ``GANState`` of every optimizer, saved in Lightning's checkpoints."""
        return {"gan_states": [gan.gan_state.state_dict() for gan in self.gans] or self.saved}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved = list(state_dict["gan_states"])
        for gan, saved in zip(self.gans, self.saved):
            gan.gan_state.load_state_dict(saved)
