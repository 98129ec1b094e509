//! The report's charts as inline SVG: grouped bars over blocks, the per-matrix heatmap and the
//! search curves, with the axes, ticks and colour scale they share.

use super::format::{esc, finite_or, fixed, num, unit};
use crate::report::{Candidate, MatrixSparsity};
use std::collections::BTreeMap;

/// `text-anchor` attributes for [`text`].
const MID: &str = " text-anchor=\"middle\"";
const END: &str = " text-anchor=\"end\"";

/// The measured sparsity of every matrix: a row per block, a column per module role.
pub(super) fn heatmap(cells: &[MatrixSparsity]) -> String {
    let mut roles: Vec<&str> = Vec::new();
    let mut rows = BTreeMap::new();
    for m in cells {
        if !roles.contains(&m.module.as_str()) {
            roles.push(&m.module);
        }
        rows.insert(m.block, 0);
    }
    for (i, row) in rows.values_mut().enumerate() {
        *row = i;
    }
    let (lo, hi) = color_range(cells.iter().map(|m| m.measured));
    let (cw, ch, left, top) = (104.0, 16.0, 64.0, 28.0);
    let bottom = top + ch * rows.len() as f64;
    let mut h = svg_open(
        "matrix-heatmap",
        left + cw * roles.len() as f64 + 20.0,
        bottom + 40.0,
    );
    for (j, role) in roles.iter().enumerate() {
        h += &text(left + cw * (j as f64 + 0.5), top - 8.0, MID, role);
    }
    for (b, i) in &rows {
        h += &text(
            left - 6.0,
            top + ch * *i as f64 + 12.0,
            END,
            &format!("block {b}"),
        );
    }
    for m in cells {
        let (Some(j), Some(i)) = (
            roles.iter().position(|r| *r == m.module),
            rows.get(&m.block),
        ) else {
            continue;
        };
        let (x, y, t) = (
            left + cw * j as f64,
            top + ch * *i as f64,
            unit((m.measured - lo) / (hi - lo)),
        );
        let (block, module, value, target) =
            (m.block, esc(&m.module), num(m.measured), num(m.target));
        let (fill, [rows, cols]) = (heat(t), m.shape);
        let shown = fixed(m.measured, 3);
        let label = text(
            x + cw / 2.0 - 1.0,
            y + 11.5,
            if t > 0.55 { " class=\"dark\"" } else { "" },
            &shown,
        );
        h += &format!(
            "<g><rect class=\"cell\" data-block=\"{block}\" data-module=\"{module}\" \
             data-value=\"{value}\" data-target=\"{target}\" x=\"{x:.1}\" y=\"{y:.1}\" \
             width=\"{:.1}\" height=\"{:.1}\" fill=\"{fill}\"><title>block {block} {module}: \
             measured {value}, target {target}, shape {rows}×{cols}</title></rect>{label}</g>\n",
            cw - 2.0,
            ch - 2.0,
        );
    }
    h += &text(
        left,
        bottom + 26.0,
        " class=\"label\"",
        "colour: measured sparsity",
    );
    h += &text(left + 194.0, bottom + 25.0, END, &fixed(lo, 3));
    for k in 0..20 {
        let x = left + 200.0 + 8.0 * k as f64;
        h += &format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"8\" height=\"14\" fill=\"{}\"/>",
            bottom + 14.0,
            heat(k as f64 / 19.0)
        );
    }
    h + &text(left + 366.0, bottom + 25.0, "", &fixed(hi, 3)) + "</svg>\n"
}

