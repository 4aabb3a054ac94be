"""SAM seed 2 (rho 0.1, the study's run sam-rho0.1-plateau-seed2) over its first 63 steps, rebuilt with anl_fused's
own parts (same initial weights, data order, optimizer): training loss, gradient norm, the loss at SAM's perturbed
weights and the fraction of live ReLU outputs per layer on the step's batch.

Usage: ANL_FUSED_BACKEND=torch python collapse.py sam > output.txt"""

import sys

import torch
import torch.nn.functional as F

from anl_fused.experiments.train import parts as P
from anl_fused.experiments.train.config import TrainConfig

torch.set_num_threads(1)
variant = sys.argv[1]
kw = dict(model="lenet5", dataset="fashion-mnist", variant=variant, epochs=100, finetune_epochs=100, batch_size=128)
kw |= dict(lr=0.1, schedule="plateau", seed=2, device="cpu", finetune_lr="floor")
if variant == "sam":
    kw["sam_rho"] = 0.1
p = P.build_parts(TrainConfig(**kw).resolved())
model, opt = p.model, p.optimizer
model.train()
for i, (x, y) in enumerate(p.train_batches.epoch(0)):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    gn = torch.sqrt(sum((q.grad**2).sum() for q in model.parameters()))
    if variant == "sam":
        opt.first_step(zero_grad=True)
        l2 = F.cross_entropy(model(x), y)
        l2.backward()
        opt.second_step(zero_grad=True)
    else:
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        h = F.relu(model.conv1(x))
        f = model.pool2(F.relu(model.conv2(model.pool1(h)))).flatten(1)
        f1 = F.relu(model.classifier[0](f))
        f2 = F.relu(model.classifier[2](f1))
        live = [(t > 0).float().mean().item() for t in (h, f1, f2, f)]
    fc = f"fc1 alive {live[1]:.3f} fc2 alive {live[2]:.3f} conv2 {live[3]:.3f}"
    if 30 <= i <= 62 or i % 20 == 0:
        perturbed = f" loss@perturbed {l2.item():.4f}" if variant == "sam" else ""
        print(i, f"loss {loss.item():.4f} |g| {gn.item():.3f} conv1 relu alive {live[0]:.3f} {fc}" + perturbed)
    if i >= 62:
        break
