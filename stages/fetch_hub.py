"""fetch_hub (not a DVC stage; run it once, with the network): save a Hugging Face Hub dataset split under
data/raw/ at a pinned revision, so that `prepare` reads a tracked local file and later runs are offline.

    python stages/fetch_hub.py trl-lib/ultrafeedback_binarized --split train --revision <commit>
    dvc add data/raw/trl-lib__ultrafeedback_binarized-train-<commit12>.jsonl
    # params.yaml: data.source: data/raw/trl-lib__ultrafeedback_binarized-train-<commit12>.jsonl

Without --revision the dataset's current commit is looked up and used. Rows are written as they come
(JSON lines, source order); prepare validates them exactly as any other file. Needs `pip install '.[hub]'`.
"""

import argparse
import logging
import os

from preftune.data.formats import HUB_INSTALL_HINT
from preftune.pipeline import files
from preftune.pipeline.errors import DataError, exit_on_user_error
from preftune.pipeline.paths import RAW

log = logging.getLogger("fetch_hub")


def target_path(name: str, split: str, revision: str) -> str:
    return os.path.join(RAW, f"{name.replace('/', '__')}-{split}-{revision[:12]}.jsonl")


def fetch(name: str, split: str, revision: str | None) -> str:
    try:
        import datasets
        import huggingface_hub
    except ImportError:
        raise DataError(f"{name}: fetching a Hub dataset needs the 'datasets' package; run {HUB_INSTALL_HINT}") from None
    try:
        if revision is None:
            revision = huggingface_hub.HfApi().dataset_info(name).sha
        rows = datasets.load_dataset(name, split=split, revision=revision)
    except Exception as err:  # The Hub client raises many unrelated types (network, auth, unknown split).
        raise DataError(f"{name}[{split}]@{revision}: could not load it from the Hub ({' '.join(str(err).split())}); "
                        "check the name, split and revision, and that the network is on (HF_HUB_OFFLINE=0)") from err
    path = target_path(name, split, revision)
    files.write_jsonl(path, [dict(row) for row in rows])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="dataset id on the Hub, e.g. trl-lib/ultrafeedback_binarized")
    parser.add_argument("--split", default="train")
    parser.add_argument("--revision", help="commit to pin (default: the dataset's current commit)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    path = fetch(args.name, args.split, args.revision)
    log.info("wrote %s; now `dvc add %s` and set data.source: %s", path, path, path)


if __name__ == "__main__":
    with exit_on_user_error("fetch_hub"):
        main()
