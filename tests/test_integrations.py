"""The framework callbacks against the real libraries, on the CPU, with nothing downloaded: a tiny
randomly initialised GPT-2 trained by Hugging Face's Trainer and a tiny LightningModule trained by
Lightning's Trainer, each checked against the same steps done by hand (clip_grad_norm_, then gan_,
then the optimizer), and resumed from a checkpoint to the same final weights as an uninterrupted
run. Skipped, saying so, where a library is not installed (the extras ``hf`` and ``lightning``)."""

import importlib.util
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from gan_kernels import GANState, gan_
from gan_kernels.hooks import innermost
from gan_kernels.optim import default_eligible

HAS_HF = importlib.util.find_spec("transformers") is not None and importlib.util.find_spec("accelerate") is not None
HAS_LIGHTNING = importlib.util.find_spec("lightning") is not None
needs_hf = pytest.mark.skipif(not HAS_HF, reason="transformers and accelerate are not installed (extra 'hf')")
needs_lightning = pytest.mark.skipif(not HAS_LIGHTNING, reason="lightning is not installed (extra 'lightning')")

MAX_STEPS, ACCUMULATE, BATCH, CLIP = 4, 2, 4, 0.5


class Tokens(Dataset):
    """Synthetic token sequences: the labels are the inputs, as for causal language modelling."""

    def __init__(self, count=48, length=16, seed=0):
        self.tokens = torch.randint(0, 64, (count, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


def test_importing_the_package_imports_no_framework():
    code = "import sys, gan_kernels; print(any(m in sys.modules for m in ('transformers', 'lightning', 'pytorch_lightning')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


@pytest.mark.parametrize("module,extra", [("transformers", "hf"), ("lightning", "lightning")])
def test_an_integration_without_its_library_names_the_extra(module, extra):
    code = (
        "import sys; sys.modules[%r] = None\n"
        "try:\n    import gan_kernels.integrations.%s\nexcept ImportError as error:\n    print(error)" % (module, module)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"{extra} extra" in out and f"pip install '.[{extra}]'" in out


# -- Hugging Face ------------------------------------------------------------------------------


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32, eos_token_id=0, bos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def hf_trainer(output_dir, callback, max_steps=MAX_STEPS, save_steps=None, optimizer=None):
    from transformers import Trainer, TrainingArguments

    class InOrder(Trainer):  # the same batches as the loop by hand
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=ACCUMULATE, max_grad_norm=CLIP, learning_rate=1e-3, logging_steps=2,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, report_to="none",
        use_cpu=True, seed=0, disable_tqdm=True,
    )
    model = tiny_gpt2()
    return InOrder(model=model, args=args, train_dataset=Tokens(), callbacks=[callback] if callback else [],
                   optimizers=(optimizer(model) if optimizer else None, None))


@needs_hf
def test_trainer_equals_clip_then_gan_then_the_optimizer_by_hand(tmp_path):
    from transformers import get_linear_schedule_with_warmup

    from gan_kernels.integrations.transformers import GANCallback

    callback = GANCallback()
    trainer = hf_trainer(tmp_path, callback)
    trainer.train()

    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    schedule = get_linear_schedule_with_warmup(optimizer, 0, MAX_STEPS)
    state, data = GANState(), Tokens()
    for step in range(MAX_STEPS):
        micro = [data.tokens[(step * ACCUMULATE + i) * BATCH:(step * ACCUMULATE + i + 1) * BATCH] for i in range(ACCUMULATE)]
        items = sum(int(m.ne(-100).sum()) for m in micro)
        for tokens in micro:
            model(input_ids=tokens, labels=tokens, num_items_in_batch=items).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        gan_([p.grad for p in model.parameters() if default_eligible(p)], state)
        optimizer.step()
        schedule.step()
        model.zero_grad()

    for (name, a), b in zip(trainer.model.named_parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert callback.attachment is None  # detached at the end of training
    assert callback.gan_state["step"] == MAX_STEPS
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logged] == [2, 4]
    assert all(0 < entry["gan/alpha"] <= 1 and entry["gan/global_grad_std"] > 0 for entry in logged)


@needs_hf
def test_trainer_resumed_from_a_checkpoint_ends_where_an_uninterrupted_run_does(tmp_path):
    from gan_kernels.integrations.transformers import GANCallback

    uninterrupted = hf_trainer(tmp_path / "whole", GANCallback(), max_steps=2 * MAX_STEPS)
    uninterrupted.train()

    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):  # the run stops right after its checkpoint, as a crash would
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == MAX_STEPS:
                control.should_training_stop = True

    first = hf_trainer(tmp_path / "split", GANCallback(), max_steps=2 * MAX_STEPS, save_steps=MAX_STEPS)
    first.add_callback(Interrupt())
    first.train()
    optimizer_state = torch.load(tmp_path / "split" / f"checkpoint-{MAX_STEPS}" / "optimizer.pt", weights_only=False)
    assert optimizer_state["gan"]["step"].item() == MAX_STEPS
    callback = GANCallback()
    resumed = hf_trainer(tmp_path / "split", callback, max_steps=2 * MAX_STEPS)
    resumed.train(resume_from_checkpoint=str(tmp_path / "split" / f"checkpoint-{MAX_STEPS}"))

    for a, b in zip(uninterrupted.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert callback.gan_state["step"] == 2 * MAX_STEPS


@needs_hf
@pytest.mark.parametrize("kind", ["GANAdamW", "GAN"])
def test_trainer_with_an_optimizer_that_runs_gan_gets_no_second_gan(tmp_path, kind):
    """The callback uses the GAN already there: the run equals the same run without the callback,
    and the callback logs that GAN's alpha."""
    from gan_kernels import GAN, GANAdamW
    from gan_kernels.integrations.transformers import GANCallback

    def optimizer(model):
        if kind == "GANAdamW":
            return GANAdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        return GAN(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0))

    callback = GANCallback()
    with_callback = hf_trainer(tmp_path / "with", callback, optimizer=optimizer)
    with_callback.train()
    without = hf_trainer(tmp_path / "without", None, optimizer=optimizer)
    without.train()
    for a, b in zip(with_callback.model.parameters(), without.model.parameters()):
        assert torch.equal(a, b)
    assert callback.attachment is None and callback.gan_state["step"] == MAX_STEPS
    gan = with_callback.optimizer.optimizer
    assert gan.gan_state.step.item() == MAX_STEPS and not innermost(gan)._optimizer_step_pre_hooks
    logged = [entry for entry in with_callback.state.log_history if "loss" in entry]
    assert all(0 < entry["gan/alpha"] <= 1 for entry in logged) and len(logged) == 2


@needs_hf
@pytest.mark.parametrize("options,named", [({"mode": "znorm"}, "mode='znorm'"), ({"rule": min}, "rule=")],
                         ids=["mode", "rule"])
def test_trainer_refuses_options_that_differ_from_the_gan_already_there(tmp_path, options, named):
    """A callback told other options than the GAN it would use must say so, not ignore them; the
    optimizer is left untouched (no attachment, no step)."""
    from gan_kernels import GANAdamW
    from gan_kernels.integrations.transformers import GANCallback

    callback = GANCallback(**options)
    trainer = hf_trainer(tmp_path, callback, optimizer=lambda model: GANAdamW(model.parameters(), lr=1e-3))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(RuntimeError, match=f"GAN already runs on this optimizer .*GANAdamW.*other options.*{named}"):
        trainer.train()
    assert callback.gan is None and callback.attachment is None
    assert trainer.optimizer.optimizer.gan_state.step.item() == 0 and not trainer.optimizer.state
    assert all(torch.equal(a, b) for a, b in zip(trainer.model.parameters(), before))


# -- Lightning -------------------------------------------------------------------------------


def lightning_module():
    import lightning

    class Regression(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    return Regression()


def regression_data(count=64):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(count, 8, generator=generator)
    return torch.utils.data.TensorDataset(x, torch.stack([x[:, :4].sum(1), x[:, 4:].prod(1)], dim=1))


def lightning_trainer(root, callback, max_steps, checkpoint=None):
    import lightning

    callbacks = ([callback] if callback else []) + ([checkpoint] if checkpoint is not None else [])
    return lightning.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, gradient_clip_val=CLIP, accumulate_grad_batches=ACCUMULATE,
        log_every_n_steps=2, logger=False, enable_checkpointing=checkpoint is not None, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, default_root_dir=str(root),
    )


@needs_lightning
def test_lightning_equals_clip_then_gan_then_the_optimizer_by_hand(tmp_path):
    from gan_kernels.integrations.lightning import GANCallback

    module, callback = lightning_module(), GANCallback()
    trainer = lightning_trainer(tmp_path, callback, MAX_STEPS)
    trainer.fit(module, DataLoader(regression_data(), batch_size=BATCH, shuffle=False))

    reference = lightning_module()
    optimizer = reference.configure_optimizers()
    state = GANState()
    batches = list(DataLoader(regression_data(), batch_size=BATCH, shuffle=False))
    for step in range(MAX_STEPS):
        for x, y in batches[step * ACCUMULATE:(step + 1) * ACCUMULATE]:
            (torch.nn.functional.mse_loss(reference.net(x), y) / ACCUMULATE).backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), CLIP)
        gan_([p.grad for p in reference.parameters() if default_eligible(p)], state)
        optimizer.step()
        optimizer.zero_grad()

    for a, b in zip(module.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert callback.attachments == [] and callback.saved[0]["step"].item() == MAX_STEPS
    assert 0 < trainer.logged_metrics["gan/alpha"] <= 1 and trainer.logged_metrics["gan/global_grad_std"] > 0


@needs_lightning
@pytest.mark.parametrize("kind", ["GANAdamW", "GAN"])
def test_lightning_with_an_optimizer_that_runs_gan_gets_no_second_gan(tmp_path, kind):
    """configure_optimizers returns a GAN or GANAdamW: the callback attaches nothing, the run
    equals the same run without the callback, and the callback logs that GAN's alpha."""
    from gan_kernels import GAN, GANAdamW
    from gan_kernels.integrations.lightning import GANCallback

    def module():
        module = lightning_module()
        if kind == "GANAdamW":
            module.configure_optimizers = lambda: GANAdamW(module.parameters(), lr=1e-2)
        else:
            module.configure_optimizers = lambda: GAN(torch.optim.AdamW(module.parameters(), lr=1e-2))
        return module

    data = regression_data()
    ours, callback = module(), GANCallback()
    trainer = lightning_trainer(tmp_path / "with", callback, MAX_STEPS)
    trainer.fit(ours, DataLoader(data, batch_size=BATCH, shuffle=False))
    theirs = module()
    lightning_trainer(tmp_path / "without", None, MAX_STEPS).fit(theirs, DataLoader(data, batch_size=BATCH, shuffle=False))
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)
    gan = trainer.optimizers[0]
    assert gan.gan_state.step.item() == MAX_STEPS and not innermost(gan)._optimizer_step_pre_hooks
    assert callback.attachments == [] and callback.saved[0]["step"].item() == MAX_STEPS
    assert 0 < trainer.logged_metrics["gan/alpha"] <= 1


