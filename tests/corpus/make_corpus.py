"""A corpus of malformed and hostile inputs, each with the command that must refuse it cleanly.

Every case is derived from one tiny valid run (a checkpoint, its ONNX export, the demo profile),
made once, so the corpus stays small and is rebuilt from code, never stored. A case is
(name, the files it writes, the ``ftdeploy`` command line, the words its error line must hold,
the output its command must not leave behind). ``tests/test_corpus.py`` runs every case through
the command line's error boundary and asserts the project's rule for bad input: one line on
stderr naming the file (and field), exit 2, no traceback, nothing written.

Run standalone to write the corpus into a folder and list its cases::

    python tests/corpus/make_corpus.py DIR
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BIG = 10**12  # a count no run can afford


@dataclass
class Case:
    name: str
    argv: list[str]
    names: list[str]  # what the error line must mention: the file's name, and the field where there is one
    out: Path | None = None  # the output the command would write: must not exist afterwards
    files: list[Path] = field(default_factory=list)


@dataclass
class Base:
    """The valid files every case is derived from."""

    ckpt: Path  # a (quick) pretrained checkpoint
    onnx: Path  # its export for the demo profile
    profile: Path  # the demo profile, its target as an absolute path


class _Corpus:
    def __init__(self, folder: Path, base: Base):
        self.folder, self.base, self.cases = folder, base, []
        self.outs = folder / "outs"  # every case's output goes under here, and must not appear

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def add(self, name: str, argv: list, names: list[str], out: Path | None = None, files=()) -> None:
        assert name not in {c.name for c in self.cases}, name
        self.cases.append(Case(name, [str(a) for a in argv], names, out, list(files)))

    def out(self, name: str) -> Path:
        return self.outs / name


# --- profiles and targets (YAML) -----------------------------------------------------------------

def _yaml(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _profile_data(base: Base) -> dict:
    import yaml

    return yaml.safe_load(base.profile.read_text())


def _target_data(base: Base) -> dict:
    import yaml

    return yaml.safe_load(Path(_profile_data(base)["target"]).read_text())


def _with(data: dict, dotted: str, value) -> dict:
    """A deep copy of ``data`` with the field at ``dotted`` (a.b.c; a list index as a number) set;
    ``...`` deletes it."""
    data = json.loads(json.dumps(data))
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return data


def profile_cases(c: _Corpus) -> None:
    b = c.base
    good = _profile_data(b)

    def refused(name: str, content: bytes | str, field_: str | None = None, fname: str | None = None):
        path = c.file(f"profiles/{fname or name}.yaml", content)
        out = c.out(f"{name}.onnx")
        c.add(f"profile-{name}", ["export", b.ckpt, "--profile", path, "-o", out], [path.name, *([field_] if field_ else [])], out, [path])

    def field_case(name: str, dotted: str, value, field_: str | None = None):
        refused(name, _yaml(_with(good, dotted, value)), field_ or dotted)

    # files that are not YAML mappings
    refused("empty", "")
    refused("whitespace", "   \n\n  \n")
    refused("comment-only", "# nothing here\n")
    refused("binary-garbage", bytes(range(256)) * 4)
    refused("nul-bytes", b"name: demo\x00\x00\x00\n")
    refused("non-utf8", "name: d\xe9mo\n".encode("latin-1"))
    refused("utf16", "name: demo\n".encode("utf-16"))
    refused("top-level-list", "- 1\n- 2\n")
    refused("top-level-scalar", "42\n")
    refused("top-level-null", "null\n")
    refused("unclosed-bracket", "name: [demo\n")
    refused("tab-indent", "name: demo\nsignoff:\n\trates: [0.01]\n")
    # hostile YAML
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    refused("alias-bomb", bomb)
    refused("alias-bomb-in-field", _yaml(good) + "x: &x [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(f"x{i}: &x{i} [{', '.join(['*x' if i == 0 else f'*x{i - 1}'] * 10)}]\n" for i in range(7)))
    refused("python-object-tag", "name: !!python/object/apply:os.system ['echo pwned']\n")
    refused("python-name-tag", "name: !!python/name:os.system\n")
    refused("deep-nesting", "name: " + "[" * 5000 + "]" * 5000 + "\n")
    refused("deep-mapping", "name:" + "".join(f"\n{' ' * (i + 1)}k{i}:" for i in range(400)) + " 1\n")
    refused("duplicate-top-key", _yaml(good) + "signoff:\n  rates: [0.5]\n", "signoff")
    refused("duplicate-nested-key", _yaml(good).replace("signoff:\n", "signoff:\n  chips: 3\n  chips: 1000\n", 1), "chips")
    refused("duplicate-key-in-list-item", "name: a\nfaults:\n- kind: stuck-at\n  p_sa: 0.01\n  p_sa: 0.02\n", "p_sa")
    refused("long-value", _yaml(_with(good, "signoff.chips", "9" * 100_000)), "signoff.chips")
    refused("long-key", _yaml(good) + "k" * 100_000 + ": 1\n")
    # wrong fields, types and ranges
    field_case("unknown-top-field", "colour", "blue")
    field_case("unknown-signoff-field", "signoff.min_accuracy", 90, "signoff.min_accuracy")
    field_case("unknown-training-field", "training.epoch", 3, "training.epoch")
    field_case("missing-name", "name", ...)
    field_case("missing-signoff", "signoff", ..., "signoff")
    field_case("missing-faults", "faults", ..., "faults")
    field_case("name-list", "name", ["a", "b"])
    field_case("chips-string", "signoff.chips", "many")
    field_case("chips-float", "signoff.chips", 1.5)
    field_case("chips-list", "signoff.chips", [1])
    field_case("chips-bool", "signoff.chips", True)
    field_case("chips-zero", "signoff.chips", 0)
    field_case("chips-negative", "signoff.chips", -3)
    field_case("chips-huge", "signoff.chips", BIG)
    field_case("chips-10-100", "signoff.chips", 10**100)
    field_case("batch-chips-huge", "signoff.batch_chips", BIG)
    field_case("max-images-huge", "signoff.max_images", BIG)
    field_case("max-images-zero", "signoff.max_images", 0)
    field_case("seed-negative", "signoff.seed", -1)
    field_case("seed-huge", "signoff.seed", 2**80)
    field_case("rates-string", "signoff.rates", "0.01")
    field_case("rates-empty", "signoff.rates", [])
    field_case("rate-negative", "signoff.rates", [-0.1])
    field_case("rate-above-one", "signoff.rates", [1.5])
    field_case("rate-pair-of-one", "signoff.rates", [[0.1]])
    field_case("rate-pair-sum", "signoff.rates", [[0.6, 0.6]])
    field_case("rate-nan", "signoff.rates", [float("nan")])
    field_case("rate-inf", "signoff.rates", [float("inf")])
    field_case("rates-too-many", "signoff.rates", [0.001] * 1_001)
    field_case("confidence-two", "signoff.confidence", 2)
    field_case("chance-margin-nan", "signoff.chance_margin_pct", float("nan"))
    field_case("acceptance-not-list", "signoff.acceptance", "all")
    field_case("acceptance-no-limits", "signoff.acceptance", [{"rate": 0.01}], "signoff.acceptance.0")
    field_case("acceptance-pct-above-100", "signoff.acceptance", [{"rate": 0.01, "min_acc_defect_pct": 101}],
               "signoff.acceptance.0.min_acc_defect_pct")
    field_case("acceptance-percentile", "signoff.acceptance", [{"rate": 0.01, "min_percentile_acc_pct": 50, "percentile": 150}],
               "signoff.acceptance.0.percentile")
    field_case("faults-string", "faults", "stuck-at")
    field_case("faults-no-kind", "faults", [{"p_sa": 0.01}])
    field_case("faults-unknown-kind", "faults", [{"kind": "gremlins"}])
    field_case("p-sa-negative", "faults.0.p_sa", -0.1, "p_sa")
    field_case("p-sa-above-one", "faults.0.p_sa", 2, "p_sa")
    field_case("p-sa-string", "faults.0.p_sa", "lots", "p_sa")
    field_case("epochs-negative", "training.epochs", -1)
    field_case("epochs-huge", "training.epochs", BIG)
    field_case("pretrain-epochs-huge", "training.pretrain_epochs", BIG)
    field_case("batch-size-zero", "training.batch_size", 0)
    field_case("batch-size-huge", "training.batch_size", BIG)
    field_case("lr-negative", "training.lr", -0.1)
    field_case("lr-nan", "training.lr", float("nan"))
    field_case("lr-inf", "training.retrain_lr", float("inf"))
    field_case("training-not-mapping", "training", [1, 2])
    field_case("target-missing", "target", ...)
    field_case("target-number", "target", 5)
    field_case("target-unknown-name", "target", "no-such-chip", "target")
    field_case("target-missing-file", "target", str(c.folder / "nowhere" / "t.yaml"), "target")
    # a bad target file, named by the profile
    target = _target_data(b)

    def target_case(name: str, content: str | bytes, field_: str | None = None):
        tpath = c.file(f"targets/{name}.yaml", content)
        ppath = c.file(f"profiles/with-target-{name}.yaml", _yaml(_with(good, "target", str(tpath))))
        out = c.out(f"target-{name}.onnx")
        c.add(f"target-{name}", ["export", b.ckpt, "--profile", ppath, "-o", out], [tpath.name, *([field_] if field_ else [])], out,
              [tpath, ppath])

    target_case("empty", "")
    target_case("garbage", bytes(range(255, 0, -1)))
    target_case("list", "- a\n")
    target_case("g-on-below-g-off", _yaml(_with(target, "g_on_uS", 0.5)), "g_on_uS")
    target_case("bits-zero", _yaml(_with(target, "bits_per_cell", 0)), "bits_per_cell")
    target_case("bits-huge", _yaml(_with(target, "bits_per_cell", 99)), "bits_per_cell")
    target_case("weight-bits-one", _yaml(_with(target, "weight_bits", 1)), "weight_bits")
    target_case("unknown-mapping", _yaml(_with(target, "mapping", "quantum")), "mapping")
    target_case("tile-rows-zero", _yaml(_with(target, "tile_rows", 0)), "tile_rows")
    target_case("tile-rows-huge", _yaml(_with(target, "tile_rows", BIG)), "tile_rows")
    target_case("tile-cols-huge", _yaml(_with(target, "tile_cols", BIG)), "tile_cols")
    target_case("g-off-nan", _yaml(_with(target, "g_off_uS", float("nan"))), "g_off_uS")
    target_case("g-on-inf", _yaml(_with(target, "g_on_uS", float("inf"))), "g_on_uS")
    target_case("unknown-field", _yaml(_with(target, "colour", "red")), "colour")
    target_case("duplicate-key", _yaml(target) + "bits_per_cell: 2\n", "bits_per_cell")
    # extends
    ext_missing = c.file("profiles/extends-missing.yaml", "extends: ./no-such-base.yaml\nname: x\n")
    c.add("profile-extends-missing", ["export", b.ckpt, "--profile", ext_missing, "-o", c.out("ext-missing.onnx")],
          [ext_missing.name, "extends:"], c.out("ext-missing.onnx"))
    ext_number = c.file("profiles/extends-number.yaml", "extends: 5\nname: x\n")
    c.add("profile-extends-number", ["export", b.ckpt, "--profile", ext_number, "-o", c.out("ext-number.onnx")],
          [ext_number.name, "extends:"], c.out("ext-number.onnx"))
    ext_self = c.file("profiles/extends-self.yaml", "extends: ./extends-self.yaml\nname: x\n")
    c.add("profile-extends-self", ["export", b.ckpt, "--profile", ext_self, "-o", c.out("ext-self.onnx")],
          [ext_self.name, "extends:"], c.out("ext-self.onnx"))
    c.file("profiles/cycle-a.yaml", "extends: ./cycle-b.yaml\nname: a\n")
    cycle_b = c.file("profiles/cycle-b.yaml", "extends: ./cycle-a.yaml\nname: b\n")
    c.add("profile-extends-cycle", ["export", b.ckpt, "--profile", cycle_b, "-o", c.out("ext-cycle.onnx")],
          [cycle_b.name, "extends:"], c.out("ext-cycle.onnx"))
    ext_dir = c.file("profiles/extends-folder.yaml", f"extends: {c.folder / 'profiles'}/\nname: x\n")
    c.add("profile-extends-folder", ["export", b.ckpt, "--profile", ext_dir, "-o", c.out("ext-folder.onnx")],
          [ext_dir.name, "extends:"], c.out("ext-folder.onnx"))
    deep = c.folder / "profiles" / "deep"
    deep.mkdir(parents=True, exist_ok=True)
    (deep / "p0.yaml").write_text(_yaml(_with(good, "name", "p0")))
    for i in range(1, 1500):
        (deep / f"p{i}.yaml").write_text(f"extends: ./p{i - 1}.yaml\nname: p{i}\n")
    c.add("profile-extends-1500-deep", ["export", b.ckpt, "--profile", deep / "p1499.yaml", "-o", c.out("ext-deep.onnx")],
          ["p1499.yaml", "extends:"], c.out("ext-deep.onnx"))
    bad_base = c.file("profiles/bad-base.yaml", _yaml(_with(good, "signoff.chips", -5)))
    derived = c.file("profiles/derived-of-bad-base.yaml", f"extends: ./{bad_base.name}\nname: derived\n")
    c.add("profile-extends-bad-base", ["export", b.ckpt, "--profile", derived, "-o", c.out("ext-bad-base.onnx")],
          [bad_base.name, "signoff.chips"], c.out("ext-bad-base.onnx"))
    # where the file is not
    c.add("profile-missing-file", ["export", b.ckpt, "--profile", c.folder / "profiles/none.yaml", "-o", c.out("p-missing.onnx")],
          ["none.yaml"], c.out("p-missing.onnx"))
    c.add("profile-a-folder", ["export", b.ckpt, "--profile", f"{c.folder / 'profiles'}/", "-o", c.out("p-folder.onnx")],
          ["profiles"], c.out("p-folder.onnx"))
    c.add("profile-unknown-name", ["export", b.ckpt, "--profile", "no-such-profile", "-o", c.out("p-name.onnx")],
          ["no-such-profile"], c.out("p-name.onnx"))
    one = c.file("profiles/validate-dup.yaml", _yaml(good) + "name: again\n")
    c.add("profile-validate-duplicate", ["profile", "validate", one], [one.name, "name"])
    # a --config file of train
    for name, content, field_ in [("config-garbage", b"\xff\xfe\x00garbage", None), ("config-list", "- 1\n", None),
                                  ("config-unknown", "epoch: 3\n", "epoch"), ("config-epochs-huge", f"epochs: {BIG}\n", "epochs"),
                                  ("config-duplicate", "epochs: 1\nepochs: 2\n", "epochs"),
                                  ("config-batch-huge", f"batch_size: {BIG}\n", "batch_size")]:
        path = c.file(f"configs/{name}.yaml", content)
        out = c.out(f"{name}-run")
        c.add(f"train-{name}", ["train", "--profile", b.profile, "--config", path, "--from", b.ckpt, "--method", "one-shot",
                                "--out", out], [path.name, *([field_] if field_ else [])], out)


# --- checkpoints ----------------------------------------------------------------------------------

def checkpoint_cases(c: _Corpus) -> None:
    import torch

    b = c.base
    good = torch.load(b.ckpt, weights_only=True)
    raw = b.ckpt.read_bytes()

    def refused(name: str, path: Path, field_: str | None = None):
        out = c.out(f"ckpt-{name}.onnx")
        # ": FIELD" as the line writes it after the file: the bare word may be part of the file's name
        c.add(f"checkpoint-{name}", ["export", path, "--profile", b.profile, "-o", out], [path.name, *([f": {field_}"] if field_ else [])], out)

    def saved(name: str, obj, field_: str | None = None):
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        refused(name, c.file(f"checkpoints/{name}.pt", buffer.getvalue()), field_)

    def changed(name: str, key: str, value, field_: str | None = None):
        obj = dict(good)
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
        saved(name, obj, field_ or key)

    refused("empty", c.file("checkpoints/empty.pt", b""))
    refused("garbage", c.file("checkpoints/garbage.pt", bytes(range(256)) * 8))
    refused("text", c.file("checkpoints/text.pt", "state_dict: weights\n"))
    refused("truncated", c.file("checkpoints/truncated.pt", raw[: len(raw) // 2]))
    refused("zip-not-torch", c.file("checkpoints/zip.pt", _zip({"a.txt": b"hello"})))
    refused("an-onnx-file", c.file("checkpoints/exported.pt", b.onnx.read_bytes()))
    refused("missing", c.folder / "checkpoints" / "none.pt")
    (c.folder / "checkpoints" / "folder.pt").mkdir(parents=True, exist_ok=True)
    refused("a-folder", c.folder / "checkpoints" / "folder.pt")
    saved("a-list", [1, 2, 3])
    saved("no-format", {k: v for k, v in good.items() if k != "format"}, "format")
    changed("wrong-format", "format", "ftdeploy-checkpoint/99")
    changed("no-model", "model", ...)
    changed("model-number", "model", 5)
    changed("model-unknown", "model", "no-such-net")
    changed("no-state-dict", "state_dict", ...)
    changed("state-dict-list", "state_dict", [1, 2])
    changed("state-dict-string-values", "state_dict", {k: "w" for k in good["state_dict"]})
    changed("no-num-classes", "num_classes", ...)
    changed("num-classes-string", "num_classes", "ten")
    changed("num-classes-zero", "num_classes", 0)
    changed("num-classes-huge", "num_classes", BIG)
    changed("classes-number", "classes", 10)
    changed("normalization-string", "normalization", "imagenet")
    changed("normalization-nan", "normalization", {"mean": [float("nan")] * 3, "std": [0.2] * 3})
    changed("normalization-std-zero", "normalization", {"mean": [0.5] * 3, "std": [0.0] * 3})
    changed("target-string", "target", "paper-diff8")
    state = good["state_dict"]
    first = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
    changed("weight-nan", "state_dict", {**state, first: torch.full_like(state[first], float("nan"))}, first)
    changed("weight-inf", "state_dict", {**state, first: state[first].clone().index_fill_(0, torch.tensor([0]), float("inf"))}, first)
    changed("weight-wrong-shape", "state_dict", {**state, first: torch.zeros(2, 2)}, first)
    changed("weight-missing", "state_dict", {k: v for k, v in state.items() if k != first}, first)
    changed("weight-extra", "state_dict", {**state, "extra.weight": torch.zeros(2)}, "extra.weight")
    bn = next(k for k in state if k.endswith("running_var"))
    changed("running-var-nan", "state_dict", {**state, bn: torch.full_like(state[bn], float("nan"))}, bn)

    class Hostile:  # torch.save pickles it; loading it would run code
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    saved("pickled-code", {**good, "model": Hostile()})


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


# --- ONNX exports ---------------------------------------------------------------------------------

def _restamped(proto) -> bytes:
    """``proto`` with a fresh content hash: the hash finds corruption, not a crafted file, so a
    crafted file carries a matching one."""
    import onnx

    from ftdeploy.onnx_format import HASH_KEY, content_hash, read_metadata

    meta = read_metadata(proto)
    meta.pop(HASH_KEY, None)
    onnx.helper.set_model_props(proto, meta)
    onnx.helper.set_model_props(proto, {**meta, HASH_KEY: content_hash(proto)})
    return proto.SerializeToString()


def export_cases(c: _Corpus) -> None:
    import onnx
    from onnx import numpy_helper

    b = c.base
    raw = b.onnx.read_bytes()

    def proto():
        return onnx.load_from_string(raw)

    def refused(name: str, path: Path, field_: str | None = None, extra: list | None = None):
        out = c.out(f"onnx-{name}")
        c.add(f"export-{name}", ["verify", path, "--profile", b.profile, "--out", out, *(extra or [])],
              [path.name, *([field_] if field_ else [])], out)

    def crafted(name: str, p, field_: str | None = None):
        refused(name, c.file(f"exports/{name}.onnx", _restamped(p)), field_)

    def meta(name: str, key: str, value: str, field_: str | None = None):
        p = proto()
        props = {m.key: m.value for m in p.metadata_props}
        if value is ...:
            del props[f"ftdeploy.{key}"]
        else:
            props[f"ftdeploy.{key}"] = value
        del p.metadata_props[:]
        onnx.helper.set_model_props(p, props)
        crafted(name, p, field_ or f"ftdeploy.{key}")

    refused("empty", c.file("exports/empty.onnx", b""))
    refused("garbage", c.file("exports/garbage.onnx", bytes(range(256)) * 16))
    refused("text", c.file("exports/text.onnx", "this is not a model\n"))
    refused("truncated", c.file("exports/truncated.onnx", raw[: len(raw) // 2]))
    refused("truncated-end", c.file("exports/truncated-end.onnx", raw[:-7]))
    refused("missing", c.folder / "exports" / "none.onnx")
    (c.folder / "exports" / "folder.onnx").mkdir(parents=True, exist_ok=True)
    refused("a-folder", c.folder / "exports" / "folder.onnx")
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0xFF
    refused("bit-flip", c.file("exports/bit-flip.onnx", bytes(flipped)))
    p = proto()
    del p.metadata_props[:]
    refused("no-metadata", c.file("exports/no-metadata.onnx", p.SerializeToString()), "ftdeploy.format")
    meta("format-other", "format", "ftdeploy-onnx/99", "format 'ftdeploy-onnx/99'")
    meta("invalid-json", "layers", "[{", "ftdeploy.layers")
    meta("deep-json", "classes", "[" * 100_000 + "]" * 100_000, "ftdeploy.classes")
    meta("target-string", "target", json.dumps("paper-diff8"))
    meta("target-list", "target", "[]")
    meta("target-empty", "target", "{}")
    meta("target-missing", "target", ...)
    meta("target-bad-bits", "target", json.dumps({**json.loads(_prop(raw, "target")), "bits_per_cell": "seven"}), "bits_per_cell")
    meta("mapping-string", "mapping", json.dumps("differential"))
    meta("mapping-empty", "mapping", "{}", "ftdeploy.mapping")
    meta("mapping-no-coefficients", "mapping", json.dumps({k: v for k, v in json.loads(_prop(raw, "mapping")).items()
                                                          if k != "coefficients"}), "ftdeploy.mapping.coefficients")
    meta("mapping-coefficients-string", "mapping", json.dumps({**json.loads(_prop(raw, "mapping")), "coefficients": "ab"}),
         "ftdeploy.mapping.coefficients")
    meta("mapping-offset-list", "mapping", json.dumps({**json.loads(_prop(raw, "mapping")), "offset": [0]}), "ftdeploy.mapping.offset")
    layers = json.loads(_prop(raw, "layers"))
    meta("layers-string", "layers", json.dumps("all"))
    meta("layers-numbers", "layers", "[1, 2]", "layers.0")
    meta("layers-empty-entries", "layers", "[{}]", "layers.0")
    meta("layers-empty", "layers", "[]", "layers")
    meta("layer-cells-number", "layers", json.dumps([{**layers[0], "cells": 5}, *layers[1:]]), "layers.0.cells")
    meta("layer-cell-shape-strings", "layers", json.dumps([{**layers[0], "cell_shape": ["a"]}, *layers[1:]]), "layers.0.cell_shape")
    meta("layer-cell-shape-huge", "layers", json.dumps([{**layers[0], "cell_shape": [2, 10**6, 10**6, 10**6]}, *layers[1:]]),
         "cell_shape")
    meta("layer-weight-shape-huge", "layers", json.dumps([{**layers[0], "weight_shape": [10**6, 10**6, 10**6, 3]}, *layers[1:]]),
         "weight_shape")
    meta("layer-weight-shape-negative", "layers", json.dumps([{**layers[0], "weight_shape": [-16, 3, 3, 3]}, *layers[1:]]),
         "weight_shape")
    meta("layer-name-missing-cell", "layers", json.dumps([{**layers[0], "cells": ["nowhere", layers[0]["cells"][1]]}, *layers[1:]]), "nowhere")
    meta("layer-name-number", "layers", json.dumps([{**layers[0], "name": 5}, *layers[1:]]), "layers.0.name")
    meta("normalization-string", "normalization", json.dumps("imagenet"))
    meta("normalization-mean-strings", "normalization", json.dumps({"mean": "abc", "std": [0.2] * 3}), "ftdeploy.normalization.mean")
    meta("normalization-short", "normalization", json.dumps({"mean": [0.5], "std": [0.2]}), "ftdeploy.normalization")
    meta("normalization-std-zero", "normalization", json.dumps({"mean": [0.5] * 3, "std": [0.0] * 3}), "ftdeploy.normalization.std")
    meta("normalization-nan", "normalization", '{"mean": [NaN, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}', "ftdeploy.normalization.mean")
    meta("classes-number", "classes", "10")
    meta("classes-empty", "classes", "[]")
    meta("classes-numbers", "classes", "[1, 2, 3]", "ftdeploy.classes")
    meta("classes-huge", "classes", json.dumps(["c"] * 200_001), "classes")
    meta("acc-pretrain-string", "acc_pretrain", json.dumps("high"))
    meta("acc-pretrain-nan", "acc_pretrain", "NaN")
    meta("data-string", "data", json.dumps("embedded"))
    meta("placement-string", "placement", json.dumps("tiles"))
    meta("schedule-string", "schedule", json.dumps("progressive"))
    meta("training-list", "training", "[1]")
    meta("sparsity-string", "sparsity", json.dumps("half"))
    meta("programmed-for-string", "programmed_for", json.dumps("chip-1"))
    # the graph itself
    p = proto()
    dims = p.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 2_000_000
    crafted("input-huge", p, "input")
    p = proto()
    p.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 10**9
    crafted("input-channels-huge", p, "input")
    p = proto()
    dims = p.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = 32, 16
    crafted("input-not-square", p, "input")
    p = proto()
    p.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    crafted("input-symbolic", p, "input")
    p = proto()
    del p.graph.input[:]
    crafted("no-input", p, "input")
    p = proto()
    del p.graph.node[len(p.graph.node) // 2]
    crafted("node-removed", p)
    p = proto()
    p.graph.node[0].op_type = "NoSuchOp"
    crafted("unknown-op", p)
    p = proto()
    del p.graph.output[:]
    crafted("no-output", p)
    p = proto()
    p.opset_import[0].version = 999
    crafted("opset-999", p)
    inits = {i.name: i for i in proto().graph.initializer}
    cell = layers[0]["cells"][0]
    for name, array, field_ in [
        ("cells-float", numpy_helper.to_array(inits[cell]).astype(np.float32), cell),
        ("cells-above-max-level", np.full_like(numpy_helper.to_array(inits[cell]), 255), cell),
        ("cells-wrong-shape", np.zeros((2, 2), np.uint8), cell),
        ("scale-nan", np.array(np.nan, np.float32), layers[0]["scale"]),
        ("scale-inf", np.array(np.inf, np.float32), layers[0]["scale"]),
    ]:
        p = proto()
        target_name = field_
        for i, init in enumerate(p.graph.initializer):
            if init.name == target_name:
                p.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, target_name))
        crafted(name, p, field_)
    p = proto()
    float_init = next(i for i in p.graph.initializer if i.data_type == 1 and i.name.endswith("bias"))
    arr = numpy_helper.to_array(float_init).copy()
    arr.flat[0] = np.nan
    float_init.CopyFrom(numpy_helper.from_array(arr, float_init.name))
    crafted("bias-nan", p, float_init.name)
    p = proto()
    kept = [i for i in p.graph.initializer if i.name != cell]
    del p.graph.initializer[:]
    p.graph.initializer.extend(kept)
    crafted("cells-initializer-removed", p, cell)
    p = proto()
    victim = next(i for i in p.graph.initializer if i.name.endswith("bias"))
    victim.data_location = onnx.TensorProto.EXTERNAL
    del victim.external_data[:]
    entry = victim.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    victim.ClearField("raw_data")
    victim.ClearField("float_data")
    crafted("external-data", p, victim.name)
    # a checkpoint given to verify (reuses the existing refusal)
    refused("a-checkpoint", b.ckpt)
    # --reference: the same checks apply to the reference model
    out = c.out("onnx-reference-garbage")
    ref = c.file("exports/reference-garbage.onnx", b"\x08\x07garbage")
    c.add("export-reference-garbage", ["verify", b.onnx, "--profile", b.profile, "--reference", ref, "--out", out], [ref.name], out)


def _prop(raw: bytes, key: str) -> str:
    import onnx

    return {m.key: m.value for m in onnx.load_from_string(raw).metadata_props}[f"ftdeploy.{key}"]


# --- datasets ------------------------------------------------------------------------------------

def _png(width: int, height: int, payload: bytes = b"") -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (8-bit grey) and whose pixels are
    ``payload`` deflated: a decompression bomb's header costs nothing to write."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


def _tiny_png(seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _packed(n: int = 40, **override) -> dict:
    """A valid npz dataset's arrays (``n`` tiny PNGs, CIFAR's ten classes), with ``override``."""
    blobs = [_tiny_png(i) for i in range(n)]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    arrays = {"jpeg": np.frombuffer(b"".join(blobs), np.uint8), "offsets": offsets, "labels": np.arange(n) % 10,
              "classes": np.array(CIFAR_CLASSES)}
    arrays.update(override)
    return {k: v for k, v in arrays.items() if v is not None}


def data_cases(c: _Corpus) -> None:
    b = c.base

    def refused(name: str, spec: str, names: list[str], extra: list | None = None):
        out = c.out(f"data-{name}")
        c.add(f"data-{name}", ["verify", b.onnx, "--profile", b.profile, "--data", spec, "--out", out, *(extra or [])], names, out)

    def npz(name: str, content: bytes, field_: str | None = None, extra: list | None = None):
        path = c.file(f"data/{name}.npz", content)
        # ": FIELD" as the line writes it after the file: the bare word may be part of the file's name
        refused(name, f"npz:{path}", [path.name, *([f": {field_}"] if field_ else [])], extra)

    good = _packed()
    npz("empty", b"")
    npz("garbage", bytes(range(256)) * 4)
    npz("a-npy", _npy(np.zeros(3)))
    missing = c.file("data/missing-labels.npz", _npz(**_packed(labels=None)))
    refused("missing-labels", f"npz:{missing}", [missing.name, "missing arrays ['labels']"])
    npz("labels-out-of-range", _npz(**{**good, "labels": np.full(40, 7) * 0 + np.arange(40) % 12}), "labels")
    npz("labels-negative", _npz(**{**good, "labels": -np.ones(40, np.int64)}), "labels")
    npz("labels-float", _npz(**{**good, "labels": np.linspace(0, 9, 40)}), "labels")
    npz("labels-2d", _npz(**{**good, "labels": (np.arange(40) % 10).reshape(20, 2)}), "labels")
    npz("labels-strings", _npz(**{**good, "labels": np.array(["cat"] * 40)}), "labels")
    npz("labels-object", _npz(**{**good, "labels": np.array([1, "a"] * 20, dtype=object)}))
    npz("classes-empty", _npz(**{**good, "classes": np.array([], dtype=str)}), "classes")
    npz("classes-2d", _npz(**{**good, "classes": np.array(CIFAR_CLASSES).reshape(2, 5)}), "classes")
    npz("classes-too-few", _npz(**{**good, "classes": np.array(CIFAR_CLASSES[:5])}), "labels")
    npz("offsets-descending", _npz(**{**good, "offsets": good["offsets"][::-1].copy()}), "offsets")
    npz("offsets-short", _npz(**{**good, "offsets": good["offsets"][:10]}), "offsets")
    npz("offsets-float", _npz(**{**good, "offsets": good["offsets"].astype(np.float64) + 0.5}), "offsets")
    npz("offsets-negative", _npz(**{**good, "offsets": good["offsets"] - 10**6}), "offsets")
    npz("jpeg-float", _npz(**{**good, "jpeg": good["jpeg"].astype(np.float32)}), "jpeg")
    npz("jpeg-2d", _npz(**{**good, "jpeg": good["jpeg"][: len(good["jpeg"]) // 2 * 2].reshape(2, -1)}), "jpeg")
    npz("split-wrong-length", _npz(**{**good, "split": np.zeros(3, np.int8)}), "split")
    npz("split-values", _npz(**{**good, "split": np.full(40, 2, np.int8)}), "split")
    npz("split-empty-validation", _npz(**{**good, "split": np.zeros(40, np.int8)}), "split")
    npz("split-float", _npz(**{**good, "split": np.full(40, 0.5)}), "split")
    blobs = [_tiny_png(i) for i in range(40)]
    blobs[39] = b"not an image at all"
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in blobs])]).astype(np.int64)
    npz("undecodable-image", _npz(**{**good, "jpeg": np.frombuffer(b"".join(blobs), np.uint8), "offsets": offsets,
                                     "split": np.array([0] * 39 + [1], np.int8)}), "image 39", ["--all-images"])
    blobs[39] = _png(100_000, 100_000)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in blobs])]).astype(np.int64)
    npz("decompression-bomb", _npz(**{**good, "jpeg": np.frombuffer(b"".join(blobs), np.uint8), "offsets": offsets,
                                      "split": np.array([0] * 39 + [1], np.int8)}), "image 39", ["--all-images"])
    blobs[39] = _png(10_000, 10_000)  # under PIL's own limit: a warning, and 100 MB decoded
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in blobs])]).astype(np.int64)
    npz("large-image", _npz(**{**good, "jpeg": np.frombuffer(b"".join(blobs), np.uint8), "offsets": offsets,
                               "split": np.array([0] * 39 + [1], np.int8)}), "image 39", ["--all-images"])
    npz("huge-declared-array", _npz_declaring("labels", (10**12,)) , "labels")
    npz("damaged-member", _damaged_npz(_npz(**good)))
    folder_npz = c.folder / "data" / "folder.npz"
    folder_npz.mkdir(parents=True, exist_ok=True)
    refused("npz-a-folder", f"npz:{folder_npz}", ["folder.npz"])
    refused("npz-missing", f"npz:{c.folder / 'data' / 'none.npz'}", ["none.npz"])
    refused("unknown-kind", "mnist:/data", ["--data", "mnist"])
    refused("npz-no-path", "npz:", ["--data"])
    refused("embedded-with-arg", "embedded:x", ["--data"])
    refused("cifar10-empty-folder", f"cifar10:{c.folder / 'data'}", ["cifar10", "cifar-10-batches-py"])
    # image folders
    def imagefolder(name: str, files: dict[str, bytes], names: list[str], extra: list | None = None):
        root = c.folder / "data" / f"if-{name}"
        root.mkdir(parents=True, exist_ok=True)
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(content)
        refused(f"imagefolder-{name}", f"imagefolder:{root}", [f"if-{name}", *names], extra)

    ten = {f"{k}/img{i}.png": _tiny_png(i) for i, k in enumerate(CIFAR_CLASSES * 2)}
    imagefolder("empty", {}, [])
    imagefolder("no-images", {f"{k}/readme.txt": b"x" for k in CIFAR_CLASSES}, [])
    imagefolder("bomb", {**ten, "cat/bomb.png": _png(100_000, 100_000)}, ["bomb.png"], ["--all-images"])
    imagefolder("large", {**ten, "cat/large.png": _png(10_000, 10_000)}, ["large.png"], ["--all-images"])
    imagefolder("corrupt", {**ten, "cat/corrupt.png": _tiny_png()[:40]}, ["corrupt.png"], ["--all-images"])
    imagefolder("not-an-image", {**ten, "cat/text.png": b"hello"}, ["text.png"], ["--all-images"])
    imagefolder("one-image", {"cat/a.png": _tiny_png()}, [])
    a_file = c.file("data/a-file", "x")
    refused("imagefolder-a-file", f"imagefolder:{a_file}", ["a-file"])
    # the validation split
    refused("val-split-zero", "embedded", ["--val-split"], ["--val-split", "0"])
    refused("val-split-huge", "embedded", ["--val-split"], ["--val-split", str(BIG)])
    refused("val-split-negative", "embedded", ["--val-split"], ["--val-split", "-5"])


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz_declaring(name: str, shape: tuple) -> bytes:
    """A valid dataset whose ``name`` member's .npy header declares ``shape`` over a few bytes."""
    arrays = _packed()
    members = {f"{k}.npy": _npy(v) for k, v in arrays.items() if k != name}
    header = "{'descr': '<i8', 'fortran_order': False, 'shape': %r, }" % (shape,)
    header = header.ljust(118) + "\n"
    members[f"{name}.npy"] = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\x00" * 64
    return _zip(members)


