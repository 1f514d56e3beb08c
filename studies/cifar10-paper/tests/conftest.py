"""The study's tests: two CPU threads, as the product's suite has them (the CI box has two cores).
Nothing here comes from the product's tests/conftest.py: these tests need none of its fixtures."""

import torch

torch.set_num_threads(2)
