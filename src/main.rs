//! The `neuroal-onnx` binary: parse, run, print, exit with a documented code
//! (0 success, 1 failure while working, 2 bad arguments or an option not built yet).

mod cli;
mod kernels;

use clap::Parser;
use cli::{Cli, Command};
use neuroal_onnx::graph::{Discovery, Layout};
use neuroal_onnx::pipeline;
use neuroal_onnx::progress::Progress;
use neuroal_onnx::report::{report_path, Report};
use neuroal_onnx::Error;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Kernels(args)) = &cli.command {
        return kernels::run(args);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // An interrupt being handled exits with its own code; this error may be its doing.
            neuroal_onnx::atomic::wait_for_interrupt();
            eprintln!("error: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Some(Command::Inspect { model, json }) => {
            let (_, discovery) = pipeline::inspect(&model)?;
            let text = if json {
                serde_json::to_string_pretty(&discovery).unwrap_or_default() + "\n"
            } else {
                discovery_table(&discovery)
            };
            print_out(&text)
        }
        // Handled by `main`, which never passes it here.
        Some(Command::Kernels(_)) => Ok(()),
        Some(Command::Schema) => print_out(&neuroal_onnx::report::json_schema()),
        None => {
            let json = cli.prune.json;
            let progress = Progress::new(cli.prune.quiet);
            let config = cli.prune.into_config(std::env::args().collect())?;
            // Ctrl-C (and SIGTERM, SIGHUP) removes the partial output and exits with 130. Without
            // the handler the job still runs; an interrupt then leaves its temporary files.
            let _ = ctrlc::set_handler(|| {
                eprintln!("\nerror: interrupted; the partial output was removed");
                neuroal_onnx::atomic::abandon_and_exit(130)
            });
            let report = pipeline::prune(&config, &progress)?;
            print_out(&if json {
                report.to_json()? + "\n"
            } else {
                summary(&report)
            })
        }
    }
}

/// Writes to stdout, reporting a closed pipe as an error the caller can recognise.
fn print_out(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| Error::io("<stdout>", e))
}

fn discovery_table(d: &Discovery) -> String {
    let mut s = format!(
        "{} blocks, {} prunable linears, {} prunable weights\n",
        d.n_blocks,
        d.linears.len(),
        d.prunable_params()
    );
    s += &format!(
        "{:>5}  {:<22} {:>6} {:>6}  {:<8} {:<8} weight\n",
        "block", "module", "out", "in", "layout", "dtype"
    );
    for l in &d.linears {
        let layout = match l.layout {
            Layout::InOut => "in,out",
            Layout::OutIn => "out,in",
        };
        let dtype = format!("{:?}", l.dtype).to_lowercase();
        s += &format!(
            "{:>5}  {:<22} {:>6} {:>6}  {:<8} {:<8} {}\n",
            l.block, l.module, l.out_features, l.in_features, layout, dtype, l.weight.name
        );
    }
    if !d.excluded.is_empty() {
        s += "\nleft alone:\n";
        for e in &d.excluded {
            s += &format!("  {:<40} {:?}  {}\n", e.weight.name, e.shape, e.detail);
        }
    }
    s
}

/// The job's peak memory against its budget, and the hidden states that went to disk to keep
/// within it; `None` where the peak is unknown (outside Linux).
fn memory_line(report: &Report) -> Option<String> {
    let peak = report.peak_rss_mib?;
    let mut line = match &report.memory_budget {
        Some(b) if peak > b.mib => format!(
            "memory: peak {peak:.0} MiB, over {} ({:.0} MiB)",
            b.describe(),
            b.mib
        ),
        Some(b) => format!("memory: peak {peak:.0} MiB within {}", b.describe()),
        None => format!("memory: peak {peak:.0} MiB"),
    };
    let spilled = report.calibration.as_ref().map_or(0.0, |c| c.spilled_mib);
    if spilled > 0.0 {
        line += &format!("; {spilled:.1} MiB of hidden states went to disk");
    }
    Some(line)
}

/// The end-of-run summary on stdout: what was written, then dense vs pruned side by side.
fn summary(report: &Report) -> String {
    let output = &report.output;
    let mut s = match &output.data_file {
        Some(data) => format!("wrote {} and {}\n", output.model.display(), data.display()),
        None => format!("wrote {}\n", output.model.display()),
    };
    s += &format!(
        "sparsity: target {:.4}, measured {:.4} over {} prunable weights in {} linears\n",
        report.sparsity.target,
        report.sparsity.measured,
        report.input.prunable_params,
        report.input.prunable_linears
    );
    let reordered = report
        .sparsity
        .per_matrix
        .iter()
        .filter(|m| m.input_order.is_some())
        .count();
    if reordered > 0 {
        s += &format!(
            "inputs reordered: {reordered} of {} linears are stored in their N:M channel order, each behind a Gather\n",
            report.sparsity.per_matrix.len()
        );
    }
    s += "\n";
    let row = |what: &str, dense: String, pruned: String, note: String| {
        format!("{what:<34} {dense:>12} {pruned:>12}  {note}\n")
            .trim_end()
            .to_string()
            + "\n"
    };
    s += &row("", "dense".into(), "pruned".into(), String::new());
    for e in &report.evaluation {
        let name = e.text.file_name().unwrap_or_default().to_string_lossy();
        s += &row(
            &format!("perplexity on {name}"),
            format!("{:.3}", e.dense.perplexity),
            format!("{:.3}", e.pruned.perplexity),
            format!(
                "({} windows of {} tokens)",
                e.pruned.windows, e.pruned.seqlen
            ),
        );
        s += &row(
            "  KL divergence (nats)",
            "–".into(),
            format!("{:.4}", e.agreement.kl_divergence),
            String::new(),
        );
        s += &row(
            "  top-1 agreement",
            "–".into(),
            format!("{:.2}%", 100.0 * e.agreement.top1_agreement),
            String::new(),
        );
    }
    for t in &report.zero_shot {
        let name = t
            .task_file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        for (metric, dense, pruned) in [
            ("acc", t.dense.acc, t.pruned.acc),
            ("acc_norm", t.dense.acc_norm, t.pruned.acc_norm),
        ] {
            s += &row(
                &format!("{name} {metric}"),
                format!("{dense:.4}"),
                format!("{pruned:.4}"),
                format!("({} questions)", t.items),
            );
        }
    }
    let d = &report.deployment;
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    s += &row(
        "prunable weights, zstd",
        mb(d.zstd_dense_bytes),
        mb(d.zstd_pruned_bytes),
        format!("({} stored either way)", mb(d.prunable_weight_bytes)),
    );
    if let Some(line) = memory_line(report) {
        s += &format!("\n{line}\n");
    }
    s += &format!("\nreport: {}\n", report_path(&output.model).display());
    let html = neuroal_onnx::report::html_report_path(&output.model);
    s += &format!("html: {}\n", html.display());
    s
}
