//! Gradient buckets: the gradients of all parameters in f32, grouped into buckets of about
//! `bucket_bytes`, each all-reduced (summed over ranks) as one flat tensor.
//!
//! ```text
//! plan:    parameters last to first (PyTorch DDP's order: a backward produces the last
//!          parameters' gradients first; ours are sorted by name), whole parameters, a new
//!          bucket when the next one would pass bucket_bytes (a larger parameter alone)
//! add:     bucket_b (+)= cat(grad_p as f32, flattened, for p in bucket b)   per micro-batch
//! reduce:  all_reduce_sum(bucket_b) for every b; grad_p = a view of its bucket
//! ```
//! The loss of every micro-batch is divided by `grad_accum x world` before the backward, so the
//! sum over ranks is the mean gradient of the global batch: the same value (up to the order of
//! f32 additions) as one rank taking all its micro-batches.
//!
//! What overlaps: nothing on the device yet. candle's `backward()` returns every gradient at
//! once, so no all-reduce can start before the backward ends (PyTorch DDP hooks each gradient
//! as it is produced), and the buckets are enqueued on the device's one stream after the last
//! micro-batch's backward, where they run in order with the casts and the optimizer step. What
//! is gained: no host synchronization per update (the host goes on enqueuing while NCCL
//! works), NCCL calls of bounded size, and a plan a second communication stream or a backward
//! with gradient hooks could overlap bucket by bucket.

use candle_core::{DType, Device, Tensor};

use super::collective::{Collective, ReduceOp};
use crate::error::{Result, TrainError};

/// Default bucket size: 25 MiB (PyTorch DDP's).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// One bucket: the parameters it holds, in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Parameter indices (into the optimizer's parameter list).
    pub params: Vec<usize>,
    /// f32 elements in all.
    pub elems: usize,
}

/// The buckets of a parameter list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketPlan {
    /// In the order they are reduced.
    pub buckets: Vec<Bucket>,
}

impl BucketPlan {
    /// Buckets for parameters of `lens` elements (see the module doc); `bucket_bytes` counts
    /// f32 bytes and must be positive.
    pub fn new(lens: &[usize], bucket_bytes: usize) -> Result<BucketPlan> {
        if bucket_bytes == 0 {
            return Err(TrainError::setting(
                "bucket_mb",
                0,
                "gradient buckets need a positive size",
            ));
        }
        let mut buckets = Vec::new();
        let mut cur = Bucket {
            params: Vec::new(),
            elems: 0,
        };
        for p in (0..lens.len()).rev() {
            let bytes = 4 * lens[p];
            if !cur.params.is_empty() && 4 * cur.elems + bytes > bucket_bytes {
                buckets.push(std::mem::replace(
                    &mut cur,
                    Bucket {
                        params: Vec::new(),
                        elems: 0,
                    },
                ));
            }
            cur.params.push(p);
            cur.elems += lens[p];
        }
        if !cur.params.is_empty() {
            buckets.push(cur);
        }
        Ok(BucketPlan { buckets })
    }
}

/// Gathers micro-batch gradients into buckets and all-reduces them.
pub struct GradReducer {
    plan: BucketPlan,
    lens: Vec<usize>,
    acc: Vec<Option<Tensor>>,
}

impl GradReducer {
    /// A reducer for parameters of `lens` elements.
    pub fn new(lens: &[usize], bucket_bytes: usize) -> Result<Self> {
        let plan = BucketPlan::new(lens, bucket_bytes)?;
        Ok(GradReducer {
            acc: vec![None; plan.buckets.len()],
            plan,
            lens: lens.to_vec(),
        })
    }

    /// The plan.
    pub fn plan(&self) -> &BucketPlan {
        &self.plan
    }

    /// Takes one micro-batch's gradients (`grads[p]` of parameter `p`, any float dtype and
    /// shape of its size; `None`: zero) into the buckets, replacing them or adding to them
    /// when `accumulate`.
    pub fn add(&mut self, grads: &[Option<Tensor>], accumulate: bool, dev: &Device) -> Result<()> {
        if grads.len() != self.lens.len() {
            return Err(TrainError::setting(
                "gradients",
                grads.len(),
                format!("expected one per parameter ({})", self.lens.len()),
            ));
        }
        for (b, bucket) in self.plan.buckets.iter().enumerate() {
            let parts: Vec<Tensor> = bucket
                .params
                .iter()
                .map(|&p| match &grads[p] {
                    Some(g) if g.elem_count() == self.lens[p] => {
                        Ok(g.to_dtype(DType::F32)?.flatten_all()?)
                    }
                    Some(g) => Err(TrainError::setting(
                        "gradients",
                        format!("{:?}", g.dims()),
                        format!("parameter {p} has {} elements", self.lens[p]),
                    )),
                    None => Ok(Tensor::zeros(self.lens[p], DType::F32, dev)?),
                })
                .collect::<Result<_>>()?;
            // a fresh buffer even for one part: the all-reduce writes it in place
            let flat = match parts.as_slice() {
                [one] => one.copy()?,
                _ => Tensor::cat(&parts, 0)?,
            };
            self.acc[b] = Some(match (self.acc[b].take(), accumulate) {
                (Some(prev), true) => (prev + flat)?,
                _ => flat,
            });
        }
        Ok(())
    }

