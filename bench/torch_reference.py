#!/usr/bin/env python3
"""RecLMIS written in PyTorch from the design (docs/), as an independent reference.

Two uses:

* ``--check CKPT --io IO`` loads a checkpoint whose tensors carry the authors' state-dict names
  (what ``reclmis import`` writes, or the authors' ``.pth.tar`` itself), runs the inputs stored in
  an official-parity ``io.safetensors`` in eval and in train mode, and prints the max abs error of
  every stored tensor. It exits 1 when the logits, probabilities or losses differ by more than
  ``--tol`` (1e-4) or a stored gradient by more than 1e-2 of its largest value (see GRAD_REL).
  Agreement shows that this file, the authors' code and the Rust port compute the same thing.
* ``--bench`` times the workload of ``reclmis bench`` (crates/reclmis/src/bench.rs): 224 px,
  batch 4, base 64, the CLIP-sized frozen text tower, all five losses, Adam at lr 3e-4; one
  warm-up then the median of ``--steps`` training steps, and the segmentation path at batch 1
  and 4 (one warm-up, median of three). Weights and inputs are random. ``--bf16`` runs forward
  passes under ``torch.autocast("cpu", dtype=torch.bfloat16)``; losses stay in float32.

Only the paper behaviour is implemented (docs §7 "Parity" column): no residuals, norms or
key-padding mask in the Interactor, causal and reweighted reconstructor attention, double softmax
in CCL, un-detached image reconstruction target, text MSE over pads. A checkpoint whose config asks
for the clean setting or a non-CLIP text tower is refused.

PyTorch is optional tooling used by this script only; install it outside the project, e.g.:

    python3 -m venv torchenv
    torchenv/bin/pip install torch safetensors numpy
    # smaller, CPU-only wheels where that index is reachable:
    # torchenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu

and run it as ``torchenv/bin/python bench/torch_reference.py ...`` (bench/compare.sh takes the
interpreter from the PYTHON environment variable).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn
except ImportError as e:  # compare.sh checks this too; say what is missing and how to get it
    sys.exit(f"torch_reference.py needs torch and numpy ({e}); see the docstring for how to install them")

NEG_INF = float("-inf")

# "Bilateral pulmonary infection, two infected areas, upper left lung and lower right lung." in
# CLIP BPE ids at context 18: the note reclmis bench uses (18 real tokens, no padding).
BENCH_NOTE_IDS = [49406, 25599, 39132, 14774, 267, 1237, 26136, 5429, 267,
                  7067, 1823, 16271, 537, 4909, 1155, 16271, 269, 49407]


@dataclass
class Config:
    """The fields of the Rust ModelConfig that change the computation (QaTa preset by default)."""

    image_size: int = 224
    base_channels: int = 64
    vocab: int = 49408
    clip_context: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    embed: int = 512
    context: int = 18
    interactor_heads: int = 4
    rec_heads: int = 4
    rec_layers: int = 4
    img_mask_rate: float = 0.5
    text_mask_rate: float = 0.3
    head_dropout: float = 0.0
    dropout: float = 0.1
    loss_weights: dict = field(
        default_factory=lambda: {"criterion": 5.0, "ccl": 0.2, "text_rec": 1.0, "img_rec": 1.0})

    @property
    def d(self) -> int:
        # paper-parity: §7 #9 — bottleneck width 8·base must equal the text width (512).
        return 8 * self.base_channels

    @property
    def grid(self) -> int:
        return self.image_size // 16

    @property
    def n_img_masked(self) -> int:
        return max(int(math.floor(self.grid * self.grid * self.img_mask_rate)), 1)

    @classmethod
    def from_metadata(cls, meta: dict, keys) -> "Config":
        """From the `config` JSON of our checkpoint, or inferred from the keys of a bare state dict."""
        if meta and "config" in meta:
            c = json.loads(meta["config"])
            te = c.get("text_encoder", {})
            if te.get("kind") != "clip":
                raise SystemExit(f"text encoder '{te.get('kind')}' is not the CLIP tower; only the paper model is implemented")
            if c.get("parity", "paper") != "paper" or c.get("text_free", False):
                raise SystemExit("checkpoint config is not the paper setting (parity=clean or text_free); not implemented here")
            return cls(image_size=c["image_size"], base_channels=c["base_channels"], vocab=te["vocab"],
                       clip_context=te["context"], width=te["width"], layers=te["layers"], heads=te["heads"],
                       embed=te["embed"], context=c["context"], interactor_heads=c["interactor_heads"],
                       rec_heads=c["rec_heads"], rec_layers=c["rec_layers"], img_mask_rate=c["img_mask_rate"],
                       text_mask_rate=c["text_mask_rate"], head_dropout=c["head_dropout"], dropout=c["dropout"],
                       loss_weights=c["loss_weights"])
        layers = 1 + max(int(k.split(".")[3]) for k in keys if k.startswith("rec_text_trans1.decoder1.decoder_layers."))
        if layers == 3:  # MosMed preset (Config_MosMedPlus)
            return cls(rec_layers=3, img_mask_rate=0.3, head_dropout=0.5)
        return cls(rec_layers=layers)


def dropout(x, p: float, train: bool):
    return F.dropout(x, p, training=train) if p > 0 else x


class PackedAttention(nn.Module):
    """Multi-head attention with the packed q|k|v projection of torch's nn.MultiheadAttention and
    fairseq's (same parameter names). Explicit softmax so the reconstructors can reweight it."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x, y, mask=None, reweight=None, attn_dropout: float = 0.0, train: bool = False):
        """x [B,Lq,D] queries, y [B,Lk,D] keys/values; mask additive, [Lq,Lk] or [B,Lq,Lk] (same for
        every head of a sample); reweight [B,Lk]."""
        b, lq, d = x.shape
        lk = y.shape[1]
        h = self.heads
        hd = d // h
        w, bias = self.in_proj_weight, self.in_proj_bias
        q = F.linear(x, w[:d], bias[:d]).view(b, lq, h, hd).transpose(1, 2)
        k = F.linear(y, w[d:2 * d], bias[d:2 * d]).view(b, lk, h, hd).transpose(1, 2)
        v = F.linear(y, w[2 * d:], bias[2 * d:]).view(b, lk, h, hd).transpose(1, 2)
        s = (q * hd ** -0.5) @ k.transpose(-1, -2)  # [B,H,Lq,Lk]
        if mask is not None:
            s = s + (mask if mask.dim() == 2 else mask[:, None]).to(s.dtype)
        a = torch.softmax(s.float(), dim=-1)
        if reweight is not None:
            # paper-parity: §7 #3 — the same weight per key for every head and query row, renormalised.
            a = a * (reweight.float()[:, None, None, :] + 1e-10)
            a = a / a.sum(dim=-1, keepdim=True)
        a = dropout(a.to(v.dtype), attn_dropout, train)
        o = (a @ v).transpose(1, 2).reshape(b, lq, d)
        return self.out_proj(o)


