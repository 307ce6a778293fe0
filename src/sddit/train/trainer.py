"""The training loop shared by every objective (dit, maskdit, sddit). Read it top to bottom.

    setup -> lock the run directory -> data -> student (EDMPrecond around DiT or SplitDiT)
          -> objective (teacher, centers) -> sampling EMA -> optimiser, precision -> resume? -> loggers, monitor
          -> loop { stop requested? -> loss + gradients (micro-batches), step, EMA, teacher, log, grid, FID, save }
          -> final checkpoint -> class grid PNG -> FID

What happens to the run directory (lock, metrics on resume, config changes) is in run_dir.py, the
clean stop on SIGINT/SIGTERM in stop.py, checkpoint files in sddit/checkpoint.py.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import distributed as dist
from .. import seeding
from ..checkpoint import CHECKPOINT_VERSION, list_checkpoints, load_latest, save_checkpoint
from ..config import Config, config_to_dict
from ..data import EpochSampler, ImageDataset, build_dataset
from ..diffusion import EDMPrecond
from ..errors import CheckpointError, ConfigError, Interrupted, RunError, file_problem
from ..models import build_model, compile_blocks
from ..objectives import Terms, build_objective
from ..runtime import resolve_device, warn as warn_stderr
from . import run_dir as rundir
from .amp import Precision
from .data_fit import fit_model_to_data
from .ema import copy_for_ema, ema_decay, ema_update
from .gradnorms import gradient_norms
from .loggers import build_loggers, truncate_events
from .monitor import Monitor
from .optim import build_optimizer
from .plots import plot_metrics
from .schedules import learning_rate
from .stop import GracefulStop, signal_name


class Trainer:
    """Holds the state of one run; `fit()` is the loop."""

    def __init__(
        self, cfg: Config, log=print, evaluate: bool = False, allow_config_change: bool = False, warn=warn_stderr
    ):
        """`evaluate`: the caller will ask for a grid and FID after training (`sddit train`), so what
        they need is checked and loaded now, before training. `allow_config_change`: resume even if
        the run directory's config differs in keys that change the computation (recorded). `log`
        takes progress and notes (stdout), `warn` warnings (stderr)."""
        self.cfg, self.log, self.warn = cfg, log, warn
        self.allow_config_change = allow_config_change  # resume even if the stored config differs (recorded)
        self.evaluate = evaluate  # load the final grid / FID's needs before training
        self.saved_step: int | None = None  # the step of the last checkpoint this process wrote
        self.announced = False  # the start-up banner was printed
        self.device = resolve_device(cfg.device)
        self.rank, self.world, _ = dist.init_from_env(str(self.device))
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        torch.set_flush_denormal(True)  # denormals slow CPU training ~20x (tiny Adam moments)
        if cfg.train.num_threads > 0:
            torch.set_num_threads(cfg.train.num_threads)
        torch.backends.cuda.matmul.allow_tf32 = cfg.train.tf32
        torch.backends.cudnn.allow_tf32 = cfg.train.tf32
        seeding.init_weights_seed(cfg.train.seed)  # the same initial weights on every rank (teacher, EMA too)
        self.run_dir = Path(cfg.run_dir)
        # One training process per run directory (rank 0 holds the lock; released by close()).
        self.lock = rundir.RunDirLock(self.run_dir).acquire() if dist.is_main() else None
        if self.lock is not None and self.lock.stale_holder:
            self.log(
                f"note: took over the lock of {self.run_dir} left by a process that is gone ({self.lock.stale_holder})"
            )
        if self.lock is not None and (partial := rundir.remove_stale_temporaries(self.run_dir)):
            self.log(
                f"note: removed {len(partial)} partial file(s) ({', '.join(p.name for p in partial[:3])}"
                f"{' ...' if len(partial) > 3 else ''}) left by a write that was killed"
            )
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        """Data, networks, optimiser, then resume: everything under the run-directory lock."""
        cfg = self.cfg
        # data
        self.dataset: ImageDataset = build_dataset(cfg.data.dataset, cfg.data.root, "train", cfg.data.resolution)
        fit_model_to_data(cfg, self.dataset, self.log)  # shapes and classes, each a one-line error
        self.sampler = EpochSampler(len(self.dataset), cfg.train.batch_size, cfg.train.seed, self.rank, self.world)
        if (cfg.train.batch_size // self.world) % cfg.train.grad_accum:
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} over {self.world} processes is "
                f"{cfg.train.batch_size // self.world} rows each, not divisible into "
                f"train.grad_accum={cfg.train.grad_accum} equal micro-batches"
            )

        # student, objective (teacher lives there), sampling EMA, optimiser
        self.net = EDMPrecond(build_model(cfg), cfg.diffusion.sigma_data).to(self.device)
        self.objective = build_objective(cfg, self.net)
        self.ema = copy_for_ema(self.net)
        self.opt = build_optimizer(self.net, cfg.train.lr, cfg.train.betas, cfg.train.weight_decay)
        self.amp = Precision(cfg.train.precision, self.device)  # autocast; fp16: the gradient scaler
        # Per-rank streams for what is drawn outside the objectives (flips, latent posterior samples);
        # the objectives' noise, masks and label drops come from per-step generators.
        seeding.seed_rank_streams(cfg.train.seed, self.rank)
        self.step, self.bad_steps = 0, 0
        self.diagnostic_seconds = 0.0  # time of this step spent on diagnostics (gradient norms), off the clock
        self.train_seconds = 0.0  # wall-clock spent in training steps (not checkpoints/FID), carried over resumes
        self._resume()
        # metrics.jsonl (+ tensorboard / wandb) and the grids / FID, on rank 0; checked before training
        self.loggers = build_loggers(cfg, self.run_dir, dist.is_main())
        tc = cfg.train
        self.monitor = None
        if dist.is_main():
            fid_sizes = [tc.fid_samples] * (tc.fid_every > 0) + [cfg.eval.num_samples] * (
                self.evaluate and cfg.eval.num_samples > 0
            )
            with dist.all_cores():  # the other ranks wait in DDP's first broadcast
                self.monitor = Monitor(
                    cfg, self.device, grids=tc.sample_every > 0 or self.evaluate, fid_sizes=fid_sizes, log=self.log
                )

        self.train_net: nn.Module = self.net
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_net = self.ddp = DDP(self.net, device_ids=ids)
        if cfg.train.compile and cfg.train.compile_scope == "blocks":
            compile_blocks(self.net)  # in place: train_net (the net or its DDP wrapper) runs them
        elif cfg.train.compile:  # scope "model": one graph
            self.train_net = torch.compile(self.train_net)

    # ------------------------------------------------------------------ checkpoints
    def state(self, rng_states: list[dict]) -> dict:
        """Everything a bit-exact resume needs: weights, EMA, teacher + centers, optimiser, data
        position, and the RNG states of every rank."""
        return {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "config": config_to_dict(self.cfg),
            "world_size": self.world,
            "model": self.net.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "objective": self.objective.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": dict(enumerate(rng_states)),
            "train_seconds": self.train_seconds,
            "scaler": self.amp.state_dict(),
        }

    def save(self) -> Path:
        rng_states = dist.gather_objects(seeding.rng_state())
        path = self.run_dir / "checkpoints" / f"ckpt-{self.step:07d}.pt"
        if dist.is_main():
            try:
                path = save_checkpoint(
                    self.state(rng_states), self.run_dir, self.step, self.cfg.train.keep_last, warn=self.warn
                )
            except OSError as e:  # e.g. a full disk: the temp file is gone, older checkpoints are intact
                kept = list_checkpoints(self.run_dir)
                problem = file_problem(e) or f"cannot write {e.filename or path} ({e.strerror or e})"
                raise RunError(
                    f"the step-{self.step} checkpoint was not saved: {problem}; "
                    f"{'the previous one, ' + str(kept[-1]) + ', is intact' if kept else 'no earlier checkpoint exists'}; "
                    "then re-run the same command to resume"
                ) from None
            self.log(f"saved {path}")
        dist.barrier()
        self.saved_step = self.step
        return path

    def close(self) -> None:
        """Close the loggers and release the run directory (the lock); the object stays usable for sampling."""
        if getattr(self, "loggers", None) is not None:
            self.loggers.close()
        if getattr(self, "lock", None) is not None:
            self.lock.release()

    def _resume(self) -> None:
        # Unreadable newer checkpoints move to checkpoints/unreadable/; none readable is an error.
        state = load_latest(self.run_dir, map_location=self.device, warn=self.warn, move_unreadable=dist.is_main())
        if state is None:
            self._drop_metrics_after(0)
            return
        changes = rundir.check_resume_config(
            state["config"], config_to_dict(self.cfg), state["_path"], self.allow_config_change
        )
        try:
            self.net.model.load_state_dict(state["model"])
            self.ema.model.load_state_dict(state["ema"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(
                f"{state['_path']} does not match this model config ({first}); use another --run-dir"
            ) from None
        self.opt.load_state_dict(state["optimizer"])
        self.objective.load_state_dict(state["objective"])
        self.sampler.load_state_dict(state["sampler"])
        self.amp.load_state_dict(state.get("scaler"))
        if self.rank in state["rng"]:
            seeding.set_rng_state(state["rng"][self.rank])
        else:
            self.warn(
                f"warning: {state['_path']} has no RNG state for rank {self.rank} (it was written by "
                f"{state.get('world_size', '?')} processes); this rank's flips/posterior samples restart from its seed"
            )
        self.step = state["step"]
        self.saved_step = self.step  # that checkpoint exists: a run with nothing left to train writes none
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.log(f"resumed from {state['_path']} at step {self.step}")
        if changes and dist.is_main():
            rundir.record_config_changes(self.run_dir, changes, self.step, self.allow_config_change)
            self.log(
                f"note: config changed on resume ({', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in changes.items())}); "
                f"recorded in {self.run_dir / rundir.CHANGES_NAME}"
            )
        self._drop_metrics_after(self.step)

    def _drop_metrics_after(self, step: int) -> None:
        """metrics.jsonl lines and TensorBoard events past the resumed step describe steps that are
        trained again: drop them."""
        if not dist.is_main():
            return
        if dropped := rundir.truncate_metrics(self.run_dir, step):
            self.log(
                f"note: dropped {dropped} line(s) of metrics.jsonl after step {step} (those steps are trained again)"
            )
        if dropped := truncate_events(self.run_dir, step):
            self.log(f"note: dropped {dropped} TensorBoard event(s) after step {step}")

    # ------------------------------------------------------------------ the loop
    def forward_backward(self, x0: Tensor, y: Tensor) -> tuple[Tensor, Terms] | None:
        """Loss and gradients of this rank's rows of the global batch, in train.grad_accum equal
        micro-batches: each micro-batch's loss (a mean over its rows) is divided by k and the
        gradients summed, which is the gradient of the mean over all the rows. Micro-batch m is given
        its own rows of the step's global random draw (`Objective.micro_batch`), so accumulation
        changes memory, not the update; under DDP only the last backward all-reduces. Returns the
        mean loss and terms, or None when a loss was non-finite (the step is skipped on every rank).
        """
        k = self.cfg.train.grad_accum
        self.opt.zero_grad(set_to_none=True)
        loss_sum, sums = None, {}
        for m, (xm, ym) in enumerate(zip(x0.chunk(k), y.chunk(k))):
            sync = self.ddp is None or m == k - 1
            with self.objective.micro_batch(m, k), nullcontext() if sync else self.ddp.no_sync():
                with self.amp.autocast():
                    loss, terms = self.objective(self.train_net, xm, ym, self.step)
                if not self._loss_is_finite(loss):
                    self._skip_bad_step()
                    return None
                if (
                    m == 0
                    and self.cfg.train.gradnorm_every > 0
                    and (self.step + 1) % self.cfg.train.gradnorm_every == 0
                ):
                    t = time.perf_counter()
                    self.log_gradnorms()
                    self.diagnostic_seconds += time.perf_counter() - t  # kept off the training clock
                self.amp.backward(loss if k == 1 else loss / k)
            if k == 1:  # no accumulation: the loss and terms as they are (bit-identical to a plain step)
                self.bad_steps = 0
                return loss, terms
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            for name, v in terms.items():
                sums[name] = v.detach() if name not in sums else sums[name] + v.detach()
        self.bad_steps = 0
        return loss_sum / k, {name: v / k for name, v in sums.items()}

    def _loss_is_finite(self, loss: Tensor) -> bool:
        """Finite on every rank (so all ranks skip a bad step together)."""
        finite = torch.isfinite(loss.detach()).float()
        return dist.all_reduce_mean(finite).item() == 1.0

    def _skip_bad_step(self) -> None:
        """A NaN/inf loss skips its step (on every rank); too many in a row stop the run."""
        self.bad_steps += 1
        self.warn(f"warning: non-finite loss at step {self.step}; step skipped ({self.bad_steps} in a row)")
        if self.bad_steps >= self.cfg.train.max_bad_steps:
            last = list_checkpoints(self.run_dir)
            where = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written"
            raise RunError(
                f"loss was non-finite for {self.bad_steps} steps in a row (step {self.step}); {where}; "
                f"lower train.lr, set train.grad_clip, or use train.precision=fp32"
            )

    def fit(self, until: int | None = None, signals: GracefulStop | None = None) -> None:
        """Train to step `until` (default train.max_steps). Schedules always see train.max_steps, so
        one run can be trained in chunks with work between them (benchmarks/convergence.py).
        `signals`: a stop it requests (SIGINT/SIGTERM) saves at the next step boundary and raises
        Interrupted."""
        cfg, tc = self.cfg, self.cfg.train
        stop = tc.max_steps if until is None else min(until, tc.max_steps)
        if dist.is_main():
            rundir.write_config(self.run_dir, config_to_dict(cfg))
        bar = tqdm(
            total=tc.max_steps,
            initial=self.step,
            desc=f"train {cfg.objective}",
            unit="step",
            disable=not dist.is_main(),
            dynamic_ncols=True,
        )
        sums: dict[str, float] = {}
        count, seconds_last, step_last = 0, self.train_seconds, self.step
        first = None  # the step this process's first fit() started at (rank 0)
        if dist.is_main() and not self.announced:  # once, not at every fit() of a run trained in chunks
            self.announced, first = True, self.step
            self.log(self.banner(stop))
            if tc.compile and self.step < stop:
                self.log(
                    "note: torch.compile compiles the model during the first step (minutes for XL models): "
                    "the first step is slow, the next ones fast"
                )
        while self.step < stop:
            if signals is not None and (signum := signals.requested(self.device)):
                bar.close()
                self._interrupted(signum)
            t_step, self.diagnostic_seconds = time.perf_counter(), 0.0
            idx = self.sampler.next()
            flips = torch.rand(len(idx)) < 0.5 if cfg.data.hflip else None
            x0, y = self.dataset.batch(idx, flips)
            x0, y = x0.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            lr = learning_rate(cfg, self.step)
            for group in self.opt.param_groups:
                group["lr"] = lr

            result = self.forward_backward(x0, y)  # loss and gradients, over train.grad_accum micro-batches
            if result is None:  # non-finite loss: the step is skipped
                self.step += 1
                bar.update(1)
                continue
            loss, terms = result
            self.objective.adjust_gradients(self.net, self.step)
            if tc.grad_clip > 0:
                self.amp.unscale_(self.opt)
                terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.net.parameters(), tc.grad_clip)
            taken = self.amp.step(self.opt)  # False only when fp16 gradients overflowed (the scaler skips)
            if taken:  # a skipped step moves neither the teacher, the centers nor the sampling EMA
                self.objective.after_step(self.net, self.step)
                ema_update(self.ema, self.net, ema_decay(self.step, tc.ema_decay, tc.ema_warmup))
            if self.amp.scale is not None:
                terms.update(grad_scale=torch.tensor(self.amp.scale), fp16_skipped=torch.tensor(float(not taken)))
            self.step += 1
            bar.update(1)
            if self.device.type == "cuda":
                torch.cuda.synchronize()  # the step's queued kernels belong to its time
            self.train_seconds += time.perf_counter() - t_step - self.diagnostic_seconds
            if tc.compile and first is not None and self.step == first + 1:
                self.log(f"note: the first step (with compilation) took {time.perf_counter() - t_step:.0f} s")

            terms = {"loss": loss.detach(), **terms}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            count += 1
            if self.step % tc.log_every == 0 or self.step == stop:
                means = torch.tensor([sums[k] / count for k in sums], dtype=torch.float64)
                means = dist.all_reduce_mean(means.to(self.device)).cpu()
                # over training time only: grids, FIDs and checkpoints of the window do not count
                window = self.train_seconds - seconds_last
                record = {
                    **{k: float(v) for k, v in zip(sums, means)},
                    "lr": lr,
                    "img_per_s": (self.step - step_last) * tc.batch_size / max(window, 1e-9),
                    "train_seconds": round(self.train_seconds, 2),
                }
                self.loggers.log(self.step, record)  # metrics.jsonl (+ tensorboard / wandb); rank 0 only
                if dist.is_main():
                    bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['img_per_s']:.0f}")
                    for warning in self.objective.warnings(self.step, record):
                        self.warn(warning)
                sums, count, seconds_last, step_last = {}, 0, self.train_seconds, self.step
            # a due checkpoint first: a grid or FID that fails (or is killed) loses no training
            if self.step == stop or tc.ckpt_every > 0 and self.step % tc.ckpt_every == 0:
                self.save()
            if tc.sample_every > 0 and self.step % tc.sample_every == 0:
                self.log_samples()
            if tc.fid_every > 0 and self.step % tc.fid_every == 0:
                self.log_fid()
        bar.close()
        if self.saved_step != self.step:  # the last step was skipped, or none trained and none saved (a resume's is)
            self.save()
        if dist.is_main():
            plot_metrics(self.run_dir)
        self.loggers.flush()

    def banner(self, stop: int) -> str:
        """What this run is, in one line at its start: the model, the data, the processes and the batch."""
        cfg, tc, m = self.cfg, self.cfg.train, self.cfg.model
        params = sum(p.numel() for p in self.net.parameters())
        shape = "x".join(map(str, self.dataset.shape))
        source = "scikit-learn" if cfg.data.dataset == "digits" else str(Path(cfg.data.root).expanduser().resolve())
        per_rank = tc.batch_size // self.world
        accum = f" in {tc.grad_accum} micro-batches" if tc.grad_accum > 1 else ""
        return (
            f"sddit train: {cfg.objective} {m.preset or 'model'} ({params / 1e6:.2f}M parameters, "
            f"{m.in_channels}x{m.input_size}x{m.input_size} input, {m.num_classes} classes); data: "
            f"{len(self.dataset):,} {cfg.data.dataset} entries of {shape} from {source}; {self.world} "
            f"process{'es' if self.world > 1 else ''} on {self.device}, {tc.precision}"
            f"{', compiled' if tc.compile else ''}; batch {tc.batch_size} ({per_rank} per process{accum}); "
            f"steps {self.step} -> {stop}; run dir {self.run_dir}"
        )

    def log_gradnorms(self) -> None:
        """Each weighted loss term's gradient norm per model part (train.gradnorm_every), mean over
        ranks, from the current (first) micro-batch's graph, before its backward."""
        norms = gradient_norms(self.objective.parts, self.net.model)
        values = dist.all_reduce_mean(torch.tensor(list(norms.values()), dtype=torch.float64, device=self.device))
        if dist.is_main():
            self.loggers.log(self.step + 1, dict(zip(norms, values.cpu().tolist())))

    def log_samples(self) -> None:
        """A class grid of the sampling EMA (decoded through the VAE for latent runs) as
        `samples/step-N.png`, also sent to the loggers (rank 0; others wait)."""
        if dist.is_main():
            with dist.all_cores():
                path = self.monitor.grid(
                    self.ema, self.run_dir / "samples" / f"step-{self.step:07d}.png", self.cfg.train.sample_per_class
                )
            self.loggers.image(self.step, "samples", path)
        dist.barrier()

    def _interrupted(self, signum: int) -> None:
        """Save at this step boundary (unless just saved) and stop with a one-line message."""
        path = (
            self.save() if self.saved_step != self.step else self.run_dir / "checkpoints" / f"ckpt-{self.step:07d}.pt"
        )
        raise Interrupted(
            f"stopped by {signal_name(signum)} at step {self.step}: saved {path}; run the same command again to resume",
            signum,
        )

    def log_fid(self) -> None:
        """In-training FID of the sampling EMA on `train.fid_samples` samples (rank 0; others wait)."""
        if dist.is_main():
            with dist.all_cores():
                r = self.monitor.fid(self.ema, self.cfg.train.fid_samples)
            self.loggers.log(
                self.step,
                {
                    "fid": r["fid"],
                    "fid_samples": r["num_samples"],
                    "fid_steps": r["steps"],
                    "fid_cfg_scale": r["cfg_scale"],
                },
            )
            self.log(f"step {self.step}: FID-{r['num_samples']} = {r['fid']:.2f}")
        dist.barrier()


def train(cfg: Config, log=print, evaluate: bool = False, allow_config_change: bool = False) -> Trainer:
    """Train to cfg.train.max_steps (resuming from the run directory if it has checkpoints), with a
    clean stop on SIGINT/SIGTERM. `evaluate`: see `Trainer`. The trainer returned still holds the run
    directory and its loggers: close() it."""
    trainer = Trainer(cfg, log, evaluate, allow_config_change=allow_config_change)
    try:
        with GracefulStop() as signals:
            trainer.fit(signals=signals)
        if signals.signum:  # arrived during the last step: training is complete and saved
            raise Interrupted(
                f"{signal_name(signals.signum)} after the last step ({trainer.step}), which is saved in "
                f"{trainer.run_dir / 'checkpoints'}; the grid and FID were skipped (`sddit eval "
                f"{trainer.run_dir}` computes the FID)",
                signals.signum,
            )
    except BaseException:
        trainer.close()
        raise
    return trainer
