//! `OUT.report.html`: every number its charts draw equals the JSON report's, it fetches nothing,
//! and it loads in a headless Chromium without a console message.

use crate::harness::{austen, fixture, prune_ok, scratch};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's chromium package puts the browser (`make setup` installs it).
const CHROMIUM: &str = "/usr/bin/chromium";

/// Prunes `tiny/llama` to 60% with Wanda and `--top-up top_up` (its first word names the
/// output); returns the JSON report and the page.
fn tiny_run(dir: &Path, top_up: &str) -> (Value, String, PathBuf) {
    let name = top_up.split_whitespace().next().unwrap_or(top_up);
    let out = dir.join(format!("{name}.onnx"));
    let flags = format!(
        "--sparsity 0.6 --prune-method wanda --top-up {top_up} --calib {} --nsamples 6 --seqlen 48 \
         --eval-text {} --eval-windows 2 --quiet",
        austen("emma").display(),
        austen("persuasion").display()
    );
    let report = prune_ok(&fixture("tiny/llama").model, &out, &flags);
    let page = out.with_extension("report.html");
    let html = std::fs::read_to_string(&page).expect("OUT.report.html is written");
    (report, html, page)
}

/// The attributes of every `<tag …>` whose class list holds all of `classes`.
fn marks(html: &str, tag: &str, classes: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    for (start, _) in html.match_indices(&open) {
        let rest = &html[start + open.len()..];
        let attrs = attributes(&rest[..rest.find('>').unwrap_or(rest.len())]);
        let class = attrs.get("class").map(String::as_str).unwrap_or("");
        if classes.split(' ').all(|c| class.split(' ').any(|k| k == c)) {
            found.push(attrs);
        }
    }
    found
}

/// `name="value"` pairs of a tag, values unescaped (`&lt;` → `<` …).
fn attributes(tag: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = tag;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq]
            .split_whitespace()
            .last()
            .unwrap_or("")
            .to_string();
        let after = &rest[eq + 2..];
        let end = after.find('"').expect("closed attribute");
        let value = after[..end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&");
        out.insert(name, value);
        rest = &after[end + 1..];
    }
    out
}

/// A JSON number as Rust's `{}` prints the f64, as the page's `data-` attributes hold it.
fn exact(v: &Value) -> String {
    format!("{}", v.as_f64().expect("a number"))
}

fn has_mark(marks: &[BTreeMap<String, String>], want: &[(&str, String)]) -> bool {
    marks
        .iter()
        .any(|m| want.iter().all(|(k, v)| m.get(*k) == Some(v)))
}

#[test]
fn html_numbers_match_the_json() {
    let dir = scratch();
    let (report, html, _) = tiny_run(dir.path(), "neuroal");
    for banned in ["http://", "https://", "<script src", "<link"] {
        assert!(!html.contains(banned), "the page holds {banned:?}");
    }

    let per_block = report["sparsity"]["per_block"]
        .as_array()
        .expect("per_block");
    assert_eq!(per_block.len(), 3);
    for series in ["measured", "target"] {
        let bars = marks(&html, "rect", &format!("bar {series}"));
        assert_eq!(bars.len(), per_block.len(), "{series} bars");
        for b in per_block {
            let want = [
                ("data-block", b["block"].to_string()),
                ("data-value", exact(&b[series])),
            ];
            assert!(has_mark(&bars, &want), "no {series} bar {want:?}");
        }
    }

    let per_matrix = report["sparsity"]["per_matrix"]
        .as_array()
        .expect("per_matrix");
    let cells = marks(&html, "rect", "cell");
    assert_eq!(cells.len(), per_matrix.len());
    for m in per_matrix {
        let want = [
            ("data-block", m["block"].to_string()),
            (
                "data-module",
                m["module"].as_str().expect("module").to_string(),
            ),
            ("data-value", exact(&m["measured"])),
            ("data-target", exact(&m["target"])),
        ];
        assert!(has_mark(&cells, &want), "no heatmap cell {want:?}");
    }

    let search = &report["search"];
    let points = marks(&html, "circle", "point");
    for step in ["block", "row"] {
        let candidates = search[step].as_array().expect("candidates");
        assert!(!candidates.is_empty());
        for c in candidates {
            let want = [
                ("data-step", step.to_string()),
                ("data-lambda", exact(&c["lambda"])),
                ("data-score", exact(&c["score"])),
            ];
            assert!(has_mark(&points, &want), "no search point {want:?}");
        }
        let chosen: Vec<_> = marks(&html, "circle", "point chosen")
            .into_iter()
            .filter(|m| m["data-step"] == step)
            .collect();
        assert_eq!(chosen.len(), 1, "{step}: one chosen point");
        assert_eq!(
            chosen[0]["data-lambda"],
            exact(&search[format!("{step}_lambda")])
        );
    }
    assert_eq!(points.len(), 14 + 15);

    let evaluation = &report["evaluation"][0];
    for (class, v) in [
        ("ppl-dense", &evaluation["dense"]["perplexity"]),
        ("ppl-pruned", &evaluation["pruned"]["perplexity"]),
        ("kl", &evaluation["agreement"]["kl_divergence"]),
        ("top1", &evaluation["agreement"]["top1_agreement"]),
    ] {
        let cell = marks(&html, "td", class);
        assert_eq!(cell.len(), 1, "{class}");
        assert_eq!(cell[0]["data-value"], exact(v), "{class}");
    }
    for key in ["target", "measured"] {
        let v = exact(&report["sparsity"][key]);
        assert!(
            html.contains(&format!("data-value=\"{v}\"")),
            "sparsity {key}"
        );
    }
    let deployment = &report["deployment"];
    for (class, key) in [
        ("zstd-dense", "zstd_dense_bytes"),
        ("zstd-pruned", "zstd_pruned_bytes"),
    ] {
        assert_eq!(
            marks(&html, "td", class)[0]["data-value"],
            deployment[key].to_string()
        );
    }
}

