"""`sdmc_train ID 2d FOLD -tr nnUNetTrainer`: nnU-Net v2 itself, trained on this project's data and folds, its
validation brought into this project's results so that evaluation, model selection, ensembling and reports treat it
as any other trainer.

nnU-Net is optional (`pip install 'sdmcunet[nnunet]'`; `nnunet_v2.py` is the side that imports it). It keeps its own
folders, which this project owns and sets in the process's environment before nnunetv2 is first imported
(overriding any of the user's, which nnU-Net would otherwise read):

    nnUNet_raw          = $SDMC_raw                               our raw datasets are nnU-Net v2 datasets
    nnUNet_preprocessed = $SDMC_preprocessed/nnUNet_preprocessed  nnU-Net's fingerprint, plans, 2d data, and
                                                                  this project's splits_final.json
    nnUNet_results      = $SDMC_results/nnUNet_results            nnU-Net's model folder and checkpoints

nnU-Net plans for the hardware this project's plans were made for (`NnunetPlans`): its default `nnUNetPlans` (its
planner's 8 GB GPU memory target, what published comparisons train) for GPU plans, and `nnUNetPlans_cpu`, its
planner at a CPU-sized memory target, for the CPU plans of `sdmc_plan_and_preprocess --cpu`, as the other trainers
train smaller networks there.

A fold trained so leaves in this project's `nnUNetTrainer__{plans}__2d/fold_{f}/`: the validation (label maps in
their references' geometry, probabilities as `{case}.npz` (classes, rows, columns), summary.json scored by this
project's metrics) and `checkpoint_final.pth`, a small sdmcunet checkpoint without weights that records nnU-Net's
training history and where nnU-Net's own checkpoint lies. Prediction is nnU-Net's (`prediction_commands`):
`sdmc_predict` cannot build nnU-Net's network and says so.
"""

import logging
import os
import shlex
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Iterator

import numpy as np
from torch import nn

from sdmcunet import paths
from sdmcunet.evaluation.metrics import summarise_cases, write_summary
from sdmcunet.experiment_planning.plans_manager import ConfigurationManager, PlansManager
from sdmcunet.imageio import DEFAULT_GEOMETRY, read_label_slice_with_geometry, write_label_map
from sdmcunet.imageio.probabilities import PROBABILITIES_KEY, save_probabilities
from sdmcunet.raw_dataset import dataset_id_of, load_dataset_json
from sdmcunet.results import layout
from sdmcunet.results.checkpoints import load_checkpoint, save_checkpoint
from sdmcunet.results.history import TrainingHistory
from sdmcunet.results.splits import SPLITS_FILE, load_splits, splits_path
from sdmcunet.results.trained_model import write_model_description
from sdmcunet.training.trainers.base import RESUMABLE, Trainer
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import atomic_write_bytes, make_folder, read_json

if TYPE_CHECKING:  # imported at run time only once nnU-Net's folders are set (`nnUNetTrainer.nnunet_v2`)
    from sdmcunet.training.trainers import nnunet_v2

log = logging.getLogger("sdmcunet.training")

NNUNET_TRAINER = "nnUNetTrainer"  # nnU-Net's class name: its folders and checkpoints are nnU-Net's own
NNUNET_PLANS = "nnUNetPlans"  # nnU-Net's default plans, for this project's GPU plans
NNUNET_CPU_PLANS = "nnUNetPlans_cpu"  # for its CPU plans
# nnU-Net's 2d plans of 256 x 256 slices at its default 8 GB: 7 stages, batch 32 of 256 x 320 patches, over 40 s a
# training step on 2 CPU cores; at 0.15 GB: 6 stages, batch 2 of 160 x 160 patches, about 1 s (its network alone).
NNUNET_CPU_MEMORY_GB = 0.15
NNUNET_CONFIGURATION = "2d"
NNUNET_EXTRA = "pip install 'sdmcunet[nnunet]'"
RECORD_KEY = "nnunet"  # in this project's checkpoint_final.pth: where nnU-Net's checkpoint lies, and how it trained


