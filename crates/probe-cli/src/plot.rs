//! The one plotting path: a metric against vision layer, one line per series (a run), 95%
//! intervals as error bars where known, the default layer as a larger marker, the paper's Early /
//! Middle / Late thirds shaded inside the axis, a legend and a y label, "no data" when there is
//! nothing to draw; SVG and PNG with a bundled font (no system fonts needed), each replaced
//! atomically. The sweep summary and the report both draw with it.
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::grouping::{third_of, GROUPS};

/// One point: a layer's value (as shown: rates in %), its interval if any, and whether the
/// layer is the model's default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub layer: usize,
    pub value: f64,
    pub interval: Option<(f64, f64)>,
    pub is_default: bool,
}

/// One line of the plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

/// A plot of one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Named in errors.
    pub key: String,
    /// The caption says "{title} by vision layer".
    pub title: String,
    pub y_label: String,
    /// Fixed y range (0..100 for rates); `None` fits the data with 5% to spare.
    pub y_range: Option<(f64, f64)>,
    /// The x axis runs over layers `0..=max_layer`.
    pub max_layer: usize,
    pub series: Vec<Series>,
}

const FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const COLORS: [RGBColor; 6] = [
    RGBColor(26, 115, 232),
    RGBColor(217, 48, 37),
    RGBColor(30, 142, 62),
    RGBColor(249, 171, 0),
    RGBColor(161, 66, 244),
    RGBColor(0, 137, 123),
];

/// Registers the bundled font (DejaVu Sans Mono, Bitstream Vera license: assets/DejaVu-LICENSE.txt)
/// so that PNG text renders without any system font.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Draws `chart` into `svg` and `png` (800 × 450), each through a temporary file renamed over
/// the old one (a plot is never half written).
pub fn write(chart: &Chart, svg: &Path, png: &Path) -> Result<()> {
    register_font();
    let tmp = |p: &Path| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // The image encoder goes by the extension, so the temporary name keeps it.
        p.with_file_name(format!(".tmp-{}-{name}", std::process::id()))
    };
    let (svg_tmp, png_tmp) = (tmp(svg), tmp(png));
    let drawn = draw(SVGBackend::new(&svg_tmp, (800, 450)).into_drawing_area(), chart)
        .and_then(|_| draw(BitMapBackend::new(&png_tmp, (800, 450)).into_drawing_area(), chart))
        .and_then(|_| {
            std::fs::rename(&svg_tmp, svg).with_context(|| format!("cannot write {}", svg.display()))?;
            std::fs::rename(&png_tmp, png).with_context(|| format!("cannot write {}", png.display()))
        });
    if drawn.is_err() {
        let _ = std::fs::remove_file(&svg_tmp);
        let _ = std::fs::remove_file(&png_tmp);
    }
    drawn
}

