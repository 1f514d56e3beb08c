"""Build ftdeploy/data/cifar10-demo.npz, the embedded default dataset, from the shared packed
CIFAR-10 training split (written into this checkout's ftdeploy/data/, wherever it is run from).
From the repository root:

    python scripts/make_embedded_data.py ../shared/data/cifar10-train-jpeg.npz

500 training images per class come from the training part, and 100 validation images per
class from the validation part, of ftdeploy's default split of the full 50,000 images
(5,000 held out, stratified, seed 0). A model trained on the full split therefore never saw
the embedded validation images. The JPEG bytes are copied unchanged.
"""

import sys
from pathlib import Path

import numpy as np

from ftdeploy.data import EMBEDDED_NAME, FULL_VAL_SPLIT, SPLIT_SEED, stratified_split

TRAIN_PER_CLASS, VAL_PER_CLASS = 500, 100


def pick(indices: np.ndarray, labels: np.ndarray, per_class: int, rng) -> np.ndarray:
    return np.concatenate([rng.permutation(indices[labels[indices] == c])[:per_class] for c in np.unique(labels)])


def main(src: str) -> None:
    with np.load(src) as z:
        jpeg, offsets, labels, classes = z["jpeg"], z["offsets"], z["labels"], z["classes"]
    train_idx, val_idx = stratified_split(labels, FULL_VAL_SPLIT, SPLIT_SEED)
    rng = np.random.default_rng(2022)
    chosen_train = np.sort(pick(train_idx, labels, TRAIN_PER_CLASS, rng))
    chosen_val = np.sort(pick(val_idx, labels, VAL_PER_CLASS, rng))
    chosen = np.concatenate([chosen_train, chosen_val])
    split = np.concatenate([np.zeros(len(chosen_train), np.uint8), np.ones(len(chosen_val), np.uint8)])
    blobs = [jpeg[offsets[i] : offsets[i + 1]] for i in chosen]
    new_offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    out = Path(__file__).resolve().parents[1] / "ftdeploy" / "data" / EMBEDDED_NAME
    np.savez_compressed(out, jpeg=np.concatenate(blobs), offsets=new_offsets, labels=labels[chosen],
                        classes=classes, split=split, source_index=chosen.astype(np.int64))
    print(f"wrote {out}: {len(chosen)} images, {out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main(sys.argv[1])
