//! Token embedding: row `t` of `weight [V, C]` for each token `t`.
//!
//! Two exact ways to compute it. `index_select` reads the rows; its gradient is an `index_add`
//! into `[V, C]`, which candle runs on CUDA as one serial-per-row scatter (18 ms per update of
//! the `25m` preset on the H200, BENCHMARKS.md). For small vocabularies on CUDA the rows are
//! picked by a product with the one-hot matrix instead, `one_hot(tokens) [T, V] @ weight`, whose
//! gradient is the tensor-core product `one_hot^T @ dy`. Each output element is `1 * w` plus
//! zeros, so both ways give the same values (and the same gradient up to summation order).

use candle_core::{DType, Module, Tensor};

/// The largest vocabulary embedded by the one-hot product on CUDA (the one-hot matrix of a
/// 32 x 1024 batch is then at most 128 MiB in bf16).
pub const ONE_HOT_MAX_VOCAB: usize = 2048;

/// Token embedding over `weight [V, C]` (shared with a tied output head).
#[derive(Debug, Clone)]
pub struct TokenEmbedding {
    weight: Tensor,
}

impl TokenEmbedding {
    /// Wraps `weight [V, C]`.
    pub fn new(weight: Tensor) -> Self {
        TokenEmbedding { weight }
    }

    /// The table `[V, C]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Whether [`forward`](Module::forward) takes the one-hot product: CUDA and `V` at most
    /// [`ONE_HOT_MAX_VOCAB`].
    pub fn uses_one_hot(&self) -> bool {
        self.weight.device().is_cuda() && self.weight.dim(0).is_ok_and(|v| v <= ONE_HOT_MAX_VOCAB)
    }

    /// The rows of `tokens [..]` (u32) by `index_select`: `[.., C]`.
    pub fn forward_gather(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        let c = self.weight.dim(1)?;
        let mut shape = tokens.dims().to_vec();
        shape.push(c);
        self.weight
            .index_select(&tokens.flatten_all()?, 0)?
            .reshape(shape)
    }

    /// The rows of `tokens [..]` (u32) as `one_hot(tokens) @ weight`: `[.., C]`.
    pub fn forward_one_hot(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        let mut shape = tokens.dims().to_vec();
        shape.push(self.weight.dim(1)?);
        self.one_hot(tokens)?.matmul(&self.weight)?.reshape(shape)
    }

    /// `one_hot(tokens) [T, V]` in the weight's dtype, `T` the tokens flattened: zeros with a
    /// one scattered into each row (a memset and one write per token; comparing every token
    /// with every id took 0.12 ms per call at T = 32768, V = 256 on an H100). The ids must be
    /// below V (the model checks them first).
    fn one_hot(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        let v = self.weight.dim(0)?;
        let ids = tokens.flatten_all()?.to_dtype(DType::U32)?.unsqueeze(1)?;
        let (t, dtype, dev) = (ids.dim(0)?, self.weight.dtype(), tokens.device());
        let hot = Tensor::zeros((t, v), dtype, dev)?;
        hot.scatter_set(&ids, &Tensor::ones((t, 1), dtype, dev)?, 1)?;
        Ok(hot)
    }
}

impl TokenEmbedding {
    /// The forward outside autograd (the way [`forward`](Module::forward) takes), for a caller
    /// that computes the weight's gradient itself ([`TokenEmbedding::weight_grad`]).
    pub fn forward_detached(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        TokenEmbedding::new(self.weight.detach()).forward(tokens)
    }

    /// `d weight [V, C]` from the gradient `dx [.., C]` of the rows of `tokens [..]`: the
    /// transposed one-hot product where the forward takes the one-hot product, else the rows
    /// added into zeros by token (`index_add`).
    pub fn weight_grad(&self, tokens: &Tensor, dx: &Tensor) -> candle_core::Result<Tensor> {
        let ids = tokens.flatten_all()?.to_dtype(DType::U32)?;
        let dx = dx
            .reshape((ids.elem_count(), self.weight.dim(1)?))?
            .to_dtype(self.weight.dtype())?;
        if self.uses_one_hot() {
            self.one_hot(tokens)?.t()?.matmul(&dx)
        } else {
            self.weight.zeros_like()?.index_add(&ids, &dx, 0)
        }
    }
}

impl Module for TokenEmbedding {
    fn forward(&self, tokens: &Tensor) -> candle_core::Result<Tensor> {
        if self.uses_one_hot() {
            self.forward_one_hot(tokens)
        } else {
            self.forward_gather(tokens)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Both ways give the same rows and the same gradient of a weighted sum (repeated tokens
    /// included: their gradients add up).
    #[test]
    fn one_hot_product_equals_the_gather() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (11, 5), &dev)?)?;
        let emb = TokenEmbedding::new(w.as_tensor().clone());
        let tokens = Tensor::new(&[[3u32, 0, 10, 3], [7, 7, 7, 1]], &dev)?;
        let dy = Tensor::randn(0f32, 1.0, (2, 4, 5), &dev)?;
        let a = emb.forward_gather(&tokens)?;
        let b = emb.forward_one_hot(&tokens)?;
        assert_eq!(a.dims(), &[2, 4, 5]);
        assert_eq!(
            a.flatten_all()?.to_vec1::<f32>()?,
            b.flatten_all()?.to_vec1::<f32>()?
        );
        let ga = (a * &dy)?.sum_all()?.backward()?;
        let gb = (b * &dy)?.sum_all()?.backward()?;
        let (ga, gb) = (ga.get(&w).expect("grad"), gb.get(&w).expect("grad"));
        let diff = (ga - gb)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "gradients differ by {diff}");
        // token 10 appears once, token 7 three times, token 2 never
        let row = |g: &Tensor, t: usize| g.get(t)?.to_vec1::<f32>();
        assert!(row(gb, 2)?.iter().all(|x| *x == 0.0));
        assert!(row(gb, 7)?.iter().any(|x| *x != 0.0));
        Ok(())
    }

    #[test]
    fn cpu_takes_the_gather() -> candle_core::Result<()> {
        let w = Tensor::zeros((4, 3), DType::F32, &Device::Cpu)?;
        assert!(!TokenEmbedding::new(w).uses_one_hot());
        Ok(())
    }
}