    /// Sums the buckets over the ranks of `comm` (in place, bucket by bucket) and returns each
    /// parameter's summed gradient as a flat f32 view of its bucket, in parameter order.
    pub fn reduce(&mut self, comm: &dyn Collective) -> Result<Vec<Option<Tensor>>> {
        let mut out: Vec<Option<Tensor>> = vec![None; self.lens.len()];
        for (b, bucket) in self.plan.buckets.iter().enumerate() {
            let Some(t) = self.acc[b].take() else {
                return Err(TrainError::distributed(
                    comm.rank(),
                    "gradient buckets reduced before any micro-batch was added",
                ));
            };
            comm.all_reduce(&t, ReduceOp::Sum)?;
            let mut off = 0;
            for &p in &bucket.params {
                out[p] = Some(t.narrow(0, off, self.lens[p])?);
                off += self.lens[p];
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddp::collective::Solo;
    use crate::rng::SplitMix64;

    #[test]
    fn plans_cover_every_parameter_once_in_reverse_order() -> Result<()> {
        let mut g = SplitMix64::new(7);
        for case in 0..200 {
            let n = 1 + g.below(30) as usize;
            let lens: Vec<usize> = (0..n).map(|_| 1 + g.below(5000) as usize).collect();
            let cap = 4 * (1 + g.below(8000) as usize);
            let plan = BucketPlan::new(&lens, cap)?;
            let order: Vec<usize> = plan.buckets.iter().flat_map(|b| b.params.clone()).collect();
            assert_eq!(order, (0..n).rev().collect::<Vec<_>>(), "case {case}");
            for (i, b) in plan.buckets.iter().enumerate() {
                assert!(!b.params.is_empty());
                assert_eq!(b.elems, b.params.iter().map(|&p| lens[p]).sum::<usize>());
                // within the cap, or one parameter larger than it
                assert!(4 * b.elems <= cap || b.params.len() == 1, "case {case}");
                // a bucket closes only when the next parameter would not fit
                if let Some(next) = plan.buckets.get(i + 1) {
                    assert!(4 * (b.elems + lens[next.params[0]]) > cap, "case {case}");
                }
            }
            assert_eq!(plan, BucketPlan::new(&lens, cap)?, "deterministic");
        }
        let plan = BucketPlan::new(&[10, 20, 30, 40], 4 * 60)?;
        let got: Vec<Vec<usize>> = plan.buckets.iter().map(|b| b.params.clone()).collect();
        assert_eq!(got, vec![vec![3], vec![2, 1, 0]]);
        let got = BucketPlan::new(&[100, 1], 4)?;
        assert_eq!(got.buckets.len(), 2);
        assert!(BucketPlan::new(&[1], 0).is_err());
        assert!(BucketPlan::new(&[], 4)?.buckets.is_empty());
        Ok(())
    }

    /// Gradients through the buckets come back where they went in (one rank), accumulated
    /// when asked, missing ones as zeros, in f32 from bf16.
    #[test]
    fn reducer_round_trip() -> Result<()> {
        let dev = Device::Cpu;
        let lens = [6, 4, 3];
        let mut r = GradReducer::new(&lens, 4 * 7)?;
        assert_eq!(r.plan().buckets.len(), 2);
        let g0 = Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?;
        let g1 = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &dev)?.to_dtype(DType::BF16)?;
        r.add(&[Some(g0.clone()), Some(g1.clone()), None], false, &dev)?;
        r.add(&[Some(g0.clone()), None, None], true, &dev)?;
        let out = r.reduce(&Solo::new(dev.clone()))?;
        let v = |i: usize| out[i].as_ref().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(v(1), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(v(2), vec![0.0; 3]);
        // the reducer never writes a gradient it was given
        assert_eq!(
            g0.flatten_all()?.to_vec1::<f32>()?,
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        let e = r.add(&[None, None], false, &dev).unwrap_err().to_string();
        assert!(e.contains("one per parameter"), "{e}");
        assert!(r.reduce(&Solo::new(dev)).is_err(), "nothing added since");
        Ok(())
    }
}
