//! Hand-written SVG: a latency-percentile chart and a throughput-over-time chart.
//!
//! No plotting crate: two line charts are ~200 lines of string formatting, while the
//! plotting crates pull in font and raster stacks. Latency uses the usual HdrHistogram
//! layout: x is "nines" (`-log10(1 - p)`, so p90, p99, p99.9 are evenly spaced), y is log ms.
//! Colour encodes the operation, dash pattern the target.

use crate::report::{Report, TargetReport};
use std::fmt::Write as _;

const W: f64 = 960.0;
const PANEL_H: f64 = 380.0;
const MARGIN_L: f64 = 80.0;
const MARGIN_R: f64 = 220.0;
const MARGIN_T: f64 = 40.0;
const MARGIN_B: f64 = 50.0;
/// Most series drawn per chart; more would be unreadable.
const SERIES_MAX: usize = 12;
/// Rightmost point on the nines axis (p99.999).
const NINES_MAX: f64 = 5.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22",
];
const DASHES: &[&str] = &["", "8 4", "2 3", "10 3 2 3"];

/// Renders both charts into one SVG document.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let h = PANEL_H * 2.0;
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    latency_panel(&mut s, report, 0.0);
    throughput_panel(&mut s, report, PANEL_H);
    s.push_str("</svg>\n");
    s
}

struct Frame {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
}

impl Frame {
    fn at(top: f64) -> Frame {
        Frame {
            x0: MARGIN_L,
            y0: top + MARGIN_T,
            w: W - MARGIN_L - MARGIN_R,
            h: PANEL_H - MARGIN_T - MARGIN_B,
        }
    }

    fn px(&self, fx: f64) -> f64 {
        self.x0 + fx.clamp(0.0, 1.0) * self.w
    }

    fn py(&self, fy: f64) -> f64 {
        self.y0 + self.h - fy.clamp(0.0, 1.0) * self.h
    }
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn axes(s: &mut String, f: &Frame, title: &str, xlabel: &str, ylabel: &str) {
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" font-size="15" font-weight="bold">{}</text>
<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text transform="translate({},{}) rotate(-90)" text-anchor="middle">{}</text>
"##,
        f.x0,
        f.y0 - 14.0,
        escape(title),
        f.x0,
        f.y0,
        f.w,
        f.h,
        f.x0 + f.w / 2.0,
        f.y0 + f.h + 38.0,
        escape(xlabel),
        f.x0 - 55.0,
        f.y0 + f.h / 2.0,
        escape(ylabel)
    );
}

fn xtick(s: &mut String, f: &Frame, fx: f64, label: &str) {
    let x = f.px(fx);
    let _ = writeln!(
        s,
        r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
        f.y0,
        f.y0 + f.h,
        f.y0 + f.h + 16.0,
        escape(label)
    );
}

fn ytick(s: &mut String, f: &Frame, fy: f64, label: &str) {
    let y = f.py(fy);
    let _ = writeln!(
        s,
        r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
        f.x0,
        f.x0 + f.w,
        f.x0 - 6.0,
        y + 4.0,
        escape(label)
    );
}

fn polyline(s: &mut String, pts: &[(f64, f64)], color: &str, dash: &str) {
    if pts.is_empty() {
        return;
    }
    let coords: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
        coords.join(" ")
    );
    for (x, y) in pts {
        let _ = writeln!(
            s,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.5" fill="{color}"/>"#
        );
    }
}

fn legend(s: &mut String, f: &Frame, i: usize, label: &str, color: &str, dash: &str) {
    let x = f.x0 + f.w + 14.0;
    let y = f.y0 + 10.0 + i as f64 * 18.0;
    let _ = writeln!(
        s,
        r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/><text x="{}" y="{}">{}</text>"#,
        x + 28.0,
        x + 34.0,
        y + 4.0,
        escape(label)
    );
}

fn nines(p: f64) -> f64 {
    if p >= 100.0 {
        NINES_MAX
    } else {
        (-(1.0 - p / 100.0).log10()).min(NINES_MAX)
    }
}