# ---------------------------------------------------------------- CLIP text tower (§1.3)

class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = PackedAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, mask=mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads) for _ in range(layers))


class ClipText(nn.Module):
    """Only the text half; `clip.visual.*` is never used (§7 #23) and is not built."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.width)
        self.positional_embedding = nn.Parameter(torch.randn(cfg.clip_context, cfg.width) * 0.01)
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.randn(cfg.width, cfg.embed) * cfg.width ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))

    def forward(self, tokens, text_mask):
        """tokens, text_mask [B,L] → (text_feat_clip [B,L,E], cls [B,E])."""
        b, l = tokens.shape
        x = self.token_embedding(tokens) + self.positional_embedding[:l]
        # paper-parity: §7 #14 — causal mask plus key padding, per sample, identical across heads.
        causal = torch.full((l, l), NEG_INF, device=x.device).triu(1)
        mask = causal.expand(b, l, l).masked_fill((text_mask <= 0)[:, None, :], NEG_INF)
        for blk in self.transformer.resblocks:
            x = blk(x, mask)
        z = self.ln_final(x) @ self.text_projection.to(x.dtype)
        cls = z[torch.arange(b), tokens.argmax(dim=-1)]
        return z, cls


# ---------------------------------------------------------------- CNN and decoder (§1.2, §1.10)

class ConvBatchNorm(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.norm(self.conv(x)))


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.nConvs = nn.Sequential(ConvBatchNorm(cin, cout), ConvBatchNorm(cout, cout))

    def forward(self, x):
        return self.nConvs(F.max_pool2d(x, 2))


class PixLevelModule(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv_avg = nn.Conv2d(c, c, 1, bias=False)
        self.conv_max = nn.Conv2d(c, c, 1, bias=False)
        self.bottleneck = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 1))
        self.conv_sig = nn.Sequential(nn.Conv2d(c, c, 1), nn.Sigmoid())  # built, never called (§7 #12)

    def forward(self, s):
        a = F.relu(self.conv_avg(s)).mean(dim=1, keepdim=True)
        m = F.relu(self.conv_max(s)).amax(dim=1, keepdim=True)
        f = torch.cat([a, m, a + m], dim=1).permute(0, 2, 3, 1)  # [B,H,W,3]
        z = self.bottleneck(f).permute(0, 3, 1, 2)  # [B,1,H,W]
        # paper-parity: §7 #12 — the gate is the linear output, no sigmoid.
        return z * s


class UpBlock(nn.Module):
    def __init__(self, c_skip: int, c_up: int, cout: int):
        super().__init__()
        self.pixModule = PixLevelModule(c_skip)
        self.nConvs = nn.Sequential(ConvBatchNorm(c_skip + c_up, cout), ConvBatchNorm(cout, cout))

    def forward(self, x, skip):
        u = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.nConvs(torch.cat([self.pixModule(skip), u], dim=1))


# ---------------------------------------------------------------- Interactor (§1.6)

class Embeddings(nn.Module):
    def __init__(self, c: int, d: int, n: int):
        super().__init__()
        self.patch_embeddings = nn.Conv2d(c, d, 1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, n, d))


class CTBN(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.conv = nn.Conv1d(d, d, 3, padding=1)
        self.norm = nn.BatchNorm1d(d)

    def forward(self, t):  # [B,L,D]
        return F.relu(self.norm(self.conv(t.transpose(1, 2)))).transpose(1, 2)


class Interactor(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        d = cfg.d
        self.p = cfg.dropout
        self.embeddings = Embeddings(d, d, cfg.grid * cfg.grid)
        self.CTBN = CTBN(d)
        self.attn_text = PackedAttention(d, cfg.interactor_heads)
        self.attn_img = PackedAttention(d, cfg.interactor_heads)

    def forward(self, img_feat4, text_feat, with_text: bool):
        e = self.embeddings.patch_embeddings(img_feat4).flatten(2).transpose(1, 2)
        e = dropout(e + self.embeddings.position_embeddings, self.p, self.training)
        # paper-parity: §7 #13 — no residuals, no norms, no key-padding mask; attn_img reads T'.
        t1 = self.attn_text(text_feat, e, attn_dropout=self.p, train=self.training)
        v1 = self.attn_img(e, t1, attn_dropout=self.p, train=self.training)
        return v1, (self.CTBN(t1) if with_text else None)


# ---------------------------------------------------------------- reconstructors (§1.9)

class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.self_attn = PackedAttention(d, heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = PackedAttention(d, heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x, memory, w_self, w_cross, p: float):
        t = self.training
        n = x.shape[1]
        # paper-parity: §7 #2 — causal future mask in every self-attention.
        future = torch.full((n, n), NEG_INF, device=x.device).triu(1)
        x = self.self_attn_layer_norm(x + dropout(self.self_attn(x, x, mask=future, reweight=w_self), p, t))
        if memory is not None:
            x = self.encoder_attn_layer_norm(
                x + dropout(self.encoder_attn(x, memory, reweight=w_cross), p, t))
        return self.final_layer_norm(x + dropout(self.fc2(F.relu(self.fc1(x))), p, t))


class TransformerDecoder(nn.Module):
    def __init__(self, d: int, heads: int, layers: int):
        super().__init__()
        self.decoder_layers = nn.ModuleList(DecoderLayer(d, heads) for _ in range(layers))


class DualTransformer(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.p = cfg.dropout
        self.decoder1 = TransformerDecoder(cfg.d, cfg.rec_heads, cfg.rec_layers)
        self.decoder2 = TransformerDecoder(cfg.d, cfg.rec_heads, cfg.rec_layers)

    def forward(self, src1, src2, w):
        enc = src1
        for layer in self.decoder1.decoder_layers:
            enc = layer(enc, None, w, None, self.p)
        out = src2
        for layer in self.decoder2.decoder_layers:
            out = layer(out, enc, None, w, self.p)
        return out


# ---------------------------------------------------------------- masking (§1.8)

def sample_mask(weights, lengths, n: int, rate: float | None, rng) -> torch.Tensor:
    """[B,len] 0/1 mask of the rows to zero, drawn without replacement with the weights."""
    w = weights.detach().float().cpu().numpy().astype(np.float64)
    mask = np.zeros(w.shape, dtype=np.float32)
    for b, l in enumerate(lengths):
        want = max(int(math.floor(l * rate)), 1) if rate is not None else n
        p = w[b, :l]
        k = int((p > 0).sum())
        take = min(want, k)
        idx = list(rng.choice(l, take, replace=False, p=p / p.sum()))
        if take < want:  # softmax underflowed to zeros: the rest uniformly (§7 #19)
            rest = sorted(set(range(l)) - set(idx))
            idx += list(rng.choice(rest, want - take, replace=False))
        mask[b, idx] = 1.0
    return torch.from_numpy(mask).to(weights.device)


# ---------------------------------------------------------------- the model

class RecLMIS(nn.Module):
    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        b, d = cfg.base_channels, cfg.d
        self.inc = ConvBatchNorm(3, b)
        self.interact = Interactor(cfg)
        self.down1 = DownBlock(b, 2 * b)
        self.down2 = DownBlock(2 * b, 4 * b)
        self.down3 = DownBlock(4 * b, 8 * b)
        self.down4 = DownBlock(8 * b, 8 * b)
        self.up4 = UpBlock(8 * b, d, 4 * b)
        self.up3 = UpBlock(4 * b, 4 * b, 2 * b)
        self.up2 = UpBlock(2 * b, 2 * b, b)
        self.up1 = UpBlock(b, b, b)
        self.outc = nn.Conv2d(b, 1, 1)
        self.text_module4 = nn.Conv1d(d, d, 3, padding=1)
        self.clip = ClipText(cfg)
        self.mlp_woi = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))
        self.mlp_visual = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 1))
        self.rec_text_trans1 = DualTransformer(cfg)
        self.rec_img_trans1 = DualTransformer(cfg)
        # The text tower is frozen (frozen_clip=True).
        self.clip.requires_grad_(False)

    def encode_text(self, tokens, text_mask):
        with torch.no_grad():
            return self.clip(tokens, text_mask)

    def forward(self, images, text_feat_clip, tokens, text_mask, branches: str = "aux",
                masks=None, rng=None):
        """branches: "segment" (inference path), "explain" (+ POI/WOI) or "aux" (training: masking,
        both reconstructors, CCL). masks: (mask_img [B,N], mask_text [B,L]) to replay, else sampled
        with rng."""
        cfg = self.cfg
        out = {"text_feat_clip": text_feat_clip}
        text_feat = self.text_module4(text_feat_clip.transpose(1, 2)).transpose(1, 2)
        x1 = self.inc(images)
        f1 = self.down1(x1)
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        f4 = self.down4(f3)
        v1, t2 = self.interact(f4, text_feat, with_text=branches != "segment")
        bsz = images.shape[0]
        g = cfg.grid
        u4 = self.up4(v1.transpose(1, 2).reshape(bsz, cfg.d, g, g), f3)
        u3 = self.up3(u4, f2)
        u2 = self.up2(u3, f1)
        u1 = self.up1(u2, x1)
        logits = self.outc(u1)
        out.update(text_feat=text_feat, enc=(x1, f1, f2, f3, f4), inter_img=v1, up=(u4, u3, u2, u1),
                   logits=logits, probs=torch.sigmoid(logits))
        if branches == "segment":
            return out

        a = dropout(v1, cfg.head_dropout, self.training)
        poi = torch.softmax(self.mlp_visual(a)[..., 0].float(), dim=1)
        s = self.mlp_woi(dropout(t2, cfg.head_dropout, self.training))[..., 0].float()
        woi = torch.softmax(s.masked_fill(text_mask == 0, NEG_INF), dim=1)
        out.update(inter_text=t2, poi=poi, woi=woi)
        if branches != "aux":
            return out

        img_tokens = f4.flatten(2).transpose(1, 2)  # [B,N,D], token n = h·g + w
        if masks is None:
            lengths = (text_mask != 0).sum(dim=1).tolist()
            mask_img = sample_mask(poi, [g * g] * bsz, cfg.n_img_masked, None, rng)
            mask_text = sample_mask(woi, lengths, 0, cfg.text_mask_rate, rng)
        else:
            mask_img, mask_text = masks
        masked_text = text_feat * (1.0 - mask_text.to(text_feat.dtype))[..., None]
        masked_img = img_tokens * (1.0 - mask_img.to(img_tokens.dtype))[..., None]
        out["rec_text"] = self.rec_text_trans1(img_tokens, masked_text, poi)
        out["rec_img"] = self.rec_img_trans1(text_feat, masked_img, woi)
        out.update(img_tokens=img_tokens, mask_img=mask_img, mask_text=mask_text)
        return out

    def losses(self, out, label, text_mask) -> dict:
        """§3, in float32 whatever the forward precision."""
        w = self.cfg.loss_weights
        with torch.autocast("cpu", enabled=False):
            res = {"loss_criterion": criterion(out["probs"].float(), label.float())}
            total = w["criterion"] * res["loss_criterion"]
            if "rec_text" in out:
                # paper-parity: §7 #5 — the text MSE includes pad rows.
                t = F.mse_loss(out["rec_text"].float(), out["text_feat_clip"].float())
                # paper-parity: §7 #4 — the image target V' is not detached.
                i = F.mse_loss(out["rec_img"].float(), out["inter_img"].float())
                t = torch.zeros((), device=t.device) if torch.isnan(t) else t
                i = torch.zeros((), device=i.device) if torch.isnan(i) else i
                res.update(loss_text_rec=t, loss_img_rec=i)
                total = total + w["text_rec"] * t + w["img_rec"] * i
                if w["ccl"] != 0:
                    c = ccl(out["text_feat"].float(), out["img_tokens"].float(), out["woi"], out["poi"],
                            text_mask.float(), self.clip.logit_scale.detach().float().exp())
                    res["loss_ccl"] = c
                    total = total + w["ccl"] * c
            res["loss_total"] = total
        return res


def criterion(p, g):
    """WeightedDiceBCE(0.5, 0.5): p [B,1,S,S] probabilities, g [B,S,S] 0/1."""
    b = p.shape[0]
    p = p.reshape(b, -1)
    g = g.reshape(b, -1)
    # paper-parity: §7 #26 — class weight 0.5 scales the sums but not the 1e-5 smoothing.
    wp, wg = 0.5 * p, 0.5 * g
    dice = 1 - (2 * (wp * wg).sum(1) + 1e-5) / ((wp * wp).sum(1) + (wg * wg).sum(1) + 1e-5)
    bce = F.binary_cross_entropy(p, g)  # log clamped at −100, as torch does
    return 0.5 * dice.mean() + 0.5 * bce


def ccl(text_feat, img_tokens, woi, poi, text_mask, scale):
    """Conditioned contrastive loss (§3)."""
    # paper-parity: §7 #1 — second softmax over already-softmaxed weights, pads included.
    wt = torch.softmax(woi, dim=1)
    wv = torch.softmax(poi, dim=1)
    # paper-parity: §7 #20 — no eps in the normalisation.
    t = text_feat / text_feat.norm(dim=-1, keepdim=True)
    v = img_tokens / img_tokens.norm(dim=-1, keepdim=True)
    s = torch.einsum("atd,bvd->abtv", t, v) * text_mask[:, None, :, None]
    t2v = (s.amax(dim=3) * wt[:, None, :]).sum(-1)
    # paper-parity: §7 #21 — the max over t includes the zeroed pad rows.
    v2t = (s.amax(dim=2) * wv[None, :, :]).sum(-1)
    logits = scale * (t2v + v2t) / 2
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


# ---------------------------------------------------------------- weights

def load_state(path: Path):
    """Tensors with the authors' names and the metadata, from our safetensors (plus the sibling
    text-tower file it names) or from the authors' .pth.tar."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        if "text_tower" in meta:
            state.update(load_file(str(path.parent / meta["text_tower"])))
        return state, meta
    ck = torch.load(str(path), map_location="cpu", weights_only=True)
    state = ck.get("state_dict", ck)
    return {k.removeprefix("module."): v for k, v in state.items()}, {}


