//! One chart as data ([`Plot`]), drawn to SVG by `plotters`.
//!
//! A figure module says *what* to draw — lines, certified bands, points
//! with error bars, reference lines, on linear or log axes — and [`Plot::svg`]
//! draws it. Log axes are drawn as base-10 logarithms on a linear axis with
//! ticks labelled in the data's units, so every figure goes through one
//! code path; points a log axis cannot show (≤ 0, not finite) are left out
//! and counted in the figure's note, never moved.

use plotters::prelude::*;

use crate::ReportError;
use crate::format::short;

/// Colours of series, in order (Okabe–Ito, readable by colour-blind readers,
/// then near-black for reference lines).
pub const PALETTE: [RGBColor; 9] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(240, 228, 66),
    RGBColor(40, 40, 40),
];

/// The colour of series `i` (the palette repeats).
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One axis: what it shows (with units) and its scale.
#[derive(Debug, Clone)]
pub struct Axis {
    /// The axis title, with units.
    pub label: String,
    /// Base-10 log scale.
    pub log: bool,
}

impl Axis {
    /// A linear axis.
    pub fn linear(label: impl Into<String>) -> Self {
        Axis { label: label.into(), log: false }
    }

    /// A log axis.
    pub fn log(label: impl Into<String>) -> Self {
        Axis { label: label.into(), log: true }
    }

    /// `v` in plot coordinates, `None` when this axis cannot show it.
    fn map(&self, v: f64) -> Option<f64> {
        match (self.log, v.is_finite()) {
            (_, false) => None,
            (true, true) if v > 0.0 => Some(v.log10()),
            (true, true) => None,
            (false, true) => Some(v),
        }
    }
}

/// What a [`Plot`] draws.
#[derive(Debug, Clone)]
pub enum Series {
    /// A polyline through `points`.
    Line {
        /// Legend entry (none: not in the legend).
        name: Option<String>,
        /// Palette index.
        color: usize,
        /// (x, y) in data units.
        points: Vec<(f64, f64)>,
        /// Drawn dashed (a fit or a reference, not data).
        dashed: bool,
    },
    /// A shaded region between `lower` and `upper` at each x: a certified
    /// bracket or a confidence band.
    Band {
        /// Legend entry.
        name: Option<String>,
        /// Palette index.
        color: usize,
        /// (x, lower, upper) in data units.
        points: Vec<(f64, f64, f64)>,
    },
    /// Markers with vertical error bars: (x, y, y_lo, y_hi).
    Points {
        /// Legend entry.
        name: Option<String>,
        /// Palette index.
        color: usize,
        /// (x, y, lower end, upper end) in data units.
        points: Vec<(f64, f64, f64, f64)>,
    },
    /// Vertical bars without a marker, (x, lower end, upper end): a
    /// certified bracket too wide to stand for one value, drawn as the
    /// range it is.
    Intervals {
        /// Legend entry.
        name: Option<String>,
        /// Palette index.
        color: usize,
        /// (x, lower end, upper end) in data units.
        points: Vec<(f64, f64, f64)>,
    },
    /// A horizontal reference line at `y` across the plot.
    HLine {
        /// Legend entry.
        name: Option<String>,
        /// Palette index.
        color: usize,
        /// Height in data units.
        y: f64,
    },
    /// A vertical reference line at `x`.
    VLine {
        /// Legend entry.
        name: Option<String>,
        /// Palette index.
        color: usize,
        /// Position in data units.
        x: f64,
    },
}

/// A chart: title, axes and series.
#[derive(Debug, Clone)]
pub struct Plot {
    /// The title drawn above the chart.
    pub title: String,
    /// Horizontal axis.
    pub x: Axis,
    /// Vertical axis.
    pub y: Axis,
    /// What to draw, back to front.
    pub series: Vec<Series>,
    /// Size in pixels.
    pub size: (u32, u32),
}

/// Most points a line or band keeps: longer ones are thinned evenly (the
/// first and last points always kept), so a figure stays small whatever ℓ.
pub const MAX_POINTS: usize = 240;

/// Every `k`-th element of `v` (and its last), at most about [`MAX_POINTS`].
fn thin<T: Clone>(v: &[T]) -> Vec<T> {
    if v.len() <= MAX_POINTS {
        return v.to_vec();
    }
    let k = v.len().div_ceil(MAX_POINTS);
    let mut out: Vec<T> = v.iter().step_by(k).cloned().collect();
    if !(v.len() - 1).is_multiple_of(k) {
        out.push(v[v.len() - 1].clone());
    }
    out
}

