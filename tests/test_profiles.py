"""Targets and profiles: shipped files validate; every kind of bad file is one ConfigError line
per problem naming the file and the field; the ``profile`` commands and the error boundary."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import run_main
from ftdeploy.cli import app
from ftdeploy.errors import ConfigError
from ftdeploy.nonideality import StuckAt
from ftdeploy.profiles import (
    PROFILES_DIR,
    TARGETS_DIR,
    Method,
    ResolvedProfile,
    RetrainingRecipe,
    Target,
    builtin_profiles,
    builtin_targets,
    load_profile,
    load_target,
)

PROFILE_NAMES = [p.stem for p in builtin_profiles()]
TARGET_NAMES = [p.stem for p in builtin_targets()]
DEMO = yaml.safe_load((PROFILES_DIR / "demo.yaml").read_text())
TARGET = yaml.safe_load((TARGETS_DIR / "paper-diff8.yaml").read_text())


def test_the_shipped_files_are_there():
    assert {"chen2015", "demo", "strict"} <= set(PROFILE_NAMES)
    assert {"paper-diff8", "offset-8", "mlc2-bitsliced"} <= set(TARGET_NAMES)


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_shipped_profile_validates(name):
    r = load_profile(name)
    assert isinstance(r, ResolvedProfile)
    assert r.profile.name == name and r.profile_path == PROFILES_DIR / f"{name}.yaml"
    assert r.target_path == TARGETS_DIR / f"{r.profile.target}.yaml" and r.target.name == r.profile.target
    so = r.profile.signoff
    assert all(lim.rate in so.rates for lim in so.acceptance) and so.acceptance
    tr = r.profile.training
    if tr.method is Method.progressive:
        assert tr.progressive_rates[-1] == tr.target_rate
    off, on = r.profile.fault_model.stuck.pair
    assert off + on == pytest.approx(r.profile.fault_model.stuck.total)
    # round trip: the resolved dict validates again to the same objects
    d = r.to_dict()
    assert Target.model_validate(d["target"]) == r.target
    assert type(r.profile).model_validate(d["profile"]) == r.profile
    # by path as well as by name
    assert load_profile(str(r.profile_path)).profile == r.profile


@pytest.mark.parametrize("name", TARGET_NAMES)
def test_shipped_target_validates(name):
    target, path = load_target(name)
    assert path == TARGETS_DIR / f"{name}.yaml" and target.name == name
    assert target.g_on_uS > target.g_off_uS
    assert target.conductance_uS(0) == target.g_off_uS
    assert target.conductance_uS(target.levels_per_cell - 1) == pytest.approx(target.g_on_uS)


def test_paper_target_tracks_the_paper():
    """paper-diff8's cells hold exactly the code range, so a stuck-on cell reads max|W|."""
    t, _ = load_target("paper-diff8")
    assert (t.mapping, t.levels_per_cell - 1, t.max_code, t.scale.value) == ("differential", 127, 127, "layer")
    chen = load_profile("chen2015").profile
    assert chen.fault_model.stuck.split == (1.75, 9.04) and chen.fault_model.stuck.p_sa == 0.005


# --- bad files ------------------------------------------------------------------------------


