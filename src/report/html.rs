//! `OUT.report.html`: the report as one self-contained page for people: inline CSS, charts as
//! inline SVG, no script, nothing fetched. Every number a chart draws is also in a `data-`
//! attribute, printed with Rust's `{}` of the f64, so a test can compare the page with the JSON.

mod format;
mod svg;

use super::{AllocationDetail, BlockSparsity, Matrices, Report};
use crate::device::BudgetSource;
use format::{esc, fixed, human_bytes, label, num, shell_quote};
use std::path::Path;
use svg::{bar_chart, curve, heatmap, legend, nice_ceil, svg_open};

const STYLE: &str = r#"
:root{--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--accent:#2563eb;--soft:#a5b4c8;--mark:#dc2626}
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);
  max-width:1120px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:22px;margin:0}
h2{font-size:17px;margin:28px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}
h3{font-size:14px;margin:16px 0 4px}
.sub,.note{color:var(--muted)}
.sub{margin:2px 0 10px;overflow-wrap:anywhere}
nav a{margin-right:14px;color:var(--accent);text-decoration:none}
dl{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:3px 16px}
dt{color:var(--muted)}
dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:6px 0}
th,td{padding:3px 10px;border-bottom:1px solid var(--line);text-align:left}
th{font-weight:600;color:var(--muted);font-size:12px}
.num{text-align:right;font-variant-numeric:tabular-nums}
td.part{padding-left:26px}
pre{background:#f8fafc;border:1px solid var(--line);padding:10px;white-space:pre-wrap;
  overflow-wrap:anywhere}