/// The paper's Early / Middle / Late thirds of layers `1..=max_layer` as x ranges (half a layer
/// either side of their first and last layer), never past the axis (`-0.5..=max_layer + 0.5`).
pub fn bands(max_layer: usize) -> Vec<(&'static str, f64, f64)> {
    let axis = max_layer as f64 + 0.5;
    (0..3)
        .filter_map(|g| {
            let members: Vec<usize> = (1..=max_layer).filter(|&l| third_of(l, max_layer) == Some(g)).collect();
            let (first, last) = (*members.first()?, *members.last()?);
            Some((GROUPS[g], (first as f64 - 0.5).max(-0.5), (last as f64 + 0.5).min(axis)))
        })
        .collect()
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, c: &Chart) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plot {}: {e:?}", c.key);
    root.fill(&WHITE).map_err(err)?;
    let max_layer = c.max_layer.max(1);
    let (lo, hi, pad) = match c.y_range {
        Some((lo, hi)) => (lo, hi, 0.0),
        None => {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for p in c.series.iter().flat_map(|s| &s.points) {
                let (l, h) = p.interval.unwrap_or((p.value, p.value));
                lo = lo.min(l);
                hi = hi.max(h);
            }
            if !(lo.is_finite() && hi.is_finite()) {
                (lo, hi) = (0.0, 1.0);
            } else if hi - lo < 1e-9 {
                (lo, hi) = (lo - 0.5, hi + 0.5);
            }
            (lo, hi, (hi - lo) * 0.05)
        }
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{} by vision layer", c.title), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(-0.5f64..max_layer as f64 + 0.5, (lo - pad)..(hi + pad))
        .map_err(err)?;
    // The thirds, shaded behind everything else and named at their top.
    let (bottom, top) = (lo - pad, hi + pad);
    for (i, (name, from, to)) in bands(max_layer).into_iter().enumerate() {
        let shade = if i % 2 == 0 { RGBColor(238, 242, 250) } else { RGBColor(246, 248, 252) };
        chart.draw_series(std::iter::once(Rectangle::new([(from, bottom), (to, top)], shade.filled()))).map_err(err)?;
        let label =
            ("sans-serif", 12).into_font().color(&RGBColor(110, 110, 110)).pos(Pos::new(HPos::Center, VPos::Top));
        chart.draw_series(std::iter::once(Text::new(name, ((from + to) / 2.0, top), label))).map_err(err)?;
    }
    chart
        .configure_mesh()
        .x_desc("vision layer")
        .y_desc(c.y_label.as_str())
        .x_labels(max_layer.min(25) + 1)
        .x_label_formatter(&|x| format!("{}", x.round() as i64))
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    for (i, s) in c.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if s.points.is_empty() {
            continue;
        }
        let xy = |p: &Point| (p.layer as f64, p.value);
        chart
            .draw_series(LineSeries::new(s.points.iter().map(xy), color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        chart
            .draw_series(s.points.iter().filter_map(|p| {
                let (lo, hi) = p.interval?;
                let x = p.layer as f64;
                Some(PathElement::new(vec![(x, lo), (x, hi)], color.mix(0.6).stroke_width(2)))
            }))
            .map_err(err)?;
        chart
            .draw_series(s.points.iter().map(|p| {
                let size = if p.is_default { 6 } else { 3 };
                Circle::new(xy(p), size, if p.is_default { BLACK.filled() } else { color.filled() })
            }))
            .map_err(err)?;
    }
    if c.series.iter().all(|s| s.points.is_empty()) {
        let style =
            ("sans-serif", 24).into_font().color(&RGBColor(110, 110, 110)).pos(Pos::new(HPos::Center, VPos::Center));
        let middle = (max_layer as f64 / 2.0, (bottom + top) / 2.0);
        chart.draw_series(std::iter::once(Text::new("no data", middle, style))).map_err(err)?;
        root.present().map_err(err)?;
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// A file-name-safe form of a metric key (`asr:lg` → `asr_lg`).
pub fn slug(key: &str) -> String {
    key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// One point of a scatter plot (values as shown: rates in %), with its intervals.
#[derive(Clone, Debug, PartialEq)]
pub struct ScatterPoint {
    /// Written beside the point (the layer).
    pub label: String,
    pub x: f64,
    pub y: f64,
    pub x_interval: Option<(f64, f64)>,
    pub y_interval: Option<(f64, f64)>,
    /// Drawn larger, in black.
    pub is_default: bool,
    /// Drawn in the highlight colour (see [`Scatter::highlight_label`]).
    pub highlighted: bool,
}

/// Two rates (0–100) against each other, one point per layer: e.g. ASR against VQA accuracy.
#[derive(Clone, Debug, PartialEq)]
pub struct Scatter {
    /// Named in errors.
    pub key: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<ScatterPoint>,
    /// Grey lines through this point (the default layer's), splitting the plane into quadrants.
    pub crosshair: Option<(f64, f64)>,
    /// The legend of the highlighted points.
    pub highlight_label: String,
}

const HIGHLIGHT: RGBColor = RGBColor(217, 48, 37);
const POINT: RGBColor = RGBColor(26, 115, 232);

/// Draws `scatter` into `svg` and `png` (800 × 600), both axes 0–100.
pub fn write_scatter(scatter: &Scatter, svg: &Path, png: &Path) -> Result<()> {
    register_font();
    draw_scatter(SVGBackend::new(svg, (800, 600)).into_drawing_area(), scatter)?;
    draw_scatter(BitMapBackend::new(png, (800, 600)).into_drawing_area(), scatter)
}

fn draw_scatter<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, s: &Scatter) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plot {}: {e:?}", s.key);
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&s.title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(-2f64..102f64, -2f64..102f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(s.x_label.as_str())
        .y_desc(s.y_label.as_str())
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    if let Some((x, y)) = s.crosshair {
        let grey = RGBColor(140, 149, 159).stroke_width(1);
        chart.draw_series([PathElement::new(vec![(x, -2.0), (x, 102.0)], grey)]).map_err(err)?;
        chart.draw_series([PathElement::new(vec![(-2.0, y), (102.0, y)], grey)]).map_err(err)?;
    }
    let color = |p: &ScatterPoint| if p.highlighted { HIGHLIGHT } else { POINT };
    chart
        .draw_series(s.points.iter().flat_map(|p| {
            let c = color(p).mix(0.5).stroke_width(1);
            let mut bars = Vec::new();
            if let Some((lo, hi)) = p.x_interval {
                bars.push(PathElement::new(vec![(lo, p.y), (hi, p.y)], c));
            }
            if let Some((lo, hi)) = p.y_interval {
                bars.push(PathElement::new(vec![(p.x, lo), (p.x, hi)], c));
            }
            bars
        }))
        .map_err(err)?;
    let marker = |p: &ScatterPoint| {
        let (size, style) = if p.is_default { (7, BLACK.filled()) } else { (4, color(p).filled()) };
        EmptyElement::at((p.x, p.y))
            + Circle::new((0, 0), size, style)
            + Text::new(p.label.clone(), (7, -14), ("sans-serif", 12).into_font())
    };
    chart
        .draw_series(s.points.iter().filter(|p| !p.highlighted).map(marker))
        .map_err(err)?
        .label("layer")
        .legend(|(x, y)| Circle::new((x + 9, y), 4, POINT.filled()));
    if s.points.iter().any(|p| p.highlighted) {
        chart
            .draw_series(s.points.iter().filter(|p| p.highlighted).map(marker))
            .map_err(err)?
            .label(s.highlight_label.clone())
            .legend(|(x, y)| Circle::new((x + 9, y), 4, HIGHLIGHT.filled()));
    }
    if s.points.iter().any(|p| p.is_default) {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
            .map_err(err)?
            .label("default layer")
            .legend(|(x, y)| Circle::new((x + 9, y), 6, BLACK.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(points: Vec<Point>) -> Chart {
        Chart {
            key: "refusal_rate".into(),
            title: "refusal rate".into(),
            y_label: "refusal rate (%)".into(),
            y_range: Some((0.0, 100.0)),
            max_layer: 6,
            series: vec![Series { label: "answers with a refusal phrase".into(), points }],
        }
    }

    /// Issue 14, finding 11: the sweep plot's Late band ran past the axis, there was no legend
    /// or y label, and a plot with nothing to show was an empty frame.
    #[test]
    fn plots_shade_the_thirds_inside_the_axis_and_say_when_there_is_no_data() {
        assert_eq!(bands(6), [("Early", 0.5, 2.5), ("Middle", 2.5, 4.5), ("Late", 4.5, 6.5)]);
        assert_eq!(bands(24)[2], ("Late", 16.5, 24.5));
        for l in [1, 2, 5, 7, 32] {
            let b = bands(l);
            assert!(b.iter().all(|&(_, from, to)| from >= -0.5 && to <= l as f64 + 0.5 && from < to), "{l}: {b:?}");
        }
        let d = std::env::temp_dir().join(format!("icet-plot-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let (svg, png) = (d.join("p.svg"), d.join("p.png"));
        let point = |layer, value| Point { layer, value, interval: None, is_default: layer == 5 };
        write(&chart(vec![point(1, 10.0), point(5, 50.0)]), &svg, &png).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        for label in ["Early", "Middle", "Late", "refusal rate (%)", "answers with a refusal phrase", "vision layer"] {
            assert!(text.contains(label), "{label} in the plot");
        }
        assert!(!text.contains("no data"));
        write(&chart(vec![]), &svg, &png).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("no data"));
        assert!(png.is_file());
        assert!(std::fs::read_dir(&d).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains(".tmp-")));
    }
}
