"""Pretraining and stochastic fault-tolerant retraining (one-shot and progressive).

The trainer, by concern: :mod:`.config` (TrainConfig and its schedule, option names),
:mod:`.injection` (a fresh faulty chip in every forward pass), :mod:`.checkpoint` (checkpoints
and resume files; what export, prune and equalize read) and :mod:`.loop` (the training loop).
This package module imports none of them, so importing one loads only what it needs.

The recipe, and why (PAPER-NOTES.md measured the naive alternatives failing):

* **BatchNorm is frozen at its pretrained statistics during retraining, and faults are drawn on
  the folded weights** ``W·γ/σ``, exactly what the chip holds. In training mode BN renormalises
  every batch, silently absorbing the shift a stuck-on cell causes; the deployed chip has BN
  folded with fixed statistics and absorbs nothing, so the model learnt the wrong lesson and
  its running statistics (averaged over random chips) no longer fit the clean chip (our notes:
  70 % clean where the paper keeps 92 %). γ and β stay trainable. On ResNet-20 / CIFAR-10 the
  frozen-BN models are far more robust than the same grid retrained with ``bn="train"``
  (docs/RESULTS-diff8-folded.md, both grids on the same chips). On ``paper-diff8`` training mode
  kept one-shot P_sa^T = 0.05 2.6 points more clean accuracy (progressive 0.7) and lost it 7
  points at P_sa = 0.05 and 25 at 0.1 (progressive 13 and 30; docs/RESULTS.md).
  Retrained for 40 epochs instead of 25, the one-shot model kept 1.4 points less clean accuracy
  and gained robustness at P_sa >= 0.05: length moves it towards the training rate, not back.
* **The stuck-on magnitude follows the weights.** The full scale ``s = max|W|/Q`` is computed
  from the current weights inside the graph, so the loss of a stuck-on cell reaches the layer's
  largest weights and training learns to flatten the weight distribution (a learnt clipping)
  instead of only routing around the faults. Held constant within each step instead
  (``scale_grad: detach``), one-shot P_sa^T = 0.05 on ResNet-20 / CIFAR-10 fell to 31 % clean
  (per-epoch check, 5,000 held-out images) after one epoch and 16 % after two, its loss rising (probe, stopped there: ``ftdeploy train
  --profile chen2015 --from runs/c10p/pretrain/model.pt --data npz:../shared/data/cifar10-train-jpeg.npz
  --method one-shot --target-rate 0.05 --epochs 25 --lr 0.02 --batch-size 256 --scale-grad detach``;
  the default recipe was at 70 % and 68 % at those epochs, docs/RESULTS-plain-recipe.md training curves).
* **Stuck cells get no gradient** (``stuck_grad: block``): on that chip they ignore
  programming, so their gradient is noise. Healthy weights train through a straight-through
  quantiser (quantisation-aware training at the target's weight bits).
* **Gentle optimisation**: a retraining learning rate well below pretraining's, a linear
  warm-up, cosine decay, and gradient-norm clipping. Frozen-BN retraining at high rates diverged
  at lr 0.05 without them (PAPER-NOTES.md). With them, the paper's retraining rate (0.1) still
  diverges with frozen BN, and trains with BN in training mode (docs/RESULTS.md), so it
  is the frozen statistics, which no longer renormalise what the weights do, that cannot take it:
  ResNet-20 / CIFAR-10 fell to chance within two epochs, one-shot P_sa^T = 0.05 and progressive
  alike; at 0.05 one-shot's clean accuracy fell to 18 % after the first epoch and ended 2.5
  points below the default 0.02's (docs/RESULTS.md, retrained at peak learning rate 0.05
  and 0.1).
* **Rate warm-up**: the fault rate ramps linearly from 0 over the first two epochs (one-shot
  included): with frozen BN, the full P_sa^T = 0.05 from the first step made ResNet-20 diverge
  to chance in its first epoch (docs/RESULTS-diff8-folded.md, training curves). With a 2-epoch ramp the same
  full-size retraining trains (docs/RESULTS-diff8-folded.md, dense/one-shot-0.05 against
  dense-no-rate-warmup/one-shot-0.05).
* **Where BatchNorm sits on the chip** (``Target.batchnorm``) decides how hard faults hit before
  any recipe: folded into the cells with a per-layer scale, each stuck-on cell adds the largest
  *folded* weight, and the same pretrained ResNet-20 keeps 45 % at P_sa = 0.005 where BN in the
  periphery keeps 60 %, the paper's collapse (docs/RESULTS-plain-recipe.md). Faults are drawn on what the
  target's cells hold.
* **Progressive**: the epochs are cut into equal blocks, one per ascending candidate rate,
  so the model reaches high rates through lower ones (paper, Algorithm 1).
* **Distillation is optional and off** (``distill``): a weight of the loss can go to matching the
  starting model's clean outputs (Hinton et al. 2015), the remedy noise-injection training for
  analog hardware uses (Zhou et al. 2020), meant to keep the clean accuracy a high training rate
  costs. On ResNet-20 / CIFAR-10 at P_sa^T = 0.05 (weight 0.9, temperature 4, 25 epochs) it
  kept the same clean accuracy as the plain recipe, within a point up to P = 0.05 and a little
  better at 0.1 (docs/RESULTS-plain-recipe.md, recipe ablations), for ~1.5x the epoch time
  (bench/bench_train_overhead.py --distill, CPU).

* **Weight clipping is optional and off** (``weight_clip``): clipping each layer's weights to
  ± K standard deviations after every step hands retraining the flatness it otherwise learns
  (above). On ResNet-20 / CIFAR-10, one-shot P_sa^T = 0.05 at K = 2 led the plain recipe by 3-9
  points at P_sa^T early, by 1-1.5 later, and was level with it within the CIs after 19 of its 25
  epochs (stopped there); progressive P_sa^T = 0.05 at K = 2 ends ahead of the plain one on the
  same chips by 0.3 points at P <= 0.01 and 1.4-2.6 at P >= 0.05, still 2.35 points below
  Acc_pretrain clean (docs/RESULTS.md, weights clipped). With three quarters of the
  steps fault-free (``clean_steps``, unbiased chips) it adds 0.4-0.6 points at P = 0.005-0.01
  and 4.4 at 0.05 on the same chips, which carries progressive P_sa^T = 0.05 within issue 3's
  limits, to where the plain P_sa^T = 0.01 model already sits. One-shot P_sa^T = 0.05 so trained
  meets them too and keeps the robustness above: level with the plain P_sa^T = 0.01 model up to
  P = 0.02 (half a point behind at 0.001), 4.3 / 11.2 points ahead at 0.05 / 0.1; a second
  training seed repeats it within the chips' noise up to P = 0.05. At P_sa^T = 0.01 the recipe
  trains too few faulty steps (behind the plain model from P = 0.01 up). Progressive with the
  rates sharing the epochs trails one-shot at P >= 0.02 (P_sa^T = 0.05) and P >= 0.05 (0.1);
  our reading: with three steps in four fault-free, too few faulty steps are left at the target
  rate. With a block of its own per rate (``progressive_blocks`` each, the paper's Algorithm 1)
  progressive meets the limits at P_sa^T = 0.01 and 0.05 and leads one-shot of the same length
  per rate at P >= 0.02 at all three training rates; but one-shot P_sa^T = 0.05 trained as long
  as the whole progressive run (36 epochs) meets them too, is level with it up to P = 0.02 and
  ahead above: the lead is the extra epochs, not the schedule (docs/RECIPE.md, step 6).
  profiles/chen2015-tuned.yaml carries that recipe; the defaults stay the plain one Table I was
  trained with (docs/RECIPE.md, step 10).

Faults are redrawn at every step; master weights stay clean.
"""
