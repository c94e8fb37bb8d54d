//! The MoE feed-forward: the layer against a per-token computation (softmax and sigmoid
//! routers, shared experts, capacity), its router gradient and the whole layer's gradients
//! against finite differences, the balance and z losses against direct formulas, parameter
//! counts of the built model, a tiny MoE model overfitting a batch with its loads logged,
//! config errors.

mod common;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use common::{randomize, small_cfg, tokens};
use simplex_attn::moe::moe_reference;
use simplex_model::moe::MoeMlp;
use simplex_model::{
    Config, Model, ModelInfo, MoeConfig, RouterKind, SimplicialVariant, TokenBatch,
};

const C: usize = 12;
const HID: usize = 20;

fn layer(cfg: &MoeConfig, seed: u64) -> anyhow::Result<(VarMap, MoeMlp)> {
    let vm = VarMap::new();
    let m = MoeMlp::new(
        cfg,
        C,
        HID,
        0.3,
        VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu),
    )?;
    randomize(&vm, 0.4, seed)?;
    Ok((vm, m))
}

fn get(vm: &VarMap, name: &str) -> Tensor {
    vm.data().lock().unwrap()[name].as_tensor().clone()
}

fn host(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn configs() -> Vec<MoeConfig> {
    let base = MoeConfig::new(5, 2);
    vec![
        base.clone(),
        MoeConfig {
            router: RouterKind::Sigmoid,
            ..base.clone()
        },
        MoeConfig {
            normalize: false,
            top_k: 1,
            ..base.clone()
        },
        MoeConfig {
            shared_experts: 1,
            expert_hidden: Some(7),
            ..base.clone()
        },
        MoeConfig {
            capacity_factor: Some(0.6),
            top_k: 3,
            ..base.clone()
        },
    ]
}

/// The layer's output is the weighted sum of its chosen experts (plus the shared ones), and
/// its load-balancing and z losses are the direct formulas.
#[test]
fn layer_equals_per_token_computation() -> anyhow::Result<()> {
    for (i, cfg) in configs().iter().enumerate() {
        let (vm, m) = layer(cfg, 3 + i as u64)?;
        let x = Tensor::randn(0f64, 1.0, (2, 9, C), &Device::Cpu)?;
        let (out, stats) = m.forward(&x)?;
        let xt = x.reshape((18, C))?;
        // routing by hand, in f64 on the host
        let logits = xt.matmul(&get(&vm, "router.weight").t()?)?;
        let lg: Vec<Vec<f64>> = logits.to_vec2()?;
        let (e, k) = (cfg.experts, cfg.top_k);
        let mut ids = Vec::new();
        let mut weights = Vec::new();
        let (mut counts, mut psum) = (vec![0.0; e], vec![0.0; e]);
        let mut z = 0.0;
        for row in &lg {
            let mx = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = mx + row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            z += lse * lse / 18.0;
            let p: Vec<f64> = match cfg.router {
                RouterKind::Softmax => row.iter().map(|v| (v - lse).exp()).collect(),
                RouterKind::Sigmoid => row.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            };
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap().then(a.cmp(&b)));
            let chosen = &order[..k];
            let norm: f64 = if cfg.normalize {
                chosen.iter().map(|&j| p[j]).sum()
            } else {
                1.0
            };
            for &j in chosen {
                ids.push(j as u32);
                weights.push(p[j] / norm);
                counts[j] += 1.0;
            }
            let ps: f64 = if cfg.router == RouterKind::Sigmoid {
                p.iter().sum()
            } else {
                1.0
            };
            for j in 0..e {
                psum[j] += p[j] / ps / 18.0;
            }
        }
        let w = Tensor::from_vec(weights, (18, k), &Device::Cpu)?;
        let capacity = cfg
            .capacity_factor
            .map(|f| (f * (18 * k) as f64 / e as f64).ceil() as usize);
        let mut want = moe_reference(
            &xt,
            &ids,
            &w,
            &get(&vm, "experts.gate_up"),
            &get(&vm, "experts.down"),
            capacity,
        )?;
        if cfg.shared_experts > 0 {
            let gu = xt.matmul(&get(&vm, "shared.gate_up.weight").t()?)?;
            let h = gu.dim(1)? / 2;
            let act = (gu.narrow(1, 0, h)?.silu()? * gu.narrow(1, h, h)?)?;
            want = (want + act.matmul(&get(&vm, "shared.down.weight").t()?)?)?;
        }
        common::assert_close(
            &format!("config {i}: out"),
            &host(&out),
            &host(&want),
            1e-10,
            1e-12,
        );
        let balance = e as f64
            * (0..e)
                .map(|j| counts[j] / (18 * k) as f64 * psum[j])
                .sum::<f64>();
        let got_b = stats.balance_loss.to_scalar::<f64>()?;
        assert!(
            (got_b - balance).abs() < 1e-10 * balance.max(1.0),
            "config {i}: balance {got_b} vs {balance}"
        );
        let got_z = stats.z_loss.to_scalar::<f64>()?;
        assert!(
            (got_z - z).abs() < 1e-10 * z.max(1.0),
            "config {i}: z {got_z} vs {z}"
        );
        let load: Vec<u32> = stats.load.to_vec1()?;
        assert_eq!(
            load.iter().map(|&v| v as f64).collect::<Vec<_>>(),
            counts,
            "config {i}: load"
        );
    }
    Ok(())
}

