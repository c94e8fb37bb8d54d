//! Log-log plots, one per eval set: each kind's points, its fitted power law
//! `L = exp(-(alpha ln N + beta))` (solid), its saturating fit `E + A N^-alpha_sat` (dashed) and
//! the 95% band of the bootstrap refits of the latter (shaded), to PNG and SVG.
//!
//! The PNG's text is drawn with DejaVu Sans compiled into the binary (plotters' `ab_glyph`
//! backend, the font file of simplex-train), so it needs no system fonts; the SVG leaves fonts
//! to the viewer.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{FitError, Result};
use crate::fit::{GroupFit, Report};
use crate::report::num;

static FONT: &[u8] = include_bytes!("../../simplex-train/assets/DejaVuSans.ttf");

/// Sizes along the x axis at which the lines and the band are evaluated.
const GRID: usize = 80;

fn register_font(path: &Path) -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(FitError::Plot {
            path: path.to_path_buf(),
            reason: "the embedded font DejaVuSans.ttf did not load".into(),
        })
    }
}

/// What one kind contributes to a plot, in data coordinates.
struct Series {
    label: String,
    color: RGBAColor,
    points: Vec<(f64, f64)>,
    power_law: Vec<(f64, f64)>,
    saturating: Vec<(f64, f64)>,
    /// (n, low, high) of the bootstrap band; empty without bootstrap.
    band: Vec<(f64, f64, f64)>,
}

/// The chart's ranges and the series, everything clamped into the y range (plotters does not
/// clip lines to the plotting area).
struct Chart {
    title: String,
    x_desc: String,
    x: (f64, f64),
    y: (f64, f64),
    series: Vec<Series>,
}

fn log_grid(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.ln(), hi.ln());
    (0..GRID)
        .map(|i| (a + (b - a) * i as f64 / (GRID - 1) as f64).exp())
        .collect()
}

