import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_preprocessed_dataset

from sdmcunet.experiment_planning.plans import load_plans
from sdmcunet.training import run_training
from sdmcunet.results.checkpoints import load_checkpoint, save_checkpoint
from sdmcunet.training.trainers import TRAINERS
from sdmcunet.training.trainers.baselines import UNetTrainer
from sdmcunet.utils.errors import SDMCError

NAME = "Dataset2021_Stroke2021"


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    """Synthetic data (8 patients, 64 px), converted, planned and preprocessed once."""
    return make_preprocessed_dataset(tmp_path_factory.mktemp("data"), 8, 5, 64, "--cpu")


@pytest.fixture
def environment(preprocessed, monkeypatch, tmp_path):
    monkeypatch.setenv("SDMC_preprocessed", str(preprocessed.parent))
    monkeypatch.setenv("SDMC_results", str(tmp_path / "results"))
    return preprocessed


def make_trainer(name, preprocessed, epochs=1, iterations=2, fold=0):
    plans = load_plans(preprocessed / "sdmcPlans.json")
    return TRAINERS.get(name)(plans, "2d", fold, preprocessed, "cpu", epochs, iterations, num_loader_workers=0)


@pytest.mark.parametrize("name", ["UNetTrainer", "ResUNet34Trainer", "SegResNetTrainer", "SwinUNETRTrainer"])
def test_every_baseline_trains_a_few_iterations_on_cpu(environment, name):
    trainer = make_trainer(name, environment)
    trainer.run_training()
    folder = trainer.output_folder
    assert folder == Path(os.environ["SDMC_results"]) / NAME / f"{name}__sdmcPlans__2d" / "fold_0"
    state = load_checkpoint(folder / "checkpoint_final.pth", name)
    assert state["epoch"] == 1 and state["iteration"] == 2 and state["started_from_pretrained"] is False
    assert (folder / "progress.png").stat().st_size > 1000 and (folder / "training_log.txt").is_file()
    assert not (folder / "checkpoint_latest.pth").exists()
    # the fold's log is closed with its training: later trainings in this process log elsewhere
    assert not [handler for handler in logging.getLogger("sdmcunet").handlers
                if isinstance(handler, logging.FileHandler) and "fold_0" in handler.baseFilename]
    assert {"plans.json", "dataset.json", "dataset_fingerprint.json"} <= {p.name for p in folder.parent.iterdir()}


def test_baseline_validation_runs_the_network_once_and_agrees_with_loss_and_prediction(environment):
    trainer = make_trainer("UNetTrainer", environment)
    trainer.initialize()
    trainer.network.eval()
    generator = torch.Generator().manual_seed(0)
    batch = {"data": torch.rand(2, trainer.in_channels, 64, 64, generator=generator),
             "seg": torch.randint(0, 3, (2, 1, 64, 64), generator=generator).float()}
    calls = []
    trainer.network.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        loss, predicted = trainer.validate_batch(batch)
        assert len(calls) == 1
        assert torch.allclose(loss, trainer.compute_loss(batch))
        assert torch.equal(predicted, trainer.validation_prediction(batch))


