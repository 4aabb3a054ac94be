"""SAM seed 2 (rho 0.1, the study's main run sam-rho0.1-plateau-seed2) over its first 63 steps, rebuilt with anl_fused's own
parts (same initial weights, data order, optimizer): training loss, gradient norm, loss at the perturbed weights and the
fraction of live ReLU outputs per layer on the step's batch. Usage: ANL_FUSED_BACKEND=torch python collapse.py sam"""
import sys, torch, torch.nn.functional as F
from anl_fused.experiments.train.config import TrainConfig
from anl_fused.experiments.train import parts as P
torch.set_num_threads(1)
variant = sys.argv[1]
kw = dict(model="lenet5", dataset="fashion-mnist", variant=variant, epochs=100, finetune_epochs=100, batch_size=128,
          lr=0.1, schedule="plateau", seed=2, device="cpu", finetune_lr="floor")
if variant == "sam": kw["sam_rho"] = 0.1
cfg = TrainConfig(**kw).resolved()
p = P.build_parts(cfg)
model, opt = p.model, p.optimizer
model.train()
for i, (x, y) in enumerate(p.train_batches.epoch(0) if hasattr(p.train_batches, "epoch") else p.train_batches):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    gn = torch.sqrt(sum((q.grad ** 2).sum() for q in model.parameters()))
    if variant == "sam":
        opt.first_step(zero_grad=True)
        l2 = F.cross_entropy(model(x), y); l2.backward(); opt.second_step(zero_grad=True)
    else:
        opt.step(); opt.zero_grad()
    with torch.no_grad():
        h = F.relu(model.conv1(x)); alive = (h > 0).float().mean().item()
        f = model.pool2(F.relu(model.conv2(model.pool1(h)))).flatten(1); f1 = F.relu(model.classifier[0](f))
        f2 = F.relu(model.classifier[2](f1)); fc = f"fc1 alive {(f1 > 0).float().mean().item():.3f} fc2 alive {(f2 > 0).float().mean().item():.3f} conv2 {(f > 0).float().mean().item():.3f}"
    if 30 <= i <= 62 or i % 20 == 0:
        print(i, f"loss {loss.item():.4f} |g| {gn.item():.3f} conv1 relu alive {alive:.3f} {fc}" + (f" loss@perturbed {l2.item():.4f}" if variant == "sam" else ""))
    if i >= 62: break
