//! Standalone SVG charts for the benchmark report: grouped bars and lines, 800×420 on white so that
//! they read the same on light and dark pages. NaN and infinite values are left out, and so are
//! values that a log axis cannot show (zero and below).

use std::fmt::Write as _;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 420.0;
/// The plot area's edges; the room outside holds the title, tick labels, axis labels and legend.
const LEFT: f64 = 72.0;
const RIGHT: f64 = 780.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 336.0;
/// The Okabe–Ito colours, ordered so that the first few are the easiest to tell apart on white.
const PALETTE: [&str; 8] = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"];
const AXIS: &str = r##"stroke="#333333""##;

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

/// Grouped horizontal-axis bar chart. Values are drawn from zero; the y axis gets "nice" ticks
/// (1/2/5 × 10^k) and `unit` as its label; a legend names the series; each bar has its value
/// printed above it (compact: 12.3k, 1.2M, 850, 3.4).
pub fn bar_chart(title: &str, unit: &str, series: &[&str], groups: &[BarGroup]) -> String {
    let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
    let drawn = |group: &BarGroup| -> Vec<(usize, Bar)> {
        let bars = group.bars.iter().enumerate();
        bars.filter_map(|(i, bar)| Some((i, bar.clone().filter(|bar| bar.value.is_finite())?))).collect()
    };
    let (mut lo, mut hi) = (0.0_f64, 0.0_f64);
    for (_, bar) in groups.iter().flat_map(drawn) {
        for v in [Some(bar.value), finite(bar.low), finite(bar.high)].into_iter().flatten() {
            (lo, hi) = (lo.min(v), hi.max(v));
        }
    }
    let y = Axis { ticks: nice_ticks(lo, hi), log: false };
    let mut out = header(title, &y, unit);
    let slots = groups.iter().map(|group| group.bars.len()).max().unwrap_or(0).max(series.len()).max(1);
    let group_width = (RIGHT - LEFT) / groups.len().max(1) as f64;
    let slot = group_width * 0.8 / slots as f64;
    let zero = y.to_px(0.0);
    for (g, group) in groups.iter().enumerate() {
        let left = LEFT + g as f64 * group_width;
        text(&mut out, left + group_width / 2.0, BOTTOM + 18.0, r#" text-anchor="middle""#, &group.label);
        for (i, bar) in drawn(group) {
            let (x, middle, colour) = (left + group_width * 0.1 + i as f64 * slot, slot / 2.0, colour(i));
            let (top, height) = (y.to_px(bar.value).min(zero), (y.to_px(bar.value) - zero).abs());
            let (bx, by, bw, bh) = (num(x + slot * 0.05), num(top), num(slot * 0.9), num(height));
            let _ = writeln!(out, r#"<rect x="{bx}" y="{by}" width="{bw}" height="{bh}" fill="{colour}"/>"#);
            let (low, high) = (finite(bar.low).unwrap_or(bar.value), finite(bar.high).unwrap_or(bar.value));
            if finite(bar.low).is_some() || finite(bar.high).is_some() {
                let (cx, cap) = (x + middle, (slot * 0.2).min(6.0));
                let (ylo, yhi, l, r) = (num(y.to_px(low)), num(y.to_px(high)), num(cx - cap), num(cx + cap));
                let d = format!("M{0} {ylo}V{yhi}M{l} {ylo}H{r}M{l} {yhi}H{r}", num(cx));
                let _ = writeln!(out, r#"<path class="whisker" d="{d}" {AXIS} fill="none"/>"#);
            }
            // Above the bar and its whisker, or below them for a value under zero.
            let label_y = if bar.value >= 0.0 {
                y.to_px(bar.value.max(low).max(high)) - 4.0
            } else {
                y.to_px(bar.value.min(low).min(high)) + 12.0
            };
            text(&mut out, x + middle, label_y, r#" text-anchor="middle" font-size="10""#, &compact(bar.value));
        }
    }
    line(&mut out, (LEFT, zero), (RIGHT, zero), AXIS);
    footer(out, series, false)
}

/// Line chart with point markers; linear x axis, y axis linear or log10 (`log_y`), nice ticks,
/// axis labels, legend.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, log_y: bool, series: &[Series]) -> String {
    let shown = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);
    let lines: Vec<Vec<(f64, f64)>> = series.iter().map(|s| s.points.iter().copied().filter(shown).collect()).collect();
    let range = |coordinate: fn(&(f64, f64)) -> f64| {
        let values = || lines.iter().flatten().map(coordinate);
        Some((values().reduce(f64::min)?, values().reduce(f64::max)?))
    };
    let (x_lo, x_hi) = range(|p| p.0).unwrap_or((0.0, 1.0));
    let x = Axis { ticks: nice_ticks(x_lo, x_hi), log: false };
    let y = match (log_y, range(|p| p.1)) {
        (true, Some((lo, hi))) => Axis { ticks: log_ticks(lo, hi), log: true },
        (true, None) => Axis { ticks: log_ticks(1.0, 10.0), log: true },
        (false, range) => {
            let (lo, hi) = range.unwrap_or((0.0, 0.0));
            Axis { ticks: nice_ticks(lo.min(0.0), hi.max(0.0)), log: false }
        }
    };
    let mut out = header(title, &y, y_label);
    let x_px = |v: f64| LEFT + x.fraction(v) * (RIGHT - LEFT);
    for (&tick, label) in x.ticks.iter().zip(tick_labels(&x.ticks)) {
        text(&mut out, x_px(tick), BOTTOM + 18.0, r#" text-anchor="middle""#, &label);
    }
    text(&mut out, (LEFT + RIGHT) / 2.0, BOTTOM + 38.0, r#" text-anchor="middle""#, x_label);
    line(&mut out, (LEFT, BOTTOM), (RIGHT, BOTTOM), AXIS);
    for (i, points) in lines.iter().enumerate() {
        let colour = colour(i);
        let px: Vec<(String, String)> = points.iter().map(|&(px, py)| (num(x_px(px)), num(y.to_px(py)))).collect();
        if px.len() > 1 {
            let path = px.iter().map(|(a, b)| format!("{a},{b}")).collect::<Vec<_>>().join(" ");
            let _ = writeln!(out, r#"<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>"#);
        }
        for (a, b) in &px {
            let _ = writeln!(out, r#"<circle cx="{a}" cy="{b}" r="3" fill="{colour}"/>"#);
        }
    }
    footer(out, &series.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), true)
}

/// A value axis: its ticks (at least two, increasing; powers of ten when `log`) span it.
struct Axis {
    ticks: Vec<f64>,
    log: bool,
}

impl Axis {
    /// Where `v` falls between the first tick (0) and the last (1).
    fn fraction(&self, v: f64) -> f64 {
        let scale = |v: f64| if self.log { v.log10() } else { v };
        let (first, last) = (scale(self.ticks[0]), scale(self.ticks[self.ticks.len() - 1]));
        let fraction = (scale(v) - first) / (last - first);
        // Out of bounds only when the data defeats the ticks (magnitudes near f64::MAX).
        if fraction.is_finite() { fraction.clamp(-1.0, 2.0) } else { 0.0 }
    }

    /// The vertical pixel of `v` on a y axis.
    fn to_px(&self, v: f64) -> f64 {
        BOTTOM - self.fraction(v) * (BOTTOM - TOP)
    }
}

/// The document's start: background, title, and the y axis with its grid, tick labels and label.
fn header(title: &str, y: &Axis, y_label: &str) -> String {
    let (w, h) = (num(WIDTH), num(HEIGHT));
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\" fill=\"#222222\">\n\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>\n"
    );
    text(&mut out, WIDTH / 2.0, 26.0, r#" text-anchor="middle" font-size="16" font-weight="bold""#, title);
    for (&tick, label) in y.ticks.iter().zip(tick_labels(&y.ticks)) {
        line(&mut out, (LEFT, y.to_px(tick)), (RIGHT, y.to_px(tick)), r##"stroke="#e0e0e0""##);
        text(&mut out, LEFT - 6.0, y.to_px(tick) + 4.0, r#" text-anchor="end""#, &label);
    }
    line(&mut out, (LEFT, TOP), (LEFT, BOTTOM), AXIS);
    let rotate = format!(r#" text-anchor="middle" transform="rotate(-90 16 {})""#, num((TOP + BOTTOM) / 2.0));
    text(&mut out, 16.0, (TOP + BOTTOM) / 2.0, &rotate, y_label);
    out
}

/// The legend, one centred row of swatches (squares for bars, short lines for lines) with the
/// series names, and the document's end.
fn footer(mut out: String, names: &[&str], lines: bool) -> String {
    let width = |name: &str| 36.0 + 7.0 * name.chars().count() as f64;
    let (mut x, y) = ((WIDTH - names.iter().map(|name| width(name)).sum::<f64>()).max(0.0) / 2.0, HEIGHT - 16.0);
    for (i, name) in names.iter().enumerate() {
        let colour = colour(i);
        if lines {
            line(&mut out, (x, y - 4.0), (x + 12.0, y - 4.0), &format!(r#"stroke="{colour}" stroke-width="3""#));
        } else {
            let (rx, ry) = (num(x), num(y - 10.0));
            let _ = writeln!(out, r#"<rect x="{rx}" y="{ry}" width="12" height="12" fill="{colour}"/>"#);
        }
        text(&mut out, x + 16.0, y, "", name);
        x += width(name);
    }
    out + "</svg>\n"
}

/// Series `i`'s colour.
fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A `<text>` at (`x`, `y`) with extra attributes `attrs` and `content` escaped.
fn text(out: &mut String, x: f64, y: f64, attrs: &str, content: &str) {
    let _ = writeln!(out, r#"<text x="{}" y="{}"{attrs}>{}</text>"#, num(x), num(y), escape(content));
}

fn line(out: &mut String, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str) {
    let _ = writeln!(out, r#"<line x1="{}" y1="{}" x2="{}" y2="{}" {stroke}/>"#, num(x1), num(y1), num(x2), num(y2));
}

/// Ticks at a step of 1, 2 or 5 × 10^k, about five of them, from at or below `lo` to at or above
/// `hi`. Always at least two, increasing; a span they cannot cover in f64 gives 0 and 1.
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() { (lo.min(hi), lo.max(hi)) } else { (0.0, 1.0) };
    if lo == hi {
        (lo, hi) = if lo == 0.0 { (0.0, 1.0) } else { (lo - lo.abs() * 0.1, hi + hi.abs() * 0.1) };
    }
    let raw = (hi - lo) / 5.0;
    let magnitude = 10_f64.powf(raw.log10().floor());
    let step = magnitude * [1.0, 2.0, 5.0, 10.0].into_iter().find(|&f| raw / magnitude <= f).unwrap_or(10.0);
    let (first, last) = ((lo / step).floor(), (hi / step).ceil());
    // Rounding can put first × step a hair above `lo` (or last × step below `hi`).
    let first = if first * step > lo { first - 1.0 } else { first };
    let last = if last * step < hi { last + 1.0 } else { last };
    let count = last - first;
    if !(step > 0.0 && (first * step).is_finite() && (last * step).is_finite() && (1.0..=50.0).contains(&count)) {
        return vec![0.0, 1.0];
    }
    (0..=count as usize).map(|i| (first + i as f64) * step).collect()
}

/// Powers of ten from at or below `lo` to at or above `hi` (both above zero), at most nine.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let first = (lo.log10().floor() as i32).clamp(-300, 299);
    let last = (hi.log10().ceil() as i32).clamp(first + 1, 300);
    let every = ((last - first) as usize).div_ceil(8);
    let count = ((last - first) as usize).div_ceil(every);
    (0..=count).map(|i| 10_f64.powi(first + (i * every) as i32)).collect()
}

/// Compact labels for `ticks`, or, when two neighbours would read the same, plain numbers with as
/// many decimals as the step needs.
fn tick_labels(ticks: &[f64]) -> Vec<String> {
    let labels: Vec<String> = ticks.iter().map(|&t| compact(t)).collect();
    if labels.windows(2).all(|pair| pair[0] != pair[1]) {
        return labels;
    }
    let decimals = (-(ticks[1] - ticks[0]).abs().log10().floor()).clamp(0.0, 6.0) as usize;
    ticks.iter().map(|t| format!("{t:.decimals$}")).collect()
}

/// A short label for `v`, about three digits: 12.3k, 1.2M, 850, 3.4, 0.05, 2.5e-3.
fn compact(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() || a == 0.0 {
        return if a == 0.0 { "0".to_string() } else { String::new() };
    }
    let body = if !(0.01..1e15).contains(&a) {
        format!("{a:.1e}").replace(".0e", "e")
    } else {
        let label = |(divisor, suffix): (f64, &str)| {
            let scaled = a / divisor;
            let decimals = (2 - scaled.log10().floor() as i32).clamp(0, if divisor > 1.0 { 1 } else { 2 }) as usize;
            let digits = trim_zeros(format!("{scaled:.decimals$}"));
            // 999.96 prints as 1000: the next unit says it better.
            digits.parse::<f64>().is_ok_and(|d| d < 1000.0).then(|| format!("{digits}{suffix}"))
        };
        let units = [(1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")];
        units.into_iter().find_map(label).unwrap_or_default()
    };
    if v < 0.0 { format!("-{body}") } else { body }
}

/// A coordinate with at most one decimal.
fn num(v: f64) -> String {
    let s = trim_zeros(format!("{v:.1}"));
    if s == "-0" { "0".to_string() } else { s }
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// `text` with &, <, > and " escaped for SVG text and attributes.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
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

    fn count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    fn assert_document(svg: &str) {
        assert!(svg.starts_with(r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 800 420""#), "{svg}");
        assert!(svg.ends_with("</svg>\n") && count(svg, "<svg") == 1, "{svg}");
        assert_eq!(count(svg, "<text"), count(svg, "</text>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn nice_ticks_cover_the_data_range() {
        for (lo, hi) in
            [(0.0, 0.0), (0.0, 12_345.0), (-3.2, 7.7), (5.0, 5.0), (0.001, 0.0042), (1e3, 1.5e3), (0.3, 0.7)]
        {
            let ticks = nice_ticks(lo, hi);
            assert!((2..=12).contains(&ticks.len()) && ticks[0] <= lo && ticks[ticks.len() - 1] >= hi, "{ticks:?}");
            let step = ticks[1] - ticks[0];
            let mantissa = step / 10_f64.powf(step.log10().floor());
            assert!([1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6), "{lo}..{hi}: step {step}");
            assert!(ticks.windows(2).all(|w| ((w[1] - w[0]) - step).abs() < step * 1e-6), "{ticks:?}");
        }
        assert_eq!(nice_ticks(0.0, 12_345.0), [0.0, 5000.0, 10_000.0, 15_000.0]);
        assert_eq!(nice_ticks(f64::NAN, 3.0), nice_ticks(0.0, 1.0));
        assert_eq!(log_ticks(0.3, 42.0), [0.1, 1.0, 10.0, 100.0]);
        assert_eq!(log_ticks(5.0, 5.0), [1.0, 10.0]);
        let wide = log_ticks(1e-6, 1e12);
        assert!(wide.len() <= 10 && wide[0] <= 1e-6 && wide[wide.len() - 1] >= 1e12, "{wide:?}");
    }

    #[test]
    fn compact_format() {
        let values = [1234.0, 12_345.0, 123_456.0, 1_500_000.0, 999_950.0, 2e9, 850.0, 3.4, 12.34, 0.5, 0.0, -2500.0];
        let texts = ["1.2k", "12.3k", "123k", "1.5M", "1M", "2G", "850", "3.4", "12.3", "0.5", "0", "-2.5k"];
        assert_eq!(values.map(compact), texts);
        assert_eq!([0.0025, 1.5e20, f64::NAN, f64::INFINITY].map(compact), ["2.5e-3", "1.5e20", "", ""]);
        // Labels that compact would make equal fall back to plain numbers.
        assert_eq!(tick_labels(&[0.0, 5000.0, 10_000.0]), ["0", "5k", "10k"]);
        assert_eq!(tick_labels(&[100_000.0, 100_100.0]), ["100000", "100100"]);
    }

    #[test]
    fn escaping() {
        assert_eq!(escape(r#"a<b & "c">"#), "a&lt;b &amp; &quot;c&quot;&gt;");
        let svg = bar_chart("p99 < 5ms & \"fast\"", "<ms>", &["a&b"], &[group("x>y", vec![bar(1.0, None, None)])]);
        for text in [">p99 &lt; 5ms &amp; &quot;fast&quot;</text>", ">&lt;ms&gt;<", ">a&amp;b<", ">x&gt;y<"] {
            assert!(svg.contains(text), "{text} in {svg}");
        }
        assert!(!svg.contains("<ms>") && !svg.contains("a&b") && !svg.contains("x>y"));
    }

    #[test]
    fn bar_chart_has_one_rect_per_present_bar() {
        let groups = [
            group("http", vec![bar(12_345.0, None, None), bar(850.0, None, None)]),
            group("grpc", vec![None, bar(3.4, None, None)]),
            group("wasm", vec![bar(f64::NAN, None, None), bar(f64::INFINITY, None, None)]),
            group("short", vec![bar(0.5, None, None)]),
        ];
        let svg = bar_chart("Throughput", "votes/s", &["noop", "kafka"], &groups);
        assert_document(&svg);
        // The background, two legend swatches and four bars; each series' colour on its swatch and bars.
        assert_eq!(count(&svg, "<rect"), 1 + 2 + 4, "{svg}");
        assert_eq!((count(&svg, r##"fill="#0072B2"/>"##), count(&svg, r##"fill="#E69F00"/>"##)), (1 + 2, 1 + 2));
        for label in [">12.3k<", ">850<", ">3.4<", ">0.5<", ">votes/s<", ">noop<", ">kafka<", ">wasm<"] {
            assert!(svg.contains(label), "{label} in {svg}");
        }
        assert_eq!(count(&svg, "whisker"), 0);
    }

    #[test]
    fn whiskers_only_where_a_range_is_given() {
        let bars = vec![bar(10.0, Some(8.0), Some(30.0)), bar(10.0, None, None), bar(10.0, None, Some(12.0))];
        let svg = bar_chart(
            "Latency",
            "ms",
            &["a", "b", "c", "d"],
            &[group("g", bars), group("h", vec![bar(9.0, Some(f64::NAN), None)])],
        );
        assert_document(&svg);
        assert_eq!(count(&svg, r#"<path class="whisker""#), 2, "{svg}");
        // The whisker's high end counts for the axis: 30 needs a tick at or above it.
        assert!(svg.contains(">30<"), "{svg}");
    }

    #[test]
    fn line_chart_log_axis_skips_non_positive_values() {
        let points =
            vec![(1.0, 0.0), (2.0, -1.0), (3.0, 0.5), (4.0, 5.0), (5.0, 50.0), (f64::NAN, 1.0), (6.0, f64::INFINITY)];
        let series = [Series { name: "p99".into(), points }];
        let log = line_chart("Latency", "offered/s", "ms", true, &series);
        assert_document(&log);
        assert_eq!((count(&log, "<circle"), count(&log, "<polyline")), (3, 1), "{log}");
        for tick in [">0.1<", ">1<", ">10<", ">100<", ">offered/s<", ">p99<"] {
            assert!(log.contains(tick), "{tick} in {log}");
        }
        let linear = line_chart("Latency", "offered/s", "ms", false, &series);
        assert_document(&linear);
        assert_eq!(count(&linear, "<circle"), 5, "{linear}");
    }

    #[test]
    fn empty_and_degenerate_inputs_give_whole_documents() {
        let one = |points| [Series { name: "s".into(), points }];
        let svgs = [
            bar_chart("", "", &[], &[]),
            bar_chart("t", "u", &["a"], &[group("zero", vec![bar(0.0, None, None)]), group("none", vec![])]),
            bar_chart("t", "u", &["a"], &[group("negative", vec![bar(-2.0, Some(-3.0), None)])]),
            line_chart("", "", "", false, &[]),
            line_chart("", "", "", true, &[]),
            line_chart("t", "x", "y", false, &one(vec![])),
            line_chart("t", "x", "y", false, &one(vec![(3.0, 7.0)])),
            line_chart("t", "x", "y", true, &one(vec![(3.0, 0.0), (4.0, -1.0)])),
            line_chart("t", "x", "y", true, &one(vec![(f64::MAX, f64::MIN_POSITIVE), (-f64::MAX, f64::MAX)])),
        ];
        svgs.iter().for_each(|svg| assert_document(svg));
        assert_eq!(count(&svgs[1], "<rect"), 1 + 1 + 1);
        assert_eq!((count(&svgs[6], "<circle"), count(&svgs[6], "<polyline")), (1, 0));
        assert_eq!(count(&svgs[7], "<circle"), 0);
    }

    #[test]
    fn charts_are_deterministic() {
        let series = [Series { name: "a".into(), points: vec![(1.0, 2.0), (2.0, 3.5)] }];
        assert_eq!(line_chart("t", "x", "y", true, &series), line_chart("t", "x", "y", true, &series));
        let groups = [group("g", vec![bar(1.5, None, None), bar(2.5, Some(2.0), Some(3.0))])];
        assert_eq!(bar_chart("t", "u", &["a", "b"], &groups), bar_chart("t", "u", &["a", "b"], &groups));
    }
}
