//! Parameter counts and FLOPs per token, from the config alone (what `simplex model info` prints).
//!
//! FLOP convention: forward pass, 2 FLOPs per multiply-add, per token, averaged over the
//! positions `0..seq` of one sequence (causal ramps and bidirectional window edges counted
//! exactly).
//! * Projections and MLP: `2 * weights`; an MoE layer counts its router and the `top_k`
//!   routed plus the shared experts a token passes through (its active weights).
//! * D/L attention: `4 * Hq * Dh * keys` (`q.k` and `p.v`), `keys` the mean number of keys a
//!   query sees.
//! * S attention: `4 * Hq * Dk * pairs` (the spec's section 4, Meta's count), `pairs` the mean
//!   number of (j, k) pairs; `Dk` is the head dim the kernel runs at: `Dh` (trilinear) or `2 Dh`
//!   (determinant).
//! * Head: `2 * C * V`.
//!
//! Training costs about 3x the forward (backward = 2x forward for matmuls; FlashAttention's
//! convention counts attention backward as 2.5x). Rotations, norms, softmax and elementwise
//! products are not counted.

use crate::config::{Config, LayerKind, SimplicialVariant};

/// Sizes and costs of one layer kind.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerInfo {
    /// The kind.
    pub kind: LayerKind,
    /// Whether the feed-forward of these layers is MoE.
    pub moe: bool,
    /// Layers of this kind.
    pub count: usize,
    /// Parameters of one layer (attention, MLP or every expert and the router, both norms).
    pub params: u64,
    /// Parameters one token passes through in one layer (`params` less the experts it is
    /// not routed to).
    pub active_params: u64,
    /// Forward FLOPs per token of one layer in its projections and MLP.
    pub matmul_flops: f64,
    /// Forward FLOPs per token of one layer in attention proper (scores and values).
    pub attn_flops: f64,
}

/// What the CLI prints about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Sequence length the attention FLOPs are averaged over.
    pub seq: usize,
    /// Every parameter (tied embeddings counted once).
    pub params_total: u64,
    /// Token embedding and (untied) output head.
    pub params_embedding: u64,
    /// `params_total - params_embedding`.
    pub params_non_embedding: u64,
    /// Non-embedding parameters one token passes through (`params_non_embedding` for a dense
    /// model; MoE layers count their router, `top_k` routed and the shared experts).
    pub params_active: u64,
    /// One entry per layer kind present, in the order D, L, S.
    pub layers: Vec<LayerInfo>,
    /// Forward FLOPs per token of the output head.
    pub head_flops: f64,
    /// Forward FLOPs per token of the whole model.
    pub flops_per_token: f64,
}

/// Keys query `i` of a sequence of `seq` sees in a window `w` (`usize::MAX`: unbounded):
/// causal `i - w < j <= i`, bidirectional `|i - j| < w`.
fn keys(seq: usize, w: usize, i: usize, bidirectional: bool) -> usize {
    let before = (i + 1).min(w);
    if bidirectional {
        before + (seq - 1 - i).min(w - 1)
    } else {
        before
    }
}

/// Mean over queries `i < seq` of `keys(w1) * keys(w2)`: the (j, k) pairs of an S layer.
fn mean_pairs(seq: usize, w1: usize, w2: usize, bidirectional: bool) -> f64 {
    let total: f64 = (0..seq)
        .map(|i| (keys(seq, w1, i, bidirectional) * keys(seq, w2, i, bidirectional)) as f64)
        .sum();
    total / seq.max(1) as f64
}