fn latency_panel(s: &mut String, report: &Report, top: f64) {
    let f = Frame::at(top);
    axes(
        s,
        &f,
        &format!("Latency by percentile — {}", report.scenario),
        "percentile",
        "latency (ms, log)",
    );
    let mut series = Vec::new();
    for (ti, t) in report.targets.iter().enumerate() {
        for (oi, o) in t.ops.iter().enumerate() {
            if o.requests > o.errors && series.len() < SERIES_MAX {
                let pts: Vec<(f64, f64)> = o
                    .percentiles
                    .iter()
                    .filter(|p| p.percentile < 99.999 || p.percentile >= 100.0)
                    .map(|p| (nines(p.percentile), (p.us.max(1) as f64) / 1000.0))
                    .collect();
                series.push((format!("{} {}", t.label, o.op), oi, ti, pts));
            }
        }
    }
    let all = series.iter().flat_map(|x| x.3.iter().map(|p| p.1));
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if series.is_empty() || lo > hi {
        return;
    }
    let (dlo, dhi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let fy = |ms: f64| (ms.log10() - dlo) / (dhi - dlo);
    for (i, lbl) in ["p0", "p90", "p99", "p99.9", "p99.99", "max"]
        .iter()
        .enumerate()
    {
        xtick(s, &f, i as f64 / NINES_MAX, lbl);
    }
    let mut d = dlo;
    while d <= dhi {
        ytick(s, &f, fy(10f64.powf(d)), &fmt_ms(10f64.powf(d)));
        d += 1.0;
    }
    for (i, (label, oi, ti, pts)) in series.iter().enumerate() {
        let color = COLORS[oi % COLORS.len()];
        let dash = DASHES[ti % DASHES.len()];
        let px: Vec<(f64, f64)> = pts
            .iter()
            .map(|(x, ms)| (f.px(x / NINES_MAX), f.py(fy(*ms))))
            .collect();
        polyline(s, &px, color, dash);
        legend(s, &f, i, label, color, dash);
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{}s", ms / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

/// Req/s suits small-object runs, MB/s bulk ones (mean request ≥ 256 KiB).
fn use_bytes(targets: &[TargetReport]) -> bool {
    let (b, r) = targets
        .iter()
        .flat_map(|t| &t.timeline)
        .fold((0u64, 0u64), |(b, r), x| (b + x.bytes, r + x.requests));
    r > 0 && b / r >= 256 << 10
}

fn throughput_panel(s: &mut String, report: &Report, top: f64) {
    let f = Frame::at(top);
    let bytes = use_bytes(&report.targets);
    let unit = if bytes { "MB/s" } else { "requests/s" };
    axes(
        s,
        &f,
        &format!("Throughput over time ({unit})"),
        "measured time (s)",
        unit,
    );
    let series: Vec<(String, Vec<(f64, f64)>)> = report
        .targets
        .iter()
        .take(SERIES_MAX)
        .map(|t| {
            let pts = t
                .timeline
                .iter()
                .filter(|x| x.interval_s > 0.0)
                .map(|x| {
                    let v = if bytes {
                        x.bytes as f64 / 1e6
                    } else {
                        x.requests as f64
                    };
                    (x.t_s, v / x.interval_s)
                })
                .collect();
            (format!("{} {}", t.label, t.url), pts)
        })
        .collect();
    let tmax = series
        .iter()
        .flat_map(|x| x.1.iter().map(|p| p.0))
        .fold(0.0, f64::max);
    let vmax = series
        .iter()
        .flat_map(|x| x.1.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    if tmax <= 0.0 {
        return;
    }
    let (tstep, tmax) = nice_axis(tmax);
    let (vstep, vmax) = nice_axis(vmax.max(1.0));
    for i in 0..=((tmax / tstep).round() as usize).min(50) {
        let v = i as f64 * tstep;
        xtick(s, &f, v / tmax, &format!("{v}"));
    }
    for i in 0..=((vmax / vstep).round() as usize).min(50) {
        let v = i as f64 * vstep;
        ytick(s, &f, v / vmax, &format!("{v}"));
    }
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let px: Vec<(f64, f64)> = pts
            .iter()
            .map(|(t, v)| (f.px(t / tmax), f.py(v / vmax)))
            .collect();
        polyline(s, &px, color, "");
        legend(s, &f, i, label, color, "");
    }
}

/// Fleet runs side by side: nodes done over time (top) and origin egress in image copies
/// over time (bottom), one colour per run (its `--label`).
pub fn render_fleet(runs: &[crate::fleet::FleetReport]) -> String {
    let mut s = String::new();
    let h = PANEL_H * 2.0;
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    let runs = &runs[..runs.len().min(SERIES_MAX)];
    let t_max = runs
        .iter()
        .flat_map(|r| {
            r.nodes
                .iter()
                .map(|n| n.seconds)
                .chain(r.origin_egress_timeline.iter().map(|p| p.0))
        })
        .fold(1.0f64, f64::max);
    let (xstep, xmax) = nice_axis(t_max);
    let name = |r: &crate::fleet::FleetReport| {
        if r.label.is_empty() {
            r.mode.clone()
        } else {
            r.label.clone()
        }
    };
    let xticks = |s: &mut String, f: &Frame| {
        let mut x = 0.0;
        while x <= xmax + 1e-9 {
            xtick(s, f, x / xmax, &format!("{x:.0}"));
            x += xstep;
        }
    };
    // Nodes done over time.
    let f = Frame::at(0.0);
    axes(
        &mut s,
        &f,
        "Fleet pull: nodes done",
        "seconds since the pull started",
        "nodes done",
    );
    let n_max = runs.iter().map(|r| r.nodes.len()).max().unwrap_or(1).max(1) as f64;
    let (ystep, ymax) = nice_axis(n_max);
    let mut y = 0.0;
    while y <= ymax + 1e-9 {
        ytick(&mut s, &f, y / ymax, &format!("{y:.0}"));
        y += ystep;
    }
    xticks(&mut s, &f);
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut times: Vec<f64> = r
            .nodes
            .iter()
            .filter(|n| n.error.is_none())
            .map(|n| n.seconds)
            .collect();
        times.sort_by(f64::total_cmp);
        let mut pts = vec![(f.px(0.0), f.py(0.0))];
        for (k, t) in times.iter().enumerate() {
            pts.push((f.px(t / xmax), f.py(k as f64 / ymax)));
            pts.push((f.px(t / xmax), f.py((k + 1) as f64 / ymax)));
        }
        polyline(&mut s, &pts, color, "");
        legend(&mut s, &f, i, &name(r), color, "");
    }
    // Origin egress over time, in image copies.
    let f = Frame::at(PANEL_H);
    axes(
        &mut s,
        &f,
        "Origin egress",
        "seconds since the pull started",
        "image copies sent",
    );
    let c_max = runs
        .iter()
        .flat_map(|r| {
            let size = r.image_bytes.max(1) as f64;
            r.origin_egress_timeline
                .iter()
                .map(move |p| p.1 as f64 / size)
        })
        .fold(1.0f64, f64::max);
    let (ystep, ymax) = nice_axis(c_max);
    let mut y = 0.0;
    while y <= ymax + 1e-9 {
        ytick(&mut s, &f, y / ymax, &format!("{y:.1}"));
        y += ystep;
    }
    xticks(&mut s, &f);
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let size = r.image_bytes.max(1) as f64;
        let pts: Vec<(f64, f64)> = r
            .origin_egress_timeline
            .iter()
            .map(|(t, b)| (f.px(t / xmax), f.py(*b as f64 / size / ymax)))
            .collect();
        polyline(&mut s, &pts, color, "");
        legend(&mut s, &f, i, &name(r), color, "");
    }
    s.push_str("</svg>\n");
    s
}

/// A 1/2/5 × 10^k step giving ≤ 10 ticks, and the axis maximum rounded up to a step.
fn nice_axis(max: f64) -> (f64, f64) {
    let raw = max / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (step, (max / step).ceil() * step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-6);
        assert_eq!(nines(100.0), NINES_MAX);
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_axis(10.0), (2.0, 10.0));
        assert_eq!(nice_axis(47.0), (10.0, 50.0));
        let (step, max) = nice_axis(0.37);
        assert!(step > 0.0 && max >= 0.37);
    }

    #[test]
    fn fleet_plot_draws_every_run() {
        let run = |label: &str, secs: f64| crate::fleet::FleetReport {
            mode: "via-nodes".into(),
            origin: "http://o".into(),
            image_bytes: 100,
            nodes: vec![crate::fleet::NodeResult {
                index: 0,
                url: "u".into(),
                seconds: secs,
                bytes: 100,
                error: None,
                peer_bytes: None,
                upstream_bytes: None,
            }],
            p50_s: secs,
            p99_s: secs,
            max_s: secs,
            origin_egress_bytes: Some(150),
            origin_copies: Some(1.5),
            label: label.into(),
            origin_egress_timeline: vec![(0.0, 0), (secs, 150)],
        };
        let svg = render_fleet(&[run("p2p", 3.0), run("no-p2p", 9.0)]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains(">p2p</text>") && svg.contains(">no-p2p</text>"));
    }

    #[test]
    fn empty_report_renders() {
        let r = Report {
            scenario: "x".into(),
            config: serde_json::Value::Null,
            targets: vec![],
            comparisons: vec![],
        };
        let svg = render(&r);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
    }
}
