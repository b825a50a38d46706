import os
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from conftest import make_preprocessed_dataset

from sdmcunet.experiment_planning.plans import load_plans
from sdmcunet.experiment_planning.presets import cpu_families
from sdmcunet.networks.sdmc import SDMCSeg, colour_image_to_probabilities, mask_to_colour_image
from sdmcunet.results.checkpoints import load_checkpoint, save_checkpoint
from sdmcunet.training.trainers import TRAINERS
from sdmcunet.utils.errors import SDMCError
from sdmcunet.utils.files import read_json

NAME = "Dataset2021_Stroke2021"


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    return make_preprocessed_dataset(tmp_path_factory.mktemp("data"), 8, 5, 64, "--cpu")


@pytest.fixture(scope="module")
def results(preprocessed, tmp_path_factory):
    """The mask autoencoder of fold 0, trained once for the module (1 epoch, 2 iterations)."""
    folder = tmp_path_factory.mktemp("results")
    os.environ["SDMC_results"] = str(folder)
    try:
        trainer = make_trainer("MaskAutoencoderTrainer", preprocessed)
        trainer.run_training()
        trainer.final_validation()
    finally:
        os.environ.pop("SDMC_results")
    return folder


@pytest.fixture
def environment(preprocessed, results, monkeypatch):
    monkeypatch.setenv("SDMC_preprocessed", str(preprocessed.parent))
    monkeypatch.setenv("SDMC_results", str(results))
    return preprocessed


def make_trainer(name, preprocessed, epochs=1, iterations=2, options=None):
    plans = load_plans(preprocessed / "sdmcPlans.json")
    return TRAINERS.get(name)(plans, "2d", 0, preprocessed, "cpu", epochs, iterations, num_loader_workers=0,
                              options=options)


def tiny_model(latent_size=8, prediction_type="epsilon") -> SDMCSeg:
    """The CPU plan's SDMC sizes; epsilon prediction (the published formulas) unless told."""
    family = cpu_families()["sdmc"]
    return SDMCSeg(family["networks"], dict(family["diffusion"], prediction_type=prediction_type), latent_size)


def test_colour_encoding_round_trip():
    labels = torch.randint(0, 3, (2, 16, 16))
    colours = mask_to_colour_image(labels)
    assert colours.shape == (2, 3, 16, 16) and set(colours.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(colours[:, 0] == 1, labels == 0) and torch.equal(colours[:, 2] == 1, labels == 2)  # red NS, blue HS
    assert torch.equal(colours.argmax(1), labels)
    probabilities = colour_image_to_probabilities(colours + 0.1 * torch.randn_like(colours))
    assert torch.allclose(probabilities.sum(1), torch.ones(2, 16, 16)) and torch.equal(probabilities.argmax(1), labels)


def test_probabilities_keep_the_argmax_of_saturated_decoded_channels():
    # every channel below -1 (a dark lesion), two channels above +1: clipping made both ties
    decoded = torch.tensor([[-3.0, 2.0], [-1.5, 3.0], [-4.0, -1.0]]).view(1, 3, 1, 2)
    probabilities = colour_image_to_probabilities(decoded)
    assert torch.equal(probabilities.argmax(1), decoded.argmax(1)) and probabilities.argmax(1).tolist() == [[[1, 1]]]
    assert torch.allclose(probabilities.sum(1), torch.ones(1, 1, 2))
    decoded.requires_grad_(True)
    colour_image_to_probabilities(decoded)[:, 1].sum().backward()
    assert (decoded.grad[0, 1] > 0).all()  # the mask autoencoder's Dice term can pull a dark lesion up


def test_noise_schedule_is_the_ldm_linear_schedule():
    model = tiny_model()
    t = torch.arange(1000, dtype=torch.float64)
    betas = (np.sqrt(0.0015) + (np.sqrt(0.0155) - np.sqrt(0.0015)) * t / 999) ** 2
    assert torch.allclose(model.alphas_cumprod.double(), torch.cumprod(1 - betas, 0), rtol=1e-5)


def test_loss_matches_a_hand_computation_of_the_published_formulas():
    model = tiny_model().eval()
    model.scale_factor.fill_(0.7)
    image, labels = torch.rand(2, 1, 64, 64), torch.randint(0, 3, (2, 64, 64))
    torch.manual_seed(3)
    loss = model.loss(image, labels)
    torch.manual_seed(3)  # the same draws, in the same order: posterior sample, t, eps
    z0 = model.mask_autoencoder.encode(mask_to_colour_image(labels)).latent_dist.sample() * 0.7
    c = model.image_encoder(((image * 2 - 1)).repeat(1, 3, 1, 1))
    t = torch.randint(0, 1000, (2,))
    eps = torch.randn_like(z0)
    abar = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
    eps_hat = model.denoiser(torch.cat([z_t, c], 1), t).sample
    z0_hat = (1 / abar).sqrt() * z_t - (1 / abar - 1).sqrt() * eps_hat
    expected = (eps_hat - eps).abs().mean() + (z0_hat - z0).abs().mean()
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_recovers_the_noise_and_the_latent_from_its_exact_target(prediction_type):
    """The UNet output a perfect model of each parameterisation gives yields eps_hat = eps, z0_hat = z0."""
    model = tiny_model(prediction_type=prediction_type)
    z0, eps, t = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8), torch.tensor([0, 10, 500, 999])
    abar = model.alphas_cumprod[t].view(-1, 1, 1, 1).double()
    z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
    target = {"epsilon": eps, "sample": z0, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * z0}[prediction_type]
    eps_hat, z0_hat = model.estimates(z_t, target.double(), t)
    assert torch.allclose(eps_hat, eps.double(), atol=1e-4) and torch.allclose(z0_hat, z0.double(), atol=1e-4)


