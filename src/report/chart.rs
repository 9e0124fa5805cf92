//! The progress chart, like autoresearch's progress.png: val_bpb against experiment number, the
//! running best as a falling staircase labelled with what each kept change was, failed runs and
//! replications marked apart, and the noise floor as a band around the best.
//!
//! [`ChartData`] is the picture as values (tested as such); [`svg`] and [`png`] draw it with
//! plotters. Text uses DejaVu Sans, shipped in `assets/fonts` and registered with plotters'
//! ab_glyph backend, so drawing needs no system font library.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::Serialize;

use super::history::{Decision, ResultHistory, RunKind};

/// Pixel size of the chart.
pub const SIZE: (u32, u32) = (1200, 640);
/// The longest annotation, in characters, before it is cut with an ellipsis.
const LABEL_CHARS: usize = 44;

/// Why the chart could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the chart: {0}")]
pub struct ChartError(String);

/// How a point is drawn.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// The baseline run.
    Baseline,
    /// A kept improvement.
    Kept,
    /// Ran, did not improve.
    Discarded,
    /// A re-run of an earlier experiment.
    Replication,
    /// No result: drawn on the chart's top edge.
    Failed,
}

/// One experiment on the chart.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Point {
    /// Experiment number (1-based).
    pub x: usize,
    /// Its val_bpb; `None` for a failed run.
    pub y: Option<f64>,
    /// How it is drawn.
    pub mark: Mark,
    /// For a replication: the number of the experiment it re-ran.
    pub replicates: Option<usize>,
}

/// A label on a kept improvement.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Annotation {
    /// Experiment number.
    pub x: usize,
    /// Its val_bpb.
    pub y: f64,
    /// What changed.
    pub text: String,
}

/// The chart as values.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ChartData {
    /// "N experiments, K kept improvements" and the campaign.
    pub title: String,
    /// Every experiment.
    pub points: Vec<Point>,
    /// The running best as the vertices of a step line, left to right.
    pub best_steps: Vec<(f64, f64)>,
    /// One label per kept experiment.
    pub annotations: Vec<Annotation>,
    /// Half-width of the band drawn around the running best.
    pub noise_floor: f64,
    /// The y axis: (low, high).
    pub y_range: (f64, f64),
}