def _write(tmp_path: Path, data, name="bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _profile(**changes) -> dict:
    d = copy.deepcopy(DEMO)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[leaf] = value
    return d


def _error_lines(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    lines = str(exc.value).splitlines()
    assert lines, "empty error"
    for line in lines:
        assert line.startswith(f"{path}"), line
    return lines


BAD_PROFILES = {
    # name: (changes, expected field, fragment of the message)
    "unknown key": ({"signoff__chipz": 3}, "signoff.chipz", "Extra inputs are not permitted"),
    "unknown top-level key": ({"fautls": {}}, "fautls", "Extra inputs are not permitted"),
    "wrong type": ({"signoff__chips": "many"}, "signoff.chips", "valid integer"),
    "wrong type of section": ({"faults": [0.01]}, "faults.0", "dict"),
    "fault entry without a kind": ({"faults": [{"p_sa": 0.01}]}, "faults", "each entry names its kind: one of stuck-at, programming-variation"),
    "unknown kind": ({"faults": [{"kind": "stuck-on", "p_sa": 0.01}]}, "faults.0", "does not match any of the expected tags"),
    "a kind twice": ({"faults": [{"kind": "stuck-at", "p_sa": 0.01}, {"kind": "stuck-at", "p_sa": 0.02}]}, "faults", "each kind may appear once"),
    "variation in two units": ({"faults": [{"kind": "programming-variation", "sigma_uS": 1.0, "sigma_rel": 0.1}]},
                               "faults.0.programming-variation", "give exactly one of sigma_uS"),
    "drift read before t0": ({"faults": [{"kind": "drift", "nu_mean": 0.1, "t0_s": 100, "at": "1 min"}]},
                             "faults.0.drift", "must not come before t0_s"),
    "drift time without unit sense": ({"faults": [{"kind": "drift", "nu_mean": 0.1, "at": "one day"}]},
                                      "faults.0.drift.at", "expected a duration such as"),
    "rate above 1": ({"faults__0__p_sa": 1.5}, "faults.0.stuck-at.p_sa", "less than or equal to 1"),
    "negative rate": ({"signoff__rates": [0.01, -0.1]}, "signoff.rates.1", "expected a probability per cell between 0 and 1, found -0.1"),
    "p_sa and stuck_off": ({"faults__0__stuck_off": 0.001}, "faults.0.stuck-at", "give either p_sa or stuck_off/stuck_on, not both"),
    "stuck_off alone": ({"faults": [{"kind": "stuck-at", "stuck_off": 0.01}]}, "faults.0.stuck-at", "stuck_off and stuck_on must be given together"),
    "no rate at all": ({"faults": [{"kind": "stuck-at", "split": [1, 1]}]}, "faults.0.stuck-at", "give p_sa, or stuck_off and stuck_on"),
    "rates sum above 1": ({"faults": [{"kind": "stuck-at", "stuck_off": 0.6, "stuck_on": 0.6}]}, "faults.0.stuck-at", "at most 1"),
    "acceptance rate not signed off": ({"signoff__acceptance__0__rate": 0.03}, "signoff", "acceptance rates [0.03] are not in rates"),
    "acceptance without limit": ({"signoff__acceptance": [{"rate": 0.01}]}, "signoff.acceptance.0", "set at least one of"),
    "progressive not ending at target": ({"training__progressive_rates": [0.01, 0.02]}, "training", "must end at target_rate 0.05"),
    "progressive not ascending": ({"training__progressive_rates": [0.02, 0.01, 0.05]}, "training", "must ascend"),
    "progressive without rates": ({"training__progressive_rates": []}, "training", "progressive_rates"),
    "unknown method": ({"training__method": "two-shot"}, "training.method", "one-shot"),
    "empty sign-off rates": ({"signoff__rates": []}, "signoff.rates", "at least 1 item"),
    "unknown BatchNorm treatment": ({"training__bn": "sometimes"}, "training.bn", "'frozen' or 'train'"),
    "clean steps of 1": ({"training__clean_steps": 1.0}, "training.clean_steps", "less than 1"),
    "unknown progressive blocks": ({"training__progressive_blocks": "both"}, "training.progressive_blocks", "'split' or 'each'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_PROFILES), ids=list(BAD_PROFILES))
def test_bad_profile_names_file_and_field(case, tmp_path):
    changes, field, fragment = BAD_PROFILES[case]
    path = _write(tmp_path, _profile(**changes))
    lines = _error_lines(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {field}: "), lines[0]
    assert fragment in lines[0]


def test_missing_field(tmp_path):
    d = _profile()
    del d["signoff"]
    path = _write(tmp_path, d)
    assert _error_lines(path) == [f"{path}: signoff: Field required"]


def test_one_line_per_error(tmp_path):
    path = _write(tmp_path, _profile(signoff__chips=0, faults__0__p_sa=-1, training__lr="fast"))
    lines = _error_lines(path)
    assert len(lines) == 3
    assert {line.split(": ")[1] for line in lines} == {"signoff.chips", "faults.0.stuck-at.p_sa", "training.lr"}
    assert any("(found -1)" in line for line in lines)


def test_a_profile_carries_the_retraining_recipe(tmp_path):
    """The recipe a deployment was tuned with travels in its profile, not in a command line."""
    path = _write(tmp_path, _profile(training__unbias_faults=True, training__progressive_blocks="each", training__clean_steps=0.25))
    training = load_profile(path).profile.training
    assert training.recipe() == {**RetrainingRecipe().recipe(), "unbias_faults": True, "progressive_blocks": "each",
                                 "clean_steps": 0.25}  # fmt: skip
    assert "model" not in training.recipe(), "the recipe is the recipe fields alone"


def test_one_shot_does_not_need_rates_ending_at_target(tmp_path):
    path = _write(tmp_path, _profile(training__method="one-shot", training__progressive_rates=[0.01]))
    assert load_profile(path).profile.training.method is Method.one_shot


def test_stuck_pair_is_accepted(tmp_path):
    path = _write(tmp_path, _profile(faults=[{"kind": "stuck-at", "stuck_off": 0.001, "stuck_on": 0.004}]))
    stuck = load_profile(path).profile.fault_model.stuck
    assert stuck.pair == (0.001, 0.004) and stuck.total == pytest.approx(0.005)
    # measured rates keep their own ratio at every sign-off rate: no silent default split
    assert stuck.at_total(0.01).pair == pytest.approx((0.002, 0.008))


def test_one_kind_may_be_written_as_a_mapping(tmp_path):
    path = _write(tmp_path, _profile(faults={"kind": "stuck-at", "p_sa": 0.02}))
    assert load_profile(path).profile.fault_model.stuck.total == 0.02


def test_kinds_compose_in_stage_order(tmp_path):
    faults = [{"kind": "read-noise", "sigma_rel": 0.01}, {"kind": "stuck-at", "p_sa": 0.01},
              {"kind": "drift", "nu_mean": 0.05, "nu_std": 0.01, "at": "1 day"}, {"kind": "programming-variation", "sigma_uS": 0.5}]
    model = load_profile(_write(tmp_path, _profile(faults=faults))).profile.fault_model
    assert [k.kind for k in model.kinds] == ["programming-variation", "drift", "stuck-at", "read-noise"]
    assert model.find(type(model.kinds[1])).at == 86400.0


# --- extends: a profile written as what differs from another -------------------------------


def test_extends_takes_every_section_of_its_base_and_overrides_field_by_field(tmp_path):
    """A section is merged key by key; a list (sign-off rates, acceptance) is replaced whole; the
    name and description are the profile's own."""
    _write(tmp_path, DEMO, "base.yaml")
    path = _write(tmp_path, {"name": "child", "extends": "base.yaml", "signoff": {"chips": 3, "rates": [0.01]},
                             "training": {"epochs": 2}}, "child.yaml")  # fmt: skip
    child, base = load_profile(path), load_profile(tmp_path / "base.yaml")
    assert child.base_paths == (tmp_path / "base.yaml",)
    assert child.profile.name == "child" and child.profile.description == ""
    assert child.profile.signoff.chips == 3 and child.profile.signoff.rates == [0.01]
    assert child.profile.signoff.seed == base.profile.signoff.seed and child.profile.signoff.acceptance == base.profile.signoff.acceptance
    assert child.profile.training == base.profile.training.model_copy(update={"epochs": 2})
    assert child.profile.faults == base.profile.faults and child.target == base.target


def test_extends_a_profile_by_name_and_a_chain_of_them(tmp_path):
    middle = _write(tmp_path, {"name": "m", "extends": "chen2015", "training": {"epochs": 7}}, "m.yaml")
    leaf = _write(tmp_path, {"name": "leaf", "extends": "m.yaml", "training": {"method": "one-shot"}}, "leaf.yaml")
    r = load_profile(leaf)
    assert r.base_paths == (middle, PROFILES_DIR / "chen2015.yaml")
    assert (r.profile.training.epochs, r.profile.training.method) == (7, Method.one_shot)
    assert r.profile.signoff == load_profile("chen2015").profile.signoff


@pytest.mark.parametrize("name", ["chen2015-folded", "chen2015-inverted", "chen2015-tuned"])
def test_the_shipped_variants_of_chen2015_extend_it(name):
    """What chen2015's variants share with it is written once: they differ from it only where
    their own file says so."""
    variant, chen2015 = load_profile(name), load_profile("chen2015")
    assert variant.base_paths == (chen2015.profile_path,)
    own = yaml.safe_load(variant.profile_path.read_text())
    assert set(own) - {"extends", "name", "description"} in ({"target"}, {"training"})
    expected = chen2015.profile.model_dump()
    for section, fields in own.items():
        if section not in ("extends", "name", "description"):
            expected[section] = {**expected[section], **fields} if isinstance(fields, dict) else fields
    assert variant.profile.model_dump() == {**expected, "name": name, "description": own["description"]}


def test_an_inherited_target_path_is_relative_to_the_base(tmp_path):
    (tmp_path / "family").mkdir()
    _write(tmp_path / "family", dict(TARGET, name="family-chip"), "chip.yaml")
    _write(tmp_path / "family", _profile(target="chip.yaml"), "base.yaml")
    path = _write(tmp_path, {"name": "line-3", "extends": "family/base.yaml"}, "line3.yaml")
    r = load_profile(path)
    assert r.target.name == "family-chip" and r.target_path == tmp_path / "family" / "chip.yaml"


@pytest.mark.parametrize("extends, fragment", [
    ("nosuch", "extends: no built-in profile 'nosuch'; built-in profiles: chen2015, chen2015-folded, "),
    ("sub/nosuch.yaml", "extends: no profile file {tmp}/sub/nosuch.yaml"),
    (3, "extends: expected the name of a profile in {profiles} or a path to one (found 3)"),
    ("", "extends: expected the name of a profile"),
    ("bad.yaml", "extends: bad.yaml leads back to a profile already on the way ({tmp}/bad.yaml -> {tmp}/bad.yaml)"),
])  # fmt: skip
def test_a_bad_extends_is_one_line_naming_the_file(tmp_path, extends, fragment):
    path = _write(tmp_path, {"name": "x", "extends": extends})
    lines = _error_lines(path)
    assert len(lines) == 1 and lines[0].startswith(f"{path}: " + fragment.format(profiles=PROFILES_DIR, tmp=tmp_path)), lines


def test_a_cycle_through_two_profiles_is_refused_where_it_closes(tmp_path):
    a = _write(tmp_path, {"name": "a", "extends": "b.yaml"}, "a.yaml")
    b = _write(tmp_path, {"name": "b", "extends": "a.yaml"}, "b.yaml")
    with pytest.raises(ConfigError) as exc:
        load_profile(b)
    assert str(exc.value) == f"{a}: extends: b.yaml leads back to a profile already on the way ({b} -> {a} -> {b})"


def test_a_bad_field_is_reported_in_the_file_that_has_it(tmp_path):
    base = _write(tmp_path, _profile(signoff__chips=0), "base.yaml")
    path = _write(tmp_path, {"name": "x", "extends": "base.yaml"}, "child.yaml")
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    assert str(exc.value).startswith(f"{base}: signoff.chips: ") and "\n" not in str(exc.value)
    _write(tmp_path, DEMO, "base.yaml")
    path = _write(tmp_path, {"name": "x", "extends": "base.yaml", "training": {"target_rate": 0.1}}, "child.yaml")
    assert _error_lines(path) == [f"{path}: training: progressive_rates must end at target_rate 0.1, found [0.01, 0.02, 0.05]"]
    path = _write(tmp_path, {"extends": "base.yaml"}, "nameless.yaml")
    assert _error_lines(path) == [f"{path}: name: Field required"], "a profile's name is its own, never inherited"


def test_missing_target_file(tmp_path):
    path = _write(tmp_path, _profile(target="nosuch"))
    lines = _error_lines(path)
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: target: no built-in target 'nosuch'; built-in targets: diff8-folded, ")
    path = _write(tmp_path, _profile(target="sub/nosuch.yaml"), "bad2.yaml")
    assert _error_lines(path)[0].startswith(f"{path}: target: no target file {tmp_path / 'sub/nosuch.yaml'}")


def test_invalid_target_names_the_target_file(tmp_path):
    _write(tmp_path, dict(TARGET, bits_per_cell=6), "cells.yaml")
    path = _write(tmp_path, _profile(target="cells.yaml"))
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'cells.yaml'}: (top level): differential needs bits_per_cell")
    assert len(msg.splitlines()) == 1


@pytest.mark.parametrize(
    "change,field,fragment",
    [
        ({"bits_per_cell": 9}, "bits_per_cell", "less than or equal to 8"),
        ({"mapping": "ternary"}, "(top level)", "mapping must be one of ['bitsliced', 'differential', 'differential-inverted', 'offset']"),
        ({"g_on_uS": 0.5}, "(top level)", "must exceed g_off_uS"),
        ({"scale": "tile"}, "scale", "'layer' or 'channel'"),
        ({"tile_rows": 0}, "tile_rows", "greater than or equal to 1"),
        ({"colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_bad_target_names_file_and_field(tmp_path, change, field, fragment):
    path = _write(tmp_path, dict(TARGET, **change))
    with pytest.raises(ConfigError) as exc:
        load_target(path)
    lines = str(exc.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: {field}: "), lines
    assert fragment in lines[0]


def test_target_relative_to_the_profile_not_the_working_directory(tmp_path, monkeypatch):
    """profile.target is 'a path relative to this file': a same-named file in the working
    directory must not win over the one beside the profile."""
    (tmp_path / "deploy").mkdir()
    (tmp_path / "elsewhere").mkdir()
    _write(tmp_path / "deploy", dict(TARGET, name="beside-profile"), "chip.yaml")
    _write(tmp_path / "elsewhere", dict(TARGET, name="in-cwd"), "chip.yaml")
    profile = _write(tmp_path / "deploy", _profile(target="chip.yaml"), "p.yaml")
    monkeypatch.chdir(tmp_path / "elsewhere")
    r = load_profile(profile)
    assert r.target.name == "beside-profile" and r.target_path == tmp_path / "deploy" / "chip.yaml"
    monkeypatch.chdir(tmp_path)  # nothing named chip.yaml here
    assert load_profile(profile).target.name == "beside-profile"


@pytest.mark.parametrize(
    "text,where,fragment",
    [
        ("name: x\nfaults: [1, 2\n", ":3:1: ", "not valid YAML"),
        ("name: x\n  bad: indent\n", ":2:6: ", "not valid YAML"),
        ("- 1\n- 2\n", ": (top level): ", "expected a mapping of fields, found list"),
        ("just a string\n", ": (top level): ", "found str"),
        ("", ": (top level): ", "expected a mapping of fields"),
    ],
)
def test_unreadable_files(tmp_path, text, where, fragment):
    path = _write(tmp_path, text)
    for load in (load_profile, load_target):
        with pytest.raises(ConfigError) as exc:
            load(path)
        msg = str(exc.value)
        assert msg.startswith(f"{path}{where}") and fragment in msg and "\n" not in msg, msg


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: file not found$"):
        load_profile(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"^no built-in profile 'nope'; built-in profiles: chen2015, "):
        load_profile("nope")
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"^{path}: cannot read"):
        load_profile(path)


def test_stuck_at_split():
    f = StuckAt(p_sa=0.02, split=(1, 3))
    assert f.pair == pytest.approx((0.005, 0.015)) and f.at_total(0.04).pair == pytest.approx((0.01, 0.03))
    with pytest.raises(ValueError, match="positive sum"):
        StuckAt(p_sa=0.02, split=(0, 0))


# --- command line ---------------------------------------------------------------------------

runner = CliRunner()


def test_profile_list():
    result = runner.invoke(app, ["profile", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "profiles:" and "targets:" in lines
    for name in PROFILE_NAMES + TARGET_NAMES:
        assert any(line.split()[:1] == [name] for line in lines), name
    chen = next(line for line in lines if line.split()[:1] == ["chen2015"])
    assert "paper-diff8" in chen and "P_sa 0.005" in chen and "extends" not in chen
    tuned = next(line for line in lines if line.split()[:1] == ["chen2015-tuned"])
    assert "extends chen2015 " in tuned, "a derived profile names its base"


def test_profile_list_aligns_its_columns():
    """Every row's second column starts at the same place, however long the longest name."""
    lines = runner.invoke(app, ["profile", "list"]).output.splitlines()
    split = lines.index("targets:")
    for rows in (lines[1:split], lines[split + 1 :]):
        second = {re.match(r"  \S+ +", row).end() for row in rows}
        assert len(second) == 1, rows


def test_validate_reads_a_target_file_as_a_target(tmp_path, monkeypatch, capsys):
    """A chip-family file is checked as a target, not refused as a profile missing its fields."""
    bad = _write(tmp_path, dict(TARGET, bits_per_cell=9))
    code, out, err = run_main(monkeypatch, capsys, "profile", "validate", str(TARGETS_DIR / "paper-diff8-inverted.yaml"), str(bad))
    assert code == 2 and "ok " in out and "target paper-diff8-inverted" in out, out
    assert err.splitlines() == [f"error: {bad}: bits_per_cell: Input should be less than or equal to 8 (found 9)"]


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profile_show(name):
    result = runner.invoke(app, ["profile", "show", name])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown == load_profile(name).to_dict()
    assert shown["profile"]["training"]["weight_decay"] == 5e-4  # a default no shipped profile sets, filled in
    training = list(shown["profile"]["training"])
    assert training[0] == "model" and training[-len(RetrainingRecipe.model_fields):] == list(RetrainingRecipe.model_fields), \
        "the model and method first, the recipe after"


def test_models_command():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    names = [line.split()[0] for line in result.output.splitlines()]
    assert {"resnet20", "resnet32", "resnet44", "resnet56", "democnn"} <= set(names)
    assert "tv:NAME" in names
    result = runner.invoke(app, ["models", "resnet*"])
    names = [line.split()[0] for line in result.output.splitlines()]
    assert "democnn" not in names and "resnet56" in names


def test_help_wraps_each_command_summary_as_one_paragraph():
    """A docstring's source line breaks do not reach --help: on a wide terminal each command's
    summary is one line (rich markup mode broke `equalize` and `export` mid-sentence)."""
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    summaries = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│ ") and len(line.split()) > 2}
    for command, start, end in (("equalize", "Equalize channel ranges", "sweep --from and export."),
                                ("export", "Export a checkpoint to ONNX", "everything else in metadata.")):
        assert start in summaries[command] and end in summaries[command], result.output


COMMANDS = [["train"], ["sweep"], ["verify"], ["prune"], ["equalize"], ["export"], ["demo"], ["models"], ["profile", "list"],
            ["profile", "show"], ["profile", "validate"], ["profile"], []]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ftdeploy")
def test_no_help_labels_a_flag_as_taking_a_value(command):
    """typer labels every flag `<bool>` (--help's too); a flag takes no value, so no --help shows one."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output and "--help" in result.output


@pytest.mark.parametrize("command, option, choices", [
    ("train", "--method", "<pretrain|one-shot|progressive>"), ("train", "--bn", "<frozen|train>"),
    ("train", "--stuck-grad", "<block|pass>"), ("train", "--scale-grad", "<learn|detach>"),
    ("train", "--progressive-blocks", "<split|each>"), ("sweep", "--bn", "<frozen|train>"),
    ("sweep", "--methods", "<one-shot|progressive>,..."), ("prune", "--method", "<magnitude|admm>"),
])  # fmt: skip
def test_help_shows_the_choices_of_an_option_that_takes_a_fixed_set(command, option, choices):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"})
    line = next(line for line in result.output.splitlines() if line.lstrip("│ *").startswith(f"{option} "))  # its own row
    assert choices in line, line


def test_a_refused_choice_is_one_line_naming_the_option_and_the_value(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "train", "--profile", "demo", "--bn", "sometimes", "--out", "unused")
    assert code == 2 and err.strip().splitlines() == ["error: Invalid value for '--bn': 'sometimes' is not one of 'frozen', 'train'."]


@pytest.mark.parametrize("command, seeds", [(["train", "--profile", "demo"], "--train-seed"), (["prune", "x.pt", "--profile", "demo"], "--train-seed"),
                                            (["verify", "x.onnx", "--profile", "demo"], "--chip-seed"),
                                            (["sweep", "--from", "x.pt", "--profile", "demo"], "--chip-seed, --train-seed")])  # fmt: skip
def test_the_training_seed_and_the_chip_seed_are_named_apart(command, seeds):
    """--seed was the training seed in train and the chip seed in verify and sweep: no command
    takes it now, and each names the seeds it has instead."""
    result = runner.invoke(app, [*command, "--seed", "1", "--out", "unused"])
    assert result.exit_code == 2 and f"No such option: --seed (Possible options: {seeds})" in result.output, result.output




def test_validate_through_the_error_boundary(tmp_path, monkeypatch, capsys):
    bad = _write(tmp_path, _profile(signoff__chips=0, faults__0__p_sa=2))
    code, out, err = run_main(monkeypatch, capsys, "profile", "validate", str(bad), str(PROFILES_DIR / "demo.yaml"))
    assert code == 2
    assert f"ok {PROFILES_DIR / 'demo.yaml'}: profile demo, target paper-diff8" in out
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert {line.split(": ")[2] for line in lines} == {"faults.0.stuck-at.p_sa", "signoff.chips"}
    assert all(line.startswith(f"error: {bad}: ") for line in lines)
    assert "Traceback" not in err

    code, out, err = run_main(monkeypatch, capsys, "profile", "validate", "demo", "chen2015")
    assert code == 0 and err == "" and out.count("\nok ") + out.startswith("ok ") == 2

    code, out, err = run_main(monkeypatch, capsys, "profile", "show", "nosuch")
    assert code == 2 and err.startswith("error: no built-in profile 'nosuch'; built-in profiles: ") and err.count("\n") == 1

    code, out, err = run_main(monkeypatch, capsys, "profile", "validate")  # click usage error
    assert code == 2 and "Missing argument" in err and "Traceback" not in err


def test_ctrl_c_exits_130_not_0(monkeypatch, capsys):
    """An interrupted command must not look finished to whatever called it (a sweep's parent,
    a pipeline): exit status 130 and one line saying what was kept."""
    import ftdeploy.profiles

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ftdeploy.profiles, "load_profile", interrupted)
    code, out, err = run_main(monkeypatch, capsys, "profile", "show", "chen2015")
    assert code == 130
    assert err.strip().splitlines()[-1] == "interrupted: completed epochs are saved in the run folder"
    assert "Traceback" not in err


def test_console_script_validate(tmp_path):
    """The installed ``ftdeploy`` entry point, as a user runs it."""
    bad = _write(tmp_path, _profile(fautls=1, signoff__acceptance__0__rate=0.3))
    missing = tmp_path / "missing.yaml"
    exe = Path(sys.executable).with_name("ftdeploy")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from ftdeploy.cli import main; main()"]
    proc = subprocess.run([*cmd, "profile", "validate", str(bad), str(missing)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert sorted(lines[:2]) == [
        f"error: {bad}: fautls: Extra inputs are not permitted (found 1)",
        f"error: {bad}: signoff: acceptance rates [0.3] are not in rates [0.005, 0.01, 0.02]",
    ], proc.stderr
    assert lines[2:] == [f"error: {missing}: file not found"], proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("command, out, expected", [
    (["train", "--profile", "demo", "--method", "pretrain"], "a-file", "--out: {tmp}/a-file is a file; expected a folder (new or existing)"),
    (["sweep", "--from", "x.pt", "--profile", "demo"], "a-file/sub", "--out: {tmp}/a-file is a file; expected a folder there to make {tmp}/a-file/sub in"),
    (["prune", "x.pt", "--profile", "demo", "--method", "magnitude", "--sparsity", "0.5"], "a-file", "--out: {tmp}/a-file is a file"),
    (["verify", "x.onnx", "--profile", "demo"], "a-file", "--out: {tmp}/a-file is a file"),
    (["demo"], "a-file", "--out: {tmp}/a-file is a file"),
    (["export", "x.pt", "--profile", "demo"], "a-folder", "--out: {tmp}/a-folder is a folder; expected the file to write"),
    (["equalize", "x.pt", "--profile", "demo"], "a-file/m.pt", "--out: {tmp}/a-file is a file; expected a folder to write m.pt into"),
])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(command, out, expected, tmp_path, monkeypatch, capsys):
    """A file where --out's folder would be, or a folder where its file would be, is one line
    naming the option, exit 2, and nothing started (not a traceback at the first write)."""
    (tmp_path / "a-file").write_text("someone's notes\n")
    (tmp_path / "a-folder").mkdir()
    code, _, err = run_main(monkeypatch, capsys, *command, "--out", str(tmp_path / out))
    assert code == 2 and err.startswith("error: " + expected.format(tmp=tmp_path)), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert (tmp_path / "a-file").read_text() == "someone's notes\n" and not any((tmp_path / "a-folder").iterdir())


def test_an_optional_output_folder_left_out_is_not_in_the_way(tmp_path, monkeypatch, capsys):
    """verify without --out writes no report: nothing to check, and the file's own error shows."""
    junk = tmp_path / "junk.onnx"
    junk.write_text("not onnx\n")
    code, _, err = run_main(monkeypatch, capsys, "verify", str(junk), "--profile", "demo")
    assert code == 2 and err.startswith(f"error: {junk}: not a readable ONNX file"), err
