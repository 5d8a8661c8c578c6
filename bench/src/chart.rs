//! Standalone SVG charts for the benchmark report: grouped bars with range whiskers, and lines on a
//! linear or log y axis, 800×420 on white so that they read the same on light and dark pages, in
//! the Okabe–Ito colours. NaN and infinite values are left out, and so are values that a log axis
//! cannot show (zero and below).
//!
//! Drawn with [plotters](https://docs.rs/plotters), a maintained plotting library, rather than a
//! renderer of our own: it lays out the axes, ticks, grid, legend and text. Only its features
//! `svg_backend` and `line_series` are on: no bitmap backend and no `ttf`, so it needs no font
//! files or system fonts (text is placed by a width estimate; the viewer picks the sans-serif
//! face). It adds plotters, plotters-backend and plotters-svg (num-traits was already here): about
//! 3 s of compiling in a cold debug build, and about half a second to each rebuild of this crate.

use std::ops::Range;

use plotters::{
    coord::{
        ranged1d::{AsRangedCoord, ValueFormatter},
        types::RangedCoordf64,
    },
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

const SIZE: (u32, u32) = (800, 420);
/// The Okabe–Ito colours, ordered so that the first few are the easiest to tell apart on white.
const PALETTE: [u32; 8] = [0x0072B2, 0xE69F00, 0x009E73, 0xD55E00, 0xCC79A7, 0x56B4E9, 0x000000, 0xF0E442];
const INK: RGBColor = RGBColor(0x33, 0x33, 0x33);
const WHISKER: RGBColor = RGBColor(0x00, 0x00, 0x00);
const GRID: RGBColor = RGBColor(0xE0, 0xE0, 0xE0);

/// Values beyond ±1e100, and below 1e-100 on a log axis, are left out too: plotters' axes overflow
/// or find no end of ticks on spans near the limits of f64.
const LIMIT: f64 = 1e100;

type Drawn = Result<(), DrawingAreaErrorKind<std::io::Error>>;

/// One bar: a value with an optional range (drawn as a thin whisker from low to high).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub value: f64,
    pub low: Option<f64>,
    pub high: Option<f64>,
}

/// A group of bars side by side, one per series (bars[i] belongs to series i; None = no bar).
#[derive(Debug, Clone, PartialEq)]
pub struct BarGroup {
    pub label: String,
    pub bars: Vec<Option<Bar>>,
}

/// A named line of (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Grouped bar chart: bars from zero, `unit` as the y axis label, a legend naming the series, and
/// each bar's value printed above it (compact: 12.3k, 1.2M, 850, 3.4).
pub fn bar_chart(title: &str, unit: &str, series: &[&str], groups: &[BarGroup]) -> anyhow::Result<String> {
    let slots = groups.iter().map(|group| group.bars.len()).max().unwrap_or(0).max(series.len()).max(1);
    let (slot, given) = (0.8 / slots as f64, |v: Option<f64>| v.filter(|&v| drawable(v)));
    // Group g is centred on x = g. Each bar that can be drawn: (series, middle of its slot, bar).
    let bars: Vec<(usize, f64, &Bar)> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, group)| group.bars.iter().enumerate().map(move |(i, bar)| (g, i, bar)))
        .filter_map(|(g, i, bar)| Some((i, g as f64 - 0.4 + (i as f64 + 0.5) * slot, bar.as_ref()?)))
        .filter(|(_, _, bar)| drawable(bar.value))
        .collect();
    let ends = |bar: &Bar| {
        let (low, high) = (given(bar.low).unwrap_or(bar.value), given(bar.high).unwrap_or(bar.value));
        (bar.value.min(low), bar.value.max(high))
    };
    let y = bar_range(bars.iter().map(|&(_, _, bar)| ends(bar)));
    // At most one tick per group: plotters then puts them on the whole numbers, the groups.
    let group = |x: &f64| groups.get(x.round() as usize).map_or_else(String::new, |group| group.label.clone());
    let x: XAxis = (-0.5..groups.len().max(1) as f64 - 0.5, groups.len().max(1), &group);
    plot((title, "", unit), x, y, (series, Swatch::Square), |chart| {
        let half = slot * 0.45;
        for &(i, x, bar) in &bars {
            chart.draw_series([Rectangle::new([(x - half, 0.0), (x + half, bar.value)], colour(i).filled())])?;
        }
        // A whisker: a line from low to high, with a cap 12 px wide at each end.
        for &(_, x, bar) in bars.iter().filter(|(_, _, bar)| given(bar.low).is_some() || given(bar.high).is_some()) {
            let (low, high) = ends(bar);
            chart.draw_series([PathElement::new([(x, low), (x, high)], WHISKER)])?;
            chart.draw_series(
                [low, high].map(|y| EmptyElement::at((x, y)) + PathElement::new([(-6, 0), (6, 0)], WHISKER)),
            )?;
        }
        chart.draw_series(bars.iter().map(|&(_, x, bar)| {
            let (low, high) = ends(bar);
            let (at, pos, dy) = if bar.value >= 0.0 { (high, VPos::Bottom, -3) } else { (low, VPos::Top, 3) };
            EmptyElement::at((x, at))
                + Text::new(compact(bar.value), (0, dy), font(11.0).pos(Pos::new(HPos::Center, pos)))
        }))?;
        Ok(())
    })
}

