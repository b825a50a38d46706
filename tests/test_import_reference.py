"""sdmc_import_reference: reference (SDSeg / SDMC-Seg Lightning) checkpoints -> sdmcunet model folders.

Checkpoints are written here in the reference key layout (sdmcunet.weights.standin.sdseg_state_dict:
key names and shapes from the LDM architecture, LitEma's dot-less names, LDM's schedule buffers), at
narrow widths so that each test takes a second or two. The bad inputs are in tests/test_bad_input.py.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sdmcunet.evaluation import evaluate_predictions
from sdmcunet.experiment_planning.plans import configuration, validate_plans
from sdmcunet.imageio import read_png, write_label_map
from sdmcunet.inference import predict
from sdmcunet.inference.model_loading import load_model
from sdmcunet.raw_dataset import make_dataset_json
from sdmcunet.results.checkpoints import load_checkpoint
from sdmcunet.reporting import report
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import sha256
from sdmcunet.weights import import_reference
from sdmcunet.weights.convert import convert_unet, convert_vae
from sdmcunet.weights.import_reference import IMPORT_RECORD, PLANS_NAME
from sdmcunet.weights.reference_checkpoint import lit_ema_names
from sdmcunet.weights.standin import sdmc_seg_config, sdseg_state_dict, write_compvis_checkpoint

VAE = {"ch": 16, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1}
# Attention at downsampling rates 1 and 2 (32 and 64 channels, 4 heads each: heads of two widths, as published).
UNET = {"model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [1, 2],
        "num_heads": 4, "dropout": 0.0}
IMAGE_SIZE = 64
GLOBAL_STEP, EPOCH = 4321, 17
MODEL = f"SDMCFinetunedTrainer__{PLANS_NAME}__2d"


def reference_checkpoint(path: Path, seed: int = 0, ema: bool = True) -> Path:
    return write_compvis_checkpoint(path, sdseg_state_dict(VAE, UNET, seed, ema=ema), global_step=GLOBAL_STEP,
                                    epoch=EPOCH, **{"pytorch-lightning_version": "1.4.2"})


def reference_config(path: Path, **params: object) -> Path:
    """The training YAML for these sizes, `params` replacing fields of model.params."""
    config = sdmc_seg_config(VAE, UNET, IMAGE_SIZE)
    config["model"]["params"].update(params)
    path.write_text(yaml.safe_dump(config))
    return path


def run_import(checkpoint: Path, output: Path, *options: str) -> int:
    return import_reference.main(["-i", str(checkpoint), "-o", str(output), *options])


def ema_unet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's EMA weights under the UNet's names (LitEma: the name without its dots)."""
    prefix = "model.diffusion_model."
    return {name.removeprefix(prefix): state[f"model_ema.diffusion_model{name.removeprefix(prefix).replace('.', '')}"]
            for name in state if name.startswith(prefix)}


def training_unet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "model.diffusion_model."
    return {name.removeprefix(prefix): value for name, value in state.items() if name.startswith(prefix)}