svg{display:block;margin:6px 0;max-width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:var(--ink)}
.axis{stroke:#9ca3af}
.grid{stroke:var(--line)}
svg .label{fill:var(--muted)}
svg .dark{fill:#fff}
.target{fill:var(--soft)}
.measured{fill:var(--accent)}
.metric{fill:#0d9488}
.ref{stroke:var(--mark);stroke-dasharray:5 3}
.curve{fill:none;stroke:var(--accent);stroke-width:2}
.point{fill:var(--accent)}
.ring{fill:none;stroke:var(--mark);stroke-width:2}
"#;

/// Renders `report` as a self-contained HTML page.
pub fn render_html(report: &Report) -> String {
    let sections = [
        ("overview", "Overview", Some(overview(report))),
        ("quality", "Quality", Some(quality(report))),
        ("zero-shot", "Zero-shot accuracy", zero_shot(report)),
        ("sparsity", "Sparsity", Some(sparsity(report))),
        ("search", "NeuroAL search", search(report)),
        ("allocation", "Allocation", allocation(report)),
        ("deployment", "Deployment", Some(deployment(report))),
        ("costs", "Time and memory", Some(costs(report))),
        ("command", "Command line", Some(command_line(report))),
    ];
    let (input, output) = (report.input.model.display(), report.output.model.display());
    let (tool, input, output) = (
        esc(&report.tool),
        esc(&input.to_string()),
        esc(&output.to_string()),
    );
    let mut h = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{tool} report: {output}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header>\n<h1>{tool} report</h1>\n<p class=\"sub\">{input} → {output}</p>\n<nav>"
    );
    for (id, name, _) in sections.iter().filter(|s| s.2.is_some()) {
        h += &format!("<a href=\"#{id}\">{name}</a>");
    }
    h += "</nav>\n</header>\n";
    for (id, name, body) in sections {
        if let Some(body) = body {
            h += &format!("<section id=\"{id}\">\n<h2>{name}</h2>\n{body}</section>\n");
        }
    }
    h + "</body>\n</html>\n"
}

fn overview(r: &Report) -> String {
    let (m, input, runtime) = (&r.method, &r.input, r.onnx_runtime.as_ref());
    let version = runtime.and_then(|o| o.version.as_deref()).unwrap_or("–");
    let mut facts = vec![
        ("prune method", label(&m.prune_method)),
        ("top-up", label(&m.top_up)),
        ("target sparsity", value_span(r.sparsity.target, 4)),
        ("measured sparsity", value_span(r.sparsity.measured, 4)),
        ("blocks", input.blocks.to_string()),
        (
            "prunable weights",
            format!(
                "{} in {} linears",
                input.prunable_params, input.prunable_linears
            ),
        ),
        ("device", runtime.map_or("–".into(), |o| label(&o.device))),
        ("ONNX Runtime", esc(version)),
        ("tool version", esc(&r.tool_version)),
        ("seed", m.seed.to_string()),
    ];
    let parameters = serde_json::to_value(&m.top_up_parameters).unwrap_or_default();
    if let Some(p) = parameters.as_object() {
        let p: Vec<String> = p
            .iter()
            .filter(|(k, _)| *k != "top_up")
            .map(|(k, v)| format!("{k} = {}", v.as_str().map_or(v.to_string(), str::to_owned)))
            .collect();
        facts.push(("top-up parameters", esc(&p.join(", "))));
    }
    if let Some(nm) = &m.nm {
        facts.push(("N:M", esc(nm)));
    }
    if m.reconstruct {
        facts.push((
            "kept weights",
            "re-fitted to the dense outputs (--reconstruct)".to_string(),
        ));
    }
    if let Some(c) = &r.calibration {
        let files: Vec<String> = c.files.iter().map(|f| f.display().to_string()).collect();
        facts.push((
            "calibration",
            esc(format!("{} {}", c.source, files.join(", ")).trim()),
        ));
        facts.push((
            "calibration windows",
            format!("{} × {} tokens", c.windows, c.seqlen),
        ));
    }
    if let Some(why) = runtime.and_then(|o| o.cuda_fallback.as_deref()) {
        facts.push(("CUDA fallback", esc(why)));
    }
    let facts: String = facts
        .iter()
        .map(|(k, v)| format!("<dt>{k}</dt><dd>{v}</dd>\n"))
        .collect();
    format!("<dl>\n{facts}</dl>\n")
}

fn quality(r: &Report) -> String {
    if r.evaluation.is_empty() {
        return "<p class=\"note\">No evaluation text was given (<code>--eval-text</code>).</p>\n"
            .into();
    }
    let mut h = table_head(&[
        "text",
        "tokens",
        "windows × tokens",
        "perplexity dense",
        "perplexity pruned",
        "pruned / dense",
        "KL(dense ‖ pruned), nats",
        "top-1 agreement",
    ]);
    for e in &r.evaluation {
        let (p, a) = (&e.pruned, &e.agreement);
        h += &format!(
            "<tr>{}<td class=\"num\">{}</td><td class=\"num\">{} × {}</td>{}{}{}{}{}</tr>\n",
            file_cell(&e.text),
            e.tokens,
            p.windows,
            p.seqlen,
            td("ppl-dense", e.dense.perplexity, 3),
            td("ppl-pruned", p.perplexity, 3),
            td("ratio", p.perplexity / e.dense.perplexity, 2),
            td("kl", a.kl_divergence, 4),
            td("top1", a.top1_agreement, 4),
        );
    }
    h + "</tbody></table>\n"
}

fn zero_shot(r: &Report) -> Option<String> {
    if r.zero_shot.is_empty() {
        return None;
    }
    let mut h = table_head(&[
        "task file",
        "questions",
        "acc dense",
        "acc pruned",
        "acc_norm dense",
        "acc_norm pruned",
    ]);
    for t in &r.zero_shot {
        let (d, p) = (&t.dense, &t.pruned);
        h += &format!(
            "<tr>{}<td class=\"num\">{}</td>{}{}{}{}</tr>\n",
            file_cell(&t.task_file),
            t.items,
            td("acc-dense", d.acc, 3),
            td("acc-pruned", p.acc, 3),
            td("acc-norm-dense", d.acc_norm, 3),
            td("acc-norm-pruned", p.acc_norm, 3),
        );
    }
    Some(h + "</tbody></table>\n")
}

fn sparsity(r: &Report) -> String {
    let s = &r.sparsity;
    let series =
        |f: fn(&BlockSparsity) -> f64| s.per_block.iter().map(|b| (b.block, f(b))).collect();
    let series = [
        ("target", series(|b| b.target)),
        ("measured", series(|b| b.measured)),
    ];
    let reference = Some((s.target, "global target"));
    format!(
        "<h3>Per block: target and measured</h3>\n{}{}<h3>Per matrix: measured sparsity</h3>\n{}",
        legend(),
        bar_chart("block-sparsity", &series, 1.0, "sparsity", reference),
        heatmap(&r.sparsity.per_matrix)
    )
}

fn search(r: &Report) -> Option<String> {
    let s = r.search.as_ref()?;
    let mut h = format!(
        "<p class=\"note\">Each candidate λ was pruned on {} calibration windows and scored by \
         the sum of the linears' neuron misalignment (lower is better); the ringed point is the \
         one chosen. The search took {} s.</p>\n",
        s.windows,
        fixed(s.seconds, 1)
    );
    h += &svg_open("search-curves", 1040.0, 300.0);
    h += &curve("block", &s.block, s.block_lambda, 0.0, None);
    h += &curve("row", &s.row, s.row_lambda, 520.0, s.row_skipped.as_deref());
    Some(h + "</svg>\n")
}

fn allocation(r: &Report) -> Option<String> {
    let (what, values, y_label) = match r.allocation.as_ref()? {
        evo @ AllocationDetail::Evo { .. } => return Some(evo_search(r, evo)),
        AllocationDetail::Owl {
            m,
            lambda,
            outlier_ratio,
            ..
        } => {
            let what = format!(
                "OWL: outlier ratio per block (M = {}, λ = {})",
                num(*m),
                num(*lambda)
            );
            (what, outlier_ratio, "outlier ratio (%)")
        }
        AllocationDetail::Dlp {
            alpha, mean_score, ..
        } => (
            format!("DLP: mean Wanda score per block (α = {})", num(*alpha)),
            mean_score,
            "mean score",
        ),
        AllocationDetail::Alpha { epsilon, alpha, .. } => (
            format!("AlphaPruning: mean α per block (ε = {})", num(*epsilon)),
            alpha,
            "α",
        ),
    };
    let top = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let per_block = &r.sparsity.per_block;
    let blocks: Vec<usize> = if per_block.len() == values.len() {
        per_block.iter().map(|b| b.block).collect()
    } else {
        (0..values.len()).collect()
    };
    let series = [(
        "metric",
        blocks.into_iter().zip(values.iter().copied()).collect(),
    )];
    let chart = bar_chart(
        "allocation-detail",
        &series,
        nice_ceil(top, &[1.0, 2.0, 2.5, 5.0]),
        y_label,
        None,
    );
    Some(format!(
        "<p class=\"note\">{what}. The block targets it gave are the target bars under \
         Sparsity.</p>\n{chart}"
    ))
}

/// The evolutionary search: start and chosen block sparsity, and the fitness of every generation.
fn evo_search(r: &Report, detail: &AllocationDetail) -> String {
    let AllocationDetail::Evo {
        start,
        units,
        start_sparsity,
        sparsity,
        start_fitness,
        generations,
        seconds,
        settings,
        window_runs,
        jobs,
        timings_s,
        ..
    } = detail
    else {
        return String::new();
    };
    // One chart per kind of unit: whole blocks, or the attention's and the MLP's levels apart.
    let mut charts = String::new();
    for (matrices, id, title) in [
        (Matrices::All, "evo-levels", ""),
        (
            Matrices::Attention,
            "evo-levels-attention",
            "Attention matrices",
        ),
        (Matrices::Mlp, "evo-levels-mlp", "MLP matrices"),
    ] {
        let picked: Vec<usize> = (0..units.len())
            .filter(|&u| units[u].matrices == matrices)
            .collect();
        if picked.is_empty() {
            continue;
        }
        let series = |v: &[f64]| {
            picked
                .iter()
                .filter_map(|&u| Some((units[u].block, *v.get(u)?)))
                .collect()
        };
        let series = [
            ("metric", series(start_sparsity)),
            ("target", series(sparsity)),
        ];
        if !title.is_empty() {
            charts += &format!("<p class=\"note\">{title}</p>\n");
        }
        charts += &bar_chart(
            id,
            &series,
            1.0,
            "sparsity",
            Some((r.sparsity.target, "global target")),
        );
    }
    // "8 offspring on 1 window(s), the best 2 on 4, the best 1 on 16"
    let mut selection = format!("{} offspring", settings.offspring);
    let mut entering = settings.offspring;
    for (i, step) in settings.selection.iter().enumerate() {
        selection += &match i {
            0 => format!(" on {} window(s)", step.windows),
            _ => format!(", the best {entering} on {}", step.windows),
        };
        entering = step.survivors;
    }
    let mut h = format!(
        "<p class=\"note\">Evolutionary search from {} ({} generations of {selection}, the \
         first {} tokens of each window; {window_runs} window runs, {jobs} at a time; {} s: \
         blocks {} s, LM head {} s, fitness {} s summed over the jobs, masks {} s). Fitness is \
         KL(dense ‖ pruned) of the next-token distributions, nats per token, lower is better: {} \
         at the start, {} chosen. Bars: the start's sparsity per block (green) and the chosen \
         one.</p>\n{charts}",
        start.as_str(),
        settings.generations,
        settings.tokens,
        fixed(*seconds, 1),
        fixed(timings_s.blocks, 1),
        fixed(timings_s.head, 1),
        fixed(timings_s.fitness, 1),
        fixed(timings_s.masks, 1),
        fixed(*start_fitness, 5),
        fixed(generations.last().map_or(*start_fitness, |g| g.fitness), 5),
    );
    h += &table_head(&["generation", "fitness", "best offspring", "improved"]);
    for (g, generation) in generations.iter().enumerate() {
        h += &format!(
            "<tr><td>{}</td>{}{}<td class=\"num\">{}</td></tr>\n",
            g + 1,
            td("fitness", generation.fitness, 5),
            generation
                .best_offspring
                .map_or("<td></td>".to_string(), |f| td("offspring", f, 5)),
            if generation.improved { "yes" } else { "" }
        );
    }
    h + "</tbody></table>\n"
}

fn deployment(r: &Report) -> String {
    let d = &r.deployment;
    let row = |k: &str, class: &str, v: u64| {
        format!(
            "<tr><th>{k}</th><td class=\"num {class}\" data-value=\"{v}\">{}</td></tr>\n",
            human_bytes(v)
        )
    };
    format!(
        "<p class=\"note\">{}</p>\n<table><tbody>\n{}{}{}<tr><th>zstd pruned / dense</th>{}</tr>\n\
         </tbody></table>\n<p class=\"note\">zstd level {}.</p>\n",
        esc(&d.note),
        row(
            "prunable weights as stored",
            "stored",
            d.prunable_weight_bytes
        ),
        row("zstd, dense", "zstd-dense", d.zstd_dense_bytes),
        row("zstd, pruned", "zstd-pruned", d.zstd_pruned_bytes),
        td(
            "zstd-ratio",
            d.zstd_pruned_bytes as f64 / d.zstd_dense_bytes as f64,
            3
        ),
        d.zstd_level,
    )
}

fn costs(r: &Report) -> String {
    let mut h = table_head(&["stage", "seconds"]);
    for (stage, s) in &r.timings_s {
        // Sub-stages (`prune_masks`) are part of their stage (`prune`): indented, not summed.
        let part = r
            .timings_s
            .keys()
            .any(|k| stage.starts_with(&format!("{k}_")));
        let (class, seconds) = (
            if part { " class=\"part\"" } else { "" },
            td("seconds", *s, 2),
        );
        h += &format!("<tr><td{class}>{}</td>{seconds}</tr>\n", esc(stage));
    }
    h += "</tbody></table>\n";
    let rss = r
        .peak_rss_mib
        .map_or("unknown".into(), |m| format!("{} MiB", fixed(m, 0)));
    let exact = r.peak_rss_mib.map_or("–".into(), num);
    let budget = r.memory_budget.map_or(String::new(), |b| {
        format!(
            ", against a budget of <span data-value=\"{}\">{} MiB</span> ({})",
            num(b.mib),
            fixed(b.mib, 0),
            match b.source {
                BudgetSource::Flag => "--memory-budget",
                BudgetSource::Available => "the memory available at the start",
            }
        )
    });
    h + &format!("<p>Peak resident memory: <span data-value=\"{exact}\">{rss}</span>{budget}</p>\n")
}

fn command_line(r: &Report) -> String {
    let words: Vec<String> = r.command_line.iter().map(|a| shell_quote(a)).collect();
    format!("<pre>{}</pre>\n", esc(&words.join(" ")))
}

fn table_head(columns: &[&str]) -> String {
    let cells: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("<th{}>{c}</th>", if i == 0 { "" } else { " class=\"num\"" }))
        .collect();
    format!(
        "<table>\n<thead><tr>{}</tr></thead>\n<tbody>\n",
        cells.concat()
    )
}

/// A numeric cell: `decimals` shown, the exact value in `data-value`.
fn td(class: &str, v: f64, decimals: usize) -> String {
    format!(
        "<td class=\"num {class}\" data-value=\"{}\">{}</td>",
        num(v),
        fixed(v, decimals)
    )
}

/// A cell naming a file, its full path in the tooltip.
fn file_cell(path: &Path) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!(
        "<td title=\"{}\">{}</td>",
        esc(&path.display().to_string()),
        esc(&name)
    )
}

