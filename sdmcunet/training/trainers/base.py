"""The trainer every model runs on: plans in, checkpoints, progress and validation out.

Subclasses change only what differs: `build_network_architecture` (from the plans alone, so that
inference builds the same network without a trainer), `compute_loss`, and for models that do not
output class logits (SDMC) `segmenter`, `inference_weights` and `validation_segmenter`.
Everything else (data, schedule, AMP, clipping, DDP, checkpoints, resume, logging, validation)
lives here.
"""

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from torch import nn

from sdmcunet.experiment_planning import presets
from sdmcunet.experiment_planning.memory import MemoryModel, available_gigabytes
from sdmcunet.experiment_planning.plans import BASELINE_FAMILY
from sdmcunet.experiment_planning.plans_manager import ConfigurationManager, PlansManager
from sdmcunet.networks.segmenters import Segmenter, SoftmaxSegmenter
from sdmcunet.training.augmentation import training_transforms
from sdmcunet.results import layout
from sdmcunet.results.checkpoints import (
    FROZEN_PARTS, load_checkpoint, network_weights, save_checkpoint, save_frozen_part,
)
from sdmcunet.results.history import TrainingHistory
from sdmcunet.results.splits import fold_cases
from sdmcunet.results.trained_model import write_model_description
from sdmcunet.preprocessing.preprocessed_cases import PreprocessedCases
from sdmcunet.training.data_loading import TrainingBatches, validation_batches
from sdmcunet.training.distributed import DistributedContext, all_reduce_sum, init_distributed
from sdmcunet.training.fold_lock import fold_lock
from sdmcunet.training.progress import plot_progress
from sdmcunet.training.validation import validate_fold
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import make_folder, read_json, remove_unfinished_writes
from sdmcunet.utils.progress import progress_bar

log = logging.getLogger("sdmcunet.training")
RESUMABLE = ("latest", "final")  # the checkpoints --c continues from, in this order
# What network constructors (MONAI, diffusers, torch) raise on sizes they cannot build, or cannot allocate
NETWORK_SIZE_ERRORS = (ValueError, TypeError, RuntimeError, AssertionError, LookupError, ArithmeticError)