def test_an_unknown_prediction_type_is_refused():
    with pytest.raises(ValueError, match="prediction_type 'x0'"):
        tiny_model(prediction_type="x0")


def test_single_step_inference_is_reproducible_and_gives_uncertainty():
    model = tiny_model().eval()
    model.scale_factor.fill_(1.0)
    image = torch.rand(2, 1, 64, 64)
    first, uncertainty = model.segment(image, n_samples=3, generator=torch.Generator().manual_seed(1))
    again, _ = model.segment(image, n_samples=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and first.shape == (2, 3, 64, 64) and uncertainty.shape == (2, 64, 64)
    assert torch.allclose(first.sum(1), torch.ones(2, 64, 64)) and uncertainty.max() > 0


def test_scale_factor_is_one_over_the_std_of_the_first_batch(environment):
    trainer = make_trainer("SDMCFinetunedTrainer", environment)
    trainer.initialize()
    labels, images = torch.randint(0, 3, (4, 1, 64, 64)).float(), torch.rand(4, 1, 64, 64)
    torch.manual_seed(0)
    trainer.compute_loss({"data": images, "seg": labels})
    torch.manual_seed(0)
    expected = 1 / trainer.module.encode_mask(labels[:, 0]).double().std(unbiased=False)
    assert float(trainer.module.scale_factor) == pytest.approx(float(expected), rel=1e-5)
    before = float(trainer.module.scale_factor)
    trainer.compute_loss({"data": torch.rand(4, 1, 64, 64), "seg": torch.zeros(4, 1, 64, 64)})
    assert float(trainer.module.scale_factor) == before  # computed once, then stored with the model


@pytest.mark.parametrize("name,encoder_learns", [("SDMCFinetunedTrainer", True), ("SDMCFinetunedFrozenTrainer", False)])
def test_frozen_and_trainable_switches(environment, name, encoder_learns):
    trainer = make_trainer(name, environment)
    trainer.initialize()
    model = trainer.module
    snapshot = {part: [p.detach().clone() for p in getattr_path(model, part).parameters()]
                for part in ("mask_autoencoder", "image_encoder.encoder", "image_encoder.projection", "denoiser")}
    assert not any(p.requires_grad for p in model.mask_autoencoder.parameters())
    assert all(p.requires_grad == encoder_learns for p in model.image_encoder.encoder.parameters())
    batch = {"data": torch.rand(4, 1, 64, 64), "seg": torch.randint(0, 3, (4, 1, 64, 64)).float()}
    for _ in range(2):
        trainer.train_step(batch)
    changed = {part: any(not torch.equal(a, b) for a, b in zip(before, getattr_path(model, part).parameters()))
               for part, before in snapshot.items()}
    assert changed == {"mask_autoencoder": False, "image_encoder.encoder": encoder_learns,
                       "image_encoder.projection": True, "denoiser": True}


def test_the_ema_denoiser_validation_predicts_with_has_no_dropout(environment):
    """The EMA copy is only ever evaluated: with dropout in the denoiser, validation stays deterministic."""
    trainer = make_trainer("SDMCFinetunedTrainer", environment)
    trainer.initialize()
    trainer.module.scale_factor.fill_(1.0)
    trainer.train_step({"data": torch.rand(2, 1, 64, 64), "seg": torch.randint(0, 3, (2, 1, 64, 64)).float()})
    dropouts = [m for m in trainer.ema.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts
    for dropout in dropouts:
        dropout.p = 0.5
    images = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        first, _ = trainer.validation_segmenter()(images)
        again, _ = trainer.validation_segmenter()(images)
    assert torch.equal(first, again)


def getattr_path(module, path):
    for name in path.split("."):
        module = getattr(module, name)
    return module


@pytest.mark.parametrize("name", ["SDMCFinetunedTrainer", "SDMCPretrainedTrainer", "SDMCFinetunedFrozenTrainer"])
def test_sdmc_trainers_run_by_name_and_write_checkpoints_and_summary(environment, name):
    trainer = make_trainer(name, environment)
    trainer.run_training()
    summary = trainer.final_validation()
    state = load_checkpoint(trainer.checkpoint_path("final"), name)
    assert "ema" in state["extra"] and state["network"]["scale_factor"] > 0
    assert state["started_from_pretrained"] is False  # CPU plans start from random weights
    assert set(read_json(summary)["stroke2021"]) == {"DSC", "IoU", "mIoU", "n_slices"}


def test_checkpoints_hold_what_each_use_needs_and_the_frozen_autoencoder_once(environment):
    trainer = make_trainer("SDMCFinetunedTrainer", environment, epochs=2, iterations=1)
    shutil.rmtree(trainer.output_folder, ignore_errors=True)  # trained by an earlier test: training refuses to redo it
    trainer.run_training()
    trainer.save("latest")  # (training removes it when it ends)
    best, final, latest = (load_checkpoint(trainer.checkpoint_path(kind)) for kind in ("best", "final", "latest"))
    for state in (best, final):  # inference and further fine-tuning: weights and EMA, no optimiser
        assert "ema" in state["extra"] and not {"optimizer", "scheduler", "scaler", "torch_rng"} & state.keys()
    assert {"optimizer", "scheduler", "scaler", "torch_rng"} <= latest.keys()
    for state in (best, final, latest):  # the frozen mask autoencoder lives once, beside them
        assert not any(key.startswith("mask_autoencoder.") for key in state["network"])
        assert set(state["frozen_parts"]) == {"mask_autoencoder"}
    # ... as a diffusers folder that diffusers alone reloads to the same weights
    exported = AutoencoderKL.from_pretrained(trainer.output_folder / "mask_autoencoder").state_dict()
    assert all(torch.equal(exported[key], value) for key, value in trainer.module.mask_autoencoder.state_dict().items())

    plans = load_plans(environment / "sdmcPlans.json")
    reloaded = TRAINERS.get("SDMCFinetunedTrainer")(plans, "2d", 0, environment, "cpu")
    reloaded.initialize(initial_weights=False)
    reloaded.load(trainer.checkpoint_path("final"), weights_only=True)
    images = torch.rand(2, 1, 64, 64)
    trainer.network.eval(), reloaded.network.eval()
    assert torch.equal(trainer.predict_probabilities(images), reloaded.predict_probabilities(images))

    # fine-tuning further from final: the optimiser starts afresh, progress goes on
    longer = make_trainer("SDMCFinetunedTrainer", environment, epochs=3, iterations=1)
    trainer.checkpoint_path("latest").unlink()
    longer.run_training(resume=True)
    assert load_checkpoint(longer.checkpoint_path("final"))["epoch"] == 3

    # a frozen part replaced under the checkpoints is refused, not paired with them
    weights = trainer.output_folder / "mask_autoencoder" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))
    with pytest.raises(SDMCError, match="other mask_autoencoder weights than the checkpoints"):
        reloaded.load(trainer.checkpoint_path("final"), weights_only=True)