impl ChartData {
    /// The chart of a history.
    pub fn new(history: &ResultHistory) -> Self {
        let position = |id: &str| {
            history
                .entries
                .iter()
                .find(|e| e.row.experiment_id == id && e.role != RunKind::Replication)
                .map(|e| e.index)
        };
        let points = history
            .entries
            .iter()
            .map(|e| Point {
                x: e.index,
                y: e.value(),
                mark: match (e.decision, e.role) {
                    (Decision::Crash, _) => Mark::Failed,
                    (_, RunKind::Replication) => Mark::Replication,
                    (_, RunKind::Baseline) => Mark::Baseline,
                    (Decision::Keep, _) => Mark::Kept,
                    (Decision::Discard, _) => Mark::Discarded,
                },
                replicates: e.row.replicates.as_deref().and_then(position),
            })
            .collect();
        let annotations = history
            .kept()
            .map(|e| Annotation {
                x: e.index,
                y: e.value().unwrap_or_default(),
                text: shorten(&e.label),
            })
            .collect();
        let best_steps = steps(history);
        let experiments = history.entries.len();
        let kept = history.improvements().count();
        let mut title = format!(
            "{experiments} experiment{}, {kept} kept improvement{}",
            plural(experiments),
            plural(kept)
        );
        if let Some(c) = &history.campaign {
            title = format!("{c}: {title}");
        }
        ChartData {
            title,
            y_range: y_range(history),
            points,
            best_steps,
            annotations,
            noise_floor: history.noise_floor,
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn shorten(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= LABEL_CHARS {
        one_line
    } else {
        let cut: String = one_line.chars().take(LABEL_CHARS - 1).collect();
        format!("{cut}…")
    }
}

/// The staircase: flat from each kept experiment to the next, then down; it runs on to the last
/// experiment so the current best reads at the right edge.
fn steps(history: &ResultHistory) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for e in history.kept() {
        let (x, y) = (e.index as f64, e.value().unwrap_or_default());
        if let Some(&(_, previous)) = out.last() {
            out.push((x, previous));
        }
        out.push((x, y));
    }
    if let Some(&(x, y)) = out.last() {
        let end = history.entries.len() as f64;
        if end > x {
            out.push((end, y));
        }
    }
    out
}

/// The y axis covers every result, the band and some room for labels. A result far above the
/// rest (a broken change) would flatten the staircase, so the top is capped at the 80th
/// percentile plus its distance to the best, and such points are drawn on the top edge.
fn y_range(history: &ResultHistory) -> (f64, f64) {
    let mut values: Vec<f64> = history.entries.iter().filter_map(|e| e.value()).collect();
    values.sort_by(f64::total_cmp);
    let (Some(&low), Some(&high)) = (values.first(), values.last()) else {
        return (0.0, 1.0);
    };
    let nf = history.noise_floor;
    let p80 = values[(values.len() - 1) * 4 / 5];
    let cap = p80 + (p80 - low) + 10.0 * nf;
    let (low, high) = (low - nf, high.min(cap) + nf);
    let pad = ((high - low) * 0.08).max(1e-4);
    (low - pad, high + pad)
}

fn register_font() {
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        // The bytes are a known-good TrueType file; a failure would show as missing text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// The chart as an SVG document.
pub fn svg(data: &ChartData) -> Result<String, ChartError> {
    register_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(&root, data, 1)?;
        root.present().map_err(|e| ChartError(e.to_string()))?;
    }
    Ok(out)
}

/// Writes the chart as a PNG file, at twice the SVG's size: plotters places each glyph on whole
/// pixels, which shows at small sizes (uneven spacing, raised full stops) and fades at 2x.
pub fn png(data: &ChartData, path: &Path) -> Result<(), ChartError> {
    register_font();
    let root = BitMapBackend::new(path, (SIZE.0 * 2, SIZE.1 * 2)).into_drawing_area();
    draw(&root, data, 2)?;
    root.present().map_err(|e| ChartError(e.to_string()))
}

const KEPT: RGBColor = RGBColor(46, 160, 67);
const DISCARDED: RGBColor = RGBColor(160, 160, 160);
const FAILED: RGBColor = RGBColor(214, 39, 40);
const REPLICATION: RGBColor = RGBColor(31, 119, 180);
const BASELINE: RGBColor = RGBColor(40, 40, 40);
const BAND: RGBColor = RGBColor(46, 160, 67);

fn err(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}

/// Draws the chart; `k` scales every pixel size (1 for SVG, 2 for PNG).
fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    data: &ChartData,
    k: i32,
) -> Result<(), ChartError> {
    let font = |size: i32| ("sans-serif", size * k);
    root.fill(&WHITE).map_err(err)?;
    let x_max = data.points.len().max(1) as f64 + 0.5;
    let (y_low, y_high) = data.y_range;
    let mut chart = ChartBuilder::on(root)
        .caption(&data.title, font(22))
        .margin(16 * k)
        .x_label_area_size(40 * k)
        .y_label_area_size(80 * k)
        .build_cartesian_2d(0.5f64..x_max, y_low..y_high)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("experiment")
        .y_desc("val_bpb (lower is better)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.4}"))
        .max_light_lines(1)
        .light_line_style(RGBColor(245, 245, 245))
        .bold_line_style(RGBColor(225, 225, 225))
        .label_style(font(13))
        .axis_desc_style(font(14))
        .draw()
        .map_err(err)?;
    draw_band(&mut chart, data, k)?;
    draw_points(&mut chart, data, k)?;
    if !data.best_steps.is_empty() {
        chart
            .draw_series(LineSeries::new(
                data.best_steps.iter().copied(),
                KEPT.stroke_width(2 * k as u32),
            ))
            .map_err(err)?
            .label("running best")
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 18 * k, y)], KEPT.stroke_width(2 * k as u32))
            });
    }
    draw_annotations(&mut chart, data, k)?;
    chart
        .configure_series_labels()
        .position(legend_corner(data))
        .legend_area_size(30 * k)
        .margin(10 * k)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font(font(13))
        .draw()
        .map_err(err)
}

/// The corner with the fewest points and labels, where the legend hides the least.
fn legend_corner(data: &ChartData) -> SeriesLabelPosition {
    let (low, high) = data.y_range;
    let n = data.points.len().max(1) as f64;
    // Positions in 0..1 of the plot, labels counted for the room they take to their right.
    let mut spots: Vec<(f64, f64)> = data
        .points
        .iter()
        .map(|p| {
            (
                p.x as f64 / n,
                p.y.map_or(1.0, |y| (y - low) / (high - low)),
            )
        })
        .collect();
    spots.extend(data.annotations.iter().flat_map(|a| {
        let y = (a.y - low) / (high - low);
        (0..4).map(move |i| (a.x as f64 / n + f64::from(i) * 0.06, y + 0.04))
    }));
    let count = |right: bool, top: bool| {
        let inside = |&&(x, y): &&(f64, f64)| {
            let across = if right { x > 0.7 } else { x < 0.3 };
            let up = if top { y > 0.6 } else { y < 0.4 };
            across && up
        };
        spots.iter().filter(inside).count()
    };
    [
        (count(true, true), SeriesLabelPosition::UpperRight),
        (count(false, false), SeriesLabelPosition::LowerLeft),
        (count(true, false), SeriesLabelPosition::LowerRight),
        (count(false, true), SeriesLabelPosition::UpperLeft),
    ]
    .into_iter()
    .min_by_key(|(c, _)| *c)
    .map_or(SeriesLabelPosition::UpperRight, |(_, p)| p)
}