class Trainer:
    family = BASELINE_FAMILY  # the plans family with this trainer's sizes, batch size and schedule
    network_name = ""  # the one network of the family's `networks` this trainer builds; "": all of them

    def __init__(self, plans: dict | PlansManager, configuration_name: str, fold: int | str, preprocessed_folder: Path,
                 device: str = "cpu", epochs: int | None = None, iterations_per_epoch: int | None = None,
                 num_loader_workers: int = 0, seed: int = 12345, options: dict | None = None):
        """`plans`: validated plans (their JSON or a PlansManager); `epochs`, `iterations_per_epoch`: overrides of
        the plans' schedule; `options`: trainer-specific command-line choices (e.g. a mask autoencoder file for SDMC)."""
        self.plans = plans if isinstance(plans, PlansManager) else PlansManager(plans)
        self.configuration_name, self.fold = configuration_name, fold
        self.configuration = self.configuration_of(self.plans, configuration_name)
        self.family_settings = self.configuration.family(self.family)
        overrides = {"epochs": epochs, "iterations_per_epoch": iterations_per_epoch}
        self.schedule = replace(self.family_settings.schedule, **{k: v for k, v in overrides.items() if v is not None})
        self.preprocessed_folder = preprocessed_folder
        self.device = torch.device(device)
        self.distributed: DistributedContext = init_distributed(self.device.type)
        if self.device.type == "cuda" and self.distributed.enabled:
            self.device = torch.device("cuda", self.distributed.local_rank)
        self.num_loader_workers, self.seed, self.options = num_loader_workers, seed, options or {}
        self.num_classes = self.plans.num_classes
        self.class_names = self.plans.class_names
        self.in_channels = self.configuration.num_input_channels
        self.model_folder = layout.model_folder(self.plans.dataset_name, type(self).__name__, self.plans.plans_name,
                                                configuration_name)
        self.output_folder = layout.fold_folder(self.model_folder, fold)
        self.history = TrainingHistory()
        self.epoch = self.iteration = 0
        self.best_selection = -math.inf
        self.network: nn.Module | None = None
        self._frozen_part_hashes: dict[str, str] = {}

    # --- the network, from the plans alone (what inference uses) ----------------------------------
    @classmethod
    def configuration_of(cls, plans: PlansManager, configuration_name: str) -> ConfigurationManager:
        """The plans' configuration, which must hold this trainer's family."""
        configuration = plans.configuration(configuration_name)
        if not configuration.has_family(cls.family):
            raise SDMCError(f"the plans' configuration {configuration_name!r} have no '{cls.family}' family")
        return configuration

    @classmethod
    def build_network_architecture(cls, configuration: ConfigurationManager) -> nn.Module:
        """The architecture the plans' configuration gives this trainer; weights come later."""
        raise NotImplementedError

    @classmethod
    def inference_weights(cls, state: dict, folder: Path) -> dict[str, torch.Tensor]:
        """The network weights a checkpoint (lying in `folder`) predicts with."""
        return network_weights(state, folder)

    @classmethod
    def segmenter(cls, network: nn.Module) -> Segmenter:
        """Class probabilities from the network (see networks/segmenters.py)."""
        return SoftmaxSegmenter(network)

    # --- what subclasses change -------------------------------------------------------------
    def build_network(self) -> nn.Module:
        """The architecture only: weights come from `load_initial_weights` or a checkpoint."""
        return type(self).build_network_architecture(self.configuration)

    def load_initial_weights(self, network: nn.Module) -> None:
        """Pretrained weights a training starts from (none by default)."""

    def compute_loss(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def validation_segmenter(self) -> Segmenter:
        """What the training's validations predict with (the network as it is being trained)."""
        return type(self).segmenter(self.module)

    def predict_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) inputs -> (B, classes, H, W) class probabilities."""
        return self.validation_segmenter()(images)[0]

    def validation_prediction(self, batch: dict) -> torch.Tensor:
        """Predicted label maps (B, H, W) for a validation batch."""
        return self.predict_probabilities(batch["data"]).argmax(1)

    def validate_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and the predicted label maps of a validation batch (models whose loss and
        prediction share a forward pass override this to run it once)."""
        return self.compute_loss(batch), self.validation_prediction(batch)

    def final_validation(self, save_probabilities: bool = False) -> Path:
        """Predict the fold's validation cases in their original geometry and write summary.json."""
        return validate_fold(self, save_probabilities)

    def validation_case_ids(self, cases: PreprocessedCases) -> list[str]:
        """The validation cases the final validation predicts (all of them by default)."""
        return cases.case_ids

    def validation_probabilities(self, cases: PreprocessedCases, names: list[str]) -> np.ndarray:
        """(B, classes, H, W) class probabilities of validation cases, in the network's geometry."""
        images = torch.from_numpy(np.stack([cases.image(name) for name in names]).astype(np.float32)).to(self.device)
        with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            return self.predict_probabilities(images).float().cpu().numpy()

    def validation_description(self) -> str | None:
        """What the final validation's summary scores, when it is not a segmentation of the images."""
        return None

    def training_case_ids(self, train_cases: list[str]) -> list[str]:
        """The cases training batches are drawn from (all of the fold's training cases by default)."""
        return train_cases

    def extra_state(self) -> dict:
        """Further tensors a subclass keeps in checkpoints (e.g. an EMA copy)."""
        return {}

    def frozen_parts(self) -> dict[str, nn.Module]:
        """Sub-modules of the network that never train (diffusers models, by attribute name): saved once per
        fold instead of in every checkpoint."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # --- set-up --------------------------------------------------------------------------------
    def initialize(self, initial_weights: bool = True) -> None:
        """Network, optimiser and schedule. Without `initial_weights` the pretrained weights are not
        loaded: inference and `--val` read a checkpoint over them and must not need their files."""
        torch.manual_seed(self.seed)
        with self._network_sizes_checked():
            network = self.build_network()
        if initial_weights:
            self.load_initial_weights(network)
        self.network = network.to(self.device)
        if self.device.type == "cuda":
            self.network = self.network.to(memory_format=torch.channels_last)
        if self.distributed.enabled:
            self.network = nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = self.build_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.learning_rate_factor)
        # bfloat16 has float32's exponent range: its gradients need no loss scaling
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and self.amp_dtype == torch.float16)

    def trained_networks(self) -> dict:
        """The plans' sizes of the networks this trainer builds, by name."""
        networks = self.family_settings.networks
        return {self.network_name: networks[self.network_name]} if self.network_name else networks

    def _plans_field(self, field: str) -> str:
        """`field` of this trainer's plans family, as messages name it."""
        return (f"plans {self.plans.plans_name}, configuration {self.configuration_name!r}: "
                f"families.{self.family}.{field}")

    def _networks_field(self) -> str:
        return self._plans_field(f"networks.{self.network_name}" if self.network_name else "networks")

    @contextmanager
    def _network_sizes_checked(self) -> Iterator[None]:
        """Sizes no network can be built with (or allocated) are the plans' fault: name the field, no traceback."""
        try:
            yield
        except NETWORK_SIZE_ERRORS as error:
            reason = next(iter(str(error).strip().splitlines()), "")
            raise SDMCError(f"{self._networks_field()}: no {type(self).__name__} network can be built with these "
                            f"sizes ({type(error).__name__}: {reason})") from None

    def memory_models(self) -> list[MemoryModel]:
        """Memory models of the networks this trainer trains, built on PyTorch's meta device (nothing allocated)."""
        family = self.family_settings.content | {"networks": self.trained_networks()}
        return presets.memory_models(self.family, family, self.in_channels, self.configuration.image_size)

    def warn_if_planned_for_a_gpu(self) -> None:
        """GPU plans (published sizes) train on a CPU, but at a pace of hours per epoch: say so before starting."""
        target = self.plans.compute_target
        if target.get("device") == "cuda" and self.device.type == "cpu":
            log.warning("plans %s were sized for a GPU of %s GB; on the CPU their training is very slow: "
                        "`sdmc_plan_and_preprocess -d ID --cpu` writes plans sized for the CPU",
                        self.plans.plans_name, target.get("gpu_memory_target_gb"))

    def check_memory(self) -> None:
        """Refuse, before allocating anything, a training step that cannot fit this machine's memory: hand-edited
        plans have no planner to keep their batch and network sizes within it."""
        with self._network_sizes_checked():
            models = self.memory_models()
        available = available_gigabytes(self.device)
        if available is None:
            log.warning("the free memory of %s is unknown: the plans' sizes are not checked against it", self.device)
            return
        batch_size = self.distributed.share_of(self.family_settings.batch_size)
        mixed_precision = self.device.type == "cuda"  # float16 activations
        if max(model.gigabytes(batch_size, mixed_precision) for model in models) > available:
            raise SDMCError(self._too_large_for_memory(models, batch_size, available, mixed_precision))

    def _too_large_for_memory(self, models: list[MemoryModel], batch_size: int, available: float,
                              mixed_precision: bool) -> str:
        """What does not fit: the batch (and how many images would), or the networks even for one image."""
        memory = f"free memory on {self.device}" if mixed_precision else "available RAM"
        beyond = f"(an estimate made on PyTorch's meta device), but this machine has {available:.1f} GB of {memory}"
        fitting = min(model.largest_batch(available, mixed_precision) for model in models)
        if fitting == 0:
            needed = max(model.gigabytes(1, mixed_precision) for model in models)
            return (f"{self._networks_field()}: training {type(self).__name__} needs about {needed:,.1f} GB even "
                    f"for a batch of one image {beyond}; make these networks smaller")
        needed = max(model.gigabytes(batch_size, mixed_precision) for model in models)
        per_process = f" ({batch_size} per process)" if self.distributed.enabled else ""
        return (f"{self._plans_field('batch_size')} = {self.family_settings.batch_size}{per_process}: one training step "
                f"of {type(self).__name__} needs about {needed:,.1f} GB {beyond}; at most "
                f"{fitting * self.distributed.world_size} images per batch fit: lower batch_size (or the network sizes)")

    @property
    def amp_dtype(self) -> torch.dtype:
        """The autocast precision on CUDA: the plans' `schedule.amp_dtype`, float16 by default."""
        return getattr(torch, self.schedule.amp_dtype)

    @property
    def module(self) -> nn.Module:
        """The network without its DDP wrapper."""
        return self.network.module if isinstance(self.network, nn.parallel.DistributedDataParallel) else self.network

    def build_optimizer(self) -> torch.optim.Optimizer:
        schedule = self.schedule
        parameters = [p for p in self.network.parameters() if p.requires_grad]
        if schedule.optimizer == "adamw":
            return torch.optim.AdamW(parameters, lr=schedule.learning_rate, weight_decay=schedule.weight_decay)
        return torch.optim.Adam(parameters, lr=schedule.learning_rate, betas=schedule.adam_betas,
                                weight_decay=schedule.weight_decay)

    def learning_rate_factor(self, step: int) -> float:
        """Linear warm-up, then constant or polynomial decay, as the schedule says."""
        warmup = self.schedule.warmup_iterations
        if step < warmup:
            return (step + 1) / warmup
        if self.schedule.lr_decay == "poly":
            total = self.schedule.epochs * self.schedule.iterations_per_epoch
            return max(0.0, 1 - (step - warmup) / max(1, total - warmup)) ** 0.9
        return 1.0

    def split(self) -> tuple[list[str], list[str]]:
        if self.fold == "all":
            cases = read_json(self.preprocessed_folder / layout.FINGERPRINT_FILE)["cases"]
            return cases, cases
        split = fold_cases(self.preprocessed_folder, int(self.fold))
        return split["train"], split["val"]

    # --- checkpoints --------------------------------------------------------------------------
    def checkpoint_path(self, kind: str) -> Path:
        return self.output_folder / layout.checkpoint_file(kind)

    def save(self, kind: str) -> None:
        """`latest` holds everything a resumed training needs; `best` and `final` what inference and further
        fine-tuning need (weights, the subclass's extra state such as an EMA, progress): no optimiser state.
        Frozen parts are in none of them (see `frozen_parts`)."""
        if not self.distributed.is_main:
            return
        if self.frozen_parts().keys() != self._frozen_part_hashes.keys():
            self.save_frozen_parts()
        frozen = tuple(f"{name}." for name in self.frozen_parts())
        content = {
            "trainer": type(self).__name__, "plans_name": self.plans.plans_name,
            "dataset_name": self.plans.dataset_name, "labels": self.plans.labels,
            "configuration": self.configuration_name, "fold": str(self.fold),
            "epoch": self.epoch, "iteration": self.iteration, "best_selection": self.best_selection,
            "network": {key: value for key, value in self.module.state_dict().items() if not key.startswith(frozen)},
            FROZEN_PARTS: self._frozen_part_hashes, "history": self.history.to_state(), "extra": self.extra_state(),
            "started_from_pretrained": self.started_from_pretrained(),
        }
        if kind == "latest":
            content |= {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state()}
        save_checkpoint(self.checkpoint_path(kind), content)

    def save_frozen_parts(self) -> None:
        """Each frozen part once per fold, as a diffusers folder beside the checkpoints."""
        if self.distributed.is_main:
            self._frozen_part_hashes = {name: save_frozen_part(self.output_folder / name, part)
                                        for name, part in self.frozen_parts().items()}

    def _refuse_to_overwrite(self) -> None:
        """A new training never replaces a fold's checkpoints: they are the user's results."""
        if found := [self.checkpoint_path(kind).name for kind in RESUMABLE if self.checkpoint_path(kind).is_file()]:
            raise SDMCError(f"{self.output_folder}: holds {' and '.join(found)} of an earlier training of this fold; "
                            f"continue it with --c, or move the fold folder away to start over")

    def load(self, path: Path, weights_only: bool = False) -> None:
        self.load_state(load_checkpoint(path, type(self).__name__), path.parent, weights_only)

    def load_state(self, state: dict, folder: Path, weights_only: bool = False) -> None:
        """Weights (frozen parts from `folder`, where the checkpoint lies) and, unless `weights_only`, the
        progress and the optimiser and schedule states where the checkpoint has them (`latest` only)."""
        self.module.load_state_dict(network_weights(state, folder))
        self.load_extra_state(state.get("extra", {}))
        if weights_only:
            return
        self.epoch, self.iteration, self.best_selection = state["epoch"], state["iteration"], state["best_selection"]
        self.history = TrainingHistory.from_state(state["history"])
        if "optimizer" not in state:  # best or final: fine-tuning further starts the optimiser afresh
            log.info("the checkpoint holds no optimiser state: the optimiser starts afresh at iteration %d",
                     self.iteration)
            return
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and self.scaler.is_enabled():  # empty when saved without float16 loss scaling (CPU, bf16)
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])

    def started_from_pretrained(self) -> bool:
        return False

    # --- training ----------------------------------------------------------------------------
    def run_training(self, resume: bool = False, validate: bool = False,
                     save_probabilities: bool = False) -> Path | None:
        """Train the fold from scratch, or with `resume` from its last checkpoint; with `validate`, then predict
        its validation cases (`final_validation`; rank 0 returns the summary's path).

        Memory, network sizes and data are checked before anything is written: a training that cannot
        start leaves no trace. The fold folder is then this training's alone until it returns."""
        self.check_memory()
        self.warn_if_planned_for_a_gpu()
        self.initialize()
        train_cases, val_cases = self.split()
        folder = self.preprocessed_folder / self.configuration.data_identifier
        train_data = PreprocessedCases(folder, self.training_case_ids(train_cases))
        val_data = PreprocessedCases(folder, val_cases)
        with self.exclusive_fold_folder():
            if not resume:
                self._refuse_to_overwrite()
            with self._log_file():
                self._train(train_data, val_data, resume)
            if validate and self.distributed.is_main:
                return self.final_validation(save_probabilities)
        return None

    @contextmanager
    def exclusive_fold_folder(self) -> Iterator[None]:
        """The fold folder, created, and locked by rank 0 for the block (`fold_lock`): one training writes a
        fold folder at a time. The other ranks of a torchrun job follow rank 0, which alone writes."""
        make_folder(self.output_folder)
        if not self.distributed.is_main:
            yield
            return
        with fold_lock(self.output_folder):
            yield

    def _train(self, train_data: PreprocessedCases, val_data: PreprocessedCases, resume: bool) -> None:
        if self.distributed.is_main:
            write_model_description(self.model_folder, self.preprocessed_folder, self.plans.content)
            # the checkpoints a killed run was writing: useless, and each as large as a checkpoint
            remove_unfinished_writes(self.output_folder, layout.CHECKPOINT_PATTERN)
        if resume:
            self._resume()
        self.save_frozen_parts()
        log.info("%s, fold %s: started from pretrained weights: %s", type(self).__name__, self.fold,
                 "yes" if self.started_from_pretrained() else "no (random initialisation)")
        batches = self._training_batches(train_data)
        try:
            while self.epoch < self.schedule.epochs:
                self._train_epoch(batches, val_data)
        finally:
            if isinstance(batches, MultiThreadedAugmenter):
                batches._finish()
        self.save("final")
        self.checkpoint_path("latest").unlink(missing_ok=True)
        log.info("training finished after %d epochs", self.epoch)

    def _resume(self) -> None:
        for kind in RESUMABLE:
            if self.checkpoint_path(kind).is_file():
                self.load(self.checkpoint_path(kind))
                log.info("resuming from %s at epoch %d", self.checkpoint_path(kind).name, self.epoch)
                return
        log.warning("no checkpoint in %s: starting from scratch", self.output_folder)

    def _training_batches(self, cases: PreprocessedCases):
        loader = TrainingBatches(cases, self.distributed.share_of(self.family_settings.batch_size), self.seed,
                                 first_batch=self.iteration, num_workers=max(1, self.num_loader_workers),
                                 rank=self.distributed.rank)
        transforms = training_transforms(self.configuration.image_size)
        if self.num_loader_workers == 0:
            return SingleThreadedAugmenter(loader, transforms)
        return MultiThreadedAugmenter(loader, transforms, self.num_loader_workers, num_cached_per_queue=4,
                                      pin_memory=self.device.type == "cuda")

    def _train_epoch(self, batches, val_data: PreprocessedCases) -> None:
        start = time.time()
        self.network.train()
        losses = []
        progress = progress_bar(range(self.schedule.iterations_per_epoch), desc=f"epoch {self.epoch}",
                                disable=not self.distributed.is_main, leave=False)
        for _ in progress:
            losses.append(self.train_step(next(batches)))
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
        learning_rate = self.optimizer.param_groups[0]["lr"]
        val_loss, dice, selection = self.validate_epoch(val_data)
        self.epoch += 1
        self.history.train_loss.append(float(np.mean(losses)))
        self.history.val_loss.append(val_loss)
        self.history.val_dice.append(dice)
        self.history.val_selection.append(selection)
        self.history.learning_rate.append(learning_rate)
        self.history.epoch_seconds.append(time.time() - start)
        log.info("epoch %d: train loss %.4f, validation loss %.4f, Dice %s, %s %.4f, %.1f s", self.epoch,
                 self.history.train_loss[-1], val_loss, [round(d, 4) for d in dice],
                 self.family_settings.selection_metric, selection, self.history.epoch_seconds[-1])
        if selection > self.best_selection:
            self.best_selection = selection
            self.save("best")
        self.save("latest")
        if self.distributed.is_main:
            plot_progress(self.history, self.output_folder / layout.PROGRESS_PLOT, self.class_names,
                          self.family_settings.selection_metric)

    def train_step(self, batch: dict) -> float:
        batch = {key: value.to(self.device, non_blocking=True) if torch.is_tensor(value) else value
                 for key, value in batch.items()}
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.device.type == "cuda"):
            loss = self.compute_loss(batch)
        if not torch.isfinite(loss):
            last = self.checkpoint_path("latest")
            raise SDMCError(
                f"the loss became {loss.item()} at epoch {self.epoch}, iteration {self.iteration}; training stopped. "
                f"The last good checkpoint is {last if last.is_file() else 'none yet'}; lower the learning rate "
                f"in the plans and resume with --c"
            )
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.network.parameters(), self.schedule.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.after_step()
        self.iteration += 1
        return loss.item()

    def after_step(self) -> None:
        """Called after every optimiser step (e.g. to update an EMA)."""

    @torch.no_grad()
    def validate_epoch(self, cases: PreprocessedCases) -> tuple[float, list[float], float]:
        """Loss, Dice per class and the selection metric over the planned validation batches."""
        self.network.eval()
        counts = torch.zeros(3, self.num_classes - 1, dtype=torch.float64)  # TP, FP, FN per lesion class
        total_loss, n_batches = 0.0, self.schedule.val_iterations
        batch_size = self.distributed.share_of(self.family_settings.batch_size)
        start = self.distributed.rank * n_batches * batch_size
        for batch in validation_batches(cases, batch_size, n_batches, start):
            images = torch.from_numpy(batch["data"]).to(self.device)
            labels = torch.from_numpy(batch["seg"]).to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.device.type == "cuda"):
                loss, predicted = self.validate_batch({"data": images, "seg": labels})
            total_loss += loss.item()
            reference = labels[:, 0].long()
            for index, label in enumerate(range(1, self.num_classes)):
                p, g = predicted == label, reference == label
                counts[:, index] += torch.stack([(p & g).sum(), (p & ~g).sum(), (~p & g).sum()]).double().cpu()
        counts = all_reduce_sum(counts.to(self.device), self.distributed).cpu()
        tp, fp, fn = counts
        dice = (2 * tp / torch.clamp(2 * tp + fp + fn, min=1)).tolist()
        iou = (tp / torch.clamp(tp + fp + fn, min=1)).tolist()
        selection = float(np.mean(iou if self.family_settings.selection_metric == "IoU" else dice))
        return total_loss / n_batches, dice, selection

    @contextmanager
    def _log_file(self) -> Iterator[None]:
        """The training log of this fold, for as long as it trains (not for later trainings in this process)."""
        if not self.distributed.is_main:
            yield
            return
        handler = logging.FileHandler(self.output_folder / layout.TRAINING_LOG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger = logging.getLogger("sdmcunet")
        logger.addHandler(handler)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            handler.close()