fn value_span(v: f64, decimals: usize) -> String {
    format!(
        "<span data-value=\"{}\">{}</span>",
        num(v),
        fixed(v, decimals)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocate::TopUp;
    use crate::eval::{Agreement, Perplexity};
    use crate::prune::PruneMethod;
    use crate::report::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    /// A report with one block, one matrix, no evaluation and no search.
    fn bare(model: &str) -> Report {
        Report {
            schema_version: SCHEMA_VERSION,
            tool: "neuroal-onnx".into(),
            tool_version: "0.0.0".into(),
            command_line: vec!["neuroal-onnx".into(), model.into(), "out it.onnx".into()],
            onnx_runtime: None,
            input: InputInfo {
                model: PathBuf::from(model),
                blocks: 1,
                prunable_linears: 1,
                prunable_params: 16,
                excluded_weights: 0,
                files: Vec::new(),
            },
            output: OutputInfo {
                model: PathBuf::from("out.onnx"),
                data_file: None,
                external_tensors: 0,
                files: Vec::new(),
            },
            method: MethodInfo {
                prune_method: PruneMethod::Wanda,
                top_up: TopUp::Neuroal,
                sparsity: 0.5,
                nm: None,
                reconstruct: false,
                seed: 0,
                top_up_parameters: None,
            },
            calibration: None,
            allocation: None,
            search: None,
            sparsity: SparsityInfo {
                target: 0.5,
                measured: 0.5,
                per_block: vec![BlockSparsity {
                    block: 0,
                    target: 0.5,
                    measured: 0.5,
                }],
                per_matrix: vec![MatrixSparsity {
                    block: 0,
                    module: "mlp.<up>".into(),
                    weight: "w".into(),
                    shape: [4, 4],
                    target: 0.5,
                    measured: 0.5,
                    input_order: None,
                }],
            },
            evaluation: Vec::new(),
            zero_shot: Vec::new(),
            deployment: DeploymentInfo {
                note: "zeros & more".into(),
                prunable_weight_bytes: 64,
                zstd_dense_bytes: 0,
                zstd_pruned_bytes: 0,
                zstd_level: 3,
            },
            timings_s: BTreeMap::new(),
            peak_rss_mib: None,
            stage_peak_rss_mib: BTreeMap::new(),
            memory_budget: None,
        }
    }

    #[test]
    fn strings_from_the_report_are_escaped() {
        let html = render_html(&bare("/tmp/a<b>&\"c'.onnx"));
        assert!(
            html.contains("/tmp/a&lt;b&gt;&amp;&quot;c&#39;.onnx"),
            "{html}"
        );
        assert!(html.contains("data-module=\"mlp.&lt;up&gt;\""));
        assert!(html.contains("zeros &amp; more"));
        assert!(!html.contains("a<b>") && !html.contains("<up>"));
        assert!(
            html.contains("&#39;out it.onnx&#39;"),
            "arguments with spaces are quoted"
        );
    }

    #[test]
    fn renders_without_evaluation_or_search() {
        let html = render_html(&bare("in.onnx"));
        assert!(html.contains("No evaluation text was given"));
        assert!(html.contains("id=\"block-sparsity\"") && html.contains("id=\"matrix-heatmap\""));
        assert!(!html.contains("id=\"search-curves\"") && !html.contains("id=\"zero-shot\""));
        assert!(html.ends_with("</html>\n"));
    }

    #[test]
    fn an_empty_search_still_renders_both_panels() {
        let mut report = bare("in.onnx");
        report.search = Some(SearchReport {
            block: Vec::new(),
            block_lambda: None,
            row: Vec::new(),
            row_lambda: None,
            row_skipped: Some("SparseGPT <updates>".into()),
            windows: 8,
            jobs: 1,
            threads_per_job: None,
            seconds: 0.0,
            timings_s: Default::default(),
        });
        let html = render_html(&report);
        assert!(html.contains("id=\"search-curves\""));
        assert!(html.contains("no candidates") && html.contains("SparseGPT &lt;updates&gt;"));
    }

    #[test]
    fn non_finite_numbers_print_as_a_dash_and_keep_the_svg_valid() {
        let mut report = bare("in.onnx");
        report.sparsity.per_block[0].measured = f64::NAN;
        report.sparsity.per_matrix[0].measured = f64::INFINITY;
        let ppl = |perplexity| Perplexity {
            perplexity,
            windows: 1,
            seqlen: 8,
        };
        report.evaluation.push(TextEvaluation {
            text: PathBuf::from("t.txt"),
            tokens: 9,
            window_prefix: Vec::new(),
            dense: ppl(f64::NAN),
            pruned: ppl(f64::INFINITY),
            agreement: Agreement::default(),
        });
        let candidate = |lambda, score| Candidate { lambda, score };
        report.search = Some(SearchReport {
            block: vec![
                candidate(0.01, 2.0),
                candidate(0.02, f64::NAN),
                candidate(0.03, 1.0),
            ],
            block_lambda: Some(0.03),
            row: vec![candidate(0.0, f64::INFINITY)],
            row_lambda: None,
            row_skipped: None,
            windows: 8,
            jobs: 1,
            threads_per_job: None,
            seconds: f64::NAN,
            timings_s: Default::default(),
        });
        let html = render_html(&report);
        assert!(!html.contains("NaN") && !html.contains("inf\"") && !html.contains(">inf<"));
        assert!(html.contains("class=\"bar measured\" data-block=\"0\" data-value=\"–\""));
        assert!(html.contains("data-lambda=\"0.03\" data-score=\"1\""));
        assert_eq!(html.matches("class=\"point chosen\"").count(), 1);
    }
}
