"""Signed artifacts: keygen, an export signed with --sign, verify --trust refusing any file no
trusted key signed (the tampered file whose content hash was recomputed above all), and signed
report folders checked by verify-report."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from ftdeploy.data import load_data
from ftdeploy.export import export_onnx
from ftdeploy.exported import load_export
from ftdeploy.onnx_format import HASH_KEY, SIGNATURE_KEY, SIGNER_KEY, content_hash, read_metadata
from ftdeploy.profiles import load_profile
from ftdeploy.signing import generate_key_pair, load_signing_key
from ftdeploy.training.checkpoint import load_checkpoint

from _quick_model import quick_checkpoint
from conftest import run_main

PROFILE = """\
name: signtest
target: paper-diff8
faults:
  - kind: stuck-at
    p_sa: 0.01
signoff:
  rates: [0.01]
  chips: 2
  seed: 0
  max_images: 100
  chance_margin_pct: 0
  chip_spec:
    min_acc_pct: 0
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("signing")


@pytest.fixture(scope="module")
def profile(folder) -> Path:
    path = folder / "signtest.yaml"
    path.write_text(PROFILE)
    return path


@pytest.fixture(scope="module")
def keys(folder) -> dict[str, Path]:
    """Two key pairs: the release engineer's ("release") and someone else's ("other")."""
    pairs = {}
    for name in ("release", "other"):
        key, pub, _ = generate_key_pair(folder / name)
        pairs[name], pairs[f"{name}.pub"] = key, pub
    return pairs


@pytest.fixture(scope="module")
def ckpt(folder, profile) -> dict:
    return load_checkpoint(quick_checkpoint(load_data(None), load_profile(profile).target, folder))


@pytest.fixture(scope="module")
def signed(ckpt, profile, keys, folder) -> Path:
    out = folder / "signed.onnx"
    export_onnx(ckpt, load_profile(profile), out, sign_with=load_signing_key(keys["release"]), check_parity=False)
    return out


@pytest.fixture(scope="module")
def unsigned(ckpt, profile, folder) -> Path:
    out = folder / "unsigned.onnx"
    export_onnx(ckpt, load_profile(profile), out, check_parity=False)
    return out


def _refused(monkeypatch, capsys, *argv) -> str:
    code, out, err = run_main(monkeypatch, capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err.removeprefix("error: ").rstrip("\n")


@pytest.fixture
def no_chips_run(monkeypatch):
    """Refusals must come before any chip is measured: measuring fails the test."""
    import ftdeploy.lot
    import ftdeploy.verify

    def measured(*a, **k):
        raise AssertionError("a chip ran before the signature was checked")

    for module, name in ((ftdeploy.verify, "verify_onnx"), (ftdeploy.verify, "verify_chip"), (ftdeploy.lot, "verify_lot")):
        monkeypatch.setattr(module, name, measured)


def _tampered(signed: Path, out: Path) -> Path:
    """The attack a content hash cannot stop: one layer's cells zeroed, Acc_pretrain lowered (so
    the drop looks small), and the content hash recomputed; signer and signature left as they were."""
    proto = onnx.load(str(signed))
    meta = read_metadata(proto)
    first_cells = json.loads(meta["ftdeploy.layers"])[0]["cells"][0]
    for init in proto.graph.initializer:
        if init.name == first_cells:
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(init)), init.name))
    meta["ftdeploy.acc_pretrain"] = json.dumps(json.loads(meta["ftdeploy.acc_pretrain"]) - 20)
    meta[HASH_KEY] = ""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    onnx.helper.set_model_props(proto, {**meta, HASH_KEY: content_hash(proto)})
    onnx.save(proto, str(out))
    return out


# --- keys ---------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "keygen", "--out", tmp_path / "line")
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "line.key").stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "line.key").read_bytes()
    assert b"BEGIN PUBLIC KEY" in (tmp_path / "line.pub").read_bytes()
    before = (tmp_path / "line.key").read_bytes()
    line = _refused(monkeypatch, capsys, "keygen", "--out", tmp_path / "line")
    assert line.startswith(f"{tmp_path / 'line.key'}: already exists")
    assert (tmp_path / "line.key").read_bytes() == before


def test_a_passphrase_from_the_environment_encrypts_the_key(tmp_path, monkeypatch):
    from ftdeploy.errors import ConfigError

    monkeypatch.setenv("FTDEPLOY_KEY_PASSPHRASE", "correct horse")
    key, _, fp = generate_key_pair(tmp_path / "enc")
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    assert load_signing_key(key).fingerprint == fp
    monkeypatch.setenv("FTDEPLOY_KEY_PASSPHRASE", "wrong")
    with pytest.raises(ConfigError, match="not its passphrase"):
        load_signing_key(key)
    monkeypatch.delenv("FTDEPLOY_KEY_PASSPHRASE")
    with pytest.raises(ConfigError, match="is encrypted; set FTDEPLOY_KEY_PASSPHRASE"):
        load_signing_key(key)


