//! Fast CPU kernels of 2-simplicial attention (trilinear logits; the determinant form and the
//! biases are reduced to this by the caller, see `op.rs`).
//!
//! Both passes stack the G query heads that share a K/V head with a tile of first-window
//! positions into the rows of one matrix product, so the inner work is `gemm` on
//! `[G*tj, D] x [D, tk]` and `[G*tj, tk] x [tk, Dv]` (section 5 of the spec: tile over heads,
//! not over the sequence, so no masked pair is ever computed). Each pass is compiled three times
//! (AVX-512, AVX2+FMA, baseline) and picked at run time, so the row work (products, the
//! exponential, reductions) is vectorized without `-C target-cpu`.

mod backward;
mod forward;
pub(crate) mod matmul;
pub(crate) mod real;

pub use backward::{Grads, Saved};
pub use real::Real;

use crate::spec::{Dims, Windows};

/// One trilinear problem on contiguous `[B,N,H,width]` slices (layouts of `crate::spec`).
#[derive(Clone, Copy)]
pub struct Problem<'a, T> {
    /// Dimensions (`d` is the head dim the kernel sees).
    pub dims: Dims,
    /// Key ranges per query.
    pub win: Windows,
    /// Softmax scale folded into q.
    pub scale: T,
    /// `[B,N,Hq,D]`
    pub q: &'a [T],
    /// `[B,N,Hkv,D]`
    pub k1: &'a [T],
    /// `[B,N,Hkv,D]`
    pub k2: &'a [T],
    /// `[B,N,Hkv,Dv]`
    pub v1: &'a [T],
    /// `[B,N,Hkv,Dv]`
    pub v2: &'a [T],
}

/// Target rows of one product (`G * tj`).
const TARGET_ROWS: usize = 256;
/// Largest second-window tile.
const MAX_TK: usize = 128;

/// Tile sizes: `tj` first-window positions per product (times G heads), `tk` second-window
/// positions per product.
#[derive(Debug, Clone, Copy)]
pub struct Tiles {
    /// First-window tile.
    pub tj: usize,
    /// Second-window tile.
    pub tk: usize,
}

impl Tiles {
    fn choose(dims: &Dims, win: &Windows) -> Tiles {
        Tiles {
            tj: (TARGET_ROWS / dims.group()).clamp(1, win.w1),
            tk: win.w2.min(MAX_TK),
        }
    }
}

impl<'a, T: Real> Problem<'a, T> {
    /// Checks that every slice has the length its dims say.
    fn check(&self) {
        let Dims {
            batch,
            seq,
            heads_q,
            heads_kv,
            d,
            dv,
        } = self.dims;
        let rows = batch * seq;
        assert_eq!(self.q.len(), rows * heads_q * d, "q length");
        for x in [self.k1, self.k2] {
            assert_eq!(x.len(), rows * heads_kv * d, "k length");
        }
        for x in [self.v1, self.v2] {
            assert_eq!(x.len(), rows * heads_kv * dv, "v length");
        }
    }

    /// The same problem with (k1, v1, w1) and (k2, v2, w2) exchanged: the same function,
    /// since the layer is symmetric in the two key/value sets.
    fn swapped(self) -> Self {
        Problem {
            k1: self.k2,
            k2: self.k1,
            v1: self.v2,
            v2: self.v1,
            win: self.win.swapped(),
            ..self
        }
    }

    /// Whether the kernels run faster with the windows exchanged: the first window feeds the
    /// rows of the products, so it should be the one that fills `TARGET_ROWS` better.
    fn prefer_swapped(&self) -> bool {
        let g = self.dims.group();
        let rows = |w: usize| (g * w).min(TARGET_ROWS);
        rows(self.win.w2) > rows(self.win.w1)
    }
}

/// Forward: `(o [B,N,Hq,Dv], lse [B,N,Hq])`.
pub fn forward<T: Real>(p: &Problem<T>) -> (Vec<T>, Vec<T>) {
    p.check();
    if p.prefer_swapped() {
        forward::forward(&p.swapped())
    } else {
        forward::forward(p)
    }
}

/// Backward: gradients of `sum(saved.dout * o)` for the five inputs.
pub fn backward<T: Real>(p: &Problem<T>, saved: &Saved<T>) -> Grads<T> {
    p.check();
    if p.prefer_swapped() {
        let g = backward::backward(&p.swapped(), saved);
        Grads {
            dk1: g.dk2,
            dk2: g.dk1,
            dv1: g.dv2,
            dv2: g.dv1,
            dq: g.dq,
        }
    } else {
        backward::backward(p, saved)
    }
}

/// Instantiates `$inner` three times (AVX-512, AVX2+FMA, baseline) behind one function `$name`
/// that picks by the running CPU. `$inner` and what it calls are `#[inline(always)]`, so each
/// copy is compiled for its features.
macro_rules! multiversion {
    (fn $name:ident => $inner:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty) => {
        fn $name<T: Real>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn v4<T: Real>($($arg: $ty),*) -> $ret {
                    $inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3<T: Real>($($arg: $ty),*) -> $ret {
                    $inner($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512dq")
                {
                    // SAFETY: the running CPU has every feature `v4` is compiled for.
                    return unsafe { v4($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the running CPU has every feature `v3` is compiled for.
                    return unsafe { v3($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}
pub(crate) use multiversion;