@dataclass(frozen=True)
class NnunetPlans:
    """The nnU-Net plans that nnUNetTrainer trains with for this project's plans (see the module's docstring)."""

    name: str
    gpu_memory_target_gb: float | None  # what nnU-Net's planner is given; None: its default (8 GB)

    @classmethod
    def for_plans(cls, plans: PlansManager) -> "NnunetPlans":
        if plans.compute_target.get("device") == "cpu":
            return cls(NNUNET_CPU_PLANS, NNUNET_CPU_MEMORY_GB)
        return cls(NNUNET_PLANS, None)

    @property
    def file_name(self) -> str:
        """nnU-Net's plans file in its preprocessed dataset folder; its copy in this project's model folder."""
        return f"{self.name}.json"


@dataclass(frozen=True)
class NnunetFolders:
    """nnU-Net's three folders, inside this project's (see the module's docstring)."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def of_this_project(cls) -> "NnunetFolders":
        return cls(paths.raw_root().resolve(), (paths.preprocessed_root() / "nnUNet_preprocessed").resolve(),
                   (paths.results_root() / "nnUNet_results").resolve())

    def environment(self) -> dict[str, str]:
        return {"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results)}

    def dataset(self, dataset_name: str) -> Path:
        """nnU-Net's preprocessed dataset folder."""
        return self.preprocessed / dataset_name

    def model(self, dataset_name: str, plans_name: str) -> Path:
        """nnU-Net's model folder of its trainer, plans and configuration."""
        return self.results / dataset_name / layout.model_folder_name(NNUNET_TRAINER, plans_name, NNUNET_CONFIGURATION)


