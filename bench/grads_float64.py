"""How far the stored reference gradients and ours are from the exact ones.

Runs the training-mode pass of `torch_reference.py --check` in float64 on an official-parity
folder and compares, for each named gradient, the folder's stored (float32) gradient and ours,
dumped by the parity test:

    PARITY_DUMP=<dir> PARITY_ALL=1 cargo test --profile ci -p reclmis --test parity qata
    python bench/grads_float64.py <shared>/reference/official-parity/qata <dir> \\
        up4.pixModule.bottleneck.0.weight inc.conv.weight

Distances are max |a - b| over the tensor, divided by the float64 gradient's max |value|.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_reference as tr  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="official-parity/<preset> (io.safetensors and the checkpoint)")
    ap.add_argument("ours", type=Path, help="the PARITY_DUMP folder")
    ap.add_argument("keys", nargs="+", help="parameter names, e.g. inc.conv.weight")
    args = ap.parse_args()
    preset = args.folder.name
    torch.set_default_dtype(torch.float64)
    io = load_file(str(args.folder / "io.safetensors"))
    model = tr.load_model(next(args.folder.glob("*.pth.tar"))).double()
    model.cfg.dropout = model.cfg.head_dropout = 0.0
    for m in model.modules():
        if hasattr(m, "p"):
            m.p = 0.0
    masks = (io["mask_img"][..., 0].double(), io["mask_text"][..., 0].double())
    tokens, text_mask = io["text_token"].long(), io["text_mask"].long()
    model.train()
    tfc, _ = model.encode_text(tokens, text_mask)
    out = model(io["image"].double(), tfc, tokens, text_mask, "aux", masks=masks)
    model.losses(out, io["label"].double(), text_mask)["loss_total"].backward()
    params = dict(model.named_parameters())
    print(f"{'tensor':<36} {'reference':>10} {'ours':>10}  (distance from float64 / its max)")
    for key in args.keys:
        ref = io["grad/" + key].double().numpy().ravel()
        exact = params[key].grad.detach().numpy().ravel()[: ref.size]
        ours = np.fromfile(args.ours / f"{preset}-{key}.f32", dtype="<f4")[: ref.size].astype(np.float64)
        top = np.abs(exact).max()
        print(f"{key:<36} {np.abs(ref - exact).max() / top:10.2e} {np.abs(ours - exact).max() / top:10.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