/// Whether a log axis spanning `span` decades labels its powers of ten
/// only (a wide one), or ticks between them too (a narrow one).
fn decades_only(axis: &Axis, span: f64) -> bool {
    axis.log && span >= 2.0
}

/// Tick label of a plot coordinate on `axis` (`span`: its extent).
fn tick(axis: &Axis, span: f64, v: f64) -> String {
    if !axis.log {
        return short(v);
    }
    if decades_only(axis, span) && (v - v.round()).abs() > 1e-9 {
        return String::new();
    }
    short(10f64.powf(v))
}

impl Plot {
    /// A plot of `series` on the axes, at the default size.
    pub fn new(title: impl Into<String>, x: Axis, y: Axis, series: Vec<Series>) -> Self {
        Plot { title: title.into(), x, y, series, size: (640, 400) }
    }

    /// How many data points the axes cannot show (≤ 0 on a log axis, or
    /// not finite).
    pub fn hidden_points(&self) -> usize {
        let (x, y) = (&self.x, &self.y);
        let bad = |px: f64, py: f64| (x.map(px).is_none() || y.map(py).is_none()) as usize;
        self.series
            .iter()
            .map(|s| match s {
                Series::Line { points, .. } => points.iter().map(|&(a, b)| bad(a, b)).sum(),
                Series::Band { points, .. } => points.iter().map(|&(a, lo, hi)| bad(a, lo).max(bad(a, hi))).sum(),
                Series::Points { points, .. } => points.iter().map(|&(a, b, _, _)| bad(a, b)).sum(),
                Series::Intervals { points, .. } => points.iter().map(|&(a, lo, hi)| bad(a, lo).max(bad(a, hi))).sum(),
                Series::HLine { y: v, .. } => y.map(*v).is_none() as usize,
                Series::VLine { x: v, .. } => x.map(*v).is_none() as usize,
            })
            .sum()
    }

    /// Whether there is anything to draw (some point both axes can show).
    pub fn has_data(&self) -> bool {
        self.extent().is_some()
    }

    /// Every data point in plot coordinates (bands and bars by both ends).
    fn plotted(&self) -> Vec<(f64, f64)> {
        let mut out = vec![];
        let mut push = |px: f64, py: f64| {
            if let (Some(a), Some(b)) = (self.x.map(px), self.y.map(py)) {
                out.push((a, b));
            }
        };
        for s in &self.series {
            match s {
                Series::Line { points, .. } => points.iter().for_each(|&(a, b)| push(a, b)),
                Series::Band { points, .. } | Series::Intervals { points, .. } => {
                    points.iter().for_each(|&(a, lo, hi)| {
                        push(a, lo);
                        push(a, hi);
                    })
                }
                Series::Points { points, .. } => points.iter().for_each(|&(a, b, lo, hi)| {
                    push(a, b);
                    push(a, lo);
                    push(a, hi);
                }),
                Series::HLine { .. } | Series::VLine { .. } => {}
            }
        }
        out
    }