class nnUNetTrainer(Trainer):
    """nnU-Net v2's own planning, preprocessing, training and validation of a fold, on this project's raw dataset and
    splits; `--epochs` and `--iterations_per_epoch` set nnU-Net's schedule (default: nnU-Net's own)."""

    def __init__(self, plans, configuration_name: str, fold: int | str, preprocessed_folder: Path,
                 device: str = "cpu", epochs: int | None = None, iterations_per_epoch: int | None = None,
                 num_loader_workers: int = 0, seed: int = 12345, options: dict | None = None):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise SDMCError("nnUNetTrainer trains in one process; for several GPUs use nnU-Net's own "
                            "`nnUNetv2_train ... -num_gpus N`")
        if configuration_name != NNUNET_CONFIGURATION:
            raise SDMCError(f"nnUNetTrainer trains nnU-Net's {NNUNET_CONFIGURATION!r} configuration, not "
                            f"{configuration_name!r}")
        super().__init__(plans, configuration_name, fold, preprocessed_folder, device, epochs, iterations_per_epoch,
                         num_loader_workers, seed, options)
        self.requested_epochs, self.requested_iterations = epochs, iterations_per_epoch
        self.nnunet = NnunetFolders.of_this_project()
        self.nnunet_plans = NnunetPlans.for_plans(self.plans)
        self.engine: "nnunet_v2.nnUNetTrainer | None" = None  # nnU-Net's trainer of the fold, once made

    # --- what this project's other stages ask of a trainer class -----------------------------------------
    @classmethod
    def build_network_architecture(cls, configuration: ConfigurationManager) -> nn.Module:
        """nnU-Net builds its network from its own plans, which this project's predictor does not read."""
        plans = configuration.plans
        raise SDMCError("nnUNetTrainer's networks are nnU-Net's, which sdmc_predict does not build: predict with "
                        "nnU-Net itself (as `sdmc_find_best_configuration` writes in inference_instructions.txt):\n  "
                        + cls.prediction_commands(plans, [0, 1, 2, 3, 4], "OUTPUT_FOLDER", False)[0])

    @classmethod
    def prediction_commands(cls, plans: PlansManager, folds: list[int], output: str,
                            save_probabilities: bool) -> list[str]:
        """nnU-Net's `nnUNetv2_predict` of INPUT_FOLDER (nnU-Net's file naming) into `output` with this project's
        nnU-Net folders; with `save_probabilities`, then the conversion of its folder into one `sdmc_ensemble` reads."""
        environment = " ".join(f"{name}={shlex.quote(folder)}"
                               for name, folder in NnunetFolders.of_this_project().environment().items())
        predicted = f"{output}_NNUNET" if save_probabilities else output
        predict = " ".join([environment, "nnUNetv2_predict", "-i", "INPUT_FOLDER", "-o", predicted,
                            "-d", str(dataset_id_of(plans.dataset_name)), "-c", NNUNET_CONFIGURATION,
                            "-f", *map(str, folds), "-tr", NNUNET_TRAINER, "-p", NnunetPlans.for_plans(plans).name,
                            *(["--save_probabilities"] if save_probabilities else [])])
        if not save_probabilities:
            return [predict]
        return [predict, f"python -m sdmcunet.training.trainers.nnunet_v2 -i {predicted} -o {output}"]

    # --- sdmc_train ---------------------------------------------------------------------------------
    def run_training(self, resume: bool = False, validate: bool = False,
                     save_probabilities: bool = False) -> Path | None:
        """nnU-Net's planning and preprocessing (once per dataset), its training of the fold (`resume`: from its
        latest checkpoint), then with `validate` its validation, brought into this fold folder.

        Like every trainer here, a fold with checkpoints is only continued (--c), never trained over."""
        nnunet_v2 = self.nnunet_v2()
        self.split()  # this project's fold must exist: nnU-Net would make up a random one
        with self.exclusive_fold_folder():
            if not resume:
                self._refuse_to_overwrite()
                self._refuse_to_overwrite_nnunet()
            self.prepare_nnunet_dataset()
            self.check_nnunet_model_folder()
            self.engine = self._make_engine(nnunet_v2, resume)
            with augmentation_processes(self.num_loader_workers):
                if resume:
                    self._resume_engine()
                self.engine.run_training()
            self.record_fold(nnunet_v2.training_history(self.engine), nnunet_v2.schedule(self.engine))
            if validate:
                return self.final_validation(save_probabilities)
        return None

    def initialize(self, initial_weights: bool = True) -> None:
        """`sdmc_train --val`: nnU-Net's trainer of the fold, for `load` to fill from nnU-Net's final checkpoint; its
        data and splits checked as for a training (nnU-Net validates the cases of its own splits file)."""
        nnunet_v2 = self.nnunet_v2()
        self.prepare_nnunet_dataset()
        self.check_nnunet_model_folder()
        self.engine = self._make_engine(nnunet_v2, resume=False)

    def load(self, path: Path, weights_only: bool = False) -> None:
        """`path` is this project's checkpoint of the fold, which says where nnU-Net's lies: nnU-Net loads that one
        (unpickling it, as `nnUNetv2_train` does; it lies in nnUNet_results, a folder of this project)."""
        record = load_checkpoint(path, type(self).__name__).get(RECORD_KEY, {})
        expected = {"dataset": self.plans.dataset_name, "configuration": NNUNET_CONFIGURATION, "fold": str(self.fold)}
        if (recorded := {key: record.get(key) for key in expected}) != expected:
            raise SDMCError(f"{path}: records an nnU-Net training of another dataset or configuration ({recorded}), "
                            f"not of {expected}")
        checkpoint = self.nnunet_fold_folder() / layout.FINAL_CHECKPOINT
        if not checkpoint.is_file():
            raise SDMCError(f"{checkpoint}: nnU-Net's final checkpoint of this fold, which {path} stands for, is "
                            f"missing (recorded there as {record.get('checkpoint')})")
        self.engine.load_checkpoint(str(checkpoint))

    def final_validation(self, save_probabilities: bool = False) -> Path:
        """nnU-Net's validation of the fold, brought into this fold folder; always with probabilities, whatever
        `save_probabilities` says: ensembles need them, and nnU-Net's validation is slow to repeat."""
        self.engine.perform_actual_validation(save_probabilities=True)
        return self.import_validation()

    # --- nnU-Net's side -----------------------------------------------------------------------------
    def nnunet_v2(self) -> ModuleType:
        """The module that drives nnunetv2, imported once nnU-Net's folders are in the environment (nnunetv2 reads
        them there); an error naming the extra that installs nnU-Net when it cannot be imported."""
        os.environ.update(self.nnunet.environment())
        # nnU-Net's export and evaluation pools (its default: 8 processes, read when nnunetv2 is imported)
        os.environ.setdefault("nnUNet_def_n_proc", str(max(1, self.num_loader_workers)))
        try:
            from sdmcunet.training.trainers import nnunet_v2
        except ImportError as error:
            raise SDMCError(f"-tr nnUNetTrainer needs nnU-Net v2, which cannot be imported here ({error}); install "
                            f"it with {NNUNET_EXTRA}") from None
        return nnunet_v2

    @property
    def dataset_id(self) -> int:
        return dataset_id_of(self.plans.dataset_name)

    @property
    def nnunet_dataset(self) -> Path:
        return self.nnunet.dataset(self.plans.dataset_name)

    def nnunet_model_folder(self) -> Path:
        return self.nnunet.model(self.plans.dataset_name, self.nnunet_plans.name)

    def nnunet_fold_folder(self) -> Path:
        return layout.fold_folder(self.nnunet_model_folder(), self.fold)

    def prepare_nnunet_dataset(self) -> Path:
        """nnU-Net's fingerprint, plans and preprocessed 2d data of this dataset, made unless complete, with this
        project's splits beside them; returns nnU-Net's preprocessed dataset folder."""
        if not self._nnunet_data_complete():
            log.info("nnU-Net's planning and preprocessing of %s into %s", self.plans.dataset_name,
                     self.nnunet_dataset)
            self.nnunet_v2().plan_and_preprocess(self.dataset_id, self.nnunet_plans.name,
                                                 self.nnunet_plans.gpu_memory_target_gb, NNUNET_CONFIGURATION,
                                                 max(1, self.num_loader_workers))
        self._copy_splits()
        return self.nnunet_dataset

    def _nnunet_data_complete(self) -> bool:
        """nnU-Net's plans exist, and every case of this dataset is preprocessed with its reference copied (the
        last thing nnU-Net's preprocessing does): a killed preprocessing is made again."""
        plans_file = self.nnunet_dataset / self.nnunet_plans.file_name
        if not plans_file.is_file():
            return False
        identifier = read_json(plans_file).get("configurations", {}).get(NNUNET_CONFIGURATION, {}).get(
            "data_identifier")
        cases = read_json(self.preprocessed_folder / layout.FINGERPRINT_FILE)["cases"]
        ending = load_dataset_json(self.preprocessed_folder).file_ending
        return identifier is not None and all(
            (self.nnunet_dataset / identifier / f"{case}.pkl").is_file()
            and (layout.references_folder(self.nnunet_dataset) / f"{case}{ending}").is_file() for case in cases)

    def _copy_splits(self) -> None:
        """This project's splits (whole patients) become nnU-Net's; nnU-Net's own, or older ones, are refused: the
        nnU-Net trainings made with them validated on other cases."""
        ours = splits_path(self.preprocessed_folder)
        if not ours.is_file():  # fold 'all' of a dataset without splits: nnU-Net needs none either
            return
        theirs = self.nnunet_dataset / SPLITS_FILE
        if not theirs.is_file():
            atomic_write_bytes(theirs, ours.read_bytes())
        elif read_json(theirs) != load_splits(self.preprocessed_folder):
            raise SDMCError(f"{theirs}: nnU-Net's splits differ from this project's {ours}, so nnUNetTrainer's folds "
                            f"would not be the other trainers' folds; move it away (and the nnU-Net trainings in "
                            f"{self.nnunet_model_folder()} made with it) to train on this project's "
                            f"splits")

    def check_nnunet_model_folder(self) -> None:
        """nnU-Net's model folder must hold trainings of this dataset with the plans nnU-Net has now for 2d: a
        checkpoint of other plans would not fit the network, or would score other data."""
        trained = self.nnunet_model_folder() / layout.PLANS_FILE
        if not trained.is_file():
            return
        if reason := plans_difference(read_json(trained), self.nnunet_dataset / self.nnunet_plans.file_name):
            raise SDMCError(f"{trained}: nnU-Net results of another dataset or configuration ({reason}); move "
                            f"{trained.parent} away to train again")

    def _refuse_to_overwrite_nnunet(self) -> None:
        folder = self.nnunet_fold_folder()
        if found := [layout.checkpoint_file(kind) for kind in RESUMABLE
                     if (folder / layout.checkpoint_file(kind)).is_file()]:
            raise SDMCError(f"{folder}: holds nnU-Net's {' and '.join(found)} of an earlier training of this fold; "
                            f"continue it with --c, or move that folder away to start over")

    def _make_engine(self, nnunet_v2: ModuleType, resume: bool) -> "nnunet_v2.nnUNetTrainer":
        return nnunet_v2.fold_trainer(self.nnunet_dataset, self.nnunet_plans.file_name, NNUNET_CONFIGURATION,
                                      self.fold, self.device, resume, self.requested_epochs, self.requested_iterations)

    def _resume_engine(self) -> None:
        """nnU-Net's latest checkpoint of the fold, else its final one (a finished training validates again)."""
        folder = self.nnunet_fold_folder()
        for kind in RESUMABLE:
            if (checkpoint := folder / layout.checkpoint_file(kind)).is_file():
                self.engine.load_checkpoint(str(checkpoint))
                log.info("resuming nnU-Net's training from %s at epoch %d", checkpoint, self.engine.current_epoch)
                return
        log.warning("no checkpoint in %s: starting from scratch", folder)

    # --- into this project's results ----------------------------------------------------------------
    def record_fold(self, history: TrainingHistory, schedule: dict[str, int]) -> None:
        """The model folder's description (this project's plans, as every model folder; nnU-Net's plans beside them)
        and the fold's checkpoint_final.pth: no weights, but where nnU-Net's checkpoint lies, the schedule it trained
        with and the history the reports plot."""
        write_model_description(self.model_folder, self.preprocessed_folder, self.plans.content)
        atomic_write_bytes(self.model_folder / self.nnunet_plans.file_name,
                           (self.nnunet_model_folder() / layout.PLANS_FILE).read_bytes())
        save_checkpoint(self.checkpoint_path("final"), {
            "trainer": type(self).__name__, "plans_name": self.plans.plans_name,
            "dataset_name": self.plans.dataset_name, "labels": self.plans.labels,
            "configuration": self.configuration_name, "fold": str(self.fold), "epoch": history.epochs,
            "history": history.to_state(),
            RECORD_KEY: {"checkpoint": str(self.nnunet_fold_folder() / layout.FINAL_CHECKPOINT),
                         "dataset": self.plans.dataset_name, "trainer": NNUNET_TRAINER, "plans": self.nnunet_plans.name,
                         "configuration": NNUNET_CONFIGURATION, "fold": str(self.fold), "schedule": schedule},
        })

    def import_validation(self) -> Path:
        """nnU-Net's validation of the fold as this project's: label maps with their references' geometry (what
        `sdmc_evaluate` compares them with), probabilities as `{case}.npz`, and summary.json scored by this
        project's metrics; returns the summary's path."""
        _, cases = self.split()
        file_ending = load_dataset_json(self.preprocessed_folder).file_ending
        source = layout.validation_folder(self.nnunet_fold_folder())
        output = make_folder(layout.validation_folder(self.output_folder))
        references = layout.references_folder(self.preprocessed_folder)
        scored = {case: import_case(source, case, file_ending, references / f"{case}{file_ending}", output,
                                    self.num_classes) for case in cases}
        summary = summarise_cases(scored) if scored else {"note": "no validation case to score"}
        summary_path = output / layout.SUMMARY_FILE
        write_summary(summary_path, summary)
        log.info("nnU-Net's validation of fold %s: %s", self.fold, summary_path)
        return summary_path


