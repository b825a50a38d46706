"""Pretrained weights: the restricted reader of CompVis checkpoints, the LDM -> diffusers conversion,
and sdmc_download_weights against a file server on 127.0.0.1.

Checkpoints are made here in the CompVis layouts, with key names and shapes written down from the
LDM architecture (ldm/modules/diffusionmodules/{model,openaimodel}.py), not from our mapping.
"""

import argparse
import io
import math
import os
import shutil
import subprocess
import sys
import types
import zipfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from torch.nn import functional as F

from sdmcunet.experiment_planning.presets import SDMC_SIZES
from sdmcunet.networks.latent_diffusion import build_autoencoder
from sdmcunet.utils.errors import SDMCError
from sdmcunet.weights import convert as convert_module
from sdmcunet.weights import download as download_module
from sdmcunet.weights.compvis_checkpoint import CheckpointStub, CompVisCheckpoint, read_compvis_state_dict
from sdmcunet.weights.convert import CONVERSION_RECORD, convert_checkpoint, convert_unet, convert_vae
from sdmcunet.weights.download import load_pretrained_autoencoder, load_pretrained_denoiser
from sdmcunet.weights.standin import ldm_autoencoder_shapes, ldm_unet_shapes

SMALL_VAE = {"ch": 16, "ch_mult": [1, 2, 2, 4], "num_res_blocks": 1}
# Attention at levels 0 and 1 (LDM downsampling rates 1 and 2): blocks of 32 and 64 channels, 4 heads each.
SMALL_UNET = {"model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [1, 2],
              "num_heads": 4, "dropout": 0.0}
SMALL_LATENT = 8
LIGHTNING = "pytorch_lightning.fake"



