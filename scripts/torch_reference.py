#!/usr/bin/env python3
"""PyTorch reference of simplex's `25m` preset, for training-throughput comparisons.

The same model as `Config::preset("25m")` (crates/simplex-model): byte-level vocabulary 256,
d_model 512, pattern DDDSDDDS (bottom to top), pre-norm blocks `x += attn(norm(x));
x += mlp(norm(x))`, RMSNorm (eps 1e-5, statistics in f32, learned gain), bias-free linears,
tied embeddings (head = embedding^T after a final RMSNorm), SwiGLU MLP (hidden 1408,
`down(silu(gate(x)) * up(x))`), init N(0, 0.02) with the residual outputs (attention `o`,
`mlp.down`) at 0.02 / sqrt(2 * n_layers).

* D layers: 8 heads of 64, RoPE (theta 1e4, rotate-half pairs (x_i, x_{i+32}), angle
  p * theta^(-2i/64)) on q and k, `F.scaled_dot_product_attention(is_causal=True)`.
* S layers: 2-simplicial attention, heads_q = heads_kv = 8, head dim 64, trilinear logits
  `(1/sqrt(64)) sum_l q_il k1_jl k2_kl`, one softmax over the pairs (j, k) per query, causal
  windows i - 512 < j <= i and i - 32 < k <= i, output `sum_jk P_ijk (v1_j * v2_k)`, no RoPE.
  No fused 2-simplicial kernel is used: `simplicial_attn` below is PLAIN PYTORCH OPS (pad +
  unfold for the w2 window, an elementwise product q * k2, a batched matmul against the k1
  rows a query chunk can see, a boolean window mask, softmax, a matmul with v1, a product with
  v2), in query chunks, each chunk under activation checkpointing so that the pair logits of
  only one chunk exist at a time (the backward recomputes them; autograd derives every
  gradient). The spec's PyTorch anchor (131K tokens/s) used lucidrains' Triton kernels instead.

Training step as `simplex train` on CUDA: f32 master weights, bf16 compute (torch.autocast;
the S-layer core runs in bf16 with autocast off), cross-entropy on f32 logits, global-norm
clipping at 1.0, AdamW (lr 4e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.0125 on
matrices and the embedding, none on norm gains; fused=True). Random tokens.

Modes:
  --check     the S-layer implementation against a brute-force einsum over the full (i, j, k)
              grid (float64: output and the five input gradients; bf16: output), max errors.
  (default)   train --warmup-steps + --steps updates, time each (torch.cuda.synchronize
              around it), print tokens/s = batch * seq / median(step seconds) and
              torch.cuda.max_memory_allocated / max_memory_reserved, then as many updates
              back to back (one synchronization at the end), and one line `RESULT {json}`.
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


# ----------------------------------------------------------------------------- 2-simplicial


def _window_mask(i0, c, w1, w2, device):
    """valid[ii, e, jj] for queries i = i0 + ii, k = i - (w2 - 1) + e, j = i0 - (w1 - 1) + jj."""
    ii = torch.arange(c, device=device).view(c, 1, 1)
    e = torch.arange(w2, device=device).view(1, w2, 1)
    jj = torch.arange(c + w1 - 1, device=device).view(1, 1, c + w1 - 1)
    i = i0 + ii
    j = i0 - (w1 - 1) + jj
    k = i - (w2 - 1) + e
    # i - w1 < j <= i (k's window holds by construction), and no padded position
    return (j > i - w1) & (j <= i) & (j >= 0) & (k >= 0)


def _chunk(q, k1p, k2p, v1p, v2p, i0, c, w1, w2):
    """Output rows i0 .. i0+c of the layer. q [B,H,N,D] (scale folded in); k1p, v1p padded in
    front by w1-1 zero rows, k2p, v2p by w2-1 (padded index = position + pad)."""
    B, H, _, D = q.shape
    L1 = c + w1 - 1  # the k1 positions this chunk's queries can see: i0-w1+1 .. i0+c-1
    qc = q[:, :, i0 : i0 + c]
    k1c = k1p[:, :, i0 : i0 + L1]
    v1c = v1p[:, :, i0 : i0 + L1]
    # [B,H,c,w2,D]: element e of query i is position k = i - (w2-1) + e
    k2w = k2p[:, :, i0 : i0 + c + w2 - 1].unfold(2, w2, 1).transpose(-1, -2)
    v2w = v2p[:, :, i0 : i0 + c + w2 - 1].unfold(2, w2, 1).transpose(-1, -2)
    u = qc.unsqueeze(3) * k2w  # q_i * k2_k
    logits = torch.matmul(u.reshape(B, H, c * w2, D), k1c.transpose(-1, -2))  # [B,H,c*w2,L1]
    valid = _window_mask(i0, c, w1, w2, q.device)
    logits = logits.view(B, H, c, w2, L1).masked_fill(~valid, float("-inf"))
    p = torch.softmax(logits.view(B, H, c, w2 * L1), dim=-1)  # one softmax over (k, j)
    pv1 = torch.matmul(p.view(B, H, c * w2, L1), v1c).view(B, H, c, w2, D)  # sum_j P v1_j
    return (pv1 * v2w).sum(3)  # sum_k v2_k * (sum_j P_ijk v1_j)


def simplicial_attn(q, k1, k2, v1, v2, w1, w2, scale=None, chunk=128, ckpt=True):
    """Causal 2-simplicial attention, plain PyTorch ops. q [B,Hq,N,D], k1/k2/v1/v2 [B,Hkv,N,D]
    (query head h reads K/V head h // (Hq/Hkv)); returns [B,Hq,N,D]. Computes in the inputs'
    dtype with autocast off (the softmax of a bf16 input accumulates in f32)."""
    B, Hq, N, D = q.shape
    g = Hq // k1.shape[1]
    if g > 1:
        k1, k2, v1, v2 = (t.repeat_interleave(g, dim=1) for t in (k1, k2, v1, v2))
    scale = D**-0.5 if scale is None else scale
    with torch.autocast(device_type=q.device.type, enabled=False):
        dt = q.dtype
        q = q * scale
        k1p = F.pad(k1.to(dt), (0, 0, w1 - 1, 0))
        v1p = F.pad(v1.to(dt), (0, 0, w1 - 1, 0))
        k2p = F.pad(k2.to(dt), (0, 0, w2 - 1, 0))
        v2p = F.pad(v2.to(dt), (0, 0, w2 - 1, 0))
        grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (q, k1p, k2p, v1p, v2p)
        )
        outs = []
        for i0 in range(0, N, chunk):
            c = min(chunk, N - i0)
            args = (q, k1p, k2p, v1p, v2p, i0, c, w1, w2)
            if grad and ckpt:
                outs.append(checkpoint(_chunk, *args, use_reentrant=False))
            else:
                outs.append(_chunk(*args))
        return torch.cat(outs, dim=2)


def simplicial_brute(q, k1, k2, v1, v2, w1, w2, scale=None):
    """The definition over the full [N, N, N] grid (for --check)."""
    B, H, N, D = q.shape
    scale = D**-0.5 if scale is None else scale
    a = torch.einsum("bhil,bhjl,bhkl->bhijk", q, k1, k2) * scale
    i = torch.arange(N, device=q.device).view(N, 1, 1)
    j = torch.arange(N, device=q.device).view(1, N, 1)
    k = torch.arange(N, device=q.device).view(1, 1, N)
    valid = (j <= i) & (j > i - w1) & (k <= i) & (k > i - w2)
    a = a.masked_fill(~valid, float("-inf"))
    p = torch.softmax(a.reshape(B, H, N, N * N), -1).view(B, H, N, N, N)
    return torch.einsum("bhijk,bhjd,bhkd->bhid", p, v1, v2)


# ----------------------------------------------------------------------------- the model


class RMSNorm(nn.Module):
    def __init__(self, c, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight.to(x.dtype)


def rope_tables(d, n, theta, device):
    freqs = theta ** (-2.0 * torch.arange(d // 2, dtype=torch.float64) / d)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * freqs[None, :]
    return ang.cos().float().to(device), ang.sin().float().to(device)


def apply_rope(x, cos, sin):
    """x [B, N, H, D]: rotate the pairs (x_i, x_{i+D/2}) by the angle of each position."""
    n, half = x.shape[1], x.shape[-1] // 2
    c = cos[:n].view(1, n, 1, half).to(x.dtype)
    s = sin[:n].view(1, n, 1, half).to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


def linear(d_in, d_out, std):
    l = nn.Linear(d_in, d_out, bias=False)
    nn.init.normal_(l.weight, 0.0, std)
    return l


class DotAttention(nn.Module):
    def __init__(self, cfg, out_std):
        super().__init__()
        c, h, d = cfg["d_model"], cfg["heads"], cfg["head_dim"]
        self.h, self.d = h, d
        self.q, self.k, self.v = (linear(c, h * d, 0.02) for _ in range(3))
        self.o = linear(h * d, c, out_std)

    def forward(self, x, rope):
        B, N, _ = x.shape
        q = apply_rope(self.q(x).view(B, N, self.h, self.d), *rope).transpose(1, 2)
        k = apply_rope(self.k(x).view(B, N, self.h, self.d), *rope).transpose(1, 2)
        v = self.v(x).view(B, N, self.h, self.d).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(o.transpose(1, 2).reshape(B, N, self.h * self.d))


class SimplicialAttention(nn.Module):
    def __init__(self, cfg, out_std):
        super().__init__()
        c, h, d = cfg["d_model"], cfg["s_heads"], cfg["head_dim"]
        self.h, self.d = h, d
        self.w1, self.w2, self.chunk = cfg["w1"], cfg["w2"], cfg["s_chunk"]
        self.q, self.k1, self.k2, self.v1, self.v2 = (linear(c, h * d, 0.02) for _ in range(5))
        self.o = linear(h * d, c, out_std)

    def forward(self, x, rope):
        B, N, _ = x.shape
        t = [l(x).view(B, N, self.h, self.d).transpose(1, 2) for l in (self.q, self.k1, self.k2, self.v1, self.v2)]
        o = simplicial_attn(*t, self.w1, self.w2, chunk=self.chunk)
        return self.o(o.transpose(1, 2).reshape(B, N, self.h * self.d))


class Mlp(nn.Module):
    def __init__(self, c, hidden, out_std):
        super().__init__()
        self.gate, self.up = linear(c, hidden, 0.02), linear(c, hidden, 0.02)
        self.down = linear(hidden, c, out_std)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg, kind, out_std):
        super().__init__()
        self.attn_norm = RMSNorm(cfg["d_model"], cfg["eps"])
        self.attn = DotAttention(cfg, out_std) if kind == "D" else SimplicialAttention(cfg, out_std)
        self.mlp_norm = RMSNorm(cfg["d_model"], cfg["eps"])
        self.mlp = Mlp(cfg["d_model"], cfg["mlp_hidden"], out_std)

    def forward(self, x, rope):
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


class Model(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        n_layers = len(cfg["pattern"])
        out_std = 0.02 / math.sqrt(2 * n_layers)
        self.embed = nn.Embedding(cfg["vocab"], cfg["d_model"])
        nn.init.normal_(self.embed.weight, 0.0, 0.02)
        self.layers = nn.ModuleList(Block(cfg, kind, out_std) for kind in cfg["pattern"])
        self.norm = RMSNorm(cfg["d_model"], cfg["eps"])
        cos, sin = rope_tables(cfg["head_dim"], cfg["max_seq_len"], cfg["rope_theta"], "cpu")
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens):
        x = self.embed(tokens)
        rope = (self.cos, self.sin)
        for layer in self.layers:
            x = layer(x, rope)
        return F.linear(self.norm(x), self.embed.weight)  # tied head


def preset_25m(pattern, s_chunk):
    return dict(
        vocab=256, d_model=512, pattern=pattern, heads=8, s_heads=8, head_dim=64, w1=512, w2=32,
        mlp_hidden=1408, rope_theta=10000.0, eps=1e-5, max_seq_len=1024, s_chunk=s_chunk,
    )


# ----------------------------------------------------------------------------- modes


def check(device):
    """The chunked S layer against the brute-force definition."""
    torch.manual_seed(0)
    worst = 0.0
    cases = [
        # B, H, N, D, w1, w2, chunk
        (2, 2, 40, 8, 12, 5, 16),
        (1, 3, 70, 16, 64, 32, 32),
        (2, 2, 48, 8, 100, 3, 7),  # w1 > N, ragged last chunk
        (1, 2, 300, 16, 128, 32, 128),
    ]
    for B, H, N, D, w1, w2, chunk in cases:
        ts = [torch.randn(B, H, N, D, dtype=torch.float64, device=device, requires_grad=True) for _ in range(5)]
        do = torch.randn(B, H, N, D, dtype=torch.float64, device=device)
        o = simplicial_attn(*ts, w1, w2, chunk=chunk)
        g = torch.autograd.grad((o * do).sum(), ts)
        o_ref = simplicial_brute(*ts, w1, w2)
        g_ref = torch.autograd.grad((o_ref * do).sum(), ts)
        errs = {"o": (o - o_ref).abs().max().item()}
        for name, a, b in zip(["dq", "dk1", "dk2", "dv1", "dv2"], g, g_ref):
            errs[name] = (a - b).abs().max().item()
        scale = max(o_ref.abs().max().item(), max(x.abs().max().item() for x in g_ref))
        worst = max(worst, max(errs.values()) / scale)
        with torch.no_grad():
            ob = simplicial_attn(*(t.to(torch.bfloat16) for t in ts), w1, w2, chunk=chunk)
            bf = ((ob.double() - o_ref).norm() / o_ref.norm()).item()
        shape = f"B={B} H={H} N={N} D={D} w1={w1} w2={w2} chunk={chunk}"
        print(
            f"check {shape}: float64 max |err| "
            + " ".join(f"{k} {v:.2e}" for k, v in errs.items())
            + f" (largest |value| {scale:.2f}); bf16 output rel L2 err {bf:.2e}"
        )
    ok = worst < 1e-10
    print(f"RESULT {json.dumps({'check': 'simplicial_attn vs brute force', 'worst_float64_rel_err': worst, 'ok': ok})}")
    return ok


def train(args, device):
    cfg = preset_25m(args.pattern, args.s_chunk)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = Model(cfg).to(device)
    n_total = sum(p.numel() for p in model.parameters())
    n_embed = model.embed.weight.numel()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.0125}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=4e-3, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
        fused = device.type == "cuda"
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(groups, lr=4e-3, betas=(0.9, 0.95), eps=1e-8)
        fused = False
    step_model = torch.compile(model) if args.compile else model
    amp = device.type == "cuda" and args.precision == "bf16"
    B, N, V = args.batch, args.seq, cfg["vocab"]
    print(
        f"# torch {torch.__version__} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}: "
        f"pattern {args.pattern}, {(n_total - n_embed) / 1e6:.2f}M non-embedding parameters "
        f"({n_total / 1e6:.2f}M total), batch {B} x seq {N}, "
        f"{'bf16 autocast' if amp else 'f32'}, AdamW fused={fused}, compile={args.compile}, "
        f"S-layer query chunk {args.s_chunk}",
        flush=True,
    )

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times, loss_v = [], float("nan")
    for step in range(1, args.warmup_steps + args.steps + 1):
        tok = torch.randint(0, V, (B, N + 1), device=device)
        x, y = tok[:, :-1], tok[:, 1:]
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = step_model(x)
        loss = F.cross_entropy(logits.float().reshape(B * N, V), y.reshape(B * N))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        dt = time.perf_counter() - t0
        loss_v = loss.item()
        timed = step > args.warmup_steps
        print(f"step {step:>4} {dt * 1e3:9.1f} ms  loss {loss_v:.4f}{'' if timed else '  (warm-up)'}", flush=True)
        if timed:
            times.append(dt)
    # the same number of updates back to back, one synchronization at the end
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tok = torch.randint(0, V, (B, N + 1), device=device)
        x, y = tok[:, :-1], tok[:, 1:]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = step_model(x)
        loss = F.cross_entropy(logits.float().reshape(B * N, V), y.reshape(B * N))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    b2b = (time.perf_counter() - t0) / max(args.steps, 1)
    print(f"back to back: {b2b * 1e3:.1f} ms per update, {B * N / b2b:.0f} tokens/s")
    med, mean = statistics.median(times), statistics.fmean(times)
    tps = B * N / med
    res = {
        "framework": "pytorch-compile" if args.compile else "pytorch",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "pattern": args.pattern,
        "params_non_embedding": n_total - n_embed,
        "params_total": n_total,
        "batch": B,
        "seq": N,
        "precision": "bf16-autocast" if amp else "f32",
        "compile": args.compile,
        "s_impl": "plain PyTorch ops, query chunks of %d under activation checkpointing" % args.s_chunk,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "step_s_median": med,
        "step_s_mean": mean,
        "tokens_per_s": tps,
        "tokens_per_s_mean": B * N / mean,
        "step_s_back_to_back": b2b,
        "tokens_per_s_back_to_back": B * N / b2b,
        "last_loss": loss_v,
    }
    print(f"tokens/s {tps:.0f} (median of {len(times)} updates: {med * 1e3:.1f} ms; mean {mean * 1e3:.1f} ms)")
    if device.type == "cuda":
        res["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
        res["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
        print(
            f"peak memory: {res['peak_allocated_bytes'] / 2**30:.2f} GiB allocated, "
            f"{res['peak_reserved_bytes'] / 2**30:.2f} GiB reserved (torch.cuda.max_memory_*)"
        )
    print("RESULT " + json.dumps(res), flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(res) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="check the S layer against brute force and exit")
    ap.add_argument("--pattern", default="DDDSDDDS", help="layer letters, D or S (default DDDSDDDS)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20, help="timed updates")
    ap.add_argument("--warmup-steps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--precision", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--s-chunk", type=int, default=128, help="queries per chunk of the S layer")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="append the result line to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.check:
        sys.exit(0 if check(device) else 1)
    if set(args.pattern) - set("DS"):
        ap.error("--pattern takes the letters D and S")
    if args.seq > 1024:
        ap.error("--seq is at most max_seq_len = 1024")
    train(args, device)


if __name__ == "__main__":
    main()