# --- signed exports ---------------------------------------------------------------------------


def test_a_signed_export_names_its_signer_and_still_loads(signed, keys):
    meta = read_metadata(onnx.load(str(signed)))
    assert meta[SIGNER_KEY] == load_signing_key(keys["release"]).fingerprint and meta[SIGNATURE_KEY]
    assert meta[HASH_KEY] == content_hash(onnx.load(str(signed)))
    assert load_export(signed).meta["signer"] == meta[SIGNER_KEY]


def test_verify_trusting_the_signer_measures_and_records_it(signed, profile, keys, tmp_path, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "verify", signed, "--profile", profile, "--trust", keys["release.pub"],
                              "--out", tmp_path / "r")  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "r" / "report.json").read_text())["model"]["signature"]
    assert record == {"signer": load_signing_key(keys["release"]).fingerprint, "checked": True}
    assert f"| signature | Ed25519 by key `{record['signer']}`, verified against the trusted keys |" in \
        (tmp_path / "r" / "report.md").read_text()


def test_verify_fault_maps_trusting_the_signer_records_it(signed, profile, keys, tmp_path, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "faultmap", "simulate", signed, "--profile", profile, "--rate", 0.01,
                              "--chips", 2, "--out", tmp_path / "maps")  # fmt: skip
    assert code == 0, err
    code, out, err = run_main(monkeypatch, capsys, "verify", signed, "--profile", profile, "--fault-maps", tmp_path / "maps",
                              "--trust", keys["release.pub"], "--out", tmp_path / "r", "--sign", keys["release"])  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["lot"] and report["model"]["signature"]["checked"] is True
    code, out, err = run_main(monkeypatch, capsys, "verify-report", tmp_path / "r", "--trust", keys["release.pub"])
    assert code == 0, err


def test_the_tampered_file_passes_the_hash_check_but_not_the_signature(signed, profile, keys, tmp_path, monkeypatch, capsys,
                                                                       no_chips_run):  # fmt: skip
    forged = _tampered(signed, tmp_path / "forged.onnx")
    assert load_export(forged).meta["acc_pretrain"] < load_export(signed).meta["acc_pretrain"]  # the hash alone lets it in
    line = _refused(monkeypatch, capsys, "verify", forged, "--profile", profile, "--trust", keys["release.pub"], "--out", tmp_path / "r")
    assert line == f"{forged}: the signature does not verify: the file was changed after it was signed"
    assert not (tmp_path / "r").exists()
    line = _refused(monkeypatch, capsys, "verify", forged, "--profile", profile, "--trust", keys["release.pub"],
                    "--fault-maps", tmp_path)  # fmt: skip
    assert "the signature does not verify" in line


def test_a_file_signed_by_another_key_is_refused(ckpt, profile, keys, tmp_path, monkeypatch, capsys, no_chips_run):
    other = tmp_path / "other.onnx"
    export_onnx(ckpt, load_profile(profile), other, sign_with=load_signing_key(keys["other"]), check_parity=False)
    line = _refused(monkeypatch, capsys, "verify", other, "--profile", profile, "--trust", keys["release.pub"])
    assert line.startswith(f"{other}: signed by key ") and "which is not a trusted key" in line


def test_several_trusted_keys_accept_either_signer(ckpt, signed, profile, keys, tmp_path):
    from ftdeploy.signing import load_trusted_keys, onnx_signature

    both = tmp_path / "line-keys.pub"  # one file holding both public keys: a key rotation
    both.write_bytes(keys["other.pub"].read_bytes() + keys["release.pub"].read_bytes())
    assert onnx_signature(signed, load_trusted_keys([both]))["checked"]
    assert onnx_signature(signed, load_trusted_keys([keys["other.pub"], keys["release.pub"]]))["checked"]


def test_an_unsigned_file_is_refused_with_trust_and_measured_without(unsigned, profile, keys, tmp_path, monkeypatch, capsys):
    line = _refused(monkeypatch, capsys, "verify", unsigned, "--profile", profile, "--trust", keys["release.pub"])
    assert line.startswith(f"{unsigned}: not signed")
    code, out, err = run_main(monkeypatch, capsys, "verify", unsigned, "--profile", profile, "--out", tmp_path / "r")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "report.json").read_text())["model"]["signature"] == {"signer": None, "checked": False}


def test_a_private_key_is_not_accepted_as_trusted(signed, profile, keys, monkeypatch, capsys):
    line = _refused(monkeypatch, capsys, "verify", signed, "--profile", profile, "--trust", keys["release"])
    assert line.startswith(f"--trust {keys['release']}: a private key")


# --- signed reports ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_report(signed, profile, keys, tmp_path_factory) -> Path:
    import sys

    out = tmp_path_factory.mktemp("report") / "r"
    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(sys, "argv", ["ftdeploy", "verify", str(signed), "--profile", str(profile), "--sign", str(keys["release"]),
                                 "--out", str(out)])  # fmt: skip
        from ftdeploy.cli import main

        try:
            main()  # returns on success, as run_main takes it
        except SystemExit as exit_:
            assert exit_.code in (0, None), exit_.code
    finally:
        mp.undo()
    return out