def random_weights(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


# ---------------------------------------------------------------- Lightning-like checkpoint files

class ModelCheckpoint:
    """Stands for pytorch_lightning's callback: pickled under a module that cannot be imported later."""

    def __init__(self) -> None:
        self.best_model_score = torch.tensor(0.25)
        self.monitor = "val/rec_loss"


class AttributeDict(dict):
    """Stands for pytorch_lightning's hyper-parameter dict (a dict subclass: filled by SETITEMS)."""


ModelCheckpoint.__module__ = AttributeDict.__module__ = LIGHTNING


class Reducer:
    """An object whose unpickling calls `function(*args)`."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def run_me(*args) -> None:
    """A function of a package the reader does not know."""


run_me.__module__ = "evil_package"


@contextmanager
def importable(module_name: str, *objects: object) -> Iterator[None]:
    """Pickle wants `objects` importable from `module_name` while saving; afterwards they are not."""
    parts = module_name.split(".")
    modules = {".".join(parts[:depth]): types.ModuleType(".".join(parts[:depth])) for depth in range(1, len(parts) + 1)}
    for obj in objects:
        setattr(modules[module_name], obj.__name__, obj)
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in modules:
            del sys.modules[name]


def save_lightning_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], **extra: object) -> Path:
    content = {"epoch": 3, "global_step": 100, "pytorch-lightning_version": "1.4.2", "state_dict": state_dict,
               "callbacks": {ModelCheckpoint: ModelCheckpoint()}, "optimizer_states": [{"step": np.float64(7.0)}],
               "hyper_parameters": argparse.Namespace(lr=4.5e-6, tags={"kl", "f8"}, dtype=torch.float16,
                                                      raw=b"\x00\xff"),
               "hparams": AttributeDict(embed_dim=4), **extra}
    with importable(LIGHTNING, ModelCheckpoint, AttributeDict), importable("evil_package", run_me):
        torch.save(content, path)
    return path


def assert_same_tensors(converted: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert converted.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(converted[name], tensor), name


# ---------------------------------------------------------------- the restricted reader

def test_lightning_checkpoint_is_read_with_stubs(tmp_path):
    weights = random_weights({"encoder.conv_in.weight": (4, 3, 3, 3), "encoder.conv_in.bias": (4,)})
    weights["half"] = torch.arange(6, dtype=torch.float16).reshape(2, 3).t()  # a non-contiguous view
    path = save_lightning_checkpoint(tmp_path / "model.ckpt", weights)

    with CompVisCheckpoint(path) as checkpoint:
        callback_class, callback = next(iter(checkpoint.content["callbacks"].items()))
        hyper_parameters = checkpoint.content["hyper_parameters"]
        hparams = checkpoint.content["hparams"]
        best_score = checkpoint.tensor(callback.state["best_model_score"])

    assert issubclass(callback_class, CheckpointStub) and callback_class.stub_of == f"{LIGHTNING}.ModelCheckpoint"
    assert isinstance(callback, callback_class) and callback.state["monitor"] == "val/rec_loss"
    assert best_score.item() == 0.25
    assert hyper_parameters.stub_of == "argparse.Namespace"
    assert hyper_parameters.state["tags"] == {"kl", "f8"} and hyper_parameters.state["dtype"] is torch.float16
    assert hyper_parameters.state["raw"] == b"\x00\xff"
    assert hparams.stub_of == f"{LIGHTNING}.AttributeDict" and hparams.items == {"embed_dim": 4}
    assert_same_tensors(read_compvis_state_dict(path), weights)


@pytest.mark.parametrize("function, arguments", [
    (os.system, lambda marker: (f"touch {marker}",)),
    (eval, lambda marker: (f"__import__('os').system('touch {marker}')",)),
    (getattr, lambda marker: ("text", "upper")),
    (subprocess.Popen, lambda marker: (["touch", str(marker)],)),
    (shutil.rmtree, lambda marker: (str(marker.parent),)),
    (run_me, lambda marker: (str(marker),)),
], ids=["os.system", "eval", "getattr", "subprocess.Popen", "shutil.rmtree", "unknown function"])
def test_code_in_a_checkpoint_is_refused_not_run(tmp_path, function, arguments):
    marker = tmp_path / "marker"
    path = save_lightning_checkpoint(tmp_path / "evil.ckpt", {}, payload=Reducer(function, *arguments(marker)))

    called = f"{function.__module__}.{function.__name__}"
    with pytest.raises(SDMCError, match=f"refused: the checkpoint asks to call {called}, which could run code"):
        read_compvis_state_dict(path)
    assert not marker.exists() and path.exists()


def test_files_that_are_no_zip_checkpoints_are_refused(tmp_path):
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {}}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(SDMCError, match="not a checkpoint in torch's zip format"):
        read_compvis_state_dict(legacy)

    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(1000)}}, buffer)
    truncated = tmp_path / "truncated.ckpt"
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(truncated, "w") as archive:  # a short tensor record
        for info in source.infolist():
            data = source.read(info)
            archive.writestr(info.filename, data[:100] if "/data/" in info.filename else data)
    with pytest.raises(SDMCError, match="corrupt checkpoint"):
        read_compvis_state_dict(truncated)


# ---------------------------------------------------------------- autoencoder conversion

def test_vae_conversion_matches_diffusers_reference_mapping():
    ldm = random_weights(ldm_autoencoder_shapes(**SMALL_VAE))
    with_loss = ldm | {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.ones(8, 3, 4, 4)}

    model = convert_vae(with_loss)

    reference = convert_ldm_vae_checkpoint(dict(ldm), dict(model.config))
    assert_same_tensors(model.state_dict(), reference)
    assert model.config.block_out_channels == (16, 32, 32, 64) and model.config.layers_per_block == 1


def test_sd_kl_f8_layout_converts_into_the_published_autoencoder():
    sizes = SDMC_SIZES["sd"]["autoencoder"]
    ldm = random_weights(ldm_autoencoder_shapes(sizes["ch"], sizes["ch_mult"], sizes["num_res_blocks"]))
    full_ldm_checkpoint = {f"first_stage_model.{name}": tensor for name, tensor in ldm.items()}
    full_ldm_checkpoint["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # other parts are left alone

    model = convert_vae(full_ldm_checkpoint)

    assert model.state_dict().keys() == build_autoencoder(sizes).state_dict().keys()
    assert_same_tensors(model.state_dict(), convert_ldm_vae_checkpoint(ldm, dict(model.config)))


@pytest.mark.parametrize("change, named", [
    (lambda weights: weights.update({"decoder.conv_out.weight": torch.zeros(3, 32, 3, 3)}), "decoder.conv_out.weight"),
    (lambda weights: weights.update({"encoder.down.1.attn.0.q.weight": torch.zeros(32, 32, 1, 1)}),
     "encoder.down.1.attn.0.q.weight"),
    (lambda weights: weights.pop("decoder.mid.attn_1.proj_out.bias"), "decoder.mid_block.attentions.0.to_out.0.bias"),
])
def test_vae_that_does_not_fit_names_the_keys(change, named):
    weights = random_weights(ldm_autoencoder_shapes(**SMALL_VAE))
    change(weights)
    with pytest.raises(SDMCError, match=f"source.ckpt: does not fit our kl-f8 autoencoder: .*{named}"):
        convert_vae(weights, source="source.ckpt")


# ---------------------------------------------------------------- denoiser conversion

def fingerprint(tensor: torch.Tensor) -> bytes:
    return tensor.detach().contiguous().numpy().tobytes()


def test_unet_weights_are_carried_over_unchanged_and_input_widened_with_zeros():
    ldm = random_weights(ldm_unet_shapes(SMALL_UNET))
    checkpoint = {f"model.diffusion_model.{name}": tensor for name, tensor in ldm.items()}
    checkpoint["first_stage_model.encoder.conv_in.bias"] = torch.zeros(3)

    converted = convert_unet(checkpoint, SMALL_LATENT, SMALL_UNET).state_dict()

    conv_in = converted.pop("conv_in.weight")
    assert conv_in.shape == (32, 8, 3, 3)
    assert torch.equal(conv_in[:, :4], ldm["input_blocks.0.0.weight"]) and not conv_in[:, 4:].any()
    # Every other weight is one checkpoint tensor, unchanged; the fused qkv tensors fill to_q/k/v.
    sources = {fingerprint(tensor): name for name, tensor in ldm.items()}
    projections = [name for name in converted if name.rsplit(".", 2)[-2] in ("to_q", "to_k", "to_v")]
    carried = {name: sources.get(fingerprint(tensor)) for name, tensor in converted.items() if name not in projections}
    assert None not in carried.values()
    qkv = [name for name in ldm if ".qkv." in name]
    assert sorted(carried.values()) == sorted(set(ldm) - {"input_blocks.0.0.weight", *qkv})
    assert sum(converted[name].numel() for name in projections) == sum(ldm[name].numel() for name in qkv)
    placement = {source: name for name, source in carried.items()}
    assert placement.items() >= {
        "time_embed.2.weight": "time_embedding.linear_2.weight",
        "input_blocks.2.0.in_layers.2.weight": "down_blocks.0.downsamplers.0.conv1.weight",
        "input_blocks.3.0.skip_connection.weight": "down_blocks.1.resnets.0.conv_shortcut.weight",
        "input_blocks.3.1.proj_out.bias": "down_blocks.1.attentions.0.to_out.0.bias",
        "middle_block.1.norm.weight": "mid_block.attentions.0.group_norm.weight",
        "middle_block.2.out_layers.0.bias": "mid_block.resnets.1.norm2.bias",
        "output_blocks.1.1.emb_layers.1.weight": "up_blocks.0.upsamplers.0.time_emb_proj.weight",
        "output_blocks.3.2.out_layers.3.bias": "up_blocks.1.upsamplers.0.conv2.bias",
        "output_blocks.5.1.norm.bias": "up_blocks.2.attentions.1.group_norm.bias",
        "out.2.weight": "conv_out.weight",
    }.items()


def ldm_attention(x: torch.Tensor, weights: dict, prefix: str, heads: int) -> torch.Tensor:
    """openaimodel.AttentionBlock with QKVAttentionLegacy, written out."""
    batch, channels, height, width = x.shape
    flat = x.reshape(batch, channels, -1)
    normed = F.group_norm(flat, 32, weights[f"{prefix}.norm.weight"], weights[f"{prefix}.norm.bias"])
    qkv = F.conv1d(normed, weights[f"{prefix}.qkv.weight"], weights[f"{prefix}.qkv.bias"])
    head_channels = channels // heads
    query, key, value = qkv.reshape(batch * heads, 3 * head_channels, -1).split(head_channels, dim=1)
    scale = 1 / math.sqrt(math.sqrt(head_channels))
    attention = torch.softmax(torch.einsum("bct,bcs->bts", query * scale, key * scale), dim=-1)
    mixed = torch.einsum("bts,bcs->bct", attention, value).reshape(batch, channels, -1)
    projected = F.conv1d(mixed, weights[f"{prefix}.proj_out.weight"], weights[f"{prefix}.proj_out.bias"])
    return (flat + projected).reshape(x.shape)


def ldm_resblock(x: torch.Tensor, embedding: torch.Tensor, weights: dict, prefix: str) -> torch.Tensor:
    """openaimodel.ResBlock with use_scale_shift_norm, written out."""
    def layer(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return weights[f"{prefix}.{name}.weight"], weights[f"{prefix}.{name}.bias"]

    hidden = F.conv2d(F.silu(F.group_norm(x, 32, *layer("in_layers.0"))), *layer("in_layers.2"), padding=1)
    scale, shift = F.linear(F.silu(embedding), *layer("emb_layers.1"))[..., None, None].chunk(2, dim=1)
    hidden = F.group_norm(hidden, 32, *layer("out_layers.0")) * (1 + scale) + shift
    hidden = F.conv2d(F.silu(hidden), *layer("out_layers.3"), padding=1)
    skip = F.conv2d(x, *layer("skip_connection")) if f"{prefix}.skip_connection.weight" in weights else x
    return skip + hidden


@torch.no_grad()
def test_unet_blocks_compute_what_the_ldm_blocks_computed():
    # Weights of trained magnitudes keep activations near 1, and float rounding far below the tolerance.
    ldm = {name: 0.1 * tensor for name, tensor in random_weights(ldm_unet_shapes(SMALL_UNET)).items()}
    model = convert_unet(ldm, SMALL_LATENT, SMALL_UNET)
    generator = torch.Generator().manual_seed(1)
    x32, x64 = torch.randn(2, 32, 8, 8, generator=generator), torch.randn(2, 64, 4, 4, generator=generator)
    embedding = torch.randn(2, 128, generator=generator)

    same = partial(torch.testing.assert_close, rtol=1e-4, atol=1e-5)
    # 4 heads in every attention block, as in the LDM: 8 channels each at level 0, 16 at level 1 and the middle
    same(model.down_blocks[0].attentions[0](x32), ldm_attention(x32, ldm, "input_blocks.1.1", 4))
    same(model.down_blocks[1].attentions[0](x64), ldm_attention(x64, ldm, "input_blocks.3.1", 4))
    same(model.mid_block.attentions[0](x64), ldm_attention(x64, ldm, "middle_block.1", 4))
    same(model.down_blocks[1].resnets[0](x32, embedding), ldm_resblock(x32, embedding, ldm, "input_blocks.3.0"))
    same(model.mid_block.resnets[1](x64, embedding), ldm_resblock(x64, embedding, ldm, "middle_block.2"))


def test_unet_of_another_architecture_names_the_keys():
    ldm = random_weights(ldm_unet_shapes(SMALL_UNET | {"num_res_blocks": 2}))
    with pytest.raises(SDMCError, match=r"churches.ckpt: does not fit our denoiser: checkpoint weights with no place "
                                        r"in it \(\d+\): input_blocks.2.1.norm.weight, .*; shape mismatches \(\d+\): "
                                        r"input_blocks.3.0.in_layers.2.weight \(32, 32, 3, 3\) -> "
                                        r"down_blocks.1.resnets.0.conv1.weight \(64, 32, 3, 3\)"):
        convert_unet(ldm, SMALL_LATENT, SMALL_UNET, source="churches.ckpt")


# ---------------------------------------------------------------- sdmc_convert_weights

def test_convert_command_writes_a_diffusers_folder_once(tmp_path, capsys):
    ldm = random_weights(ldm_autoencoder_shapes(**SMALL_VAE))
    checkpoint = save_lightning_checkpoint(tmp_path / "model.ckpt", ldm)
    output = tmp_path / "converted"

    assert convert_module.main(["-i", str(checkpoint), "-o", str(output), "--kind", "vae"]) == 0
    assert convert_module.main(["-i", str(checkpoint), "-o", str(output), "--kind", "vae"]) == 0

    assert "nothing to do" in capsys.readouterr().out
    assert sorted(path.name for path in output.iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors", CONVERSION_RECORD]
    loaded = AutoencoderKL.from_pretrained(output, local_files_only=True)
    assert_same_tensors(loaded.state_dict(), convert_vae(ldm).state_dict())

    other = save_lightning_checkpoint(tmp_path / "other.ckpt", random_weights(ldm_autoencoder_shapes(**SMALL_VAE), 1))
    assert convert_module.main(["-i", str(other), "-o", str(output), "--kind", "vae"]) == 2
    assert "exists and is not a conversion" in capsys.readouterr().err


def test_convert_checkpoint_of_a_unet(tmp_path):
    tiny = SDMC_SIZES["tiny"]["denoiser"]
    ldm = random_weights(ldm_unet_shapes(tiny))
    full = {f"model.diffusion_model.{name}": tensor for name, tensor in ldm.items()}
    checkpoint = save_lightning_checkpoint(tmp_path / "model.ckpt", full)
    assert convert_checkpoint(checkpoint, tmp_path / "unet", "unet", size="tiny")
    assert not convert_checkpoint(checkpoint, tmp_path / "unet", "unet", size="tiny")


# ---------------------------------------------------------------- sdmc_download_weights

def test_download_command_fetches_extracts_converts_and_then_skips(tmp_path, file_server, capsys):
    kl_f8 = random_weights(ldm_autoencoder_shapes(**SMALL_VAE))
    mask = random_weights(ldm_autoencoder_shapes(**SMALL_VAE), seed=1)
    with zipfile.ZipFile(file_server.folder / "kl-f8.zip", "w") as archive:
        archive.write(save_lightning_checkpoint(tmp_path / "model.ckpt", kl_f8), "model.ckpt")
    save_lightning_checkpoint(file_server.folder / "model_finetuned_mask.ckpt", mask)
    arguments = ["--base-url", file_server.url, "--which", "sd-kl-f8", "finetuned_mask"]

    assert download_module.main(arguments) == 0
    assert sorted(file_server.requests) == ["/kl-f8.zip", "/model_finetuned_mask.ckpt"]
    assert download_module.main(arguments) == 0
    assert len(file_server.requests) == 2

    weights = Path(os.environ["SDMC_weights"])
    assert not any((weights / "downloads").iterdir())
    assert_same_tensors(load_pretrained_autoencoder("sd-kl-f8").state_dict(), convert_vae(kl_f8).state_dict())
    assert_same_tensors(load_pretrained_autoencoder("finetuned_mask").state_dict(), convert_vae(mask).state_dict())
    assert f"{weights / 'finetuned_mask'}: ready" in capsys.readouterr().out


def test_download_without_an_address_for_the_finetuned_mask_says_how(capsys):
    assert download_module.main(["--which", "finetuned_mask"]) == 2
    assert "--url finetuned_mask=URL" in capsys.readouterr().err


@pytest.mark.parametrize("load, name, command", [
    (load_pretrained_denoiser, "lsun_churches256", "sdmc_download_weights -o .* --which lsun_churches256`"),
    (load_pretrained_autoencoder, "finetuned_mask", "sdmc_download_weights .* --url finetuned_mask=URL"),
    (load_pretrained_autoencoder, "my_vae", "sdmc_convert_weights -i CHECKPOINT -o .*my_vae --kind vae"),
])
def test_missing_pretrained_weights_name_the_command(load, name, command):
    with pytest.raises(SDMCError, match=f"no pretrained weights '{name}'.*{command}"):
        load(name)