def _damaged_npz(data: bytes) -> bytes:
    """An npz whose labels member is stored deflated and then corrupted."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    raw = bytearray(buffer.getvalue())
    at = raw.find(b"labels.npy") + len(b"labels.npy") + 10
    raw[at : at + 20] = b"\xff" * 20
    return bytes(raw)


# --- fault maps -----------------------------------------------------------------------------------

def faultmap_cases(c: _Corpus) -> None:
    b = c.base
    header = "# format: ftdeploy-faultmap/1\n# chip: chip-1\n# geometry: tiles=12 rows=128 cols=128\ntile,row,column,state\n"

    def refused(name: str, path: Path, field_: str | None = None):
        out = c.out(f"fm-{name}.onnx")
        c.add(f"faultmap-{name}", ["program", b.onnx, "--profile", b.profile, "--fault-map", path, "--out", out],
              [path.name, *([field_] if field_ else [])], out)

    def csv(name: str, text: str | bytes, field_: str | None = None):
        refused(name, c.file(f"faultmaps/{name}.csv", text), field_)

    csv("empty", "")
    csv("garbage", bytes(range(256)))
    csv("non-utf8", header.encode() + "0,1,2,stuck-\xf6ff\n".encode("latin-1"))
    csv("no-header", "tile,row,column,state\n0,1,2,stuck-off\n")
    csv("wrong-format", header.replace("faultmap/1", "faultmap/9"), "format")
    csv("bad-geometry", header.replace("tiles=12", "tiles=twelve"), "geometry")
    csv("huge-geometry", header.replace("tiles=12 rows=128 cols=128", f"tiles={BIG} rows={BIG} cols={BIG}"), "geometry")
    csv("geometry-mismatch", header.replace("rows=128", "rows=64"), "geometry")
    csv("row-out-of-range", header + "0,999,2,stuck-off\n", "row")
    csv("tile-negative", header + "-1,1,2,stuck-off\n", "tile")
    csv("state-unknown", header + "0,1,2,wobbly\n", "state")
    csv("too-few-fields", header + "0,1\n")
    csv("duplicate-cell", header + "0,1,2,stuck-off\n0,1,2,stuck-on\n", "listed twice")
    csv("number-huge", header + f"0,{'9' * 5000},2,stuck-off\n", "row")
    csv("chip-id-control", header.replace("chip-1", "chip\x07\x1b[2J"), "chip")
    refused("wrong-extension", c.file("faultmaps/map.txt", header))
    refused("missing", c.folder / "faultmaps" / "none.csv")
    (c.folder / "faultmaps" / "folder.csv").mkdir(parents=True, exist_ok=True)
    refused("a-folder", c.folder / "faultmaps" / "folder.csv")

    def npz(name: str, arrays: dict | bytes, field_: str | None = None):
        refused(f"npz-{name}", c.file(f"faultmaps/{name}.npz", arrays if isinstance(arrays, bytes) else _npz(**arrays)), field_)

    good = dict(format=np.array("ftdeploy-faultmap/1"), chip=np.array("chip-1"), geometry=np.array([12, 128, 128]),
                tile=np.array([0]), row=np.array([1]), col=np.array([2]), state=np.array([0], np.int8))
    npz("garbage", b"PK\x03\x04garbage")
    npz("missing-state", {k: v for k, v in good.items() if k != "state"}, "state")
    npz("float-rows", {**good, "row": np.array([1.5])}, "row")
    npz("lengths-differ", {**good, "row": np.array([1, 2])})
    npz("object-array", {**good, "tile": np.array([0, "x"], dtype=object)}, "tile")
    npz("geometry-strings", {**good, "geometry": np.array(["a", "b", "c"])}, "geometry")
    npz("col-out-of-range", {**good, "col": np.array([500])}, "col")


# --- signing keys ---------------------------------------------------------------------------------

def signing_cases(c: _Corpus) -> None:
    b = c.base

    def trust(name: str, path: Path):
        out = c.out(f"trust-{name}")
        c.add(f"trust-{name}", ["verify", b.onnx, "--profile", b.profile, "--trust", path, "--out", out], [path.name, "--trust"], out)

    trust("garbage", c.file("keys/garbage.pub", bytes(range(256))))
    trust("empty", c.file("keys/empty.pub", ""))
    trust("pem-garbage", c.file("keys/pem-garbage.pub", "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n"))
    trust("missing", c.folder / "keys" / "none.pub")
    (c.folder / "keys" / "folder.pub").mkdir(parents=True, exist_ok=True)
    trust("a-folder", c.folder / "keys" / "folder.pub")
    key = c.file("keys/garbage.key", "-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n")
    out = c.out("sign-garbage.onnx")
    c.add("sign-garbage-key", ["export", b.ckpt, "--profile", b.profile, "-o", out, "--sign", key], [key.name, "--sign"], out)


# --- counts on the command line ---------------------------------------------------------------------

def option_cases(c: _Corpus) -> None:
    b = c.base

    def opt(name: str, argv: list, option: str):
        out = c.out(f"opt-{name}")
        c.add(f"option-{name}", [*argv, "--out", out], [option], out)

    verify = ["verify", b.onnx, "--profile", b.profile]
    train = ["train", "--profile", b.profile, "--from", b.ckpt, "--method", "one-shot"]
    sweep = ["sweep", "--from", b.ckpt, "--profile", b.profile]
    simulate = ["faultmap", "simulate", b.onnx, "--profile", b.profile, "--rate", "0.01"]
    prune = ["prune", b.ckpt, "--profile", b.profile, "--method", "magnitude", "--sparsity", "0.5"]
    opt("verify-chips-huge", [*verify, "--chips", BIG], "--chips")
    opt("verify-chips-zero", [*verify, "--chips", 0], "--chips")
    opt("verify-chips-negative", [*verify, "--chips", -4], "--chips")
    opt("verify-max-images-huge", [*verify, "--max-images", BIG], "--max-images")
    opt("verify-max-images-zero", [*verify, "--max-images", 0], "--max-images")
    opt("verify-chip-seed-negative", [*verify, "--chip-seed", -1], "--chip-seed")
    opt("verify-chip-seed-huge", [*verify, "--chip-seed", 2**80], "--chip-seed")
    opt("verify-chip-garbage", [*verify, "--chip", "x:y"], "--chip")
    opt("verify-chip-index-huge", [*verify, "--chip", f"0.01:{BIG}"], "--chip")
    opt("train-epochs-huge", [*train, "--epochs", BIG], "--epochs")
    opt("train-epochs-zero", [*train, "--epochs", 0], "--epochs")
    opt("train-batch-size-huge", [*train, "--batch-size", BIG], "--batch-size")
    opt("train-batch-size-zero", [*train, "--batch-size", 0], "--batch-size")
    opt("train-eval-chips-huge", [*train, "--eval-chips", BIG], "--eval-chips")
    opt("train-lr-nan", [*train, "--lr", "nan"], "--lr")
    opt("train-lr-negative", [*train, "--lr", "-1"], "--lr")
    opt("train-clean-steps-two", [*train, "--clean-steps", "2"], "--clean-steps")
    opt("train-rate-warmup-huge", [*train, "--rate-warmup", "1e12"], "--rate-warmup")
    opt("train-target-rate-two", [*train, "--target-rate", "2"], "--target-rate")
    opt("train-rates-garbage", [*train, "--method", "progressive", "--rates", "a,b"], "--rates")
    opt("train-seed-huge", [*train, "--train-seed", 2**80], "--train-seed")
    opt("sweep-jobs-huge", [*sweep, "--jobs", BIG], "--jobs")
    opt("sweep-jobs-zero", [*sweep, "--jobs", 0], "--jobs")
    opt("sweep-chips-huge", [*sweep, "--chips", BIG], "--chips")
    opt("sweep-epochs-huge", [*sweep, "--epochs", BIG], "--epochs")
    opt("sweep-max-images-huge", [*sweep, "--max-images", BIG], "--max-images")
    opt("sweep-test-rates-nan", [*sweep, "--test-rates", "nan"], "--test-rates")
    opt("simulate-chips-huge", [*simulate, "--chips", BIG], "--chips")
    opt("simulate-tiles-huge", [*simulate, "--tiles", BIG], "--tiles")
    opt("prune-epochs-huge", [*prune, "--epochs", BIG], "--epochs")
    opt("prune-admm-epochs-huge", [*prune, "--admm-epochs", BIG], "--admm-epochs")
    opt("prune-sparsity-two", [*prune[:-2], "--sparsity", "2"], "--sparsity")


BUILDERS = (profile_cases, checkpoint_cases, export_cases, data_cases, faultmap_cases, signing_cases, option_cases)


def make_base(folder: Path) -> Base:
    """The valid run every case derives from: an untrained democnn checkpoint (in train's format,
    for CIFAR-10's classes), its export for the demo profile, and the demo profile. No training
    and no data decoding: the cases need valid files, not a good model, and the base is made
    every time the corpus is."""
    import torch

    from ftdeploy.data import DataBundle
    from ftdeploy.export import export_onnx
    from ftdeploy.models import create_model
    from ftdeploy.profiles import load_profile
    from ftdeploy.training.checkpoint import checkpoint_record, load_checkpoint, save_atomic
    from ftdeploy.training.config import TrainConfig

    folder.mkdir(parents=True, exist_ok=True)
    demo = load_profile("demo")
    torch.manual_seed(0)
    model = create_model("democnn", num_classes=len(CIFAR_CLASSES)).eval()
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(20) % len(CIFAR_CLASSES)
    bundle = DataBundle(images, labels, images, labels, list(CIFAR_CLASSES), "embedded", "stand-in images",
                        mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), val_split=20)  # fmt: skip
    config = TrainConfig(model="democnn", method="pretrain", epochs=1, device="cpu", seed=0)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = folder / "model.pt"
    save_atomic(checkpoint_record(config, bundle, demo.target, state, "demo", None, None, 10.0, 1), ckpt)
    export_onnx(load_checkpoint(ckpt), demo, folder / "model.onnx")
    data = _profile_data(Base(ckpt, folder / "model.onnx", demo.profile_path))
    data["target"] = str(demo.target_path)
    profile = folder / "demo.yaml"
    profile.write_text(_yaml(data))
    return Base(ckpt, folder / "model.onnx", profile)


def make_corpus(folder: Path, base: Base) -> list[Case]:
    """Write every case's files under ``folder`` and return the cases."""
    corpus = _Corpus(Path(folder), base)
    for build in BUILDERS:
        build(corpus)
    return corpus.cases


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit("usage: python tests/corpus/make_corpus.py DIR")
    folder = Path(argv[0])
    cases = make_corpus(folder / "cases", make_base(folder / "base"))
    listing = [{"name": c.name, "argv": ["ftdeploy", *c.argv], "must_name": c.names, "out": str(c.out) if c.out else None}
               for c in cases]
    (folder / "cases.json").write_text(json.dumps(listing, indent=1))
    print(f"wrote {len(cases)} cases to {folder / 'cases'} (list: {folder / 'cases.json'})")


if __name__ == "__main__":
    main(sys.argv[1:])
