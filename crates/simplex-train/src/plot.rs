//! Loss curves of one or more runs: training loss (thin line) and held-out loss (thick line
//! with points) against the step, to `loss.png` and `loss.svg`.
//!
//! The PNG's text is drawn with DejaVu Sans compiled into the binary (plotters' `ab_glyph`
//! backend), so it needs no system fonts; the SVG leaves fonts to the viewer.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{IoContext, Result, TrainError};
use crate::metrics::{read_jsonl, Record};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

pub(crate) fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(TrainError::setting(
            "font",
            "DejaVuSans.ttf",
            "the embedded font did not load",
        ))
    }
}

/// One run's curves.
struct Curves {
    label: String,
    train: Vec<(f64, f64)>,
    val: Vec<(f64, f64)>,
}

fn load(run: &Path) -> Result<Curves> {
    let path = run.join("metrics.jsonl");
    if !path.is_file() {
        return Err(TrainError::data(
            &path,
            "no such file: is this a run folder of `simplex train`?",
        ));
    }
    let recs: Vec<Record> = read_jsonl(&path)?;
    let label = run
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| run.display().to_string());
    Ok(Curves {
        label,
        train: recs
            .iter()
            .filter(|r| r.train_loss.is_finite())
            .map(|r| (r.step as f64, r.train_loss))
            .collect(),
        val: recs
            .iter()
            .filter_map(|r| r.val_loss.map(|v| (r.step as f64, v)))
            .collect(),
    })
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[Curves],
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let pts = runs.iter().flat_map(|c| c.train.iter().chain(&c.val));
    let (mut x1, mut y0, mut y1) = (1f64, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if y0 > y1 {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(&root)
        .caption("loss", ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("cross-entropy (nats/token)")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    for (i, c) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let light = color.mix(0.45);
        chart
            .draw_series(LineSeries::new(
                c.train.iter().copied(),
                light.stroke_width(1),
            ))
            .map_err(e)?
            .label(format!("{} train", c.label))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], light.stroke_width(2))
            });
        if !c.val.is_empty() {
            chart
                .draw_series(
                    LineSeries::new(c.val.iter().copied(), color.stroke_width(3)).point_size(3),
                )
                .map_err(e)?
                .label(format!("{} val", c.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}

/// Draws the runs' loss curves to `out/loss.png` and `out/loss.svg` (default `out`: the first
/// run's `plots/`); returns the two paths.
pub fn plot_runs(runs: &[PathBuf], out: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let first = runs
        .first()
        .ok_or_else(|| TrainError::setting("run", "(none)", "give at least one run folder"))?;
    let curves = runs.iter().map(|r| load(r)).collect::<Result<Vec<_>>>()?;
    let dir = out.map_or_else(|| first.join("plots"), Path::to_path_buf);
    std::fs::create_dir_all(&dir).at(&dir)?;
    register_font()?;
    let (png, svg) = (dir.join("loss.png"), dir.join("loss.svg"));
    let size = (1000, 620);
    draw(BitMapBackend::new(&png, size).into_drawing_area(), &curves)
        .map_err(|r| TrainError::data(&png, format!("cannot draw: {r}")))?;
    draw(SVGBackend::new(&svg, size).into_drawing_area(), &curves)
        .map_err(|r| TrainError::data(&svg, format!("cannot draw: {r}")))?;
    Ok((png, svg))
}
