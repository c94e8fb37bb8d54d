//! Curves of one or more runs, to `loss.png` and `loss.svg`: training loss (thin line) and
//! held-out loss (thick line with points) against the step and against tokens seen (so runs
//! with different batch sizes compare), and the learning rate against the step.
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

/// One metrics row's point: step, tokens seen, value.
type Point = (f64, f64, f64);

/// One run's curves.
struct Curves {
    label: String,
    train: Vec<Point>,
    val: Vec<Point>,
    lr: Vec<Point>,
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
    let at = |r: &Record, v: f64| (r.step as f64, r.tokens_seen as f64, v);
    Ok(Curves {
        label,
        train: recs
            .iter()
            .filter(|r| r.train_loss.is_finite())
            .map(|r| at(r, r.train_loss))
            .collect(),
        val: recs
            .iter()
            .filter_map(|r| r.val_loss.map(|v| at(r, v)))
            .collect(),
        lr: recs.iter().map(|r| at(r, r.lr)).collect(),
    })
}

/// What one panel draws: against steps or tokens seen, the losses or the learning rate.
#[derive(Clone, Copy, PartialEq)]
enum Panel {
    LossBySteps,
    LossByTokens,
    LrBySteps,
}

impl Panel {
    fn x(self, p: &Point) -> f64 {
        if self == Panel::LossByTokens {
            p.1
        } else {
            p.0
        }
    }
}

/// `1.2M`-style numbers for the tokens axis.
fn short(x: f64) -> String {
    match x.abs() {
        v if v >= 1e9 => format!("{:.1}G", x / 1e9),
        v if v >= 1e6 => format!("{:.1}M", x / 1e6),
        v if v >= 1e3 => format!("{:.0}k", x / 1e3),
        _ => format!("{x:.0}"),
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    runs: &[Curves],
    panel: Panel,
) -> std::result::Result<(), String> {
    let e = |x: DrawingAreaErrorKind<DB::ErrorType>| x.to_string();
    let series = |c: &'_ Curves| -> Vec<(Vec<Point>, bool)> {
        if panel == Panel::LrBySteps {
            vec![(c.lr.clone(), false)]
        } else {
            vec![(c.train.clone(), false), (c.val.clone(), true)]
        }
    };
    let (mut x1, mut y0, mut y1) = (1f64, f64::MAX, f64::MIN);
    for c in runs {
        for (pts, _) in series(c) {
            for p in &pts {
                x1 = x1.max(panel.x(p));
                y0 = y0.min(p.2);
                y1 = y1.max(p.2);
            }
        }
    }
    if y0 > y1 {
        (y0, y1) = (0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(if panel == Panel::LrBySteps {
        1e-9
    } else {
        1e-3
    });
    let (caption, x_desc, y_desc) = match panel {
        Panel::LossBySteps => ("loss by step", "step", "cross-entropy (nats/token)"),
        Panel::LossByTokens => (
            "loss by tokens seen",
            "tokens seen",
            "cross-entropy (nats/token)",
        ),
        Panel::LrBySteps => ("learning rate", "step", "lr"),
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x1, (y0 - pad)..(y1 + pad))
        .map_err(e)?;
    let tokens = panel == Panel::LossByTokens;
    let lr = panel == Panel::LrBySteps;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .x_label_formatter(&|x| if tokens { short(*x) } else { format!("{x:.0}") })
        .y_desc(y_desc)
        .y_label_formatter(&|y| {
            if lr {
                format!("{y:.1e}")
            } else {
                format!("{y:.2}")
            }
        })
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    for (i, c) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        for (pts, held_out) in series(c) {
            if pts.is_empty() {
                continue;
            }
            let xy: Vec<(f64, f64)> = pts.iter().map(|p| (panel.x(p), p.2)).collect();
            let (style, what) = if held_out {
                (color.stroke_width(3), "val")
            } else if lr {
                (color.stroke_width(2), "lr")
            } else {
                (color.mix(0.45).stroke_width(1), "train")
            };
            let line = LineSeries::new(xy, style).point_size(if held_out { 3 } else { 0 });
            chart
                .draw_series(line)
                .map_err(e)?
                .label(format!("{} {what}", c.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// Three panels: loss against steps and against tokens seen (runs with different batch sizes
/// compare on the second), and the learning rate against steps.
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    runs: &[Curves],
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|x| x.to_string())?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 * 3 / 5);
    let (left, right) = top.split_horizontally(top.dim_in_pixel().0 / 2);
    draw_panel(&left, runs, Panel::LossBySteps)?;
    draw_panel(&right, runs, Panel::LossByTokens)?;
    draw_panel(&bottom, runs, Panel::LrBySteps)?;
    root.present().map_err(|x| x.to_string())?;
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
    let size = (1400, 900);
    draw(BitMapBackend::new(&png, size).into_drawing_area(), &curves)
        .map_err(|r| TrainError::data(&png, format!("cannot draw: {r}")))?;
    draw(SVGBackend::new(&svg, size).into_drawing_area(), &curves)
        .map_err(|r| TrainError::data(&svg, format!("cannot draw: {r}")))?;
    Ok((png, svg))
}
