//! The mixture-of-experts feed-forward block: a router picks `top_k` of `experts` SwiGLU
//! experts per token, optional shared experts see every token.
//!
//! ```text
//! logits [T, E] = x W_router^T (f32)            p = softmax(logits) | sigmoid(logits)
//! ids [T, k]    = top-k of p (ties: lower expert)  w = p[ids] (/ sum_j p[ids], `normalize`)
//! out[t]        = sum_j w[t, j] expert_{ids[t, j]}(x_t)  +  shared(x_t)
//! expert_e(x)   = down_e (silu(gate_e x) * (up_e x))
//! ```
//!
//! The routed experts run as one grouped product per projection over all experts
//! (`simplex_attn::moe`: tokens permuted into expert order, `gate_up [E, 2H, C]` and `down
//! [E, C, H]` applied group by group, the outputs weighted and summed back per token). Every
//! token keeps all its `k` choices (dropless) unless `capacity_factor` is set: each expert then
//! takes at most `ceil(capacity_factor * T * k / E)` assignments of the batch, earlier tokens
//! first, and a dropped choice adds nothing (the token still has its residual stream).
//!
//! Auxiliary losses, per MoE layer, averaged over the MoE layers by the model:
//! * load balance (Switch Transformer): `E * sum_e f_e P_e`, `f_e` the share of the batch's
//!   assignments routed to `e` (no gradient), `P_e` the mean over tokens of `p[t, e]` (for the
//!   sigmoid router, `p` normalized over experts first); 1 when perfectly balanced;
//! * router z-loss (ST-MoE): the mean over tokens of `logsumexp(logits)^2`.

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};
use simplex_attn::moe::{
    dispatch, routed_experts, routed_experts_grads, routed_experts_saved, top_k, Dispatch,
    ExpertProducts, RoutedSaved,
};

use crate::init::{linear_weight, STD};
use crate::mlp::Mlp;

mod config;
pub use config::{MoeConfig, RouterKind};

/// What one MoE layer leaves for the training loss and the metrics (on the device).
#[derive(Debug, Clone)]
pub struct MoeStats {
    /// Load-balancing loss, a scalar in the router's dtype (f32; f64 for an f64 model),
    /// differentiable.
    pub balance_loss: Tensor,
    /// Router z-loss, a scalar in the router's dtype, differentiable.
    pub z_loss: Tensor,
    /// `[E]` u32: assignments routed to each expert in this batch (before any capacity).
    pub load: Tensor,
}

/// An MoE feed-forward layer.
#[derive(Debug, Clone)]
pub struct MoeMlp {
    cfg: MoeConfig,
    products: ExpertProducts,
    router: Tensor,
    gate_up: Tensor,
    down: Tensor,
    shared: Option<Mlp>,
}

impl MoeMlp {
    /// Weights under `vb`: `router.weight [E, C]`, `experts.gate_up [E, 2H, C]` (gate rows
    /// first), `experts.down [E, C, H]`, and `shared.{gate_up,down}` when there are shared
    /// experts; `out_std` is the init scale of the down projections.
    pub fn new(
        cfg: &MoeConfig,
        d_model: usize,
        mlp_hidden: usize,
        out_std: f64,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let (e, h) = (cfg.experts, cfg.hidden(mlp_hidden));
        let randn = |stdev: f64| Init::Randn { mean: 0.0, stdev };
        let ex = vb.pp("experts");
        Ok(MoeMlp {
            cfg: cfg.clone(),
            products: ExpertProducts::Auto,
            router: linear_weight(d_model, e, STD, vb.pp("router"))?,
            gate_up: ex.get_with_hints((e, 2 * h, d_model), "gate_up", randn(STD))?,
            down: ex.get_with_hints((e, d_model, h), "down", randn(out_std))?,
            shared: (cfg.shared_experts > 0)
                .then(|| Mlp::new(d_model, cfg.shared_experts * h, out_std, vb.pp("shared")))
                .transpose()?,
        })
    }

