"""Throughput of synthetic-data generation and of conversion to the raw dataset, as JSON.

    python benchmarks/bench_conversion.py [--patients 20] [--size 512] [-np 2]
"""

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from sdmcunet.dataset_conversion.convert_stroke2021 import convert_release
from sdmcunet.dataset_conversion.synthetic import make_synthetic_dataset
from sdmcunet.utils.files import read_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("-np", dest="num_processes", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        start = time.perf_counter()
        make_synthetic_dataset(folder / "release", n_patients=args.patients, seed=0, size=args.size)
        generation_seconds = time.perf_counter() - start
        slices = len(list((folder / "release").rglob("PNG/*.png")))
        results = {"slices": slices, "size": args.size, "cpus": os.cpu_count(),
                   "synthetic_slices_per_second": round(slices / generation_seconds, 2)}
        for processes in sorted({1, args.num_processes}):
            start = time.perf_counter()
            dataset = convert_release(folder / "release", 2021, folder / f"raw_np{processes}", num_processes=processes)
            seconds = time.perf_counter() - start
            converted = read_json(dataset / "conversion_report.json")["n_converted"]
            results[f"conversion_slices_per_second_np{processes}"] = round(converted / seconds, 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