/// One step's panel of `search-curves`, 520 × 300, `dx` to the right.
pub(super) fn curve(
    step: &str,
    c: &[Candidate],
    chosen: Option<f64>,
    dx: f64,
    skipped: Option<&str>,
) -> String {
    let ok = |c: &&Candidate| c.lambda.is_finite() && c.score.is_finite();
    let (xlo, xhi) = padded(c.iter().filter(ok).map(|c| c.lambda), 0.0);
    let (ylo, yhi) = padded(c.iter().filter(ok).map(|c| c.score), 0.08);
    let f = Frame {
        x: dx + 92.0,
        y: 28.0,
        w: 406.0,
        h: 220.0,
        lo: ylo,
        hi: yhi,
    };
    let mut h = format!("<g class=\"panel\" data-step=\"{step}\">");
    h += &text(f.x, 16.0, " font-weight=\"600\"", &format!("{step} step"));
    if !c.iter().any(|c| ok(&c)) {
        let why = skipped.unwrap_or("no candidates");
        return h + &text(f.x, f.y + 40.0, " class=\"label\"", why) + "</g>\n";
    }
    let px = |l: f64| f.x + f.w * unit((l - xlo) / (xhi - xlo));
    h += &f.y_axis("score (Σ misalignment)");
    for (t, label) in ticks(xlo, xhi) {
        h += &text(px(t), f.y + f.h + 14.0, MID, &label);
    }
    h += &text(
        f.x + f.w / 2.0,
        f.y + f.h + 32.0,
        " class=\"label\" text-anchor=\"middle\"",
        "λ",
    );
    let points: Vec<String> = c
        .iter()
        .filter(ok)
        .map(|c| format!("{:.1},{:.1}", px(c.lambda), f.y_of(c.score)))
        .collect();
    h += &format!(
        "<polyline class=\"curve\" points=\"{}\"/>\n",
        points.join(" ")
    );
    for c in c {
        let hit = chosen == Some(c.lambda);
        let (x, y) = (
            px(finite_or(c.lambda, xlo)),
            f.y_of(finite_or(c.score, ylo)),
        );
        let r = if ok(&c) { 3.5 } else { 0.0 };
        if hit {
            h += &format!("<circle class=\"ring\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"8\"/>");
        }
        let (class, note) = if hit {
            ("point chosen", " (chosen)")
        } else {
            ("point", "")
        };
        let (lambda, score) = (num(c.lambda), num(c.score));
        h += &format!(
            "<circle class=\"{class}\" data-step=\"{step}\" data-lambda=\"{lambda}\" \
             data-score=\"{score}\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"{r}\"><title>{step} λ {lambda}: \
             score {score}{note}</title></circle>\n"
        );
    }
    h + "</g>\n"
}

/// A grouped bar chart over blocks: one bar per series and block, the value axis from 0 to
/// `y_max`, and an optional dashed reference line.
pub(super) fn bar_chart(
    id: &str,
    series: &[(&str, Vec<(usize, f64)>)],
    y_max: f64,
    y_label: &str,
    reference: Option<(f64, &str)>,
) -> String {
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(0).max(1);
    let slot = (900.0 / n as f64).clamp(10.0, 80.0);
    let f = Frame {
        x: 70.0,
        y: 14.0,
        w: slot * n as f64,
        h: 220.0,
        lo: 0.0,
        hi: y_max,
    };
    let mut h = svg_open(id, f.x + f.w + 120.0, f.y + f.h + 44.0) + &f.y_axis(y_label);
    let bw = slot * 0.8 / series.len().max(1) as f64;
    for (k, (class, values)) in series.iter().enumerate() {
        for (i, (block, v)) in values.iter().enumerate() {
            let (x, y, value) = (
                f.x + slot * (i as f64 + 0.1) + bw * k as f64,
                f.y_of(finite_or(*v, 0.0)),
                num(*v),
            );
            h += &format!(
                "<rect class=\"bar {class}\" data-block=\"{block}\" data-value=\"{value}\" \
                 x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bw:.1}\" height=\"{:.1}\">\
                 <title>block {block} {class}: {value}</title></rect>\n",
                f.y + f.h - y
            );
            if k == 0 && i % n.div_ceil(40) == 0 {
                h += &text(
                    f.x + slot * (i as f64 + 0.5),
                    f.y + f.h + 14.0,
                    MID,
                    &block.to_string(),
                );
            }
        }
    }
    if let Some((v, name)) = reference.filter(|r| r.0.is_finite()) {
        let (y, x2) = (f.y_of(v), f.x + f.w);
        let (value, x1) = (num(v), f.x);
        h += &format!(
            "<line class=\"ref\" data-value=\"{value}\" x1=\"{x1:.1}\" x2=\"{x2:.1}\" y1=\"{y:.1}\" \
             y2=\"{y:.1}\"/>"
        );
        h += &text(x2 + 6.0, y + 4.0, "", &format!("{name} {}", fixed(v, 3)));
    }
    h + &text(
        f.x + f.w / 2.0,
        f.y + f.h + 34.0,
        " class=\"label\" text-anchor=\"middle\"",
        "block",
    ) + "</svg>\n"
}

/// A plot area and its vertical value range.
struct Frame {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    lo: f64,
    hi: f64,
}

impl Frame {
    fn y_of(&self, v: f64) -> f64 {
        self.y + self.h * (1.0 - unit((v - self.lo) / (self.hi - self.lo)))
    }

