//! SVG plots of a run (plotters, SVG backend only: no fonts or images needed to draw).

use std::path::Path as FsPath;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One bar series: name, colour, one value per group (NaN: no bar, the path lacks that
/// figure).
pub struct Series<'a> {
    pub name: &'a str,
    pub color: RGBColor,
    pub values: Vec<f64>,
}

pub const DIRECT: RGBColor = RGBColor(120, 120, 120);
pub const MESH: RGBColor = RGBColor(33, 102, 172);
pub const WAYPOINT: RGBColor = RGBColor(230, 140, 30);

/// A target drawn as a red line over one bar: group index, series index, value.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub group: usize,
    pub series: usize,
    pub value: f64,
}

/// Bars grouped by `groups` (one bar per series in each), labelled with their values, with
/// `marks` (targets) drawn over their bars.
pub fn grouped_bars(
    file: &FsPath,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[Series<'_>],
    marks: &[Mark],
) -> anyhow::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(file, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .chain(marks.iter().map(|m| m.value))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.18;
    let n = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(34)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..n, 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(y_desc)
        .y_label_formatter(&|v| tick(*v))
        .draw()?;

    let below = ("sans-serif", 15)
        .into_font()
        .into_text_style(&root)
        .pos(Pos::new(HPos::Center, VPos::Top));
    let above = ("sans-serif", 12)
        .into_font()
        .into_text_style(&root)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for (i, g) in groups.iter().enumerate() {
        chart.plotting_area().draw(
            &(EmptyElement::at((i as f64 + 0.5, 0.0))
                + Text::new(g.clone(), (0, 6), below.clone())),
        )?;
    }
    let width = 0.8 / series.len().max(1) as f64;
    for (k, s) in series.iter().enumerate() {
        let color = s.color;
        let bars = s
            .values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(move |(i, v)| {
                let x0 = i as f64 + 0.1 + k as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.92, *v)], color.filled())
            });
        chart
            .draw_series(bars)?
            .label(s.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        for (i, v) in s.values.iter().enumerate().filter(|(_, v)| v.is_finite()) {
            let x = i as f64 + 0.1 + (k as f64 + 0.46) * width;
            chart.plotting_area().draw(
                &(EmptyElement::at((x, *v)) + Text::new(short(*v), (0, -3), above.clone())),
            )?;
        }
    }
    for m in marks {
        let x0 = m.group as f64 + 0.1 + m.series as f64 * width;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x0 - width * 0.04, m.value), (x0 + width * 0.96, m.value)],
            ShapeStyle::from(&RED).stroke_width(2),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

/// An axis value without binary-fraction noise (0.30000000000000004 → 0.3).
fn tick(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One line of a time series: name, colour, (x, y) points.
pub struct Line<'a> {
    pub name: &'a str,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// Lines over a shared x axis (time), from zero on both axes.
pub fn lines(
    file: &FsPath,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    lines: &[Line<'_>],
) -> anyhow::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(file, (760, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let points = || lines.iter().flat_map(|l| l.points.iter().copied());
    let right = points().map(|p| p.0).fold(0.0f64, f64::max).max(1.0);
    let top = points().map(|p| p.1).fold(0.0f64, f64::max).max(1.0) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..right, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()?;
    for l in lines {
        let color = l.color;
        chart
            .draw_series(std::iter::once(PathElement::new(
                l.points.clone(),
                color.stroke_width(2),
            )))?
            .label(l.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}
