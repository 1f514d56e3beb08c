"""The Python API: load a profile, build the chip view of a model, and measure it on a
population of simulated faulty chips with the PyTorch backend of the chip-population evaluator
(the same chips `ftdeploy verify` simulates with ONNX Runtime).

    python examples/02_python_api.py runs/example/progressive/model.pt
"""

import sys

from ftdeploy.chip import DeployedNetwork
from ftdeploy.data import load_data
from ftdeploy.figures import summarize_chips
from ftdeploy.population import SimulatedChips, chip_accuracies
from ftdeploy.profiles import load_profile
from ftdeploy.training.checkpoint import load_checkpoint, model_from_checkpoint

resolved = load_profile("demo")
ckpt = load_checkpoint(sys.argv[1])
data = load_data()  # the embedded subset; its validation part was never trained on
net = DeployedNetwork(model_from_checkpoint(ckpt), resolved.target)
backend = net.backend(data.val_x, data.val_y, data.mean, data.std)
print(f"{len(net.layers)} crossbar layers, mapping: {net.mapping.describe()}")
print(f"fault-free: {backend.accuracy():.2f} %")
faults = resolved.profile.fault_model  # every kind of the profile's faults section
for rate in resolved.profile.signoff.rates:
    chips = SimulatedChips(faults.at_rate(rate), rate, seed=0, count=5)
    stats = summarize_chips(chip_accuracies(backend, chips))
    print(f"P_sa={rate:g}: mean {stats['mean']:.2f} % over {len(chips)} chips")