def test_a_signed_report_verifies(signed_report, keys, monkeypatch, capsys):
    assert (signed_report / "report.sig").is_file()
    code, out, err = run_main(monkeypatch, capsys, "verify-report", signed_report, "--trust", keys["release.pub"])
    assert code == 0, err
    assert "signature verified" in out and "report.json" in out


@pytest.mark.parametrize("name", ["report.json", "report.md"])
def test_a_changed_report_file_is_refused(signed_report, keys, name, tmp_path, monkeypatch, capsys):
    import shutil

    copy = shutil.copytree(signed_report, tmp_path / "r")
    text = (copy / name).read_text()
    (copy / name).write_text(text.replace("PASS", "PASZ", 1) if "PASS" in text else text + " ")
    line = _refused(monkeypatch, capsys, "verify-report", copy, "--trust", keys["release.pub"])
    assert line == f"{copy / name}: changed or missing since the report was signed"


def test_a_resigned_report_by_another_key_and_an_unsigned_one_are_refused(signed_report, keys, tmp_path, monkeypatch, capsys):
    import shutil

    from ftdeploy.signing import REPORT_SIG, report_signature

    copy = shutil.copytree(signed_report, tmp_path / "r")
    files = {p.name: p.read_bytes() for p in copy.glob("report.*") if p.name != REPORT_SIG}
    (copy / REPORT_SIG).write_text(report_signature(files, load_signing_key(keys["other"])))
    line = _refused(monkeypatch, capsys, "verify-report", copy, "--trust", keys["release.pub"])
    assert "which is not a trusted key" in line
    (copy / REPORT_SIG).unlink()
    line = _refused(monkeypatch, capsys, "verify-report", copy, "--trust", keys["release.pub"])
    assert line.startswith(f"{copy}: no report.sig")


def test_sign_without_out_is_refused(signed, profile, keys, monkeypatch, capsys, no_chips_run):
    line = _refused(monkeypatch, capsys, "verify", signed, "--profile", profile, "--sign", keys["release"])
    assert line == "--sign: signs the report folder; give --out DIR too"


def test_an_unsigned_report_written_over_a_signed_one_leaves_no_stale_signature(signed_report, tmp_path):
    import shutil

    from ftdeploy.report import write_report

    copy = shutil.copytree(signed_report, tmp_path / "r")
    written = write_report(json.loads((copy / "report.json").read_text()), copy)
    assert not (copy / "report.sig").exists() and all(p.name != "report.sig" for p in written)


def test_programming_a_chip_checks_the_export_and_signs_the_chips_file(signed, unsigned, profile, keys, tmp_path, monkeypatch, capsys):
    """The export's signature does not cover a chip's new cells: `program --trust` checks the
    export, drops its signature, and `--sign` signs the chip's file, which verify then trusts."""
    from ftdeploy.measured import simulate_fault_maps
    from ftdeploy.placement import placement_of

    resolved = load_profile(profile)
    simulate_fault_maps(placement_of(load_export(signed)), resolved.profile.signoff_faults(0.02), 0.02, 0, 1, tmp_path / "maps", "csv")
    fmap = next((tmp_path / "maps").iterdir())
    program = ("program", signed, "--profile", profile, "--fault-map", fmap, "--trust", keys["release.pub"])
    code, _, err = run_main(monkeypatch, capsys, *program, "-o", tmp_path / "chip.onnx", "--sign", keys["release"])
    assert code == 0, err
    chip_meta = read_metadata(onnx.load(tmp_path / "chip.onnx"))
    assert chip_meta[SIGNER_KEY] == read_metadata(onnx.load(signed))[SIGNER_KEY] and chip_meta[SIGNATURE_KEY]
    code, out, err = run_main(monkeypatch, capsys, "verify", tmp_path / "chip.onnx", "--profile", profile, "--trust",
                              keys["release.pub"], "--chips", 2)  # fmt: skip
    assert code in (0, 1) and " sign-off: " in out, (out, err)  # trusted: it ran, whatever its verdict
    code, _, err = run_main(monkeypatch, capsys, *program, "-o", tmp_path / "plain.onnx")
    assert code == 0, err
    assert SIGNATURE_KEY not in read_metadata(onnx.load(tmp_path / "plain.onnx")), "a stale signature would only fail"
    assert "sign" in _refused(monkeypatch, capsys, "verify", tmp_path / "plain.onnx", "--profile", profile, "--trust", keys["release.pub"])
    _refused(monkeypatch, capsys, "program", unsigned, "--profile", profile, "--fault-map", fmap, "--trust", keys["release.pub"],
             "-o", tmp_path / "u.onnx")  # fmt: skip
    assert not (tmp_path / "u.onnx").exists()