/// Every weight's gradient (router included, through the routing weights, the balance loss and
/// the z-loss) against central differences of `sum(out * dy) + balance + z`.
#[test]
fn layer_gradients_match_finite_differences() -> anyhow::Result<()> {
    for (i, cfg) in configs().iter().enumerate() {
        let (vm, m) = layer(cfg, 30 + i as u64)?;
        let x = Tensor::randn(0f64, 1.0, (14, C), &Device::Cpu)?;
        let dy = Tensor::randn(0f64, 1.0, (14, C), &Device::Cpu)?;
        let objective = |m: &MoeMlp| -> anyhow::Result<Tensor> {
            let (out, s) = m.forward(&x)?;
            let aux = (s.balance_loss + s.z_loss)?.to_dtype(DType::F64)?;
            Ok(((out * &dy)?.sum_all()? + aux)?)
        };
        let grads = objective(&m)?.backward()?;
        let data = vm.data().lock().unwrap().clone();
        for (name, var) in &data {
            let Some(g) = grads.get(var.as_tensor()) else {
                panic!("config {i}: no gradient for {name}")
            };
            let g = host(g);
            let v0 = host(var.as_tensor());
            for idx in (0..v0.len()).step_by(7) {
                let h = 1e-5;
                let at = |d: f64| -> anyhow::Result<f64> {
                    let mut v = v0.clone();
                    v[idx] += d;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
                    Ok(objective(&m)?.to_scalar::<f64>()?)
                };
                let fd = (at(h)? - at(-h)?) / (2.0 * h);
                var.set(&Tensor::from_vec(v0.clone(), var.shape(), &Device::Cpu)?)?;
                assert!(
                    (fd - g[idx]).abs() < 1e-5 * (1.0 + fd.abs()),
                    "config {i}: d{name}[{idx}] {} vs {fd}",
                    g[idx]
                );
            }
        }
    }
    Ok(())
}

fn moe_cfg(moe: MoeConfig) -> Config {
    Config {
        moe: Some(moe),
        ..small_cfg("DSD", SimplicialVariant::Trilinear, false)
    }
}