def load_model(path: Path) -> RecLMIS:
    state, meta = load_state(path)
    cfg = Config.from_metadata(meta, state.keys())
    model = RecLMIS(cfg)
    own = model.state_dict()
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise SystemExit(f"{path}: {len(missing)} tensors missing, first '{missing[0]}'")
    # Our files store 0-d tensors (clip.logit_scale) with shape [1].
    state = {k: v.reshape(own[k].shape) if v.numel() == own[k].numel() else v for k, v in state.items()}
    bad = [k for k, v in state.items() if v.shape != own[k].shape]
    if bad:
        raise SystemExit(f"{path}: '{bad[0]}' has shape {list(state[bad[0]].shape)}, the model wants {list(own[bad[0]].shape)}")
    model.load_state_dict(state, strict=False)
    return model


# ---------------------------------------------------------------- --check

# Gradients are gated relative to their largest value. Through train-mode BatchNorm float32 is
# ill-conditioned: against a float64 run of this file both the stored gradients and ours are off
# by up to ~0.7 % (up4.pixModule.bottleneck.0.weight), so 1e-3 would reject rounding. The floor
# covers gradients that are zero by construction (a conv bias before BatchNorm, the last bias
# before the POI/WOI softmax), where the stored values are float32 noise (~1e-8).
GRAD_REL = 1e-2
GRAD_FLOOR = 1e-6

