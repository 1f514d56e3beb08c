"""Pretraining and stochastic fault-tolerant retraining (one-shot and progressive).

The trainer, by concern: :mod:`.config` (TrainConfig and its schedule, option names),
:mod:`.injection` (a fresh faulty chip in every forward pass), :mod:`.checkpoint` (checkpoints
and resume files; what export, prune and equalize read) and :mod:`.loop` (the training loop).
This package module imports none of them, so importing one loads only what it needs.

What retraining does by default, and why (how each choice was measured is in the study,
``studies/cifar10-paper/RECIPE.md``):

* **BatchNorm frozen at its pretrained statistics, faults on what the cells hold.** In training
  mode BN renormalises every batch and silently absorbs the shift a stuck cell causes, which the
  deployed chip never does; frozen, faults hit exactly the weights the chip holds (``W·γ/σ`` on a
  target that folds BN, the conv weight where BN is in the periphery). γ and β stay trainable.
* **The stuck-on magnitude follows the weights.** The full scale ``s = max|W|/Q`` is computed
  inside the graph, so the loss of a stuck-on cell reaches the layer's largest weights and
  training learns to flatten the weight distribution instead of only routing around faults.
* **Cells deaf to programming get no gradient** (``stuck_grad: block``); healthy weights train
  through a straight-through quantiser at the target's weight bits. Continuous non-idealities
  (variation, drift, read noise) pass the gradient straight through, as noise-aware training does.
* **Gentle optimisation**: a retraining learning rate well below pretraining's, linear warm-up,
  cosine decay and gradient-norm clipping; frozen-BN retraining diverges at high learning rates.
* **Rate warm-up**: the stuck-at rate ramps in from 0 over the first epochs, so frozen BN does not
  meet the full rate at the first step.
* **Progressive**: ascending rates, the epochs shared among them or a block each
  (``progressive_blocks``), so the model reaches high rates through lower ones.
* **Optional**: distillation from the starting model (``distill``), weight clipping to ± K
  standard deviations after every step (``weight_clip``), fault-free steps (``clean_steps``) and
  unbiased training chips (``unbias_faults``); ``profiles/chen2015-tuned.yaml`` carries a recipe
  that uses them.

Faults are redrawn at every step; master weights stay clean. A stuck-at-only population draws
only its stuck cells (``fault_draw: sparse``): the same distribution of chips as a draw per
cell, in work proportional to the rate; ``fault_draw: dense`` (a run's config file) draws every
cell, as runs recorded before the field did.
"""