/// Total and active parameter counts equal the built model's variables.
#[test]
fn info_counts_total_and_active_parameters() -> anyhow::Result<()> {
    let moe = MoeConfig {
        shared_experts: 1,
        layers: Some(vec![0, 2]),
        ..MoeConfig::new(6, 2)
    };
    let cfg = moe_cfg(moe.clone());
    let vm = VarMap::new();
    Model::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let total: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    let info = ModelInfo::new(&cfg, 16);
    assert_eq!(info.params_total as usize, total);
    let h = moe.hidden(cfg.mlp_hidden);
    // the 4 routed experts a token skips in each of the 2 MoE layers
    let idle = 2 * 4 * 3 * C * h;
    assert_eq!(
        info.params_active as usize,
        info.params_non_embedding as usize - idle
    );
    let dense = ModelInfo::new(
        &Config {
            moe: None,
            ..cfg.clone()
        },
        16,
    );
    assert!(info.flops_per_token > dense.flops_per_token * 0.5);
    assert!(format!("{info}").contains("active"));
    Ok(())
}

/// A tiny MoE model (softmax router, capacity) overfits one batch through the training loss,
/// its aux losses and loads come out, and a capacity drops assignments without breaking it.
#[test]
fn tiny_moe_model_trains() -> anyhow::Result<()> {
    let cfg = Config {
        vocab_size: 32,
        ..moe_cfg(MoeConfig {
            capacity_factor: Some(1.5),
            ..MoeConfig::new(4, 2)
        })
    };
    let vm = VarMap::new();
    let model = Model::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let t = tokens(4, 21, cfg.vocab_size, 5)?;
    let ids: Vec<u32> = t.flatten_all()?.to_vec1()?;
    let (mut inp, mut tgt) = (Vec::new(), Vec::new());
    for r in ids.chunks(21) {
        inp.extend_from_slice(&r[..20]);
        tgt.extend_from_slice(&r[1..]);
    }
    let batch = TokenBatch::new(&inp, &tgt, (4, 20), &cfg, &Device::Cpu)?;
    let mut opt = AdamW::new(
        vm.all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let first = model.training_loss(&batch)?;
    let moe = first.moe.as_ref().expect("an MoE model has aux losses");
    assert_eq!(moe.load.dims(), &[3, 4]);
    let load: Vec<Vec<u32>> = moe.load.to_vec2()?;
    assert!(load.iter().all(|l| l.iter().sum::<u32>() == 4 * 20 * 2));
    let b0 = moe.balance.to_scalar::<f32>()?;
    assert!(
        b0 >= 0.99,
        "the balance loss is at least 1 (equality when balanced): {b0}"
    );
    let lm0 = first.lm.to_scalar::<f32>()?;
    for _ in 0..60 {
        opt.backward_step(&model.training_loss(&batch)?.total)?;
    }
    let last = model.training_loss(&batch)?;
    let lm1 = last.lm.to_scalar::<f32>()?;
    assert!(lm1 < lm0 / 5.0, "lm loss {lm0} -> {lm1}");
    assert_eq!(
        model.loss(&batch)?.to_scalar::<f32>()?,
        lm1,
        "loss() is the LM loss only"
    );
    Ok(())
}

#[test]
fn bad_moe_configs_name_the_key() {
    let base = small_cfg("DSD", SimplicialVariant::Trilinear, false);
    let cases = [
        (MoeConfig::new(4, 5), "moe.top_k"),
        (MoeConfig::new(0, 1), "moe.experts"),
        (
            MoeConfig {
                layers: Some(vec![3]),
                ..MoeConfig::new(4, 2)
            },
            "moe.layers",
        ),
        (
            MoeConfig {
                capacity_factor: Some(0.0),
                ..MoeConfig::new(4, 2)
            },
            "moe.capacity_factor",
        ),
        (
            MoeConfig {
                balance_weight: -1.0,
                ..MoeConfig::new(4, 2)
            },
            "moe.balance_weight",
        ),
    ];
    for (moe, key) in cases {
        let e = Config {
            moe: Some(moe),
            ..base.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
    let text = base.to_toml_string().unwrap() + "\n[moe]\ntop_k = 2\n";
    let e = Config::from_toml_str(&text).unwrap_err().to_string();
    assert!(e.contains("moe.experts"), "{e}");
    let _ = D::Minus1;
}