fn build(report: &Report, eval_set: &str) -> Chart {
    let fits: Vec<&GroupFit> = report.of_eval_set(eval_set).collect();
    let all = || fits.iter().flat_map(|f| f.points.iter());
    let n_min = all().map(|p| p.n).fold(f64::MAX, f64::min);
    let n_max = all().map(|p| p.n).fold(f64::MIN, f64::max);
    let l_min = all().map(|p| p.loss).fold(f64::MAX, f64::min);
    let l_max = all().map(|p| p.loss).fold(f64::MIN, f64::max);
    let x = (n_min / 1.5, n_max * 1.5);
    // the points' loss range, widened by 10% (in log) and then to the fitted lines at the x
    // range's ends, but never beyond 1.5x past the points
    let (mut y0, mut y1) = (l_min / 1.1, l_max * 1.1);
    for f in &fits {
        for n in [x.0, x.1] {
            for l in [f.power_law.predict(n), f.saturating.predict(n)] {
                if l.is_finite() && l > 0.0 {
                    y0 = y0.min(l.max(l_min / 1.5));
                    y1 = y1.max(l.min(l_max * 1.5));
                }
            }
        }
    }
    let clamp = |l: f64| if l.is_nan() { y0 } else { l.clamp(y0, y1) };
    let grid = log_grid(x.0, x.1);
    let series = fits
        .iter()
        .map(|f| {
            let index = report.kinds.iter().position(|k| *k == f.kind).unwrap_or(0);
            let band = f.bootstrap.band(&grid).unwrap_or_default();
            Series {
                label: format!(
                    "{}: alpha = {}, alpha_sat = {}",
                    f.kind,
                    num(f.power_law.alpha),
                    num(f.saturating.alpha_sat)
                ),
                color: Palette99::pick(index).to_rgba(),
                points: f.points.iter().map(|p| (p.n, p.loss)).collect(),
                power_law: grid
                    .iter()
                    .map(|&n| (n, clamp(f.power_law.predict(n))))
                    .collect(),
                saturating: grid
                    .iter()
                    .map(|&n| (n, clamp(f.saturating.predict(n))))
                    .collect(),
                band: grid
                    .iter()
                    .zip(band)
                    .map(|(&n, [lo, hi])| (n, clamp(lo), clamp(hi)))
                    .collect(),
            }
        })
        .collect();
    Chart {
        title: format!("{eval_set}: loss against {}", report.params_column),
        x_desc: format!("N = {} (log scale)", report.params_column),
        x,
        y: (y0, y1),
        series,
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    c: &Chart,
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&c.title, ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (c.x.0..c.x.1)
                .log_scale()
                .with_key_points(ticks(c.x.0, c.x.1, 8)),
            (c.y.0..c.y.1)
                .log_scale()
                .with_key_points(ticks(c.y.0, c.y.1, 10)),
        )
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(&c.x_desc)
        .x_label_formatter(&|x| tick_label(*x))
        .y_desc("loss (log scale)")
        .y_label_formatter(&|y| tick_label(*y))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    // bands first, so lines and points stay on top
    for s in c.series.iter().filter(|s| !s.band.is_empty()) {
        let outline: Vec<(f64, f64)> = s
            .band
            .iter()
            .map(|&(n, _, hi)| (n, hi))
            .chain(s.band.iter().rev().map(|&(n, lo, _)| (n, lo)))
            .collect();
        chart
            .draw_series(std::iter::once(Polygon::new(
                outline,
                s.color.mix(0.15).filled(),
            )))
            .map_err(e)?;
    }
    for s in &c.series {
        let color = s.color;
        chart
            .draw_series(DashedLineSeries::new(
                s.saturating.iter().copied(),
                6,
                4,
                color.stroke_width(1),
            ))
            .map_err(e)?;
        chart
            .draw_series(LineSeries::new(
                s.power_law.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(&s.label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(e)?;
    }
    // legend entries for the line styles
    let gray = BLACK.mix(0.6);
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
        .map_err(e)?
        .label("solid: -log L = alpha log N + beta")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], gray.stroke_width(2)));
    chart
        .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
        .map_err(e)?
        .label("dashed: E + A N^-alpha_sat, shaded: 95% bootstrap band")
        .legend(move |(x, y)| {
            Rectangle::new([(x, y - 5), (x + 20, y + 5)], gray.mix(0.3).filled())
        });
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

/// Tick values for a log axis on [lo, hi]: mantissas times powers of 10, from the sparsest set
/// of mantissas (1) to the densest (1.0, 1.1, ..., 9.9), the densest giving at most `max`
/// ticks (or the sparsest giving at least 2, if none does).
fn ticks(lo: f64, hi: f64, max: usize) -> Vec<f64> {
    let fine: Vec<f64> = (10..100).map(|m| f64::from(m) / 10.0).collect();
    let sets: [&[f64]; 5] = [
        &[1.0],
        &[1.0, 2.0, 5.0],
        &[1.0, 1.5, 2.0, 3.0, 5.0, 7.0],
        &[1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0],
        &fine,
    ];
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mut best = Vec::new();
    for set in sets {
        let t: Vec<f64> = (k0..=k1)
            .flat_map(|k| set.iter().map(move |m| m * 10f64.powi(k)))
            .filter(|v| (lo..=hi).contains(v))
            .collect();
        if t.len() > max && best.len() >= 2 {
            break;
        }
        best = t;
        if best.len() > max {
            break;
        }
    }
    best
}

/// A tick's text: up to 3 significant digits, trailing zeros dropped; `2.5e6` style from 1e4.
fn tick_label(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if v <= 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let k = v.log10().floor() as i32;
    if (-3..4).contains(&k) {
        trim(format!("{v:.prec$}", prec = (2 - k).max(0) as usize))
    } else {
        let m = v / 10f64.powi(k);
        format!("{}e{k}", trim(format!("{m:.2}")))
    }
}

/// The file name part for an eval set: letters, digits, `-`, `_` and `.` kept, others `_`.
fn file_stem(eval_set: &str) -> String {
    eval_set
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Draws the plot of `eval_set` to `dir/fit-<eval_set>.png` and `.svg` (characters other than
/// letters, digits, `-`, `_`, `.` of the eval set become `_`); returns the two paths.
pub fn plot_eval_set(report: &Report, eval_set: &str, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let stem = format!("fit-{}", file_stem(eval_set));
    let (png, svg) = (
        dir.join(format!("{stem}.png")),
        dir.join(format!("{stem}.svg")),
    );
    register_font(&png)?;
    let chart = build(report, eval_set);
    let size = (1000, 650);
    draw(BitMapBackend::new(&png, size).into_drawing_area(), &chart).map_err(|reason| {
        FitError::Plot {
            path: png.clone(),
            reason,
        }
    })?;
    draw(SVGBackend::new(&svg, size).into_drawing_area(), &chart).map_err(|reason| {
        FitError::Plot {
            path: svg.clone(),
            reason,
        }
    })?;
    Ok((png, svg))
}

#[cfg(test)]
mod tests {
    use super::{tick_label, ticks};

    #[test]
    fn ticks_are_round_and_as_dense_as_allowed() {
        assert_eq!(ticks(5e5, 2e10, 8), [1e6, 1e7, 1e8, 1e9, 1e10]);
        assert_eq!(ticks(1.75, 6.2, 10), [2.0, 2.5, 3.0, 4.0, 5.0, 6.0]);
        let narrow = ticks(2.52, 2.93, 10);
        assert_eq!(narrow.len(), 4, "{narrow:?}");
        assert_eq!(tick_label(2.5e6), "2.5e6");
        assert_eq!(tick_label(1e10), "1e10");
        assert_eq!(tick_label(2.5), "2.5");
        assert_eq!(tick_label(3.0), "3");
        assert_eq!(tick_label(0.0123), "0.0123");
    }
}