/// The evolutionary search per group draws one chart of attention levels and one of MLP levels,
/// each with a start bar and a chosen bar per block, at the report's values.
#[test]
fn evo_group_charts_draw_every_unit_level() {
    let dir = scratch();
    let (report, html, _) = tiny_run(
        dir.path(),
        "evo --evo-units group --neuroal-step block --evo-generations 3",
    );
    let detail = &report["allocation"];
    let units = detail["units"].as_array().expect("units");
    assert_eq!(units.len(), 6);
    for (id, matrices) in [
        ("evo-levels-attention", "attention"),
        ("evo-levels-mlp", "mlp"),
    ] {
        let start = html
            .find(&format!("<svg id=\"{id}\""))
            .unwrap_or_else(|| panic!("no chart {id}"));
        let chart = &html[start..start + html[start..].find("</svg>").expect("closed svg")];
        for (series, key) in [("metric", "start_sparsity"), ("target", "sparsity")] {
            let bars = marks(chart, "rect", &format!("bar {series}"));
            assert_eq!(bars.len(), 3, "{id}: {series} bars");
            for (u, unit) in units.iter().enumerate() {
                if unit["matrices"] != matrices {
                    continue;
                }
                let want = [
                    ("data-block", unit["block"].to_string()),
                    ("data-value", exact(&detail[key][u])),
                ];
                assert!(has_mark(&bars, &want), "{id}: no {series} bar {want:?}");
            }
        }
    }
}

/// Reads a pipe to its end on a thread (so that neither of two pipes can fill and block).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Loads `page` in headless Chromium; returns the DOM it dumps and its stderr.
fn chromium_dump(page: &Path, profile: &Path) -> (String, String) {
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let clock = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if clock.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("chromium did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (dom, log) = (out.join().expect("stdout"), err.join().expect("stderr"));
    assert!(status.success(), "chromium failed ({status}):\n{log}");
    (dom, log)
}

#[test]
fn html_report_loads_in_a_headless_browser() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "no browser at {CHROMIUM}: run `make setup` (it installs Debian's chromium)"
    );
    let dir = scratch();
    for (top_up, charts) in [
        (
            "neuroal",
            &["block-sparsity", "matrix-heatmap", "search-curves"][..],
        ),
        (
            "owl",
            &["block-sparsity", "matrix-heatmap", "allocation-detail"][..],
        ),
    ] {
        let (report, _, page) = tiny_run(dir.path(), top_up);
        let (dom, log) = chromium_dump(&page, &dir.path().join(format!("profile-{top_up}")));
        // The page runs no script, so any console line is a fault (a failed load, an error).
        let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
        assert!(
            console.is_empty(),
            "{top_up}: console messages: {console:#?}"
        );
        assert!(!log.contains("Uncaught"), "{top_up}: {log}");
        for id in charts {
            assert!(
                dom.contains(&format!("<svg id=\"{id}\"")),
                "{top_up}: chart {id} not in the DOM"
            );
        }
        let blocks = report["sparsity"]["per_block"]
            .as_array()
            .expect("blocks")
            .len();
        assert_eq!(marks(&dom, "rect", "bar measured").len(), blocks);
        assert_eq!(
            marks(&dom, "rect", "cell").len(),
            report["sparsity"]["per_matrix"]
                .as_array()
                .expect("matrices")
                .len()
        );
        if top_up == "neuroal" {
            assert_eq!(marks(&dom, "circle", "point").len(), 14 + 15);
        } else {
            let ratios = report["allocation"]["outlier_ratio"]
                .as_array()
                .expect("ratios");
            let bars = marks(&dom, "rect", "bar metric");
            let values: Vec<&str> = bars.iter().map(|b| b["data-value"].as_str()).collect();
            let want: Vec<String> = ratios.iter().map(exact).collect();
            assert_eq!(values, want, "OWL outlier ratios");
        }
    }
}
