"""The training loop: :func:`train` runs one pretraining or fault-tolerant retraining, epoch
by epoch, writing its checkpoint after every one (see the package docstring for the recipe)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize

from ..chip import deployed_accuracy
from ..data import DataBundle, augment, batches, normalize
from ..devices import pick_device
from ..errors import DataError, ModelError
from ..files import append_line, run_folder_lock, write_atomic
from ..models import create_model, deployed_layers
from ..profiles import Target
from ..weights import load_initial_weights
from .checkpoint import (ResumePoint, check_model_fits, checkpoint_record, clean_state_dict, load_checkpoint,
                         model_from_checkpoint, resume_state, save_atomic)
from .config import TrainConfig, config_yaml
from .injection import FaultInjector, freeze_batchnorm


def _lr_lambda(total_steps: int, warmup_steps: int, period: int | None = None):
    """Linear warm-up, then cosine to 0 at ``total_steps``; with ``period``, restarted every
    ``period`` steps (progressive blocks of their own), the last block ending at 0."""
    if period:
        once, last = _lr_lambda(period, warmup_steps), total_steps // period - 1
        return lambda step: once(step - period * min(step // period, last))

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _teacher(init: dict, device) -> nn.Module:
    """The starting checkpoint, fault-free and in eval mode: the function a faulty chip should keep."""
    # train() built the starting model from this same checkpoint first (_starting_model), under
    # the caller's allow_model_import: a factory that reaches here was already allowed.
    teacher = model_from_checkpoint(init, allow_import=True).to(device).eval()
    teacher.requires_grad_(False)
    return teacher


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): KL(teacher || student) of the softened distributions, times T² so its
    gradient keeps the scale of cross-entropy whatever the temperature."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * t * t  # fmt: skip


def with_distillation(loss: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor, weight: float,
                      temperature: float) -> torch.Tensor:  # fmt: skip
    """The retraining loss with ``weight`` of it given to :func:`distillation_loss`."""
    return (1 - weight) * loss + weight * distillation_loss(student_logits, teacher_logits, temperature)


def _masks_of_pruned(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: (m.weight.detach() != 0) for name, m in deployed_layers(model)}


def train(config: TrainConfig, data: DataBundle, target: Target, out_dir: Path, *, init: dict | None = None,
          profile_name: str = "", progress=None, resume: bool = False, allow_model_import: bool = False) -> dict:  # fmt: skip
    """Run one training; write out_dir/model.pt (after every epoch), log.jsonl, summary.csv and
    config.yaml. ``init``: a loaded checkpoint to start from (required for retraining).
    ``resume``: continue the run already in out_dir from its last finished epoch (see
    ``ResumePoint``); a finished run is returned as it is, an empty folder starts afresh.
    Under torchrun (WORLD_SIZE > 1) each process takes its share of every batch and simulates
    its own random chips; gradients are averaged by DistributedDataParallel and only rank 0
    evaluates and writes. ``allow_model_import``: the user allowed ``init``'s ``package.module:factory``
    to be imported (they named it with --model, or gave --trust-model-code). Returns the final checkpoint dict."""
    dist = _Distributed.from_env(config.device)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    torch.manual_seed(config.seed)
    model, data, initial_weights = _starting_model(config, data, init, allow_model_import)
    # Only rank 0 writes the folder, so only rank 0 holds it: a second writer is refused here,
    # before the folder is read or written.
    with run_folder_lock(out_dir, ModelError) if dist.is_main else contextlib.nullcontext():
        return _train_locked(config, data, target, out_dir, model, dist, init=init, profile_name=profile_name,
                             progress=progress, resume=resume, initial_weights=initial_weights)  # fmt: skip


def _train_locked(config: TrainConfig, data: DataBundle, target: Target, out_dir: Path, model: nn.Module,
                  dist: "_Distributed", *, init, profile_name, progress, resume, initial_weights=None) -> dict:  # fmt: skip
    """:func:`train` once its folder is held: every check before the folder's first file."""
    # Which weights pruning zeroed: read before a resumed run's weights replace the starting ones.
    prune_masks = _masks_of_pruned(model) if init is not None and init.get("sparsity") else None
    point = ResumePoint.find(out_dir, config, target) if resume else None
    if point:
        config = point.config  # with what the run keeps from its checkpoint (how it draws its chips)
    if point and point.epochs_done >= config.run_epochs:
        return point.checkpoint
    if point:
        model.load_state_dict(point.state_dict)
    model.to(dist.device)
    run = _Run(config, data, target, model, init, dist, prune_masks, initial_weights)
    try:
        start_epoch = run.restore(point) if point else 0
        if dist.is_main and not point:  # a resumed run keeps the config it was started with
            write_atomic(out_dir / "config.yaml", config_yaml(config), ModelError)
        logger = _RunLog(out_dir, config, progress, run.total_steps, point.log_rows if point else [], run.step,
                         point.how if point else "fresh") if dist.is_main else None  # fmt: skip
        ckpt: dict = {}
        for epoch in range(start_epoch, config.run_epochs):
            t0 = time.perf_counter()
            train_loss, train_acc = run.train_epoch(epoch, logger)
            if dist.is_main:
                state = clean_state_dict(model)  # the master weights, measured and saved
                val_clean, val_faulty = run.evaluate(state)
                logger.epoch(epoch, config.rate_at(epoch), run.opt.param_groups[0]["lr"], train_loss, train_acc,
                             val_clean, val_faulty, time.perf_counter() - t0)  # fmt: skip
                ckpt = run.save(state, out_dir, profile_name, val_clean, epoch + 1, logger.rows)
            dist.barrier()
    finally:
        run.close()
    if not dist.is_main:  # every rank returns what rank 0 saved (e.g. to retrain from it next)
        ckpt = load_checkpoint(out_dir / "model.pt")
    return ckpt