@needs_lightning
def test_lightning_refuses_options_that_differ_from_the_gan_already_there(tmp_path):
    """configure_optimizers returns GAN(mode="center"); a callback in mode "gan" must say so."""
    from gan_kernels import GAN
    from gan_kernels.integrations.lightning import GANCallback

    module = lightning_module()
    module.configure_optimizers = lambda: GAN(torch.optim.AdamW(module.parameters(), lr=1e-2), mode="center")
    before = [p.detach().clone() for p in module.parameters()]
    callback = GANCallback()
    trainer = lightning_trainer(tmp_path, callback, MAX_STEPS)
    with pytest.raises(RuntimeError, match=r"GAN\(\.\.\.\) wrapper.*other options.*mode='gan' \(it has 'center'\)"):
        trainer.fit(module, DataLoader(regression_data(), batch_size=BATCH, shuffle=False))
    assert callback.gans == [] and callback.attachments == []
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), before))


@needs_lightning
def test_lightning_resumed_from_a_checkpoint_ends_where_an_uninterrupted_run_does(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from gan_kernels.integrations.lightning import GANCallback

    def loader():
        # One epoch is MAX_STEPS optimizer steps, so that the checkpoint falls between epochs: a
        # resumed Lightning run restarts its epoch (unless the data loader keeps a state).
        return DataLoader(regression_data(MAX_STEPS * ACCUMULATE * BATCH), batch_size=BATCH, shuffle=False)

    whole = lightning_module()
    lightning_trainer(tmp_path / "whole", GANCallback(), 2 * MAX_STEPS).fit(whole, loader())

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=MAX_STEPS, save_top_k=-1)
    first = lightning_module()
    lightning_trainer(tmp_path / "split", GANCallback(), MAX_STEPS, checkpoint).fit(first, loader())
    saved = torch.load(checkpoint.best_model_path or next((tmp_path / "ckpt").iterdir()), weights_only=False)
    assert any("gan_states" in value for value in saved["callbacks"].values())
    assert saved["optimizer_states"][0]["gan"]["step"].item() == MAX_STEPS
    resumed, callback = lightning_module(), GANCallback()
    lightning_trainer(tmp_path / "split", callback, 2 * MAX_STEPS).fit(resumed, loader(), ckpt_path=str(next((tmp_path / "ckpt").iterdir())))

    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert callback.saved[0]["step"].item() == 2 * MAX_STEPS