/// Line chart with a marker on every point; linear x axis, y axis linear (from zero) or log10
/// (`log_y`), axis labels, legend.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, log_y: bool, series: &[Series]) -> anyhow::Result<String> {
    let shown = |&(x, y): &(f64, f64)| drawable(x) && drawable(y) && (!log_y || y >= 1.0 / LIMIT);
    let lines: Vec<Vec<(f64, f64)>> = series.iter().map(|s| s.points.iter().copied().filter(shown).collect()).collect();
    let (points, names) = (|| lines.iter().flatten(), series.iter().map(|s| s.name.as_str()).collect::<Vec<_>>());
    let format = |v: &f64| compact(*v);
    let x: XAxis = (span(points().map(|p| p.0), 0.0..1.0), 10, &format);
    let (labels, legend) = ((title, x_label, y_label), (&names[..], Swatch::Line));
    if log_y {
        // Whole decades, so that each end of the axis is a labelled power of ten (the lower a hair
        // below, or plotters' rounding can leave out its tick).
        let y = span(points().map(|p| p.1), 1.0..10.0);
        let decade = |v: f64, round: fn(f64) -> f64| 10_f64.powf(round(v.log10()));
        let decades = decade(y.start, f64::floor) * (1.0 - 1e-9)..decade(y.end, f64::ceil);
        plot(labels, x, decades.log_scale(), legend, |chart| draw_lines(chart, &lines))
    } else {
        plot(labels, x, span(points().map(|p| p.1).chain([0.0]), 0.0..1.0), legend, |chart| draw_lines(chart, &lines))
    }
}

fn draw_lines<Y: Ranged<ValueType = f64>>(chart: &mut Chart<Y>, lines: &[Vec<(f64, f64)>]) -> Drawn {
    for (i, points) in lines.iter().enumerate() {
        let style = colour(i).filled().stroke_width(2);
        chart.draw_series(LineSeries::new(points.iter().copied(), style).point_size(3))?;
    }
    Ok(())
}

/// The x axis: its range, how many ticks at most, and their labels.
type XAxis<'a> = (Range<f64>, usize, &'a dyn Fn(&f64) -> String);

type Chart<'a, 'b, Y> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>;

/// How the legend shows a series.
#[derive(Clone, Copy)]
enum Swatch {
    Square,
    Line,
}

/// The document: on white, the title over a chart of `x` by `y`, with grid, axes and axis labels,
/// what `draw` puts on it, and the legend. The legend is a column right of the plot, where it
/// covers nothing however many series there are (plotters puts its own inside the plot).
fn plot<Y>(
    (title, x_label, y_label): (&str, &str, &str),
    (x, x_ticks, x_format): XAxis,
    y: Y,
    (names, swatch): (&[&str], Swatch),
    draw: impl FnOnce(&mut Chart<Y::CoordDescType>) -> Drawn,
) -> anyhow::Result<String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let heading = font(17.0);
        let area = root.titled(title, TextStyle { font: heading.font.style(FontStyle::Bold), ..heading })?;
        let longest = names.iter().map(|name| name.len()).max().unwrap_or(0) as u32;
        let (area, legend) = area.split_horizontally(SIZE.0.saturating_sub(40 + 7 * longest));
        let mut chart =
            ChartBuilder::on(&area).margin(12).x_label_area_size(42).y_label_area_size(62).build_cartesian_2d(x, y)?;
        let mut mesh = chart.configure_mesh();
        mesh.bold_line_style(GRID).light_line_style(TRANSPARENT).axis_style(INK);
        if let Swatch::Square = swatch {
            // Bars need no vertical grid, which would run between the bars of a group.
            mesh.disable_x_mesh();
        }
        mesh.label_style(font(12.0)).axis_desc_style(font(13.0)).x_desc(x_label).y_desc(y_label);
        mesh.x_labels(x_ticks).x_label_formatter(x_format).y_label_formatter(&|v| compact(*v)).draw()?;
        draw(&mut chart)?;
        for (i, name) in names.iter().enumerate() {
            let y = 24 + 19 * i as i32;
            match swatch {
                Swatch::Square => legend.draw(&Rectangle::new([(0, y - 6), (12, y + 6)], colour(i).filled()))?,
                Swatch::Line => legend.draw(&PathElement::new([(0, y), (14, y)], colour(i).stroke_width(3)))?,
            }
            legend.draw(&Text::new(*name, (22, y), font(12.0).pos(Pos::new(HPos::Left, VPos::Center))))?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// Sans-serif text `px` pixels high (plotters-svg writes a font's size divided by 1.24).
fn font(px: f64) -> TextStyle<'static> {
    ("sans-serif", px * 1.24).into_font().color(&INK)
}

