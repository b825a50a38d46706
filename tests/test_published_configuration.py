"""The published configuration: the "sd" UNet at every image size a plan can hold, LDM's attention
placement and DDIM sampler, diffusers round trips, checkpoints of affordable size, and the import
path that a GPU machine without SimpleITK or pydicom runs."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DModel
from diffusers.models.attention_processor import Attention

from sdmcunet.experiment_planning.plans import validate_plans
from sdmcunet.experiment_planning.presets import SDMC_SIZES, cpu_families
from sdmcunet.networks.latent_diffusion import build_autoencoder, build_denoiser, load_denoiser
from sdmcunet.networks.sdmc import SDMCSeg, ldm_ddim_scheduler
from sdmcunet.utils.errors import SDMCError

SD_DIFFUSION = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.0015,
                "beta_end": 0.0155, "prediction_type": "epsilon"}
# The published UNet's structure (5 levels, attention at rates 1, 2, 4, 8, 8 heads), narrow enough for a test.
NARROW_SD_UNET = SDMC_SIZES["sd"]["denoiser"] | {"model_channels": 32, "num_res_blocks": 1}


# ---------------------------------------------------------------- attention placement, image sizes

@pytest.mark.parametrize("image_size", [128, 192, 256, 384, 512])
def test_the_sd_model_runs_at_every_image_size_with_attention_where_ldm_puts_it(image_size):
    with torch.device("meta"):
        model = SDMCSeg(SDMC_SIZES["sd"], SD_DIFFUSION, image_size // 8)
    denoiser = model.denoiser
    # LDM's attention_resolutions [1, 2, 4, 8] are downsampling rates: levels 0-3 and the middle, never level 4
    assert [type(block).__name__ for block in denoiser.down_blocks] == ["AttnDownBlock2D"] * 4 + ["ResnetDownsampleBlock2D"]
    assert [type(block).__name__ for block in denoiser.up_blocks] == ["ResnetUpsampleBlock2D"] + ["AttnUpBlock2D"] * 4
    widths = {block.inner_dim: block.heads for block in denoiser.modules() if isinstance(block, Attention)}
    assert widths == {192: 8, 384: 8, 768: 8}  # 8 heads in every block, whatever its width
    latent = torch.empty(2, 4, image_size // 8, image_size // 8, device="meta")
    output = model.denoise(latent, latent, torch.zeros(2, dtype=torch.long, device="meta"))
    assert output.shape == latent.shape  # 192 (latent 24) is padded to 32 for the UNet and cropped back


def test_padding_changes_nothing_where_the_unet_needs_none_and_is_cropped_where_it_does():
    torch.manual_seed(0)
    sizes = {"autoencoder": cpu_families()["sdmc"]["networks"]["autoencoder"], "image_encoder": {"dropout": 0.0},
             "denoiser": NARROW_SD_UNET}
    model = SDMCSeg(sizes, SD_DIFFUSION, 16).eval()
    timesteps = torch.tensor([999, 3])
    with torch.no_grad():
        native = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
        assert torch.equal(model.denoise(*native, timesteps), model.denoiser(torch.cat(native, 1), timesteps).sample)
        odd = torch.randn(2, 4, 12, 20), torch.randn(2, 4, 12, 20)
        padded = torch.nn.functional.pad(torch.cat(odd, 1), (6, 6, 2, 2))  # to 16 x 32, centred
        expected = model.denoiser(padded, timesteps).sample[..., 2:14, 6:26]
        assert torch.equal(model.denoise(*odd, timesteps), expected)


def test_plans_refuse_sizes_and_attention_the_networks_cannot_run(tmp_path):
    from sdmcunet.experiment_planning.planners import SDMCPlanner

    fingerprint = {"median_shape": [512, 512], "cases": ["a"],
                   "foreground_intensity_properties_per_channel": {"0": {"percentile_00_5": 0, "percentile_99_5": 1}}}
    plans = SDMCPlanner(fingerprint, {"channel_names": {"0": "PNG"}, "labels": {"background": 0, "lesion": 1}},
                        "Dataset001_X", None).plan()
    config = plans["configurations"]["2d"]
    config["image_size"], config["latent_size"] = [200, 200], [25, 25]
    config["families"]["sdmc"]["networks"]["denoiser"].update(attention_resolutions=[16], num_heads=3)
    with pytest.raises(SDMCError) as refused:
        validate_plans(plans, tmp_path / "plans.json")
    message = str(refused.value)
    assert "image_size must be two positive multiples of 32" in message and "192, 224" in message
    assert "attention_resolutions are LDM's downsampling rates" in message and "[1, 2, 4]" in message
    config["families"]["sdmc"]["networks"]["denoiser"]["attention_resolutions"] = [4]
    with pytest.raises(SDMCError, match=r"num_heads must divide the width of every attention block \(\[128\]\), got 3"):
        validate_plans(plans, tmp_path / "plans.json")


# ---------------------------------------------------------------- diffusers round trips

def _perturbed(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Weights of trained magnitudes: attention logits far from uniform, so head counts show."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


@torch.no_grad()
def test_saved_autoencoders_and_denoisers_reload_in_diffusers_to_the_same_function(tmp_path):
    vae = _perturbed(build_autoencoder(cpu_families()["sdmc"]["networks"]["autoencoder"]), 0.05)
    vae.save_pretrained(tmp_path / "vae")
    image = torch.randn(1, 3, 32, 32)
    reloaded = AutoencoderKL.from_pretrained(tmp_path / "vae").eval()
    assert (reloaded.decode(reloaded.encode(image).latent_dist.mode()).sample
            - vae.decode(vae.encode(image).latent_dist.mode()).sample).abs().max() <= 1e-5

    latents, timesteps = torch.randn(2, 8, 16, 16), torch.tensor([999, 10])
    # the CPU plan's UNet: one head width in all its attention blocks, which diffusers' config can say
    tiny = _perturbed(build_denoiser(cpu_families()["sdmc"]["networks"]["denoiser"], 16), 0.05)
    tiny.save_pretrained(tmp_path / "tiny")
    assert (UNet2DModel.from_pretrained(tmp_path / "tiny").eval()(latents, timesteps).sample
            - tiny(latents, timesteps).sample).abs().max() <= 1e-5
    # the published structure: 8 heads on blocks of 32, 64 and 128 channels, which only the recorded head
    # count restores (diffusers alone builds 8, 16 and 32 heads and warns that it ignored the field)
    sd = _perturbed(build_denoiser(NARROW_SD_UNET, 16), 0.2)
    sd.save_pretrained(tmp_path / "sd")
    assert UNet2DModel.load_config(tmp_path / "sd")["ldm_num_heads"] == 8
    expected = sd(latents, timesteps).sample
    assert (load_denoiser(tmp_path / "sd")(latents, timesteps).sample - expected).abs().max() <= 1e-5
    assert (UNet2DModel.from_pretrained(tmp_path / "sd").eval()(latents, timesteps).sample
            - expected).abs().max() > 1e-3


# ---------------------------------------------------------------- LDM's DDIM

def _ldm_ddim_by_hand(alphas_cumprod: np.ndarray, model, latent: np.ndarray, noises: list[np.ndarray],
                      steps: int, eta: float) -> tuple[list[int], np.ndarray]:
    """ldm/models/diffusion/ddim.py written out: make_ddim_timesteps ("uniform", + 1),
    make_ddim_sampling_parameters, and p_sample_ddim's update."""
    timesteps = np.arange(0, 1000, 1000 // steps) + 1
    alphas = alphas_cumprod[timesteps]
    alphas_prev = np.asarray([alphas_cumprod[0], *alphas_cumprod[timesteps[:-1]]])
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    visited = []
    for index, noise in zip(reversed(range(steps)), noises):
        step = int(timesteps[index])
        visited.append(step)
        e_t = model(latent, step)
        a_t, a_prev, sigma = alphas[index], alphas_prev[index], sigmas[index]
        pred_x0 = (latent - np.sqrt(1 - a_t) * e_t) / np.sqrt(a_t)
        latent = np.sqrt(a_prev) * pred_x0 + np.sqrt(1 - a_prev - sigma**2) * e_t + sigma * noise
    return visited, latent


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_ddim_is_ldms_sampler(eta):
    scheduler = ldm_ddim_scheduler(SD_DIFFUSION)
    scheduler.set_timesteps(50)
    alphas_cumprod = scheduler.alphas_cumprod.double().numpy()

    def model(latent, step):  # any deterministic function of the latent and the step
        return np.tanh(latent * (1 + step / 1000.0))

    generator = np.random.default_rng(0)
    start = generator.standard_normal((1, 4, 4, 4))
    noises = [generator.standard_normal(start.shape) for _ in range(50)]
    visited, expected = _ldm_ddim_by_hand(alphas_cumprod, model, start, noises, 50, eta)

    latent = torch.from_numpy(start)
    for timestep, noise in zip(scheduler.timesteps, noises):
        output = torch.from_numpy(model(latent.numpy(), int(timestep)))
        latent = scheduler.step(output, timestep, latent, eta=eta, variance_noise=torch.from_numpy(noise)).prev_sample
    assert [int(t) for t in scheduler.timesteps] == visited and visited[0] == 981 and visited[-1] == 1
    np.testing.assert_allclose(latent.numpy(), expected, rtol=1e-5, atol=1e-5)  # float32 schedule, as in LDM


# ---------------------------------------------------------------- what a GPU machine needs

def test_training_and_inference_import_neither_simpleitk_nor_pydicom():
    code = ("import sys, sdmcunet.training.run_training, sdmcunet.inference.predict, "
            "sdmcunet.experiment_planning.plan_and_preprocess; "
            "print(sorted(m for m in ('SimpleITK', 'pydicom') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
