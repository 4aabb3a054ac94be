"""Compare run directories bit for bit: every tensor of checkpoint.pt (torch.equal, dtype and shape too), every
other checkpoint value, and metrics.jsonl without its wall-time keys. Usage: compare.py OUT A:B ..."""

import json
import os
import sys

import torch

TIMES = ("time",)  # keys holding wall times


def flat(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flat(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from flat(v, f"{prefix}/{i}")
    else:
        yield prefix, obj


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def metrics(d):
    with open(os.path.join(d, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if not any(t in k for t in TIMES)} for r in rows]


def main(out, pairs):
    bad = 0
    for pair in pairs:
        a, b = (os.path.join(out, x) for x in pair.split(":"))
        ca, cb = (dict(flat(torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True))) for d in (a, b))
        diff = sorted(k for k in ca.keys() | cb.keys() if not same(ca.get(k), cb.get(k)) and "time" not in k)
        # Python's and numpy's global generators are saved for --resume but seeded per process from the OS, and no
        # step draws from them: they differ between any two processes, so they are listed, not compared
        unused = [k for k in diff if k.startswith(("/rng/python", "/rng/numpy"))]
        diff = [k for k in diff if k not in unused]
        # the stored config may gain fields with a newer commit; what it computes is in every other value
        cfg = [k for k in diff if k.startswith("/config/")]
        diff = [k for k in diff if k not in cfg]
        ok = not diff and metrics(a) == metrics(b)
        bad += not ok
        print(f"{pair}: {'bitwise equal' if ok else 'DIFFERENT ' + ', '.join(diff[:8])} ({len(ca)} checkpoint values)")
        if unused:
            print(f"  {len(unused)} values of Python's / numpy's generators differ (not used by training)")
        if cfg:
            print(f"  stored config differs in {', '.join(cfg)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
