//! The comparison's plot: validation scores against steps, per-token accuracy (left) and exact
//! match (right); one color per attention kind, the range over seeds (min..max) shaded, a thick
//! line through the median over seeds, the constant baseline dashed. `val_accuracy.png` (text in
//! the embedded DejaVu Sans) and `val_accuracy.svg`.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::classify::kind::AttnKind;
use crate::classify::report::{CompareReport, Spread};
use crate::classify::run::CurvePoint;
use crate::error::{IoContext, Result, TrainError};
use crate::plot::register_font;

/// The color of a kind (the same in every plot).
fn color(kind: AttnKind) -> RGBAColor {
    match kind {
        AttnKind::Dot => RGBColor(214, 39, 40),
        AttnKind::Trilinear => RGBColor(31, 119, 180),
        AttnKind::Determinant => RGBColor(44, 160, 44),
    }
    .to_rgba()
}

/// One panel: which score, its title and the baseline's value (all in %).
struct Panel {
    title: &'static str,
    score: fn(&CurvePoint) -> f64,
    baseline: f64,
}

/// The spread over seeds of one kind's score at each evaluated step.
fn spread(
    report: &CompareReport,
    kind: AttnKind,
    score: fn(&CurvePoint) -> f64,
) -> Vec<(f64, Spread)> {
    let runs: Vec<_> = report.runs.iter().filter(|r| r.kind == kind).collect();
    let steps: Vec<usize> = runs
        .first()
        .map(|r| r.curve.iter().map(|p| p.step).collect())
        .unwrap_or_default();
    steps
        .into_iter()
        .map(|s| {
            let at: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.curve.iter().find(|p| p.step == s))
                .map(|p| 100.0 * score(p))
                .collect();
            (s as f64, Spread::of(&at))
        })
        .collect()
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &CompareReport,
    panel: &Panel,
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    let kinds: Vec<(AttnKind, Vec<(f64, Spread)>)> = report
        .settings
        .kinds
        .iter()
        .map(|&k| (k, spread(report, k, panel.score)))
        .collect();
    let lowest = kinds
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.1.min))
        .fold(panel.baseline, f64::min);
    let y0 = (lowest - 3.0).clamp(0.0, 95.0);
    let x1 = report.settings.optim.steps.max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x1, y0..100.5)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("%")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    let grey = BLACK.mix(0.5);
    let base = panel.baseline;
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, base), (x1, base)],
            6,
            4,
            grey.stroke_width(1),
        ))
        .map_err(e)?
        .label(format!("majority class ({base:.1}%)"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1)));
    for (kind, s) in &kinds {
        let c = color(*kind);
        let band: Vec<(f64, f64)> = s
            .iter()
            .map(|(x, p)| (*x, p.max))
            .chain(s.iter().rev().map(|(x, p)| (*x, p.min)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(band, c.mix(0.18).filled())))
            .map_err(e)?;
        let params = report
            .summary
            .iter()
            .find(|k| k.kind == *kind)
            .map_or(0, |k| k.params);
        chart
            .draw_series(LineSeries::new(
                s.iter().map(|(x, p)| (*x, p.median)),
                c.stroke_width(3),
            ))
            .map_err(e)?
            .label(format!("{kind} ({params} params)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(e)?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    report: &CompareReport,
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let s = &report.settings;
    let title = format!(
        "{}: validation, {} steps, d_model {}, {} layer(s); line: median of {} seed(s), shaded: min..max",
        s.task,
        s.optim.steps,
        s.size.d_model,
        s.size.layers,
        s.seeds.len()
    );
    let root = root.titled(&title, ("sans-serif", 22)).map_err(e)?;
    let (left, right) = root.split_horizontally(root.dim_in_pixel().0 / 2);
    let panels = [
        Panel {
            title: "per-token accuracy",
            score: |p| p.val_token_accuracy,
            baseline: 100.0 * report.baseline.token_accuracy,
        },
        Panel {
            title: "exact match (every labeled token right)",
            score: |p| p.val_exact_match,
            baseline: 100.0 * report.baseline.exact_match,
        },
    ];
    draw_panel(&left, report, &panels[0])?;
    draw_panel(&right, report, &panels[1])?;
    root.present().map_err(e)?;
    Ok(())
}

/// Draws `out/val_accuracy.png` and `out/val_accuracy.svg`; returns the two paths.
pub fn plot_compare(report: &CompareReport, out: &Path) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out).at(out)?;
    register_font()?;
    let (png, svg) = (out.join("val_accuracy.png"), out.join("val_accuracy.svg"));
    let size = (1400, 600);
    draw(BitMapBackend::new(&png, size).into_drawing_area(), report)
        .map_err(|r| TrainError::data(&png, format!("cannot draw: {r}")))?;
    draw(SVGBackend::new(&svg, size).into_drawing_area(), report)
        .map_err(|r| TrainError::data(&svg, format!("cannot draw: {r}")))?;
    Ok((png, svg))
}
