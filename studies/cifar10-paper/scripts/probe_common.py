"""What the probe scripts share: their measurement options and the measurement itself, the
sweep's way (deployed 8-bit weights on the profile's target, the held-out images or a stratified
subset of them, the mean over a few simulated chips per stuck-at rate)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import torch

from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import load_validation
from ftdeploy.nonideality import FaultModel
from ftdeploy.population import SimulatedChips, chip_accuracies
from ftdeploy.profiles import ResolvedProfile, load_profile
from ftdeploy.verify import subset_indices

import study_paths  # beside this script: the shared data, found from the repository root


def probe_parser(doc: str, rates: str, chips: int) -> argparse.ArgumentParser:
    """A probe's command line with the options every probe takes; a probe adds its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="chen2015")
    ap.add_argument("--data", default=study_paths.default_data(),
                    help="ftdeploy data spec; default: the shared packed split beside the repository (%(default)s)")
    ap.add_argument("--rates", default=rates, help="stuck-at rates measured, comma separated")
    ap.add_argument("--chips", type=int, default=chips, help="simulated chips per rate")
    ap.add_argument("--max-images", type=int, default=2000, help="stratified subset of the validation images")
    return ap


@dataclass
class Probe:
    """The images, rates and chips one probe measures every model on."""

    resolved: ResolvedProfile
    val_x: torch.Tensor
    val_y: torch.Tensor
    rates: list[float]
    chips: int

    @property
    def header(self) -> str:
        return f"{len(self.val_y)} validation images, {self.chips} chips per rate, target {self.resolved.target.name}"

    def measure(self, model: torch.nn.Module, normalization: dict) -> str:
        """'clean A  P=r: B ...' of ``model`` deployed on the profile's target."""
        net = DeployedNetwork(model, self.resolved.target, torch.device("cpu"))
        return accuracy_line(net, self.rates, self.resolved.profile.fault_model, self.chips, self.val_x, self.val_y,
                             normalization["mean"], normalization["std"])  # fmt: skip


def accuracy_line(net: DeployedNetwork, rates: list[float], faults: FaultModel, chips: int, x, y, mean, std,
                  seed: int = 0) -> str:  # fmt: skip
    """'clean A  P=r: B ...': fault-free accuracy of ``net`` and the mean over ``chips`` chips per
    stuck-at rate (drawn as the sweep draws them: chip seed ``seed``, the profile's ``faults``)."""
    backend = net.backend(x, y, mean, std)
    figures = [f"clean {backend.accuracy():.2f}"]
    for rate in rates:
        accs = chip_accuracies(backend, SimulatedChips(faults.at_rate(rate), rate, seed, chips))
        figures.append(f"P={rate:g}: {sum(accs) / len(accs):.2f}")
    return "  ".join(figures)


def evaluation_subset(data, max_images: int | None):
    """``data`` (a DataBundle or a ValidationSet) on the validation images a sweep with
    --max-images measures: all, or the same stratified subset (ftdeploy.verify.subset_indices)."""
    idx = subset_indices(data.val_y.numpy(), max_images)
    if idx is None:
        return data
    idx_t = torch.from_numpy(idx)
    return dataclasses.replace(data, val_x=data.val_x[idx_t], val_y=data.val_y[idx_t])


def probe_from_args(args: argparse.Namespace, load=load_validation):
    """(the Probe the options name, the data ``load`` read): a probe that needs the training
    images too passes ``ftdeploy.data.load_data``."""
    data = load(args.data)
    measured = evaluation_subset(data, args.max_images)
    rates = [float(r) for r in args.rates.split(",")]
    return Probe(load_profile(args.profile), measured.val_x, measured.val_y, rates, args.chips), data
