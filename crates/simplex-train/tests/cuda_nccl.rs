//! NCCL between two GPUs of this machine, ranks as threads (feature `nccl`): sums in place
//! on tensors and on views, maxima, broadcasts, the barrier, and the gradient buckets summed
//! over NCCL against the same sums on the CPU. Needs 2 CUDA devices and libnccl.so.2
//! (scripts/gpu-ddp.sh runs it); without them each test says so and passes, unless
//! `SIMPLEX_REQUIRE_CUDA=1`.
#![cfg(feature = "nccl")]

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use simplex_train::ddp::nccl::{self, NcclComm};
use simplex_train::ddp::{Collective, GradReducer, ReduceOp};

/// cuda:0 and cuda:1, or None (skipped) where there are not two.
fn two_gpus() -> Option<[Device; 2]> {
    match (Device::new_cuda(0), Device::new_cuda(1), nccl::version()) {
        (Ok(a), Ok(b), Ok(v)) => {
            eprintln!("NCCL {v}");
            Some([a, b])
        }
        (a, b, v) => {
            let why = format!("{:?} {:?} {:?}", a.err(), b.err(), v.err());
            if std::env::var("SIMPLEX_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                panic!("SIMPLEX_REQUIRE_CUDA=1 but no two GPUs with NCCL: {why}");
            }
            eprintln!("skipped: no two CUDA devices with NCCL ({why})");
            None
        }
    }
}

/// Runs `f` as ranks 0 and 1, one thread per GPU, and returns what each returns.
fn on_two_ranks<T: Send>(devs: &[Device; 2], f: impl Fn(&NcclComm) -> T + Sync) -> Vec<T> {
    let id = nccl::unique_id().expect("an NCCL id");
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|r| {
                let (id, dev, f) = (&id, &devs[r], &f);
                s.spawn(move || {
                    let c = NcclComm::init(dev, r, 2, id, Duration::from_secs(120)).expect("init");
                    f(&c)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

#[test]
fn nccl_reduces_broadcasts_and_sums_gradient_buckets() {
    let Some(devs) = two_gpus() else { return };
    let out = on_two_ranks(&devs, |c| {
        let dev = c.device();
        let r = c.rank() as f32;
        let t = Tensor::new(&[r, 1.0, -r, 10.0 * r], &dev).unwrap();
        c.all_reduce(&t, ReduceOp::Sum).unwrap();
        let m = Tensor::new(&[r, -r], &dev).unwrap();
        c.all_reduce(&m, ReduceOp::Max).unwrap();
        // a view: only its elements change
        let big = Tensor::new(&[r + 1.0, r + 2.0, r + 3.0], &dev).unwrap();
        c.all_reduce(&big.narrow(0, 1, 2).unwrap(), ReduceOp::Sum)
            .unwrap();
        let b = Tensor::new(&[r + 7.0; 3], &dev).unwrap();
        c.broadcast(&b).unwrap();
        c.barrier().unwrap();
        // buckets of three parameters (bf16 gradients), two micro-batches, over NCCL
        let lens = [5usize, 300, 7];
        let grads = |k: usize| -> Vec<Option<Tensor>> {
            lens.iter()
                .enumerate()
                .map(|(p, &n)| {
                    let v: Vec<f32> = (0..n)
                        .map(|i| ((i + 3 * p + 11 * k) as f32 * 0.37).sin() * (r + 1.0))
                        .collect();
                    Some(
                        Tensor::from_vec(v, n, &dev)
                            .unwrap()
                            .to_dtype(DType::BF16)
                            .unwrap(),
                    )
                })
                .collect()
        };
        let mut red = GradReducer::new(&lens, 4 * 64).unwrap();
        red.add(&grads(0), false, &dev).unwrap();
        red.add(&grads(1), true, &dev).unwrap();
        let summed: Vec<Vec<f32>> = red
            .reduce(c)
            .unwrap()
            .into_iter()
            .map(|g| g.unwrap().to_vec1::<f32>().unwrap())
            .collect();
        // the same sums on the CPU: this rank's contribution, to add up below
        let local: Vec<Vec<f32>> = (0..lens.len())
            .map(|p| {
                let a = grads(0)[p].as_ref().unwrap().to_dtype(DType::F32).unwrap();
                let b = grads(1)[p].as_ref().unwrap().to_dtype(DType::F32).unwrap();
                (a + b).unwrap().to_vec1::<f32>().unwrap()
            })
            .collect();
        (
            t.to_vec1::<f32>().unwrap(),
            m.to_vec1::<f32>().unwrap(),
            big.to_vec1::<f32>().unwrap(),
            b.to_vec1::<f32>().unwrap(),
            summed,
            local,
        )
    });
    for (rank, (t, m, big, b, summed, _)) in out.iter().enumerate() {
        assert_eq!(t, &vec![1.0, 2.0, -1.0, 10.0], "rank {rank}: sum");
        assert_eq!(m, &vec![1.0, 0.0], "rank {rank}: max");
        assert_eq!(big, &vec![rank as f32 + 1.0, 5.0, 7.0], "rank {rank}: view");
        assert_eq!(b, &vec![7.0; 3], "rank {rank}: broadcast");
        for (p, s) in summed.iter().enumerate() {
            let want: Vec<f32> = out[0].5[p]
                .iter()
                .zip(&out[1].5[p])
                .map(|(x, y)| x + y)
                .collect();
            for (i, (g, w)) in s.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "rank {rank}: param {p}[{i}]: {g} vs {w}"
                );
            }
        }
    }
}