def assert_same(module_state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert module_state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(module_state[name], tensor), name


def loaded(folder: Path):
    """The fold-all network of a model folder as sdmc_predict loads it (EMA denoiser), and its checkpoint."""
    model = load_model(folder, ["all"], "checkpoint_final.pth", torch.device("cpu"))
    checkpoint = load_checkpoint(folder / "fold_all" / "checkpoint_final.pth")
    return model, model.folds[0].segmenter.model, checkpoint


def checkpoint_denoiser(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The training (non-EMA) denoiser weights a checkpoint keeps for continued training."""
    return {name.removeprefix("denoiser."): value for name, value in checkpoint["network"].items()
            if name.startswith("denoiser.")}


def test_import_carries_every_weight_over_the_ema_by_default(tmp_path, capsys):
    state = sdseg_state_dict(VAE, UNET)
    checkpoint = reference_checkpoint(tmp_path / "last.ckpt")
    config = reference_config(tmp_path / "stroke-ldm-kl-8_finetuned.yaml")
    output = tmp_path / "model"

    assert run_import(checkpoint, output, "--config", str(config)) == 0
    assert "SDMCFinetunedTrainer imported" in capsys.readouterr().out

    assert sorted(path.name for path in output.iterdir()) == ["dataset.json", "fold_all", IMPORT_RECORD, "plans.json"]
    model, network, saved = loaded(output)
    sizes = model.configuration.family("sdmc").networks["denoiser"]
    assert_same(network.denoiser.state_dict(), convert_unet(ema_unet(state), IMAGE_SIZE // 8, sizes).state_dict())
    assert_same(checkpoint_denoiser(saved), convert_unet(training_unet(state), IMAGE_SIZE // 8, sizes).state_dict())
    # conv_in reads 8 channels in both: carried over unchanged, not widened
    assert torch.equal(network.denoiser.conv_in.weight, state["model_ema.diffusion_modelinput_blocks00weight"])
    assert_same(network.mask_autoencoder.state_dict(), convert_vae(state).state_dict())
    assert torch.equal(network.image_encoder.encoder.conv_in.weight, state["cond_stage_model.encoder.conv_in.weight"])
    assert torch.equal(network.image_encoder.encoder.conv_out.weight, state["cond_stage_model.encoder.conv_out.weight"])
    assert torch.equal(network.image_encoder.projection.weight, state["cond_stage_model.out.weight"])
    assert torch.equal(network.alphas_cumprod, state["alphas_cumprod"])
    assert network.scale_factor.item() == state["scale_factor"].item()
    assert int(saved["extra"]["ema"]["n_averaged"]) == int(state["model_ema.num_updates"])


def test_model_folder_plans_and_provenance(tmp_path):
    checkpoint = reference_checkpoint(tmp_path / "last.ckpt")
    config = reference_config(tmp_path / "stroke.yaml")
    output = tmp_path / "model"
    assert run_import(checkpoint, output, "--config", str(config)) == 0

    plans = json.loads((output / "plans.json").read_text())
    validate_plans(plans, output / "plans.json")
    settings = configuration(plans, "2d")
    assert settings["input_channels"] == [{"name": "PNG", "source_channel": 1, "normalization": "min_max_per_image"}]
    assert settings["crop_to_head"] is False and settings["image_size"] == [IMAGE_SIZE, IMAGE_SIZE]
    sdmc = settings["families"]["sdmc"]
    assert sdmc["diffusion"] == {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.0015,
                                 "beta_end": 0.0155, "prediction_type": "epsilon"}
    assert sdmc["networks"]["denoiser"] | {"pretrained": None} == UNET | {"pretrained": None}
    assert sdmc["networks"]["image_encoder"] == {"dropout": 0.2} and sdmc["schedule"]["ema_decay"] == 0.9999
    dataset = json.loads((output / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT", "1": "PNG"} and dataset["file_ending"] == ".nii.gz"
    assert dataset["labels"] == {"background": 0, "ischemic": 1, "hemorrhagic": 2}

    record = json.loads((output / IMPORT_RECORD).read_text())
    assert record["source"] | {"path": None} == {"file": "last.ckpt", "path": None, "sha256": sha256(checkpoint),
                                                 "global_step": GLOBAL_STEP, "epoch": EPOCH}
    assert record["config"]["file"] == "stroke.yaml" and record["config"]["sha256"] == sha256(config)
    assert record["weights"].startswith("EMA") and record["ema"] == {"decay": 0.9999, "num_updates": 1234}
    assert record["trainer"] == "SDMCFinetunedTrainer" and record["scale_factor"] == 0.2
    assert any("not square is zero-padded" in assumption for assumption in record["assumptions"])
    state = torch.load(output / "fold_all" / "checkpoint_final.pth", weights_only=True)
    assert (state["trainer"], state["fold"], state["epoch"], state["iteration"]) == (
        "SDMCFinetunedTrainer", "all", EPOCH, GLOBAL_STEP)


def test_no_ema_imports_the_training_weights_in_both_slots(tmp_path):
    state = sdseg_state_dict(VAE, UNET)
    checkpoint = reference_checkpoint(tmp_path / "last.ckpt")
    output = tmp_path / "model"
    assert run_import(checkpoint, output, "--config", str(reference_config(tmp_path / "c.yaml")), "--no-ema") == 0

    model, network, saved = loaded(output)
    sizes = model.configuration.family("sdmc").networks["denoiser"]
    expected = convert_unet(training_unet(state), IMAGE_SIZE // 8, sizes).state_dict()
    assert_same(network.denoiser.state_dict(), expected)
    assert_same(checkpoint_denoiser(saved), expected)
    record = json.loads((output / IMPORT_RECORD).read_text())
    assert record["weights"].startswith("training") and record["ema"] is None


def test_a_checkpoint_without_ema_imports_with_no_ema(tmp_path):
    checkpoint = reference_checkpoint(tmp_path / "last.ckpt", ema=False)
    config = str(reference_config(tmp_path / "c.yaml"))
    assert run_import(checkpoint, tmp_path / "model", "--config", config, "--no-ema") == 0


def slices(folder: Path) -> list[str]:
    """Grey 8-bit PNG slices as in the release (one not square), named by their stem."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in {"11403": (72, 72), "11404": (64, 80), "11405": (96, 96)}.items():
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{name}.png")
    return ["11403", "11404", "11405"]


def test_predict_and_evaluate_with_the_imported_model(tmp_path, capsys):
    checkpoint = reference_checkpoint(tmp_path / "last.ckpt")
    output = tmp_path / "results" / "Dataset2021_Stroke2021" / MODEL
    assert run_import(checkpoint, output, "--config", str(reference_config(tmp_path / "c.yaml"))) == 0
    cases = slices(tmp_path / "slices")

    predictions = tmp_path / "predictions"
    assert predict.main(["-i", str(tmp_path / "slices"), "-o", str(predictions), "-m", str(output), "-f", "all",
                         "-np", "0"]) == 0
    for case in cases:
        label_map = read_png(predictions / f"{case}.png")
        assert label_map.shape == read_png(tmp_path / "slices" / f"{case}.png").shape and label_map.max() <= 2
    info = json.loads((predictions / "prediction_info.json").read_text())
    assert info["trainer"] == "SDMCFinetunedTrainer" and info["folds"] == ["all"] and info["problems"] == {}

    references = tmp_path / "references"
    for case in cases:
        write_label_map(np.ones_like(read_png(predictions / f"{case}.png")), references / f"{case}.png")
    assert evaluate_predictions.main(["-ref", str(references), "-pred", str(predictions)]) == 0
    assert json.loads((predictions / "summary.json").read_text())["stroke2021"]


def test_sdmc_report_lists_the_imported_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDMC_results", str(tmp_path / "results"))
    output = tmp_path / "results" / "Dataset2021_Stroke2021" / MODEL
    assert run_import(reference_checkpoint(tmp_path / "last.ckpt"), output,
                      "--config", str(reference_config(tmp_path / "c.yaml"))) == 0
    assert report.main(["-d", "2021", "-p", PLANS_NAME, "-o", str(tmp_path / "report")]) == 0
    assert "SDMCFinetunedTrainer: 1 fold (all) finished, no fold with a validation summary" in (tmp_path / "report" / "report.md").read_text()


def test_the_same_import_again_has_nothing_to_do(tmp_path, capsys):
    checkpoint = reference_checkpoint(tmp_path / "last.ckpt")
    config = str(reference_config(tmp_path / "c.yaml"))
    output = tmp_path / "model"
    assert run_import(checkpoint, output, "--config", config) == 0
    written = {path: path.stat().st_mtime_ns for path in output.rglob("*")}

    assert run_import(checkpoint, output, "--config", config) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert {path: path.stat().st_mtime_ns for path in output.rglob("*")} == written
    # other options are another model: refused, the folder untouched
    assert run_import(checkpoint, output, "--config", config, "--no-ema") == 2
    assert "exists and is not a conversion of this checkpoint with these options" in capsys.readouterr().err
    assert {path: path.stat().st_mtime_ns for path in output.rglob("*")} == written


def test_without_a_config_the_published_configuration_is_assumed(tmp_path):
    output = tmp_path / "model"
    assert run_import(reference_checkpoint(tmp_path / "last.ckpt"), output) == 0

    plans = json.loads((output / "plans.json").read_text())
    settings = configuration(plans, "2d")
    sdmc = settings["families"]["sdmc"]
    assert settings["image_size"] == [256, 256] and sdmc["networks"]["denoiser"]["num_heads"] == 8
    assert sdmc["networks"]["denoiser"]["dropout"] == 0.2 and sdmc["diffusion"]["prediction_type"] == "epsilon"
    record = json.loads((output / IMPORT_RECORD).read_text())
    assert record["trainer"] == "SDMCFinetunedTrainer" and record["config"] is None
    assert record["assumptions"][0].startswith("no --config: the published configuration")
    loaded(output)


@pytest.mark.parametrize("params, trainer", [
    ({"first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
        "embed_dim": 4, "ckpt_path": "models/first_stage_models/kl-f8/model.ckpt", "ddconfig": {**VAE}}}},
     "SDMCPretrainedTrainer"),
    ({"cond_stage_trainable": False}, "SDMCFinetunedFrozenTrainer"),
], ids=["pretrained mask autoencoder", "frozen image encoder"])
def test_the_trainer_follows_the_config(tmp_path, params, trainer):
    output = tmp_path / "model"
    config = reference_config(tmp_path / "c.yaml", **params)
    assert run_import(reference_checkpoint(tmp_path / "last.ckpt"), output, "--config", str(config)) == 0
    assert loaded(output)[0].trainer_name == trainer