def hand_losses(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cross-entropy, and soft Dice over the batch per class (background included) averaged over the classes."""
    probabilities = torch.softmax(logits, 1)
    one_hot = torch.nn.functional.one_hot(labels[:, 0].long(), logits.shape[1]).permute(0, 3, 1, 2).float()
    overlap, sizes = (probabilities * one_hot).sum((0, 2, 3)), (probabilities + one_hot).sum((0, 2, 3))
    dice = (1 - (2 * overlap + 1e-5) / (sizes + 1e-5)).mean()
    cross_entropy = -(one_hot * torch.log_softmax(logits, 1)).sum(1).mean()
    return {"dice": dice, "ce": cross_entropy, "dice_ce": dice + cross_entropy}


@pytest.mark.parametrize("loss", ["dice_ce", "dice", "ce"])
def test_baselines_train_with_the_loss_the_plans_name(environment, loss):
    plans = load_plans(environment / "sdmcPlans.json")
    plans["configurations"]["2d"]["families"]["baseline"]["loss"] = loss
    trainer = UNetTrainer(plans, "2d", 0, environment, "cpu", 1, 2, num_loader_workers=0)
    trainer.initialize()
    generator = torch.Generator().manual_seed(0)
    batch = {"data": torch.rand(2, trainer.in_channels, 64, 64, generator=generator),
             "seg": torch.randint(0, 3, (2, 1, 64, 64), generator=generator).float()}
    with torch.no_grad():
        logits = trainer.network(batch["data"])
        assert torch.allclose(trainer.compute_loss(batch), hand_losses(logits, batch["seg"])[loss], atol=1e-6)


def test_gpu_plans_trained_on_the_cpu_are_warned_about(environment, caplog):
    plans = load_plans(environment / "sdmcPlans.json")
    cpu = UNetTrainer(plans, "2d", 0, environment, "cpu")
    gpu_plans = dict(plans, compute_target={"device": "cuda", "gpu_memory_target_gb": 40})
    gpu = UNetTrainer(gpu_plans, "2d", 0, environment, "cpu")
    with caplog.at_level(logging.WARNING, logger="sdmcunet.training"):
        cpu.warn_if_planned_for_a_gpu()
        assert not caplog.records
        gpu.warn_if_planned_for_a_gpu()
    assert "sized for a GPU of 40 GB" in caplog.text and "--cpu" in caplog.text


def _weights(trainer):
    return {key: value.clone() for key, value in trainer.module.state_dict().items()}


def test_resume_gives_the_same_weights_as_one_run(environment, monkeypatch, tmp_path):
    straight = make_trainer("UNetTrainer", environment, epochs=2, iterations=3)
    straight.run_training()
    expected = _weights(straight)

    monkeypatch.setenv("SDMC_results", str(tmp_path / "interrupted"))
    original_epoch = UNetTrainer._train_epoch

    def stop_after_first_epoch(self, *args):
        original_epoch(self, *args)
        raise KeyboardInterrupt  # as if killed right after the epoch's checkpoint

    monkeypatch.setattr(UNetTrainer, "_train_epoch", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        make_trainer("UNetTrainer", environment, epochs=2, iterations=3).run_training()
    monkeypatch.setattr(UNetTrainer, "_train_epoch", original_epoch)
    resumed = make_trainer("UNetTrainer", environment, epochs=2, iterations=3)
    resumed.run_training(resume=True)
    assert resumed.iteration == 6
    for key, value in expected.items():
        assert torch.equal(value, resumed.module.state_dict()[key]), key


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_ddp_keeps_weights_identical(environment, tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(textwrap.dedent(f"""
        import os, torch
        from pathlib import Path
        from sdmcunet.experiment_planning.plans import load_plans
        from sdmcunet.training.trainers import TRAINERS
        preprocessed = Path({str(environment)!r})
        trainer = TRAINERS.get("UNetTrainer")(load_plans(preprocessed / "sdmcPlans.json"), "2d", 0, preprocessed,
                                              "cpu", 1, 3, num_loader_workers=0)
        trainer.run_training()
        torch.save(trainer.module.state_dict(), {str(tmp_path)!r} + f"/rank{{trainer.distributed.rank}}.pt")
    """))
    env = os.environ | {"SDMC_results": str(tmp_path / "results"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                             "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    initial = make_trainer("UNetTrainer", environment)
    initial.initialize()
    assert any(not torch.equal(rank0[k], v) for k, v in initial.module.state_dict().items())  # it trained
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert (tmp_path / "results" / NAME / "UNetTrainer__sdmcPlans__2d" / "fold_0" / "checkpoint_final.pth").is_file()


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_never_unpickle_arbitrary_objects(tmp_path):
    malicious = _RunsCode()
    malicious.marker = tmp_path / "pwned"
    torch.save({"format": "sdmcunet-checkpoint-1", "payload": malicious}, tmp_path / "evil.pth")
    with pytest.raises(SDMCError, match="could run code"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not malicious.marker.exists()
    for trial in range(20):  # random bytes must always read as corrupt, never crash or claim code
        (tmp_path / "corrupt.pth").write_bytes(np.random.default_rng(trial).bytes(2048))
        with pytest.raises(SDMCError, match="corrupt"):
            load_checkpoint(tmp_path / "corrupt.pth")
    save_checkpoint(tmp_path / "truncated.pth", {"trainer": "UNetTrainer", "weights": torch.randn(1000)})
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "truncated.pth").read_bytes()[:3000])
    with pytest.raises(SDMCError, match="corrupt"):
        load_checkpoint(tmp_path / "truncated.pth")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "foreign.pth")
    with pytest.raises(SDMCError, match="not an sdmcunet checkpoint"):
        load_checkpoint(tmp_path / "foreign.pth")
    save_checkpoint(tmp_path / "mine.pth", {"trainer": "UNetTrainer"})
    with pytest.raises(SDMCError, match="written by UNetTrainer, not by SwinUNETRTrainer"):
        load_checkpoint(tmp_path / "mine.pth", "SwinUNETRTrainer")


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_latest.pth"
    save_checkpoint(path, {"trainer": "UNetTrainer", "epoch": 1})
    before = path.read_bytes()

    def disk_full(content, target):
        Path(target).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SDMCError, match="No space left on device.*previous file, if any, is intact"):
        save_checkpoint(path, {"trainer": "UNetTrainer", "epoch": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(environment, monkeypatch):
    trainer = make_trainer("UNetTrainer", environment, epochs=3, iterations=2)
    original = UNetTrainer.compute_loss
    monkeypatch.setattr(UNetTrainer, "compute_loss",
                        lambda self, batch: original(self, batch) * (float("nan") if self.epoch == 1 and self.network.training else 1))
    with pytest.raises(SDMCError, match="loss became nan at epoch 1.*checkpoint_latest.pth"):
        trainer.run_training()
    assert load_checkpoint(trainer.checkpoint_path("latest"))["epoch"] == 1


def test_command_line_errors(environment, capsys, monkeypatch, caplog):
    assert run_training.main(["999", "2d", "0", "-tr", "UNetTrainer"]) == 2
    assert "no dataset with id 999" in capsys.readouterr().err
    assert run_training.main(["2021", "2d", "0", "-tr", "UNetTrainer", "-p", "noPlans"]) == 2
    assert "run sdmc_plan_and_preprocess" in capsys.readouterr().err
    assert run_training.main(["2021", "2d", "7", "-tr", "UNetTrainer"]) == 2
    assert "fold 7 does not exist" in capsys.readouterr().err
    assert run_training.main(["2021", "2d", "0", "-tr", "NoTrainer"]) == 2
    error = capsys.readouterr().err
    assert "unknown trainer 'NoTrainer'; available: " in error
    assert all(name in error for name in ("UNetTrainer", "SwinUNETRTrainer", "SDMCFinetunedTrainer", "MaskAutoencoderTrainer"))
    assert run_training.main(["2021", "2d", "0", "-tr", "UNetTrainer", "--val"]) == 2
    assert "checkpoint_final.pth: checkpoint not found" in capsys.readouterr().err


def test_continue_without_checkpoint_starts_fresh_and_says_so(environment, caplog):
    trainer = make_trainer("UNetTrainer", environment)
    trainer.run_training(resume=True)
    assert "no checkpoint" in caplog.text and "starting from scratch" in caplog.text
    assert trainer.checkpoint_path("final").is_file()


def test_trainers_from_a_module_path_and_an_entry_point(tmp_path, monkeypatch):
    assert TRAINERS.get("sdmcunet.training.trainers.baselines:SegResNetTrainer").__name__ == "SegResNetTrainer"
    (tmp_path / "my_trainers.py").write_text(
        "from sdmcunet.training.trainers.baselines import UNetTrainer\nclass MyTrainer(UNetTrainer):\n    pass\n")
    info = tmp_path / "my_trainers-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-trainers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sdmcunet.trainers]\nMyTrainer = my_trainers:MyTrainer\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "MyTrainer" in TRAINERS.names()
    assert TRAINERS.get("MyTrainer").__mro__[1] is UNetTrainer


def test_resunet34_loads_a_local_encoder_weight_file(tmp_path):
    from sdmcunet.networks.baselines import build_baseline, load_encoder_weights

    sizes = {"decoder_channels": [16, 16, 16, 16, 8]}
    donor = build_baseline("ResUNet34", sizes, 3, 3)
    weights = {key: torch.randn_like(value) if value.is_floating_point() else value
               for key, value in donor.encoder.state_dict().items()}
    torch.save(weights | {"fc.weight": torch.zeros(1000, 512)}, tmp_path / "resnet34.pth")
    network = build_baseline("ResUNet34", sizes | {"encoder_weights": str(tmp_path / "resnet34.pth")}, 1, 3)
    load_encoder_weights(network.encoder, tmp_path / "resnet34.pth")
    loaded = network.encoder.state_dict()
    assert torch.allclose(loaded["layer1.0.conv1.weight"], weights["layer1.0.conv1.weight"])
    assert loaded["conv1.weight"].shape[1] == 1  # RGB first convolution folded into one channel
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(SDMCError, match="not ResNet-34 encoder weights"):
        load_encoder_weights(network.encoder, tmp_path / "other.pth")