/// The y range of bars spanning `ends` (low, high): from zero, with room above for the value
/// labels (and below for negative bars).
fn bar_range(ends: impl Iterator<Item = (f64, f64)>) -> Range<f64> {
    let (lo, hi) = ends.fold((0.0_f64, 0.0_f64), |(lo, hi), (low, high)| (lo.min(low), hi.max(high)));
    let hi = if hi > lo { hi } else { 1.0 };
    (if lo < 0.0 { lo - (hi - lo) * 0.08 } else { 0.0 })..hi + (hi - lo) * 0.08
}

/// From the smallest to the largest of `values`, or `otherwise` when there are none.
fn span(values: impl Iterator<Item = f64>, otherwise: Range<f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo <= hi { lo..hi } else { otherwise }
}

/// Finite and within ±[`LIMIT`] (NaN is neither).
fn drawable(v: f64) -> bool {
    v.abs() <= LIMIT
}

/// Series `i`'s colour.
fn colour(i: usize) -> RGBColor {
    let rgb = PALETTE[i % PALETTE.len()];
    RGBColor((rgb >> 16) as u8, (rgb >> 8) as u8, rgb as u8)
}

/// A short label for `v`, three significant digits and a unit prefix: 12.3k, 1.5M, 850, 3.4, 0.05.
fn compact(v: f64) -> String {
    let prefixes = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    let (scaled, prefix) =
        prefixes.into_iter().find(|&(unit, _)| v.abs() >= unit * 0.99995).map_or((v, ""), |(unit, p)| (v / unit, p));
    let decimals = if scaled == 0.0 || !scaled.is_finite() {
        0
    } else {
        (2 - scaled.abs().log10().floor() as i32).clamp(0, 6) as usize
    };
    let digits = format!("{scaled:.decimals$}");
    let digits = if digits.contains('.') { digits.trim_end_matches('0').trim_end_matches('.') } else { &digits };
    format!("{digits}{prefix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(value: f64, low: Option<f64>, high: Option<f64>) -> Option<Bar> {
        Some(Bar { value, low, high })
    }

    fn group(label: &str, bars: Vec<Option<Bar>>) -> BarGroup {
        BarGroup { label: label.into(), bars }
    }

    fn line(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points }
    }

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    /// The contents of every `<text>` element.
    fn texts(svg: &str) -> Vec<&str> {
        let contents = svg.split("<text").skip(1).map(|rest| rest.split_once('>').map(|(_, text)| text));
        contents.map(|text| text.and_then(|text| text.split_once("</text>")).unwrap().0.trim()).collect()
    }

    /// Whole: one 800×420 document on white, every text closed, no unrenderable number in it.
    fn assert_document(svg: &str) {
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && count(svg, "<svg") == 1, "{svg}");
        assert!(svg.contains(r##"<rect x="0" y="0" width="800" height="420" opacity="1" fill="#FFFFFF""##), "{svg}");
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn compact_format() {
        let values = [1234.0, 12_345.0, 123_456.0, 1_500_000.0, 999_990.0, 2e9, 850.0, 3.4, 0.05, 0.0, -2500.0];
        let texts = ["1.23k", "12.3k", "123k", "1.5M", "1M", "2G", "850", "3.4", "0.05", "0", "-2.5k"];
        assert_eq!(values.map(compact), texts);
    }

    #[test]
    fn bar_chart_names_every_group_and_series_and_draws_each_finite_bar() {
        let groups = [
            group("http", vec![bar(12_345.0, None, None), bar(850.0, None, None)]),
            group("grpc", vec![None, bar(3.4, None, None)]),
            group("wasm", vec![bar(f64::NAN, None, None), bar(f64::INFINITY, None, None)]),
            group("short", vec![bar(0.5, None, None)]),
        ];
        let svg = bar_chart("Throughput", "votes/s", &["noop", "kafka"], &groups).unwrap();
        assert_document(&svg);
        // Each series' colour fills its legend swatch and its finite bars, no more.
        assert_eq!((count(&svg, r##"fill="#0072B2""##), count(&svg, r##"fill="#E69F00""##)), (1 + 2, 1 + 2));
        let texts = texts(&svg);
        for label in ["Throughput", "votes/s", "noop", "kafka", "http", "grpc", "wasm", "short", "12.3k", "850", "3.4"]
        {
            assert_eq!(texts.iter().filter(|&&text| text == label).count(), 1, "{label} in {texts:?}");
        }
        assert_eq!(count(&svg, r##"stroke="#000000""##), 0, "no whiskers without ranges: {svg}");
    }

    #[test]
    fn whiskers_only_where_a_range_is_given_and_inside_the_axis() {
        let bars = vec![bar(10.0, Some(8.0), Some(30.0)), bar(10.0, None, None), bar(10.0, None, Some(12.0))];
        let groups = [group("g", bars), group("h", vec![bar(9.0, Some(f64::NAN), None)])];
        let svg = bar_chart("Latency", "ms", &["a", "b", "c"], &groups).unwrap();
        assert_document(&svg);
        // Two whiskers, each a line and two caps; the NaN low end gives none.
        assert_eq!(count(&svg, r##"stroke="#000000""##), 2 * 3, "{svg}");
        let range = bar_range([(8.0, 30.0), (-2.0, 1.0)].into_iter());
        assert!(range.start < -2.0 && range.end > 30.0, "{range:?}");
    }

    #[test]
    fn line_chart_leaves_out_what_its_axis_cannot_show() {
        let points =
            vec![(1.0, 0.0), (2.0, -1.0), (3.0, 0.5), (4.0, 5.0), (5.0, 50.0), (f64::NAN, 1.0), (6.0, f64::INFINITY)];
        let series = [line("p99", points), line("p50", vec![(1.0, 2.0)])];
        let log = line_chart("Latency", "offered/s", "ms", true, &series).unwrap();
        assert_document(&log);
        // p99 keeps 0.5, 5 and 50 (zero, negative, NaN and infinite left out); p50 its one point.
        assert_eq!((count(&log, r##"<circle"##), count(&log, r##"fill="#0072B2""##)), (3 + 1, 3), "{log}");
        let texts = texts(&log);
        for label in ["Latency", "offered/s", "ms", "p99", "p50", "0.1", "1", "10", "100"] {
            assert!(texts.contains(&label), "{label} in {texts:?}");
        }
        // A linear axis shows zero and the negative value too.
        let linear = line_chart("Latency", "offered/s", "ms", false, &series).unwrap();
        assert_document(&linear);
        assert_eq!(count(&linear, "<circle"), 5 + 1, "{linear}");
    }

    #[test]
    fn text_is_escaped() {
        let svg = bar_chart("p99 < 5ms & \"fast\"", "<ms>", &["a&b"], &[group("x>y", vec![bar(1.0, None, None)])]);
        let svg = svg.unwrap();
        for text in ["p99 &lt; 5ms &amp; &quot;fast&quot;", "&lt;ms&gt;", "a&amp;b", "x&gt;y"] {
            assert!(texts(&svg).contains(&text), "{text} in {svg}");
        }
    }

    #[test]
    fn empty_and_degenerate_inputs_give_whole_documents() {
        let svgs = [
            bar_chart("", "", &[], &[]),
            bar_chart("t", "u", &["a"], &[group("zero", vec![bar(0.0, None, None)]), group("none", vec![])]),
            bar_chart("t", "u", &["a"], &[group("negative", vec![bar(-2.0, Some(-3.0), None)])]),
            line_chart("", "", "", false, &[]),
            line_chart("", "", "", true, &[]),
            line_chart("t", "x", "y", false, &[line("s", vec![(3.0, 7.0)])]),
            line_chart("t", "x", "y", true, &[line("s", vec![(3.0, 0.0), (4.0, -1.0)])]),
            line_chart(
                "t",
                "x",
                "y",
                true,
                &[line("s", vec![(1.0, 1e-100), (2.0, 1e100), (-f64::MAX, 1.0), (3.0, f64::MAX), (4.0, 1e-101)])],
            ),
            line_chart("t", "x", "y", false, &[line("s", vec![(-1e100, f64::MIN_POSITIVE), (1e100, 1e100)])]),
            bar_chart("t", "u", &["a"], &[group("huge", vec![bar(1e100, Some(-1e100), Some(f64::MAX))])]),
        ]
        .map(Result::unwrap);
        svgs.iter().for_each(|svg| assert_document(svg));
        assert_eq!([5, 6, 7, 8].map(|i| count(&svgs[i], "<circle")), [1, 0, 2, 2]);
    }
}
