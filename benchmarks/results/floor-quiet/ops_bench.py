"""cpp vs torch CPU ops, interleaved; median ms over rounds."""
import os, statistics, time, sys, json
import torch
from anl_fused import ops
torch.manual_seed(0)
shapes = {"lenet5 conv1 b128": (128, 6, 24, 24), "lenet5 conv2 b128": (128, 16, 8, 8), "lenet5 conv1 b32": (32, 6, 24, 24),
          "vgg11 block1 b32": (32, 64, 32, 32), "vgg11 block3 b32": (32, 256, 8, 8)}
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
def t(fn, n=30):
    fn(); t0 = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t0) / n * 1e3
out = {}
for name, shp in shapes.items():
    h = torch.randn(shp); g = torch.randn(shp); z = torch.randn(shp[0])
    s = ops.std(h); sc, _ = ops.noise_scale(g, z, s, 0.03, layer_norm=True)
    fns = {"std": lambda: ops.std(h), "noise_scale": lambda: ops.noise_scale(g, z, s, 0.03, layer_norm=True),
           "add_noise": lambda: ops.add_noise(h, g, sc)}
    res = {}
    for op, fn in fns.items():
        r = {"torch": [], "cpp": []}
        for _ in range(7):
            for b in ("torch", "cpp"):
                os.environ["ANL_FUSED_BACKEND"] = b
                r[b].append(t(fn))
        res[op] = {b: statistics.median(v) for b, v in r.items()}
        res[op]["torch/cpp"] = statistics.median([a / c for a, c in zip(r["torch"], r["cpp"])])
    out[name] = res
    print(name, json.dumps({k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in res.items()}))