def plans_difference(trained: dict, current_path: Path) -> str | None:
    """How the plans nnU-Net trained with differ from its current plans in what a checkpoint depends on (the dataset
    and the 2d configuration), or None."""
    current = read_json(current_path)
    if trained.get("dataset_name") != current.get("dataset_name"):
        return f"dataset {trained.get('dataset_name')!r}, not {current.get('dataset_name')!r}"
    if trained.get("configurations", {}).get(NNUNET_CONFIGURATION) != current["configurations"][NNUNET_CONFIGURATION]:
        return f"other {NNUNET_CONFIGURATION} plans than {current_path} holds now"
    return None


def import_case(source: Path, case: str, file_ending: str, reference_path: Path, output: Path,
                num_classes: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """One case of nnU-Net's validation folder written into `output`, its label map with the reference's geometry;
    returns (prediction, reference, spacing) for scoring."""
    reference, geometry = read_label_slice_with_geometry(reference_path)
    geometry = geometry or DEFAULT_GEOMETRY
    label_map, probabilities = read_nnunet_case(source, case, file_ending, num_classes)
    if label_map.shape != reference.shape:
        raise SDMCError(f"{source / (case + file_ending)}: nnU-Net's prediction has shape {label_map.shape}, its "
                        f"reference {reference_path} {reference.shape}: nnU-Net's data is not this dataset's; remove "
                        f"nnU-Net's preprocessed dataset and model folder and train again")
    save_probabilities(output / f"{case}.npz", probabilities)
    write_label_map(label_map, output / f"{case}{file_ending}", geometry)  # last: the case is complete
    return label_map, reference, geometry.spacing


def read_nnunet_case(folder: Path, case: str, file_ending: str,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """nnU-Net's label map and probabilities of a case, the probabilities as (classes, rows, columns): nnU-Net
    writes a 2D image's as (classes, 1, rows, columns)."""
    label_path, probabilities_path = folder / f"{case}{file_ending}", folder / f"{case}.npz"
    for path in (label_path, probabilities_path):
        if not path.is_file():
            raise SDMCError(f"{path}: missing; nnU-Net did not predict case {case} with probabilities "
                            f"(--save_probabilities)")
    label_map, _ = read_label_slice_with_geometry(label_path)
    try:
        with np.load(probabilities_path) as content:
            probabilities = content[PROBABILITIES_KEY]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise SDMCError(f"{probabilities_path}: not nnU-Net's probabilities ({error})") from None
    if probabilities.ndim == 4 and probabilities.shape[1] == 1:
        probabilities = probabilities[:, 0]
    if probabilities.shape != (num_classes, *label_map.shape):
        raise SDMCError(f"{probabilities_path}: probabilities of shape {probabilities.shape}, expected "
                        f"({num_classes}, 1, rows, columns) for the label map {label_path} {label_map.shape}")
    return label_map, probabilities


@contextmanager
def augmentation_processes(count: int) -> Iterator[None]:
    """nnU-Net's augmentation workers (`nnUNet_n_proc_DA`) for a block: `-num_loader_workers`, 0 = in-process.
    Only for training: nnU-Net's planner takes the same variable for its thread count, which 0 breaks."""
    previous = os.environ.get("nnUNet_n_proc_DA")
    os.environ["nnUNet_n_proc_DA"] = str(count)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("nnUNet_n_proc_DA")
        else:
            os.environ["nnUNet_n_proc_DA"] = previous