def test_missing_initial_weights_are_listed_together(environment, tmp_path, monkeypatch):
    plans = load_plans(environment / "sdmcPlans.json")
    networks = plans["configurations"]["2d"]["families"]["sdmc"]["networks"]
    networks["autoencoder"]["pretrained"], networks["denoiser"]["pretrained"] = "sd-kl-f8", "lsun_churches256"
    monkeypatch.setenv("SDMC_results", str(tmp_path / "no_results"))
    trainer = TRAINERS.get("SDMCFinetunedTrainer")(plans, "2d", 0, environment, "cpu")
    with pytest.raises(SDMCError) as missing:
        trainer.initialize()
    message = str(missing.value)
    assert "3 set(s) of initial weights missing" in message
    assert all(part in message for part in ("'sd-kl-f8'", "'lsun_churches256'", "-tr MaskAutoencoderTrainer"))


def test_mask_autoencoder_result_is_a_checkpoint_with_a_reconstruction_summary(environment, results):
    fold = results / NAME / "MaskAutoencoderTrainer__sdmcPlans__2d" / "fold_0"
    state = load_checkpoint(fold / "checkpoint_final.pth", "MaskAutoencoderTrainer")
    assert state["dataset_name"] == NAME and state["labels"] == {"background": 0, "ischemic": 1, "hemorrhagic": 2}
    plans = load_plans(environment / "sdmcPlans.json")
    everything = TRAINERS.get("MaskAutoencoderTrainer")(plans, "2d", "all", environment, "cpu")
    everything.initialize()
    everything.load(fold / "checkpoint_final.pth", weights_only=True)
    summary = read_json(everything.final_validation())  # fold 'all' validates on every case, lesions included
    assert "reconstruction" in summary["what"] and summary["stroke2021"]["n_slices"]["HS"] > 0