def test_x0_parameterization_predicts_the_sample(tmp_path):
    output = tmp_path / "model"
    config = reference_config(tmp_path / "c.yaml", parameterization="x0")
    assert run_import(reference_checkpoint(tmp_path / "last.ckpt"), output, "--config", str(config)) == 0
    plans = json.loads((output / "plans.json").read_text())
    assert configuration(plans, "2d")["families"]["sdmc"]["diffusion"]["prediction_type"] == "sample"


def test_channels_and_labels_of_a_raw_dataset(tmp_path, monkeypatch):
    raw = tmp_path / "raw" / "Dataset077_PngOnly"
    raw.mkdir(parents=True)
    labels = {"background": 0, "ischemic": 1, "hemorrhagic": 2}
    (raw / "dataset.json").write_text(json.dumps(make_dataset_json({0: "PNG"}, labels, 3, ".png")))
    monkeypatch.setenv("SDMC_raw", str(tmp_path / "raw"))
    output = tmp_path / "model"

    assert run_import(reference_checkpoint(tmp_path / "last.ckpt"), output,
                      "--config", str(reference_config(tmp_path / "c.yaml")), "-d", "77") == 0
    plans = json.loads((output / "plans.json").read_text())
    assert plans["dataset_name"] == "Dataset077_PngOnly" and plans["num_input_channels_raw"] == 1
    assert configuration(plans, "2d")["input_channels"][0]["source_channel"] == 0
    assert json.loads((output / "dataset.json").read_text())["channel_names"] == {"0": "PNG"}
    slices(tmp_path / "slices")
    assert predict.main(["-i", str(tmp_path / "slices"), "-o", str(tmp_path / "out"), "-m", str(output),
                         "-f", "all", "-np", "0"]) == 0


def test_ema_names_that_collapse_onto_one_are_refused():
    assert lit_ema_names(["input_blocks.0.0.weight"]) == {
        "diffusion_modelinput_blocks00weight": "input_blocks.0.0.weight"}
    with pytest.raises(SDMCError, match=r"model.diffusion_model.a.b1 and model.diffusion_model.ab.1 both become "
                                        r"model_ema.diffusion_modelab1"):
        lit_ema_names(["a.b1", "ab.1"])
