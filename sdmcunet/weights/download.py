"""`sdmc_download_weights`: fetch the published pretrained weights and convert them for diffusers.

Each file downloads into `DIR/downloads/<file>` (resumed like the dataset downloads); a zip is
extracted safely into `DIR/downloads/<name>/`; the checkpoint is converted, without running any
code it holds, into the diffusers folder `DIR/<name>/`, which the trainers load through
`load_pretrained_autoencoder` / `load_pretrained_denoiser`. Names already converted are skipped
before anything is downloaded; downloads are deleted once converted unless --keep-downloads.

The released fine-tuned mask encoder (`model_finetuned_mask.ckpt`) has no stable public address:
it needs --url finetuned_mask=URL, or --base-url.
"""

import argparse
import logging
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

from diffusers import AutoencoderKL, UNet2DModel

from sdmcunet.dataset_conversion.download_stroke2021 import DownloadOptions, http_url, download_part
from sdmcunet.dataset_conversion.safe_extract import is_extracted, safe_extract
from sdmcunet.networks.latent_diffusion import load_denoiser
from sdmcunet.paths import weights_root
from sdmcunet.utils.cli import configure_logging, console_entry
from sdmcunet.utils.errors import SDMCError
from sdmcunet.weights.convert import convert_checkpoint, ensure_free_output, is_conversion

LDM_URL = "https://ommer-lab.com/files/latent-diffusion"
DOWNLOADS_FOLDER = "downloads"


@dataclass(frozen=True)
class PublishedWeights:
    """One published file and how it becomes a diffusers folder."""

    file: str  # name of the download, and its name under --base-url
    url: str | None  # where it is published; None where there is no stable public address
    kind: str  # "vae" or "unet" (sdmc_convert_weights --kind)
    checkpoint: str | None = None  # the checkpoint inside the download, when that is a zip


PUBLISHED = {
    "sd-kl-f8": PublishedWeights("kl-f8.zip", f"{LDM_URL}/kl-f8.zip", "vae", "model.ckpt"),
    "lsun_churches256": PublishedWeights("lsun_churches.zip", f"{LDM_URL}/lsun_churches.zip", "unet", "model.ckpt"),
    "finetuned_mask": PublishedWeights("model_finetuned_mask.ckpt", None, "vae"),
}

logger = logging.getLogger(__name__)


def pretrained_folder(name: str) -> Path:
    """The diffusers folder of the pretrained weights `name` (below $SDMC_weights)."""
    return weights_root() / name


def load_pretrained_autoencoder(name: str) -> AutoencoderKL:
    """The converted autoencoder `name` ("sd-kl-f8", "finetuned_mask", ...) from `pretrained_folder(name)`."""
    return _load_pretrained(partial(AutoencoderKL.from_pretrained, local_files_only=True), name, "vae")


def load_pretrained_denoiser(name: str) -> UNet2DModel:
    """The converted denoiser `name` ("lsun_churches256", ...) from `pretrained_folder(name)`, LDM's heads kept."""
    return _load_pretrained(load_denoiser, name, "unet")


def missing_pretrained(wanted: Mapping[str, str]) -> list[str]:
    """For every pretrained weights name -> kind ("vae", "unet") not in $SDMC_weights: where it is missing and
    how to get it."""
    return [f"{pretrained_folder(name)}: no pretrained weights '{name}' there; "
            f"{_how_to_get(name, kind, pretrained_folder(name))}"
            for name, kind in wanted.items() if not (pretrained_folder(name) / "config.json").is_file()]


def _load_pretrained(load: Callable[[Path], AutoencoderKL | UNet2DModel], name: str,
                     kind: str) -> AutoencoderKL | UNet2DModel:
    if missing := missing_pretrained({name: kind}):
        raise SDMCError(missing[0])
    folder = pretrained_folder(name)
    try:
        return load(folder)
    except (OSError, ValueError, RuntimeError) as error:  # damaged files, or a folder of another kind
        raise SDMCError(f"{folder}: cannot load the {kind} weights '{name}' ({error})") from None