def run_check(args) -> int:
    from safetensors.torch import load_file
    torch.set_num_threads(args.threads or torch.get_num_threads())
    io = load_file(str(args.io))
    model = load_model(args.check)
    # The train-mode fixtures were made with every dropout at 0.
    model.cfg.dropout = model.cfg.head_dropout = 0.0
    for m in model.modules():
        if hasattr(m, "p"):
            m.p = 0.0
    images = io["image"].float()
    label = io["label"].float()
    tokens = io["text_token"].long()
    text_mask = io["text_mask"].long()
    masks = (io["mask_img"][..., 0].float(), io["mask_text"][..., 0].float())

    rows = []  # (name, err, ref_max, gated_tol)

    def cmp(name, got, gate=None, rel=False):
        """gate: max abs error, or with rel a fraction of max |ref| (plus GRAD_FLOOR)."""
        if name not in io:
            return
        ref = io[name].float()
        got = got.detach().float().reshape(ref.shape)
        err = (got - ref).abs().max().item()
        top = ref.abs().max().item()
        limit = None if gate is None else (gate * top + GRAD_FLOOR if rel else gate)
        rows.append((name, err, top, limit))

    def spatial_means(out):
        x1, f1, f2, f3, _ = out["enc"]
        return {"x1_mean": x1, "feat1_mean": f1, "feat2_mean": f2, "feat3_mean": f3,
                **{f"up{4 - i}_mean": u for i, u in enumerate(out["up"])}}

    tol = args.tol
    model.eval()
    with torch.no_grad():
        tfc, cls = model.encode_text(tokens, text_mask)
        out = model(images, tfc, tokens, text_mask, "aux", masks=masks)
        losses = model.losses(out, label, text_mask)
    cmp("text_hidden", tfc)
    cmp("text_cls", cls)
    cmp("text_feat", out["text_feat"].transpose(1, 2))
    for k, t in spatial_means(out).items():
        cmp(k, t.mean(dim=(2, 3)))
    cmp("feat4", out["enc"][4])
    cmp("inter_text", out["inter_text"])
    cmp("inter_img", out["inter_img"])
    cmp("poi", out["poi"])
    cmp("woi", out["woi"])
    cmp("rec_text", out["rec_text"])
    cmp("rec_img", out["rec_img"])
    cmp("logits", out["logits"], tol)
    cmp("probs", out["probs"], tol)
    for k, v in losses.items():
        cmp(k, v, tol)

    model.train()
    for p in model.parameters():
        p.grad = None
    tfc, _ = model.encode_text(tokens, text_mask)
    out = model(images, tfc, tokens, text_mask, "aux", masks=masks)
    losses = model.losses(out, label, text_mask)
    losses["loss_total"].backward()
    for k in ("poi", "woi", "rec_text", "rec_img"):
        cmp(f"train/{k}", out[k])
    cmp("train/probs", out["probs"], tol)
    for k, v in losses.items():
        cmp(f"train/{k}", v, tol)
    params = dict(model.named_parameters())
    for name in sorted(k for k in io if k.startswith("grad/")):
        key = name[len("grad/"):]
        g = params[key].grad
        if g is None:
            g = torch.zeros_like(params[key])
        cmp(name, g[: io[name].shape[0]], GRAD_REL, rel=True)

    failed = []
    width = max(len(r[0]) for r in rows)
    print(f"{'tensor':<{width}} {'max abs err':>11} {'max |ref|':>10} {'err/ref':>9} {'limit':>9}")
    for name, err, top, limit in rows:
        bad = not math.isfinite(err) or (limit is not None and err > limit)
        limit_s = "" if limit is None else f"{limit:9.2e}"
        print(f"{name:<{width}} {err:11.3e} {top:10.4g} {err / max(top, 1e-30):9.2e} {limit_s}"
              + (" FAIL" if bad else ""))
        if bad:
            failed.append(name)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all gated tensors within tolerance ({len(rows)} compared)")
    return 0