type Chart<'a, DB> = ChartContext<
    'a,
    DB,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn draw_band<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    data: &ChartData,
    k: i32,
) -> Result<(), ChartError> {
    if data.best_steps.is_empty() || data.noise_floor <= 0.0 {
        return Ok(());
    }
    let nf = data.noise_floor;
    let upper = data.best_steps.iter().map(|&(x, y)| (x, y + nf));
    let lower = data.best_steps.iter().rev().map(|&(x, y)| (x, y - nf));
    chart
        .draw_series(std::iter::once(Polygon::new(
            upper.chain(lower).collect::<Vec<_>>(),
            BAND.mix(0.12).filled(),
        )))
        .map_err(err)?
        .label(format!("noise floor ±{nf}"))
        .legend(move |(x, y)| {
            Rectangle::new(
                [(x, y - 5 * k), (x + 18 * k, y + 5 * k)],
                BAND.mix(0.2).filled(),
            )
        });
    Ok(())
}

fn draw_points<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    data: &ChartData,
    k: i32,
) -> Result<(), ChartError> {
    let w = k as u32;
    let (_, top) = data.y_range;
    let at = |p: &Point| (p.x as f64, p.y.map_or(top, |y| y.min(top)));
    // A replication is joined to the experiment it re-ran, so agreement reads at a glance.
    for p in data.points.iter().filter(|p| p.mark == Mark::Replication) {
        if let Some(original) = p.replicates.and_then(|i| data.points.get(i - 1))
            && original.y.is_some()
        {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    [at(original), at(p)],
                    REPLICATION.mix(0.5).stroke_width(w),
                )))
                .map_err(err)?;
        }
    }
    let series = |mark: Mark| data.points.iter().filter(move |p| p.mark == mark).map(at);
    let legend_circle = |color: RGBColor, filled: bool| {
        move |(x, y)| Circle::new((x + 9 * k, y), 4 * k, style(color, filled, w))
    };
    // Hundreds of experiments need smaller marks to stay apart.
    let scale = if data.points.len() > 150 { 2 } else { 4 };
    for (mark, label, color, filled, size) in [
        (Mark::Discarded, "discarded", DISCARDED, true, 4),
        (Mark::Baseline, "baseline", BASELINE, true, 6),
        (Mark::Kept, "kept", KEPT, true, 6),
        (Mark::Replication, "replication", REPLICATION, false, 6),
    ] {
        if data.points.iter().any(|p| p.mark == mark) {
            chart
                .draw_series(
                    series(mark)
                        .map(|c| Circle::new(c, size * scale * k / 4, style(color, filled, w))),
                )
                .map_err(err)?
                .label(label)
                .legend(legend_circle(color, filled));
        }
    }
    if data.points.iter().any(|p| p.mark == Mark::Failed) {
        chart
            .draw_series(
                series(Mark::Failed).map(|c| Cross::new(c, 5 * k, FAILED.stroke_width(2 * w))),
            )
            .map_err(err)?
            .label("failed (no val_bpb)")
            .legend(move |(x, y)| Cross::new((x + 9 * k, y), 4 * k, FAILED.stroke_width(2 * w)));
    }
    Ok(())
}

fn style(color: RGBColor, filled: bool, w: u32) -> ShapeStyle {
    if filled {
        color.filled()
    } else {
        color.stroke_width(2 * w)
    }
}

fn draw_annotations<DB: DrawingBackend>(
    chart: &mut Chart<'_, DB>,
    data: &ChartData,
    k: i32,
) -> Result<(), ChartError> {
    let font = ("sans-serif", 13 * k)
        .into_font()
        .color(&RGBColor(30, 30, 30));
    // Labels go above and right of their point, clear of the step (which runs right at the
    // point's height and drops from the left); a label that would overlap an earlier one is
    // moved further up, then below.
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    let right_edge = chart.plotting_area().get_pixel_range().0.end;
    for a in &data.annotations {
        let (px, py) = chart.backend_coord(&(a.x as f64, a.y));
        let width = ((a.text.chars().count() as i32) * 8 + 6) * k;
        // Near the right edge a label goes to the left of its point, inside the plot.
        let dx = if px + (6 * k) + width > right_edge {
            -(6 * k) - width
        } else {
            6 * k
        };
        let (left, height) = (px + dx, 15 * k);
        let dy = [-20, -36, -52, 8, 24, 40]
            .into_iter()
            .map(|dy| dy * k)
            .find(|dy| {
                let b = (left, py + dy, left + width, py + dy + height);
                !placed
                    .iter()
                    .any(|p| b.0 < p.2 && p.0 < b.2 && b.1 < p.3 && p.1 < b.3)
            });
        // With hundreds of kept changes not every label fits; one that would cover another is
        // left out (the point and the step still show).
        let Some(dy) = dy else { continue };
        placed.push((left, py + dy, left + width, py + dy + height));
        chart
            .draw_series(std::iter::once(
                EmptyElement::at((a.x as f64, a.y))
                    + Text::new(a.text.clone(), (dx, dy), font.clone()),
            ))
            .map_err(err)?;
    }
    Ok(())
}
