"""Wall time of `sdmc_plan_and_preprocess` against `nnUNetv2_plan_and_preprocess -c 2d`, as JSON.

Both run as commands on the same synthetic raw dataset (converted by sdmcunet) with the same
number of processes; the fingerprints' intensity statistics are compared too. nnU-Net v2 is
optional: without it only sdmcunet is timed.

    python benchmarks/bench_preprocess.py [--patients 30] [--size 512] [-np 2]
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release
from sdmcunet.dataset_conversion.synthetic import make_synthetic_dataset

TARGET_RATIO = 0.5  # sdmcunet should take at most half of nnU-Net's wall time


def timed(command: list[str], environment: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=os.environ | environment, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def largest_relative_difference(ours: dict, theirs: dict) -> float:
    return max(abs(ours[channel][key] - value) / max(abs(value), 1e-12)
               for channel, statistics in theirs.items() for key, value in statistics.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("-np", dest="num_processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    bin_folder = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        make_synthetic_dataset(folder / "release", n_patients=args.patients, seed=0, size=args.size)
        dataset = convert_release(folder / "release", 2021, folder / "raw", num_processes=args.num_processes)
        cases = len(list((dataset / "labelsTr").iterdir()))
        ours = timed([str(bin_folder / "sdmc_plan_and_preprocess"), "-d", "2021", "-np", str(args.num_processes)],
                     {"SDMC_raw": str(folder / "raw"), "SDMC_preprocessed": str(folder / "sdmc")})
        results = {"cases": cases, "size": args.size, "processes": args.num_processes,
                   "sdmc_plan_and_preprocess_seconds": round(ours, 2)}
        nnunet = bin_folder / "nnUNetv2_plan_and_preprocess"
        if nnunet.exists():
            theirs = timed([str(nnunet), "-d", "2021", "-c", "2d", "-np", str(args.num_processes),
                            "-npfp", str(args.num_processes)],
                           {"nnUNet_raw": str(folder / "raw"), "nnUNet_preprocessed": str(folder / "nnunet"),
                            "nnUNet_results": str(folder / "nnunet_results")})
            read = lambda path: json.loads(path.read_text())["foreground_intensity_properties_per_channel"]
            difference = largest_relative_difference(read(folder / "sdmc" / dataset.name / "dataset_fingerprint.json"),
                                                     read(folder / "nnunet" / dataset.name / "dataset_fingerprint.json"))
            results |= {"nnunetv2_plan_and_preprocess_2d_seconds": round(theirs, 2),
                        "ratio_sdmc_to_nnunet": round(ours / theirs, 3), "target_ratio_at_most": TARGET_RATIO,
                        "fingerprint_largest_relative_difference": difference}
        else:
            results["nnunetv2"] = "not installed: install nnunetv2 (see requirements/nnunet-nodeps.txt) to compare"
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