    /// `x [.., C] -> [.., C]` and the layer's routing statistics.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, MoeStats)> {
        let xt = x.reshape(((), x.dim(D::Minus1)?))?;
        let (r, d, stats) = self.route(&xt, &self.router)?;
        let mut out = routed_experts(&xt, &r.w, &self.gate_up, &self.down, &d)?;
        if let Some(shared) = &self.shared {
            out = (out + shared.forward(&xt)?)?;
        }
        Ok((out.reshape(x.shape())?, stats))
    }

    /// The routing of the tokens `xt [T, C]` by `router` (the weight itself, or detached
    /// outside autograd) and the auxiliary losses:
    /// `f_e` the share of the assignments (no gradient), `P_e` the mean routing probability,
    /// `lse` per token for the z-loss.
    fn route(
        &self,
        xt: &Tensor,
        router: &Tensor,
    ) -> candle_core::Result<(Routing, Dispatch, MoeStats)> {
        let t = xt.dim(0)?;
        let (e, k) = (self.cfg.experts, self.cfg.top_k);
        let rd = router_dtype(xt.dtype());
        let logits = xt.matmul(&router.t()?)?.to_dtype(rd)?;
        let scores = self.scores(&logits)?;
        let ids = top_k(&scores.detach(), k)?;
        let chosen = scores.gather(&ids, 1)?;
        let (w, chosen_sum) = if self.cfg.normalize {
            let sum = chosen.sum_keepdim(1)?;
            (chosen.broadcast_div(&sum)?, Some(sum))
        } else {
            (chosen, None)
        };
        let capacity = self
            .cfg
            .capacity_factor
            .map(|f| (f * (t * k) as f64 / e as f64).ceil() as usize);
        let d = dispatch(&ids, e, capacity)?.with_products(self.products);
        let f = (d.counts.to_dtype(rd)? / (t * k) as f64)?;
        let probs = match self.cfg.router {
            RouterKind::Softmax => scores.clone(),
            RouterKind::Sigmoid => scores.broadcast_div(&scores.sum_keepdim(1)?)?,
        };
        let balance_loss = ((&f * probs.mean(0)?)?.sum_all()? * e as f64)?;
        let lse = logits.log_sum_exp(1)?;
        let z_loss = lse.sqr()?.mean_all()?;
        let stats = MoeStats {
            balance_loss,
            z_loss,
            load: d.counts.clone(),
        };
        let routing = Routing {
            logits,
            scores,
            probs,
            lse,
            ids,
            w,
            chosen_sum,
            f,
        };
        Ok((routing, d, stats))
    }

    /// The router's scores of `logits [T, E]`, the same ops in both forwards (so that both
    /// choose the same experts): softmax (candle_nn's `softmax_last_dim` has no backward) or
    /// sigmoid, in differentiable tensor ops on every device.
    fn scores(&self, logits: &Tensor) -> candle_core::Result<Tensor> {
        match self.cfg.router {
            RouterKind::Softmax => {
                let e = logits
                    .broadcast_sub(&logits.max_keepdim(1)?.detach())?
                    .exp()?;
                e.broadcast_div(&e.sum_keepdim(1)?)
            }
            // in tensor ops (candle_nn's sigmoid has no CUDA kernel for f32), from e^-|x| so
            // that nothing overflows: 1 / (1 + e^-x) would, and its autograd give NaN, below
            // x = -88 in f32
            RouterKind::Sigmoid => {
                let e = logits.abs()?.neg()?.exp()?;
                let r = (&e + 1.0)?.recip()?;
                logits.ge(0.0)?.where_cond(&r, &(&e * &r)?)
            }
        }
    }

    /// [`MoeMlp::forward`] outside autograd: the output `[.., C]`, the routing statistics
    /// (values, no graph) and what [`MoeMlp::grads`] needs.
    pub fn forward_saved(&self, x: &Tensor) -> candle_core::Result<(Tensor, MoeStats, MoeSaved)> {
        let xt = x.reshape(((), x.dim(D::Minus1)?))?;
        let (r, d, stats) = self.route(&xt, &self.router.detach())?;
        let (mut out, routed) = routed_experts_saved(&xt, &r.w, &self.gate_up, &self.down, &d)?;
        let shared = match &self.shared {
            Some(mlp) => {
                let (y, saved) = mlp.forward_saved(&xt)?;
                out = (out + y)?;
                Some(saved)
            }
            None => None,
        };
        let saved = MoeSaved {
            x: xt,
            r,
            routed,
            shared,
        };
        Ok((out.reshape(x.shape())?, stats, saved))
    }

    /// The gradients of a forward of [`MoeMlp::forward_saved`]: `dx` and the weights'
    /// gradients ([`MoeMlp::weights`]' order) given `dy`, the output's gradient, and the
    /// factors of this layer's balance and z-losses in the differentiated loss (`scale *
    /// balance_weight / moe_layers` and the same for the z-loss).
    ///
    /// ```text
    /// routed:   (dx, dw, d gate_up, d down) = routed_experts'(dy)
    /// gates:    dchosen = (dw - sum_j dw_j w_j) / sum_j chosen_j      (normalize; else dw)
    ///           dscores[t, ids[t, j]] += dchosen[t, j]
    /// balance:  dprobs[t, e] = balance * E f_e / T       (sigmoid: through p / sum_e p)
    /// scores:   dlogits = s * (ds - sum_e ds s)   (softmax)  |  ds * s (1 - s)   (sigmoid)
    /// z-loss:   dlogits += z * 2 lse_t / T * softmax(logits)
    /// router:   dx += dlogits W_router;  dW_router = dlogits^T x
    /// ```
    pub fn grads(
        &self,
        saved: MoeSaved,
        dy: &Tensor,
        (balance, z): (f64, f64),
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let MoeSaved {
            x,
            r,
            routed,
            shared,
        } = saved;
        let shape = dy.shape().clone();
        let (t, e) = r.scores.dims2()?;
        let c = x.dim(1)?;
        if dy.elem_count() != t * c || dy.dim(D::Minus1)? != c {
            candle_core::bail!(
                "MoE layer backward: dy {:?} does not match the forward's {t} tokens x {c}",
                dy.dims()
            )
        }
        let dyt = dy.reshape(((), c))?;
        let (mut dx, dw, d_gate_up, d_down) = routed_experts_grads(routed, &dyt)?;
        let mut weights = Vec::with_capacity(5);
        if let (Some(mlp), Some(s)) = (&self.shared, shared) {
            let (dxs, [dgu, dd]) = mlp.grads(s, &dyt)?;
            dx = (dx + dxs)?;
            weights.extend([dgu, dd]);
        }
        let dw = dw.to_dtype(r.w.dtype())?;
        let dchosen = match &r.chosen_sum {
            Some(sum) => {
                let along = (&dw * &r.w)?.sum_keepdim(1)?;
                dw.broadcast_sub(&along)?.broadcast_div(sum)?
            }
            None => dw,
        };
        let mut ds = r.scores.zeros_like()?.scatter_add(&r.ids, &dchosen, 1)?;
        if balance != 0.0 {
            let dprobs = (&r.f * (balance * e as f64 / t as f64))?.unsqueeze(0)?;
            let dprobs = match self.cfg.router {
                RouterKind::Softmax => dprobs,
                RouterKind::Sigmoid => {
                    let sum = r.scores.sum_keepdim(1)?;
                    let along = r.probs.broadcast_mul(&dprobs)?.sum_keepdim(1)?;
                    dprobs.broadcast_sub(&along)?.broadcast_div(&sum)?
                }
            };
            ds = ds.broadcast_add(&dprobs)?;
        }
        let s = &r.scores;
        let mut dlogits = match self.cfg.router {
            RouterKind::Softmax => (s * ds.broadcast_sub(&(&ds * s)?.sum_keepdim(1)?)?)?,
            RouterKind::Sigmoid => ((&ds * s)? * (1.0 - s)?)?,
        };
        if z != 0.0 {
            let soft = match self.cfg.router {
                RouterKind::Softmax => s.clone(),
                RouterKind::Sigmoid => candle_nn::ops::softmax_last_dim(&r.logits)?,
            };
            let coef = (&r.lse * (2.0 * z / t as f64))?.unsqueeze(1)?;
            dlogits = (dlogits + soft.broadcast_mul(&coef)?)?;
        }
        let dl = dlogits.to_dtype(x.dtype())?;
        dx = (dx + dl.matmul(&self.router.detach())?)?;
        let d_router = dl.t()?.matmul(&x)?;
        let mut all = vec![d_router, d_gate_up, d_down];
        all.append(&mut weights);
        Ok((dx.reshape(shape)?, all))
    }

    /// `[router, gate_up, down]` and the shared experts' `[gate_up, down]`, in the order of
    /// [`MoeMlp::grads`].
    pub fn weights(&self) -> Vec<&Tensor> {
        let mut w = vec![&self.router, &self.gate_up, &self.down];
        if let Some(mlp) = &self.shared {
            w.extend(mlp.weights());
        }
        w
    }

    /// Runs the routed experts' products on CUDA as `products` says (default automatic).
    pub fn set_products(&mut self, products: ExpertProducts) {
        self.products = products;
    }

    /// The layer's config.
    pub fn config(&self) -> &MoeConfig {
        &self.cfg
    }
}

/// The router's dtype for a model computing in `dtype`: f32, f64 for an f64 model.
fn router_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// One batch's routing ([`MoeMlp::route`]), what the router's backward needs.
struct Routing {
    /// Router logits `[T, E]` in the router's dtype.
    logits: Tensor,
    /// Softmax or sigmoid scores `[T, E]`.
    scores: Tensor,
    /// The scores as the balance loss uses them (sigmoid: normalized over experts).
    probs: Tensor,
    /// `logsumexp` of each row of the logits `[T]`.
    lse: Tensor,
    /// Chosen experts `[T, k]` (u32).
    ids: Tensor,
    /// The combine weights `[T, k]`.
    w: Tensor,
    /// The chosen scores' sum per token `[T, 1]` where the weights are normalized.
    chosen_sum: Option<Tensor>,
    /// Each expert's share of the assignments `[E]`.
    f: Tensor,
}

/// What [`MoeMlp::forward_saved`] keeps for [`MoeMlp::grads`].
pub struct MoeSaved {
    /// The input rows `[T, C]`.
    x: Tensor,
    r: Routing,
    routed: RoutedSaved,
    shared: Option<simplex_attn::fused::MlpSaved>,
}