impl ModelInfo {
    /// Counts for `cfg` at sequence length `seq` (`max_seq_len` is the usual choice).
    pub fn new(cfg: &Config, seq: usize) -> ModelInfo {
        let c = cfg.d_model as u64;
        let norms = 2 * c;
        // (all, active) feed-forward parameters of a dense or an MoE layer
        let ffn = |moe: bool| -> (u64, u64) {
            match cfg.moe.as_ref().filter(|_| moe) {
                None => (3 * c * cfg.mlp_hidden as u64, 3 * c * cfg.mlp_hidden as u64),
                Some(m) => {
                    let expert = 3 * c * m.hidden(cfg.mlp_hidden) as u64;
                    let (e, k, s) = (m.experts as u64, m.top_k as u64, m.shared_experts as u64);
                    let router = c * e;
                    (router + (e + s) * expert, router + (k + s) * expert)
                }
            }
        };
        let layer = |kind: LayerKind, moe: bool| -> LayerInfo {
            let (attn_params, attn_flops) = match kind {
                LayerKind::Dot | LayerKind::Local => {
                    let h = cfg.dot_heads();
                    let p = c * (2 * h.q * h.dim + 2 * h.kv * h.dim) as u64;
                    let w = if kind == LayerKind::Local {
                        cfg.window
                    } else {
                        usize::MAX
                    };
                    let keys = (0..seq)
                        .map(|i| keys(seq, w, i, cfg.bidirectional) as f64)
                        .sum::<f64>()
                        / seq.max(1) as f64;
                    (p, 4.0 * (h.q * h.dim) as f64 * keys)
                }
                LayerKind::Simplicial => {
                    let h = cfg.simplicial_heads();
                    let p = c * (2 * h.q * h.dim + 4 * h.kv * h.dim) as u64;
                    let dk = match cfg.simplicial.variant {
                        SimplicialVariant::Trilinear => h.dim,
                        SimplicialVariant::Determinant => 2 * h.dim,
                    };
                    let pairs =
                        mean_pairs(seq, cfg.simplicial.w1, cfg.simplicial.w2, cfg.bidirectional);
                    (p, 4.0 * (h.q * dk) as f64 * pairs)
                }
            };
            let (mlp, mlp_active) = ffn(moe);
            LayerInfo {
                kind,
                moe,
                count: 0,
                params: attn_params + mlp + norms,
                active_params: attn_params + mlp_active + norms,
                matmul_flops: 2.0 * (attn_params + mlp_active) as f64,
                attn_flops,
            }
        };
        let kinds = cfg.layers();
        let layers: Vec<LayerInfo> = [LayerKind::Dot, LayerKind::Local, LayerKind::Simplicial]
            .into_iter()
            .flat_map(|k| [(k, false), (k, true)])
            .filter_map(|(k, moe)| {
                let count = kinds
                    .iter()
                    .enumerate()
                    .filter(|&(i, &x)| x == k && cfg.is_moe_layer(i) == moe)
                    .count();
                (count > 0).then(|| LayerInfo {
                    count,
                    ..layer(k, moe)
                })
            })
            .collect();
        let v = cfg.vocab_size as u64;
        let params_embedding = if cfg.tie_embeddings { v * c } else { 2 * v * c };
        let params_non_embedding = layers
            .iter()
            .map(|l| l.params * l.count as u64)
            .sum::<u64>()
            + c;
        let params_active = layers
            .iter()
            .map(|l| l.active_params * l.count as u64)
            .sum::<u64>()
            + c;
        let head_flops = 2.0 * (c * v) as f64;
        let flops_per_token = head_flops
            + layers
                .iter()
                .map(|l| l.count as f64 * (l.matmul_flops + l.attn_flops))
                .sum::<f64>();
        ModelInfo {
            seq,
            params_total: params_embedding + params_non_embedding,
            params_embedding,
            params_non_embedding,
            params_active,
            layers,
            head_flops,
            flops_per_token,
        }
    }
}

impl std::fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = |x: u64| x as f64 / 1e6;
        writeln!(
            f,
            "parameters: {:.2}M total, {:.2}M non-embedding, {:.2}M embedding",
            m(self.params_total),
            m(self.params_non_embedding),
            m(self.params_embedding)
        )?;
        if self.params_active != self.params_non_embedding {
            writeln!(
                f,
                "active: {:.2}M non-embedding parameters per token (mixture of experts)",
                m(self.params_active)
            )?;
        }
        writeln!(
            f,
            "forward FLOPs per token at seq {} (2 per multiply-add):",
            self.seq
        )?;
        for l in &self.layers {
            let moe = if l.moe {
                format!(", MoE: {:.2}M active", m(l.active_params))
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {} x{} ({}{moe}): {:.2}M params each, {:.2} MFLOP projections+MLP + {:.2} MFLOP attention",
                l.kind.letter(),
                l.count,
                l.kind.name(),
                m(l.params),
                l.matmul_flops / 1e6,
                l.attn_flops / 1e6
            )?;
        }
        writeln!(f, "  head: {:.2} MFLOP", self.head_flops / 1e6)?;
        write!(
            f,
            "  total: {:.2} MFLOP per token (training ~3x)",
            self.flops_per_token / 1e6
        )
    }
}