def _starting_model(config: TrainConfig, data: DataBundle, init: dict | None,
                    allow_import: bool) -> tuple[nn.Module, DataBundle, dict | None]:  # fmt: skip
    """The model a run starts from (``init``'s weights, or for a pretraining a fresh one or the
    ``config.weights`` file's), the data normalised as that model was trained, and the record of
    the weights file loaded (None: none)."""
    if data.image_size != config.image_size:
        raise DataError(f"--data: images are {data.image_size}x{data.image_size}; the run is at --image-size {config.image_size}")
    if init is None:
        if config.method != "pretrain":
            raise ModelError("fault-tolerant retraining needs a pretrained checkpoint (--from)")
        model = create_model(config.model, num_classes=data.num_classes, image_size=config.image_size)
        return model, data, (load_initial_weights(model, Path(config.weights)) if config.weights else None)
    if init.get("num_classes") not in (None, data.num_classes):
        raise DataError(f"--data: the checkpoint has {init['num_classes']} classes, the data {data.num_classes}")
    # Keep the parent's input normalisation: the weights were trained for it.
    norm = init.get("normalization") or {}
    if norm:
        data = dataclasses.replace(data, mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    check_model_fits(config.model, init)
    return model_from_checkpoint(init, allow_import=allow_import), data, None


class _Run:
    """One training's moving parts: the model (on a freshly drawn faulty chip at every step when
    retraining), the optimiser and its learning-rate schedule, the random streams, and the step
    the run has reached. :func:`train` builds it, restores an interrupted run into it and steps
    it epoch by epoch."""

    def __init__(self, config: TrainConfig, data: DataBundle, target: Target, model: nn.Module, init: dict | None,
                 dist: "_Distributed", prune_masks: dict[str, torch.Tensor] | None = None,
                 initial_weights: dict | None = None):  # fmt: skip
        self.config, self.data, self.target, self.model, self.init, self.dist = config, data, target, model, init, dist
        self.initial_weights = initial_weights
        device = self.device = dist.device
        self.retraining = config.method != "pretrain"
        # Pruned weights stay zero (re-zeroed after every step), on the model's device.
        self.prune_masks = {name: m.to(device) for name, m in prune_masks.items()} if prune_masks else None
        self.teacher = _teacher(init, device) if self.retraining and config.distill > 0 else None
        self.injector = None
        if self.retraining:  # every rank its own chips: seed offset by rank
            self.injector = FaultInjector(model, target, config.bn, config.stuck_grad == "block", config.seed + 7919 * dist.rank,
                                          device, learn_scale=config.scale_grad == "learn", unbiased=config.unbias_faults,
                                          prune_masks=self.prune_masks, faults=config.fault_model,
                                          fault_draw=config.fault_draw)  # fmt: skip
            self.injector.attach()
        self.net = dist.wrap(model)
        self.opt = _optimizer(model, config)
        self.steps_per_epoch = math.ceil(len(data.train_y) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.run_epochs
        block = self.steps_per_epoch * config.epochs if config.blocks_each else None
        warmup = int(config.warmup_epochs * self.steps_per_epoch)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(self.total_steps, warmup, block))
        self.gen = torch.Generator().manual_seed(config.seed)  # same data order on every rank
        self.aug_gen = torch.Generator(device=device).manual_seed(config.seed + 1 + dist.rank)
        # Streamed images (an image folder too large for memory) stay files: batches() reads them
        # in this same order, batch by batch (this rank's share of each), and moves each batch here.
        self.train_x = data.train_x if data.streamed else data.train_x.to(device)
        self.train_y = data.train_y.to(device)
        # Frozen BN cannot renormalise the sudden shift of a whole rate of stuck cells: hit at the full
        # rate from the first step, a frozen-BN network can diverge in its first epoch. Ramping the
        # rate in over the first epochs lets it adapt.
        self.rate_warmup_steps = int(config.rate_warmup_epochs * self.steps_per_epoch)
        self.step = 0
        self.acc_pretrain = init.get("acc_pretrain") if init else None

    def restore(self, point: "ResumePoint") -> int:
        """Continue an interrupted run where it stopped; the epoch to train next."""
        self.step, epoch = point.restore(self.opt, self.sched, self.gen, self.aug_gen, self.injector,
                                         self.steps_per_epoch, self.dist.rank)  # fmt: skip
        return epoch

    def train_epoch(self, epoch: int, logger: "_RunLog | None") -> tuple[float, float]:
        """One pass over the training images at the epoch's fault rate: (mean loss, accuracy %)."""
        config, injector, dist = self.config, self.injector, self.dist
        rate = config.rate_at(epoch)
        if injector:
            injector.set_rate(rate)
        self.model.train()
        if self.retraining and config.bn == "frozen":
            freeze_batchnorm(self.model)
        # Sums stay on the device: one synchronisation per epoch, not per step.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        # every rank draws the same shuffle and takes its own share of each batch of it
        for xb, yb in batches(self.train_x, self.train_y, config.batch_size, shuffle=True, generator=self.gen,
                              rank=dist.rank, world=dist.world):  # fmt: skip
            if injector and (self.step < self.rate_warmup_steps or config.clean_steps):
                injector.set_rate(config.step_rate(rate, self.step, self.rate_warmup_steps))
            self.step += 1
            logits, loss = self._optimizer_step(normalize(augment(xb, self.aug_gen), self.data.mean, self.data.std), yb)
            if len(yb):  # a short last batch can leave a rank no image, and the mean of none is NaN
                loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
            if logger:
                logger.step()
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise ModelError(f"training diverged in epoch {epoch + 1} (loss {train_loss}); lower --lr")
        return train_loss, 100.0 * correct.item() / seen

    def _optimizer_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One :func:`sgd_step` on this step's chip, then the schedule, the pruning masks and the
        weight clip."""
        config = self.config
        logits, loss = sgd_step(self.net, x, y, self.opt, clip=config.grad_clip if self.retraining else None,
                                teacher=self.teacher, distill=config.distill, temperature=config.distill_temperature)  # fmt: skip
        self.sched.step()
        if self.prune_masks:
            _apply_masks(self.model, self.prune_masks)
        if self.injector and config.weight_clip:
            self.injector.clip_to_sigmas(config.weight_clip)
        return logits, loss

    def evaluate(self, state: dict[str, torch.Tensor]) -> tuple[float, float | None]:
        """Deployed validation accuracy of the master weights ``state``: clean, and mean over
        ``eval_chips`` chips at P_sa^T (retraining only)."""
        config = self.config
        eval_model = create_model(config.model, num_classes=self.data.num_classes, image_size=config.image_size)
        eval_model.load_state_dict(state)
        chips = config.eval_chips if self.retraining else 0
        return deployed_accuracy(eval_model, self.target, self.data, self.device, chips, config.target_rate, config.fault_model,
                                 config.seed)  # fmt: skip

    def save(self, state: dict[str, torch.Tensor], out_dir: Path, profile_name: str, val_clean: float, epochs_done: int,
             log_rows: list[dict]) -> dict:  # fmt: skip
        """Write the checkpoint (master weights ``state``) of the epoch just finished, and what
        resuming after it needs."""
        ckpt = checkpoint_record(self.config, self.data, self.target, state, profile_name, self.init,
                                 self.acc_pretrain, val_clean, epochs_done, self.initial_weights)  # fmt: skip
        # resume.pt first: whichever file an interruption leaves older, resuming restarts
        # from a complete epoch (resume.pt carries its own copy of the weights).
        save_atomic(resume_state(ckpt, self.step, self.opt, self.sched, self.gen, self.aug_gen, self.injector, log_rows),
                    out_dir / "resume.pt")  # fmt: skip
        save_atomic(ckpt, out_dir / "model.pt")
        return ckpt

    def close(self) -> None:
        if self.injector:
            self.injector.detach()


def sgd_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, *, clip: float | None = None,
             teacher: nn.Module | None = None, distill: float = 0.0,
             temperature: float = TrainConfig.model_fields["distill_temperature"].default) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Forward (bf16 autocast on CUDA), cross-entropy (with ``distill`` of it given to matching
    ``teacher``), backward, gradient-norm clipping at ``clip``, one optimiser step: what every
    training step does, and what bench/bench_train_overhead.py times. Returns (logits, loss)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = with_distillation(loss, logits.float(), teacher_logits.float(), distill, temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    return logits, loss


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """Nesterov SGD, weight decay on the weights (conv and linear) only, not on biases or BatchNorm."""
    decay = [p for p in model.parameters() if p.dim() > 1]
    other = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


class _RunLog:
    """Per-epoch log.jsonl and summary.csv (rewritten whole, so always complete), and either a
    rich progress bar or one plain line per epoch. A resumed run starts from the rows of the
    epochs it keeps, so an epoch cut short by the interruption leaves no row behind. The first row
    each process writes says how that process started (``"started"``: fresh, or resumed exactly or
    from the weights alone), so the log alone tells a run's history, however it was launched."""

    COLUMNS = ("epoch", "rate", "lr", "train_loss", "train_acc", "val_acc", "val_acc_faulty", "seconds")

    def __init__(self, out_dir: Path, config: TrainConfig, progress, total_steps: int, rows: list[dict] = (),
                 steps_done: int = 0, started: str = "fresh"):  # fmt: skip
        self.out_dir, self.config, self.progress = out_dir, config, progress
        self.started: str | None = started  # recorded on this process's first row
        self.task = progress.add_task(config.method, total=total_steps, completed=steps_done) if progress else None
        self.rows: list[dict] = [dict(r) for r in rows]
        write_atomic(out_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.rows), ModelError)

    def step(self) -> None:
        if self.progress:
            self.progress.advance(self.task)

    def epoch(self, epoch, rate, lr, train_loss, train_acc, val_clean, val_faulty, seconds) -> None:
        row = dict(zip(self.COLUMNS, (epoch + 1, rate, lr, train_loss, train_acc, val_clean, val_faulty, seconds)))
        if self.started:
            row["started"], self.started = self.started, None
        self.rows.append(row)
        append_line(self.out_dir / "log.jsonl", json.dumps(row), ModelError)
        lines = [",".join(self.COLUMNS)]
        lines += [",".join("" if r[k] is None else f"{r[k]:.6g}" for k in self.COLUMNS) for r in self.rows]
        write_atomic(self.out_dir / "summary.csv", "\n".join(lines) + "\n", ModelError)
        faulty = f", {val_faulty:.2f} % at rate {self.config.target_rate:g}" if val_faulty is not None else ""
        line = (f"[{self.config.method}] epoch {epoch + 1}/{self.config.run_epochs} rate {rate:g} "
                f"loss {train_loss:.3f} val {val_clean:.2f} %{faulty} ({seconds:.1f} s)")  # fmt: skip
        if self.progress:
            self.progress.console.print(line)
        else:
            print(line, flush=True)


class _Distributed:
    """torchrun integration: rank/world from the environment, DDP wrapping, barriers.
    A plain single-process run has rank 0, world 1 and does nothing extra."""

    def __init__(self, rank: int, world: int, device: torch.device):
        self.rank, self.world, self.device = rank, world, device

    @classmethod
    def from_env(cls, device_name: str) -> "_Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(0, 1, pick_device(device_name))
        import torch.distributed as tdist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = pick_device(device_name)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(tdist.get_rank(), tdist.get_world_size(), device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # BN buffers stay per rank (frozen during retraining anyway); pretraining syncs nothing
        # extra, as in torchvision's reference scripts without --sync-bn.
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None,
                                       broadcast_buffers=False)  # fmt: skip

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as tdist

            tdist.barrier()


def _apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Re-zero pruned weights after an optimiser step (the master weight when parametrised)."""
    with torch.no_grad():
        for name, m in deployed_layers(model):
            w = m.parametrizations.weight.original if parametrize.is_parametrized(m, "weight") else m.weight
            w.mul_(masks[name])
