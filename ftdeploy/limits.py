"""Upper bounds on every count and size ftdeploy reads from a file or the command line.

A count is checked before anything is allocated or run: ``--chips 1000000000000`` or a
declared dimension of a million must be one clear line, not an hour of work, a ``MemoryError``
or a machine swapping. The bounds are far above any real run (CIFAR-scale data, chips of a few
thousand tiles) and below what would exhaust a workstation. Imports nothing: the command line's
option declarations read them on every start, ``--help`` included.
"""

MAX_CHIPS = 100_000  # simulated chips per rate (a sign-off), maps written (faultmap simulate)
MAX_EPOCHS = 100_000  # epochs of any training, pruning or ADMM phase
MAX_BATCH_SIZE = 65_536  # images per SGD step
MAX_IMAGES = 10_000_000  # images evaluated (--max-images), held out (--val-split), in a dataset
MAX_EVAL_CHIPS = 10_000  # chips checked after each training epoch
MAX_JOBS = 256  # retrainings run at once by a sweep
MAX_SEED = 2**63 - 1  # torch's and numpy's generators take seeds below 2**64
MAX_CLASSES = 100_000  # classes of a model or dataset
MAX_IMAGE_SIDE = 4096  # pixels per side of a model's input
MAX_IMAGE_PIXELS = 4096 * 4096  # pixels of one encoded image, checked before it is decoded
MAX_TILE_SIDE = 65_536  # rows or columns of one crossbar tile
MAX_TILES = 1 << 20  # tiles of one chip (a fault map's geometry, faultmap simulate --tiles)
MAX_TENSOR_ELEMENTS = 1 << 31  # elements of one layer's weights (8 GiB of float32)
MAX_RATES = 1_000  # sign-off or training rates in one list
MAX_WARMUP_EPOCHS = float(MAX_EPOCHS)
MAX_EXTENDS = 32  # profiles in one `extends` chain
MAX_YAML_NODES = 100_000  # values in a YAML file once its aliases are expanded
MAX_YAML_DEPTH = 64  # nesting of lists and mappings in a YAML file
MAX_SHOWN = 80  # characters of a value quoted in an error line
MAX_METADATA_BYTES = 16 << 20  # one metadata value of an ONNX export
MAX_JSON_DEPTH = 32  # nesting of a metadata value


def _flat(value) -> bool:
    """Whether ``value`` is a short container of plain scalars (cheap to print)."""
    items = list(value.items()) if isinstance(value, dict) else [(v,) for v in value]
    scalars = (int, float, str, bool, type(None))
    return len(items) <= 8 and all(isinstance(x, scalars) and (not isinstance(x, str) or len(x) <= MAX_SHOWN)
                                   for item in items for x in item)


def shown(value) -> str:
    """``repr(value)``, cut to MAX_SHOWN characters: an error line quotes what it found, never
    all of a 100,000-character value. A container of containers is only described (its type and
    length): printing it would expand a YAML alias bomb it may hold."""
    if isinstance(value, (list, tuple, dict, set, frozenset)) and not _flat(value):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."
