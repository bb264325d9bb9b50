//! SVG latency-distribution plots (plotters, SVG backend only).
//!
//! X is the percentile on HdrHistogram's "1 / (1 - q)" axis (so the tail
//! gets room), Y the latency on a log scale, one line per target.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{LoadError, Result};

/// One line on a plot: a label and `[quantile, ms]` points.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    pub label: String,
    pub curve: &'a [[f64; 2]],
}

/// Colour per well-known target, so every plot uses the same ones.
fn colour(label: &str, i: usize) -> RGBColor {
    match label {
        "etcd" => RGBColor(0xd6, 0x27, 0x28),
        "grpc-proxy" => RGBColor(0x1f, 0x77, 0xb4),
        "lookout" => RGBColor(0x2c, 0xa0, 0x2c),
        _ => [
            RGBColor(0x94, 0x67, 0xbd),
            RGBColor(0xff, 0x7f, 0x0e),
            RGBColor(0x8c, 0x56, 0x4b),
            RGBColor(0x17, 0xbe, 0xcf),
        ][i % 4],
    }
}

/// Where the maximum is drawn on the x axis (past 99.999%).
const X_MAX: f64 = 5.3;

fn x_of(q: f64) -> f64 {
    if q >= 1.0 {
        X_MAX
    } else {
        (1.0 / (1.0 - q)).log10().min(5.0)
    }
}

fn x_label(x: &f64) -> String {
    match x.round() as i64 {
        _ if (x - X_MAX).abs() < 1e-6 => "max".into(),
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        3 => "99.9%".into(),
        4 => "99.99%".into(),
        5 => "99.999%".into(),
        _ => String::new(),
    }
}

/// Writes a latency-distribution plot of `series` to `path`.
///
/// # Errors
/// [`LoadError::Plot`] when the file cannot be drawn or written.
pub fn latency_svg(path: &Path, title: &str, series: &[Series<'_>]) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| LoadError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let points = series.iter().flat_map(|s| s.curve.iter().map(|p| p[1]));
    let (lo, hi) = points.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if hi <= 0.0 {
        (0.01, 1.0)
    } else {
        ((lo.max(0.001) / 1.5), hi * 1.5)
    };
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..X_MAX, (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("put → event latency (ms)")
        .x_labels(7)
        .x_label_formatter(&x_label)
        .y_label_formatter(&|v| {
            if *v >= 10.0 {
                format!("{v:.0}")
            } else if *v >= 1.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        if s.curve.is_empty() {
            continue;
        }
        let c = colour(&s.label, i);
        let pts: Vec<(f64, f64)> = s.curve.iter().map(|p| (x_of(p[0]), p[1].max(lo))).collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