def test_mask_autoencoder_of_another_dataset_or_missing_is_refused(environment, results, tmp_path, monkeypatch):
    fold = results / NAME / "MaskAutoencoderTrainer__sdmcPlans__2d" / "fold_0"
    state = load_checkpoint(fold / "checkpoint_final.pth")
    save_checkpoint(tmp_path / "other.pth", {key: value for key, value in state.items() if key != "format"}
                    | {"dataset_name": "Dataset007_Other"})
    with pytest.raises(SDMCError, match="Dataset007_Other"):
        make_trainer("SDMCFinetunedTrainer", environment, options={"mask_autoencoder": tmp_path / "other.pth"}).initialize()
    monkeypatch.setenv("SDMC_results", str(tmp_path / "empty"))
    with pytest.raises(SDMCError, match="sdmc_train 2021 2d 0 -tr MaskAutoencoderTrainer"):
        make_trainer("SDMCFinetunedTrainer", environment).initialize()


def test_weights_of_another_architecture_name_the_keys(environment, results, tmp_path):
    fold = results / NAME / "MaskAutoencoderTrainer__sdmcPlans__2d" / "fold_0"
    state = load_checkpoint(fold / "checkpoint_final.pth")
    network = dict(state["network"])
    network["autoencoder.encoder.conv_in.weight"] = torch.zeros(3, 3, 3, 3)
    save_checkpoint(tmp_path / "wrong.pth", {key: value for key, value in state.items() if key != "format"} | {"network": network})
    with pytest.raises(SDMCError, match="shape mismatch.*encoder.conv_in.weight"):
        make_trainer("SDMCFinetunedTrainer", environment, options={"mask_autoencoder": tmp_path / "wrong.pth"}).initialize()