    /// Gridlines, tick labels, both axes and the rotated axis label.
    fn y_axis(&self, label: &str) -> String {
        let (x0, x1, y0, y1) = (self.x, self.x + self.w, self.y, self.y + self.h);
        let mut h = String::new();
        for (t, tick) in ticks(self.lo, self.hi) {
            let y = self.y_of(t);
            h += &format!(
                "<line class=\"grid\" x1=\"{x0:.1}\" x2=\"{x1:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>"
            );
            h += &text(x0 - 6.0, y + 4.0, END, &tick);
        }
        h += &format!(
            "<line class=\"axis\" x1=\"{x0:.1}\" x2=\"{x0:.1}\" y1=\"{y0:.1}\" y2=\"{y1:.1}\"/>"
        );
        h += &format!(
            "<line class=\"axis\" x1=\"{x0:.1}\" x2=\"{x1:.1}\" y1=\"{y1:.1}\" y2=\"{y1:.1}\"/>"
        );
        let at = format!(
            " class=\"label\" text-anchor=\"middle\" transform=\"rotate(-90 {:.1} {:.1})\"",
            x0 - 60.0,
            (y0 + y1) / 2.0
        );
        h + &text(x0 - 60.0, (y0 + y1) / 2.0, &at, label) + "\n"
    }
}

/// About five round tick values in `[lo, hi]` with their labels: fixed-point, or scientific
/// (`1.15e-3`) for very small or large values.
fn ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let raw = (hi - lo) / 4.0;
    if !(raw.is_finite() && raw > 0.0) {
        return Vec::new();
    }
    let step = nice_ceil(raw, &[1.0, 2.0, 5.0]);
    let (first, big) = ((lo / step).ceil(), lo.abs().max(hi.abs()));
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let digits = (big.log10().floor() - step.log10().floor()).clamp(0.0, 6.0) as usize;
    let scientific = decimals > 3 || big >= 1e5;
    let label = |t: f64| {
        if scientific {
            format!("{t:.digits$e}")
        } else {
            format!("{t:.decimals$}")
        }
    };
    (0..12)
        .map(|i| (first + i as f64) * step)
        .take_while(|v| *v <= hi + step * 1e-6)
        .map(|t| (t, label(t)))
        .collect()
}

/// The smallest of the `mantissas` times a power of ten that is at least `v` (1 for `v` ≤ 0).
pub(super) fn nice_ceil(v: f64, mantissas: &[f64]) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    mantissas
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= v)
        .unwrap_or(10.0 * mag)
}

/// The range of the finite `values`, widened by `pad` of its span, never empty.
fn padded(values: impl Iterator<Item = f64>, pad: f64) -> (f64, f64) {
    let finite = values.filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        let d = (hi.abs() * 0.05).max(1e-3);
        return (lo - d, hi + d);
    }
    (lo - span * pad, hi + span * pad)
}

/// The heatmap's colour range: the data's, at least 0.2 wide (inside `[0, 1]` when widened).
fn color_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = padded(values, 0.0);
    if hi - lo >= 0.2 {
        return (lo, hi);
    }
    let lo = ((lo + hi) / 2.0 - 0.1).clamp(0.0, 0.8);
    (lo, lo + 0.2)
}

/// A light-to-dark blue scale for `t` in `[0, 1]`.
fn heat(t: f64) -> String {
    let stops = [
        (239.0, 246.0, 255.0),
        (96.0, 165.0, 250.0),
        (30.0, 58.0, 138.0),
    ];
    let t = unit(t) * 2.0;
    let (a, b, u) = if t <= 1.0 {
        (stops[0], stops[1], t)
    } else {
        (stops[1], stops[2], t - 1.0)
    };
    let mix = |p: f64, q: f64| (p + (q - p) * u).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

pub(super) fn svg_open(id: &str, w: f64, h: f64) -> String {
    format!("<svg id=\"{id}\" viewBox=\"0 0 {w:.0} {h:.0}\" width=\"{w:.0}\" height=\"{h:.0}\">\n")
}

/// `<text>` at (`x`, `y`) with `attrs` as given and `content` escaped.
fn text(x: f64, y: f64, attrs: &str, content: &str) -> String {
    format!(
        "<text x=\"{x:.1}\" y=\"{y:.1}\"{attrs}>{}</text>",
        esc(content)
    )
}

/// The block chart's legend.
pub(super) fn legend() -> String {
    let mut h = String::from("<svg class=\"legend\" width=\"380\" height=\"20\">");
    for (k, class) in ["target", "measured"].iter().enumerate() {
        let x = 60.0 + 100.0 * k as f64;
        h += &format!("<rect class=\"{class}\" x=\"{x}\" y=\"4\" width=\"12\" height=\"12\"/>");
        h += &text(x + 16.0, 14.0, "", class);
    }
    h + "<line class=\"ref\" x1=\"260\" x2=\"280\" y1=\"10\" y2=\"10\"/>"
        + &text(284.0, 14.0, "", "global target")
        + "</svg>\n"
}