# ---------------------------------------------------------------- --bench

def onednn_isa() -> str:
    """The instruction set oneDNN reports for this CPU (its verbose banner, from a child process,
    since the banner is printed once, when oneDNN first starts)."""
    probe = ("import torch; x = torch.ones(1, 3, 8, 8, dtype=torch.bfloat16); "
             "torch.nn.functional.conv2d(x, torch.ones(4, 3, 3, 3, dtype=torch.bfloat16))")
    try:
        out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                             capture_output=True, text=True, timeout=300).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in out.splitlines():
        if ",cpu,isa:" in line:
            return line.split(",cpu,isa:", 1)[1].strip()
    return "unknown"


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def bench_inputs(cfg: Config, b: int, gen):
    s = cfg.image_size
    images = torch.rand(b, 3, s, s, generator=gen)
    label = (torch.rand(b, s, s, generator=gen) < 0.1).float()
    tokens = torch.tensor([BENCH_NOTE_IDS[: cfg.context]] * b)
    return images, label, tokens, (tokens != 0).long()


def run_bench(args) -> dict:
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(11)
    gen = torch.Generator().manual_seed(11)
    rng = np.random.default_rng(11)
    cfg = Config(image_size=args.image_size)
    model = RecLMIS(cfg)
    optim = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-4,
                             betas=(0.9, 0.999), eps=1e-8)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))

    model.train()
    times = []
    for i in range(args.steps + 1):
        log(f"train step {i}/{args.steps}")
        images, label, tokens, text_mask = bench_inputs(cfg, args.batch_size, gen)
        t0 = time.perf_counter()
        with amp:
            tfc, _ = model.encode_text(tokens, text_mask)
            out = model(images, tfc, tokens, text_mask, "aux", rng=rng)
        loss = model.losses(out, label, text_mask)["loss_total"]
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if i > 0:
            times.append(time.perf_counter() - t0)

    model.eval()

    def infer(b: int) -> float:
        t = []
        for i in range(args.infer_reps + 1):
            log(f"inference batch {b}, {i}/{args.infer_reps}")
            images, _, tokens, text_mask = bench_inputs(cfg, b, gen)
            t0 = time.perf_counter()
            with torch.inference_mode(), amp:
                tfc, _ = model.encode_text(tokens, text_mask)
                model(images, tfc, tokens, text_mask, "segment")["probs"].float()
            if i > 0:
                t.append(time.perf_counter() - t0)
        return statistics.median_high(t)

    infer_b1 = infer(1)
    infer_b4 = infer(4)
    return {
        "train_step_s": statistics.median_high(times),
        "infer_b1_s": infer_b1,
        "infer_b4_s": infer_b4,
        "peak_rss_mb": peak_rss_mb(),
        "backend": f"pytorch {torch.__version__}",
        "threads": torch.get_num_threads(),
        # ATen's vector ISA; oneDNN picks its own kernels at run time (ONEDNN_VERBOSE=1 names them).
        "isa": str(torch.backends.cpu.get_cpu_capability()),
        "onednn_isa": onednn_isa(),
        "precision": "bf16" if args.bf16 else "fp32",
        "config": {"image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
                   "infer_reps": args.infer_reps},
        "train_steps_s": times,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", type=Path, metavar="CKPT",
                      help="checkpoint: ours (.safetensors, from `reclmis import`) or the authors' .pth.tar")
    mode.add_argument("--bench", action="store_true", help="time the `reclmis bench` workload")
    ap.add_argument("--io", type=Path, metavar="FILE", help="official-parity io.safetensors (with --check)")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs error of logits, probs and losses")
    ap.add_argument("--threads", type=int, metavar="N", help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps after one warm-up")
    ap.add_argument("--infer-reps", type=int, default=3, help="timed inference repetitions per batch size")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--bf16", action="store_true", help="forward passes under CPU autocast to bfloat16")
    ap.add_argument("--json", action="store_true", help="JSON on stdout, no progress on stderr")
    args = ap.parse_args()
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be at least 1")
    if args.check:
        if not args.io:
            ap.error("--check needs --io")
        for f in (args.check, args.io):
            if not f.is_file():
                ap.error(f"{f}: no such file")
        return run_check(args)
    if args.steps < 1 or args.infer_reps < 1:
        ap.error("--steps and --infer-reps must be at least 1")
    if args.image_size < 16 or args.image_size % 16 or args.batch_size < 2:
        ap.error("--image-size must be a positive multiple of 16 and --batch-size at least 2 (CCL)")
    args.quiet = args.json
    res = run_bench(args)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        for k in ("train_step_s", "infer_b1_s", "infer_b4_s", "peak_rss_mb", "backend", "threads", "precision"):
            print(f"{k:>14}: {res[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
