//! Config: presets, TOML round trips, parameter counts, and bad input named by key.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::small_cfg;
use simplex_model::{Config, Model, ModelInfo, SimplicialVariant, PRESETS};

const TINY_TOML: &str = r#"
vocab_size = 256
d_model = 64
pattern = "DLS"
heads_q = 4
window = 16
mlp_hidden = 128
max_seq_len = 64

[simplicial]
heads_kv = 2
head_dim = 12
w1 = 8
w2 = 4
variant = "determinant"
"#;

fn err(text: &str) -> String {
    match Config::from_toml_str(text) {
        Ok(c) => panic!("accepted a bad config: {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// `TINY_TOML` with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(TINY_TOML.contains(from), "{from}");
    TINY_TOML.replacen(from, to, 1)
}

#[test]
fn toml_parses_with_defaults_and_round_trips() -> anyhow::Result<()> {
    let c = Config::from_toml_str(TINY_TOML)?;
    assert_eq!(c.dot_heads().kv, 4);
    assert_eq!(c.dot_heads().dim, 16);
    assert_eq!(c.simplicial_heads().q, 4);
    assert_eq!(c.simplicial.variant, SimplicialVariant::Determinant);
    assert!(c.tie_embeddings);
    assert_eq!(Config::from_toml_str(&c.to_toml_string()?)?, c);
    Ok(())
}

#[test]
fn presets_validate_round_trip_and_have_their_sizes() -> anyhow::Result<()> {
    let sizes = [
        (0.5, 1.5),
        (4.0, 10.0),
        (26.6, 26.8),
        (90.0, 115.0),
        (280.0, 340.0),
        (0.5, 1.5),
        (26.6, 26.8),
        (25.6, 25.8),
    ];
    for (name, (lo, hi)) in PRESETS.iter().zip(sizes) {
        let c = Config::preset(name)?;
        assert_eq!(Config::from_toml_str(&c.to_toml_string()?)?, c, "{name}");
        let m = ModelInfo::new(&c, c.max_seq_len).params_active as f64 / 1e6;
        assert!(
            m > lo && m < hi,
            "{name}: {m}M active non-embedding parameters"
        );
    }
    let e = Config::preset("huge").unwrap_err().to_string();
    assert!(
        e.contains("unknown preset `huge`") && e.contains("tiny"),
        "{e}"
    );
    Ok(())
}

#[test]
fn parameter_counts_match_the_built_model() -> anyhow::Result<()> {
    for (pattern, tied) in [("DLS", false), ("SDL", true)] {
        let c = Config {
            tie_embeddings: tied,
            ..small_cfg(pattern, SimplicialVariant::Determinant, false)
        };
        let vm = VarMap::new();
        Model::new(&c, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
        let built: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        let info = ModelInfo::new(&c, 16);
        assert_eq!(info.params_total as usize, built, "{pattern} tied={tied}");
        assert_eq!(
            info.params_embedding as usize,
            if tied { 1 } else { 2 } * 19 * 12
        );
    }
    Ok(())
}

#[test]
fn flops_follow_the_stated_convention() -> anyhow::Result<()> {
    let c = Config::from_toml_str(TINY_TOML)?;
    let info = ModelInfo::new(&c, 10);
    let s = info
        .layers
        .iter()
        .find(|l| l.kind == simplex_model::LayerKind::Simplicial)
        .expect("S");
    // pairs per query at seq 10, windows (8, 4): sum_i min(i+1,8) * min(i+1,4) / 10
    let pairs: f64 = (1..=10usize)
        .map(|i| (i.min(8) * i.min(4)) as f64)
        .sum::<f64>()
        / 10.0;
    assert!(
        (s.attn_flops - 4.0 * 4.0 * 24.0 * pairs).abs() < 1e-9,
        "{}",
        s.attn_flops
    );
    let l = info
        .layers
        .iter()
        .find(|l| l.kind == simplex_model::LayerKind::Local)
        .expect("L");
    let keys: f64 = (1..=10usize).map(|i| i.min(16) as f64).sum::<f64>() / 10.0;
    assert!((l.attn_flops - 4.0 * 64.0 * keys).abs() < 1e-9);
    assert!(info.to_string().contains("non-embedding"));
    Ok(())
}

#[test]
fn bad_configs_name_the_key() {
    let cases = [
        (
            edit("pattern = \"DLS\"", "pattern = \"DXS\""),
            "`pattern`",
            "letter `X` at position 1",
        ),
        (
            edit("pattern = \"DLS\"", "pattern = \"\""),
            "`pattern`",
            "at least one layer",
        ),
        (
            edit("d_model = 64", "d_model = 66"),
            "`d_model` = 66",
            "not divisible by heads_q = 4",
        ),
        (
            edit("window = 16", "window = 0"),
            "`window` = 0",
            "at least 1",
        ),
        (
            edit("heads_q = 4", "heads_q = 4\nheads_kv = 3"),
            "`heads_q` = 4",
            "not a multiple of heads_kv = 3",
        ),
        (
            edit("head_dim = 12", "head_dim = 8"),
            "`simplicial.head_dim` = 8",
            "multiple of 3",
        ),
        (
            edit("w1 = 8", "w1 = 0"),
            "`simplicial.w1` = 0",
            "at least 1",
        ),
        (
            edit("heads_kv = 2", "heads_kv = 3"),
            "`simplicial.heads_q` = 4",
            "simplicial.heads_kv = 3",
        ),
        (
            edit("heads_q = 4", "heads_q = 4\nhead_dim = 7"),
            "`head_dim` = 7",
            "even",
        ),
        (
            edit(
                "variant = \"determinant\"",
                "variant = \"trilinear\"\nrotate = true",
            ),
            "`simplicial.rotate`",
            "determinant",
        ),
        (
            edit("max_seq_len = 64", "max_seq_len = 0"),
            "`max_seq_len` = 0",
            "at least 1",
        ),
        (
            edit("vocab_size = 256", "vocab_size = 256\nnorm_eps = -1.0"),
            "`norm_eps` = -1",
            "positive",
        ),
    ];
    for (text, key, reason) in cases {
        let e = err(&text);
        assert!(
            e.contains(key) && e.contains(reason),
            "want {key} / {reason}, got: {e}"
        );
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_rejected() {
    let e = err(&edit("window = 16", "window = 16\nwindw = 3"));
    assert!(e.contains("unknown field `windw`"), "{e}");
    let e = err(&edit("w2 = 4", "w2 = 4\nw3 = 5"));
    assert!(e.contains("unknown field `w3`"), "{e}");
    let e = err(&edit("variant = \"determinant\"", "variant = \"cubic\""));
    assert!(e.contains("cubic") && e.contains("trilinear"), "{e}");
    let e = err(&edit("d_model = 64", "d_model = \"big\""));
    assert!(e.contains("d_model") || e.contains("invalid type"), "{e}");
    // every absent required key at once, section keys dotted
    let e = err("vocab_size = 10");
    assert!(
        e.contains("d_model, pattern, heads_q, mlp_hidden, max_seq_len"),
        "{e}"
    );
    let e = err(&edit("d_model = 64", "")
        .replace("w1 = 8", "")
        .replace("mlp_hidden = 128", ""));
    assert!(e.contains("d_model, mlp_hidden, simplicial.w1"), "{e}");
    assert!(!e.contains("vocab_size") && !e.contains("w2"), "{e}");
    // a section that is absent takes its defaults
    let no_section = "vocab_size = 10\nd_model = 8\npattern = \"D\"\nheads_q = 2\nmlp_hidden = 8\nmax_seq_len = 8\n";
    Config::from_toml_str(no_section).expect("no [simplicial] section");
}

#[test]
fn bad_tokens_are_errors() -> anyhow::Result<()> {
    let c = small_cfg("DLS", SimplicialVariant::Trilinear, false);
    let vm = VarMap::new();
    let model = Model::new(&c, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
    let dev = Device::Cpu;
    let e = model
        .forward(&Tensor::new(&[[1u32, 19]], &dev)?)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("token id 19") && e.contains("vocab_size = 19"),
        "{e}"
    );
    let e = model
        .forward(&Tensor::new(&[1u32, 2], &dev)?)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected [batch, seq]"), "{e}");
    let e = model
        .forward(&Tensor::zeros((1, 33), DType::U32, &dev)?)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_seq_len = 32"), "{e}");
    let e = model
        .forward(&Tensor::zeros((1, 3), DType::F32, &dev)?)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected u32"), "{e}");
    let bad = Config { window: 0, ..c };
    let e = Model::new(&bad, VarBuilder::from_varmap(&vm, DType::F32, &dev))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`window` = 0"), "{e}");
    Ok(())
}

/// The keys of a TOML document, section keys as `section.key`.
fn keys(text: &str) -> std::collections::BTreeSet<String> {
    let t: toml::Table = toml::from_str(text).expect("TOML");
    let mut out = std::collections::BTreeSet::new();
    for (k, v) in &t {
        match v {
            toml::Value::Table(sub) => out.extend(sub.keys().map(|s| format!("{k}.{s}"))),
            _ => {
                out.insert(k.clone());
            }
        }
    }
    out
}

#[test]
fn the_full_toml_has_every_key_and_reads_back() -> anyhow::Result<()> {
    let mut cfgs: Vec<Config> = PRESETS
        .iter()
        .map(|p| Config::preset(p))
        .collect::<Result<_, _>>()?;
    cfgs.push(Config::from_toml_str(TINY_TOML)?);
    for cfg in cfgs {
        let full = cfg.to_full_toml_string();
        let back = Config::from_toml_str(&full)?;
        // the optional head layouts come back as their resolved values
        let mut resolved = cfg.clone();
        let (d, s) = (cfg.dot_heads(), cfg.simplicial_heads());
        resolved.heads_kv = Some(d.kv);
        resolved.head_dim = Some(d.dim);
        resolved.simplicial.heads_q = Some(s.q);
        resolved.simplicial.heads_kv = Some(s.kv);
        resolved.simplicial.head_dim = Some(s.dim);
        if let Some(m) = resolved.moe.as_mut() {
            m.expert_hidden = Some(m.hidden(cfg.mlp_hidden));
        }
        assert_eq!(back, resolved, "{full}");
        // every key that the config has: serialize one with nothing left at a skipped default
        let mut every = resolved.clone();
        every.bidirectional = true;
        every.rope = false;
        assert_eq!(keys(&full), keys(&every.to_toml_string()?), "{full}");
        assert!(
            full.contains("[simplicial]") && full.contains("# "),
            "{full}"
        );
    }
    Ok(())
}