def _how_to_get(name: str, kind: str, folder: Path) -> str:
    if name not in PUBLISHED:
        return f"convert them with `sdmc_convert_weights -i CHECKPOINT -o {folder} --kind {kind}`"
    url_option = "" if PUBLISHED[name].url else f" --url {name}=URL"
    return f"fetch them with `sdmc_download_weights -o {folder.parent} --which {name}{url_option}`"


def weights_url(name: str, base_url: str | None, urls: Mapping[str, str]) -> str:
    """Where to fetch `name`: its --url, else `<base_url>/<file>`, else its public address."""
    published = PUBLISHED[name]
    url = urls.get(name) or (f"{base_url.rstrip('/')}/{published.file}" if base_url else published.url)
    if url is None:
        others = " ".join(other for other in PUBLISHED if other != name)
        raise SDMCError(f"{name}: {published.file} has no stable public address; give it with --url {name}=URL "
                        f"or --base-url URL (serving {published.file}), or leave it out with --which {others}")
    return url


def fetch_weights(name: str, url: str, output_dir: Path, options: DownloadOptions) -> Path:
    """Download `url`, extract it if a zip, and convert it into `output_dir/name`."""
    published = PUBLISHED[name]
    destination = output_dir / name
    ensure_free_output(destination)  # fail before a long download, not after
    downloads = output_dir / DOWNLOADS_FOLDER
    download = downloads / published.file
    download_part(url, download, options)
    extracted = downloads / name
    checkpoint = download
    if published.checkpoint:
        checkpoint = _checkpoint_in(download, extracted, published.checkpoint, options)
    convert_checkpoint(checkpoint, destination, published.kind)
    if not options.keep_archives:
        download.unlink()
        shutil.rmtree(extracted, ignore_errors=True)
    return destination


def _checkpoint_in(archive: Path, folder: Path, checkpoint_name: str, options: DownloadOptions) -> Path:
    if not is_extracted(folder):
        safe_extract(archive, folder, options.max_extracted_bytes)
    found = sorted(folder.rglob(checkpoint_name))
    if len(found) != 1:
        raise SDMCError(f"{archive}: expected one {checkpoint_name} inside, found {len(found)}")
    return found[0]


def _already_converted(folder: Path) -> bool:
    if is_conversion(folder):
        logger.info("%s: already converted, skipping", folder)
        return True
    return False


def _named_url(value: str) -> tuple[str, str]:
    name, separator, url = value.partition("=")
    if not separator or name not in PUBLISHED:
        raise argparse.ArgumentTypeError(f"{value!r}: expected NAME=URL with NAME one of {', '.join(PUBLISHED)}")
    return name, http_url(url)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdmc_download_weights",
        description="Download the published pretrained weights of SDMC-Seg and convert them into diffusers folders.",
    )
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                        help="folder for the weights (default: $SDMC_weights, else ./weights)")
    parser.add_argument("--which", nargs="+", choices=list(PUBLISHED), default=list(PUBLISHED), metavar="NAME",
                        help=f"weights to fetch, of {', '.join(PUBLISHED)} (default: all)")
    parser.add_argument("--base-url", type=http_url, metavar="URL",
                        help="fetch every file from URL/<file name> instead of its public address")
    parser.add_argument("--url", type=_named_url, action="append", default=[], metavar="NAME=URL",
                        help="fetch NAME from URL (repeatable); needed for finetuned_mask, which has no public address")
    parser.add_argument("--keep-downloads", action="store_true", help="keep the downloaded files once converted")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    return parser


@console_entry
def main(argv: list[str] | None = None) -> int:
    """Command line: download and convert the selected weights into `-o DIR`."""
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    output_dir = args.output or weights_root()
    names = list(dict.fromkeys(args.which))
    pending = [name for name in names if not _already_converted(output_dir / name)]
    # Every address is settled before the first download starts.
    urls = {name: weights_url(name, args.base_url, dict(args.url)) for name in pending}
    options = DownloadOptions(keep_archives=args.keep_downloads)
    for name, url in urls.items():
        fetch_weights(name, url, output_dir, options)
    for name in names:
        print(f"{output_dir / name}: ready")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