    /// The corner of the chart (a third of each side) holding the fewest
    /// data points: where the legend hides the least.
    fn legend_corner(&self, (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> SeriesLabelPosition {
        let pts = self.plotted();
        let (wx, wy) = ((x1 - x0) / 3.0, (y1 - y0) / 3.0);
        let count = |left: bool, top: bool| {
            pts.iter()
                .filter(|(a, b)| {
                    (if left { *a <= x0 + wx } else { *a >= x1 - wx })
                        && (if top { *b >= y1 - wy } else { *b <= y0 + wy })
                })
                .count()
        };
        [
            (count(false, true), SeriesLabelPosition::UpperRight),
            (count(true, true), SeriesLabelPosition::UpperLeft),
            (count(false, false), SeriesLabelPosition::LowerRight),
            (count(true, false), SeriesLabelPosition::LowerLeft),
        ]
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .map_or(SeriesLabelPosition::UpperRight, |(_, p)| p)
    }

    /// The data's extent in plot coordinates, padded, or `None` when no
    /// point can be shown.
    fn extent(&self) -> Option<((f64, f64), (f64, f64))> {
        let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = self.plotted().into_iter().unzip();
        if xs.is_empty() {
            return None;
        }
        // Reference lines widen the range only along their own axis.
        for s in &self.series {
            match s {
                Series::HLine { y, .. } => ys.extend(self.y.map(*y)),
                Series::VLine { x, .. } => xs.extend(self.x.map(*x)),
                _ => {}
            }
        }
        let range = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let pad = if hi > lo { 0.04 * (hi - lo) } else { lo.abs().max(1.0) * 0.1 };
            (lo - pad, hi + pad)
        };
        Some((range(&xs), range(&ys)))
    }

    /// The chart as an SVG document. A plot with nothing to show is an
    /// error ([`ReportError::Empty`]): figures are left out, not drawn blank.
    pub fn svg(&self) -> Result<String, ReportError> {
        let ((x0, x1), (y0, y1)) = self.extent().ok_or_else(|| ReportError::Empty(self.title.clone()))?;
        let draw = |e: &dyn std::fmt::Display| ReportError::Draw { figure: self.title.clone(), reason: e.to_string() };
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, self.size).into_drawing_area();
            root.fill(&WHITE).map_err(|e| draw(&e))?;
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, ("sans-serif", 15))
                .margin(12)
                .x_label_area_size(42)
                .y_label_area_size(64)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| draw(&e))?;
            let (xa, ya) = (self.x.clone(), self.y.clone());
            let xf = move |v: &f64| tick(&xa, x1 - x0, *v);
            let yf = move |v: &f64| tick(&ya, y1 - y0, *v);
            chart
                .configure_mesh()
                .x_desc(&self.x.label)
                .y_desc(&self.y.label)
                .x_labels(if decades_only(&self.x, x1 - x0) { 16 } else { 7 })
                .y_labels(if decades_only(&self.y, y1 - y0) { 16 } else { 7 })
                .x_label_formatter(&xf)
                .y_label_formatter(&yf)
                .light_line_style(WHITE.mix(0.0))
                .bold_line_style(BLACK.mix(0.08))
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .draw()
                .map_err(|e| draw(&e))?;
            let (mx, my) = (|v: f64| self.x.map(v), |v: f64| self.y.map(v));
            let mut legend = false;
            for s in &self.series {
                match s {
                    Series::Band { name, color: c, points } => {
                        let pts: Vec<(f64, f64, f64)> = points
                            .iter()
                            .filter_map(|&(a, lo, hi)| Some((mx(a)?, my(lo).unwrap_or(y0), my(hi)?)))
                            .collect();
                        let pts = thin(&pts);
                        let mut poly: Vec<(f64, f64)> = pts.iter().map(|&(a, _, hi)| (a, hi)).collect();
                        poly.extend(pts.iter().rev().map(|&(a, lo, _)| (a, lo)));
                        let fill = color(*c).mix(0.22);
                        let ann = chart
                            .draw_series(std::iter::once(Polygon::new(poly, fill.filled())))
                            .map_err(|e| draw(&e))?;
                        if let Some(n) = name {
                            legend = true;
                            ann.label(n)
                                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], fill.filled()));
                        }
                    }
                    Series::Line { name, color: c, points, dashed } => {
                        let pts: Vec<(f64, f64)> = points.iter().filter_map(|&(a, b)| Some((mx(a)?, my(b)?))).collect();
                        let pts = thin(&pts);
                        let style = color(*c).stroke_width(2);
                        let ann = if *dashed {
                            chart.draw_series(DashedLineSeries::new(pts, 6, 4, style)).map_err(|e| draw(&e))?
                        } else {
                            chart.draw_series(LineSeries::new(pts, style)).map_err(|e| draw(&e))?
                        };
                        if let Some(n) = name {
                            legend = true;
                            ann.label(n).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                        }
                    }
                    Series::Points { name, color: c, points } => {
                        let style = color(*c).stroke_width(1);
                        let pts: Vec<(f64, f64, f64, f64)> = points
                            .iter()
                            .filter_map(|&(a, b, lo, hi)| {
                                let (a, b) = (mx(a)?, my(b)?);
                                Some((a, b, my(lo).unwrap_or(b).min(b), my(hi).unwrap_or(b).max(b)))
                            })
                            .collect();
                        chart
                            .draw_series(
                                pts.iter().filter(|p| p.3 > p.2).map(|&(a, _, lo, hi)| {
                                    ErrorBar::new_vertical(a, lo, 0.5 * (lo + hi), hi, style, 8)
                                }),
                            )
                            .map_err(|e| draw(&e))?;
                        let fill = color(*c).filled();
                        let ann = chart
                            .draw_series(pts.iter().map(|&(a, b, _, _)| Circle::new((a, b), 3, fill)))
                            .map_err(|e| draw(&e))?;
                        if let Some(n) = name {
                            legend = true;
                            ann.label(n).legend(move |(x, y)| Circle::new((x + 9, y), 3, fill));
                        }
                    }
                    Series::Intervals { name, color: c, points } => {
                        let style = color(*c).stroke_width(2);
                        let bars: Vec<(f64, f64, f64)> =
                            points.iter().filter_map(|&(a, lo, hi)| Some((mx(a)?, my(lo)?, my(hi)?))).collect();
                        // A bar and its two caps; no mark in between.
                        let cap =
                            move |at: (f64, f64)| EmptyElement::at(at) + PathElement::new(vec![(-5, 0), (5, 0)], style);
                        chart.draw_series(bars.iter().map(|&(a, lo, _)| cap((a, lo)))).map_err(|e| draw(&e))?;
                        chart.draw_series(bars.iter().map(|&(a, _, hi)| cap((a, hi)))).map_err(|e| draw(&e))?;
                        let ann = chart
                            .draw_series(
                                bars.iter().map(|&(a, lo, hi)| PathElement::new(vec![(a, lo), (a, hi)], style)),
                            )
                            .map_err(|e| draw(&e))?;
                        if let Some(n) = name {
                            legend = true;
                            ann.label(n)
                                .legend(move |(x, y)| PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], style));
                        }
                    }
                    Series::HLine { name, color: c, y } => {
                        let Some(v) = my(*y) else { continue };
                        let style = color(*c).stroke_width(1);
                        let ann = chart
                            .draw_series(DashedLineSeries::new(vec![(x0, v), (x1, v)], 5, 4, style))
                            .map_err(|e| draw(&e))?;
                        if let Some(n) = name {
                            legend = true;
                            ann.label(n).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                        }
                    }
                    Series::VLine { name, color: c, x } => {
                        let Some(v) = mx(*x) else { continue };
                        let style = color(*c).stroke_width(1);
                        let ann = chart
                            .draw_series(DashedLineSeries::new(vec![(v, y0), (v, y1)], 5, 4, style))
                            .map_err(|e| draw(&e))?;
                        if let Some(n) = name {
                            legend = true;
                            ann.label(n).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
                        }
                    }
                }
            }
            if legend {
                chart
                    .configure_series_labels()
                    .position(self.legend_corner((x0, x1), (y0, y1)))
                    .label_font(("sans-serif", 11))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .draw()
                    .map_err(|e| draw(&e))?;
            }
            root.present().map_err(|e| draw(&e))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(points: Vec<(f64, f64)>) -> Series {
        Series::Line { name: Some("data".into()), color: 0, points, dashed: false }
    }

    #[test]
    fn a_plot_draws_its_title_labels_and_series() {
        let p = Plot::new(
            "spectrum",
            Axis::linear("index"),
            Axis::log("eigenvalue"),
            vec![line(vec![(1.0, 1e-2), (2.0, 1e-4), (3.0, 1e-6)])],
        );
        let svg = p.svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        for s in ["spectrum", "index", "eigenvalue", "data", "<polyline"] {
            assert!(svg.contains(s), "no {s} in the SVG");
        }
    }

    #[test]
    fn points_a_log_axis_cannot_show_are_counted_not_moved() {
        let p =
            Plot::new("t", Axis::linear("x"), Axis::log("y"), vec![line(vec![(1.0, 1.0), (2.0, 0.0), (3.0, -1.0)])]);
        assert_eq!(p.hidden_points(), 2);
        assert!(p.has_data());
        let none = Plot::new("t", Axis::linear("x"), Axis::log("y"), vec![line(vec![(1.0, 0.0)])]);
        assert!(!none.has_data());
        assert!(matches!(none.svg(), Err(ReportError::Empty(_))));
    }

    #[test]
    fn the_legend_goes_where_the_data_is_not() {
        let rising = Plot::new(
            "t",
            Axis::linear("x"),
            Axis::linear("y"),
            vec![line((0..10).map(|i| (i as f64, i as f64)).collect())],
        );
        let ((x0, x1), (y0, y1)) = rising.extent().unwrap();
        let corner = rising.legend_corner((x0, x1), (y0, y1));
        assert!(matches!(corner, SeriesLabelPosition::UpperLeft | SeriesLabelPosition::LowerRight), "{corner:?}");
        let falling = Plot::new(
            "t",
            Axis::linear("x"),
            Axis::linear("y"),
            vec![line((0..10).map(|i| (i as f64, -(i as f64))).collect())],
        );
        let ((x0, x1), (y0, y1)) = falling.extent().unwrap();
        assert!(matches!(falling.legend_corner((x0, x1), (y0, y1)), SeriesLabelPosition::UpperRight));
    }

    #[test]
    fn long_series_are_thinned_keeping_both_ends() {
        let v: Vec<usize> = (0..1001).collect();
        let t = thin(&v);
        assert!(t.len() <= MAX_POINTS + 1, "{}", t.len());
        assert_eq!((t[0], *t.last().unwrap()), (0, 1000));
        assert_eq!(thin(&v[..10]), v[..10].to_vec());
    }
}
