//! The `neuroal-onnx` binary: parse, run, print, exit with a documented code
//! (0 success, 1 failure while working, 2 bad arguments or an option not built yet).

mod cli;

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
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
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
        None => {
            let json = cli.prune.json;
            let progress = Progress::new(cli.prune.quiet);
            let config = cli.prune.into_config(std::env::args().collect())?;
            let report = pipeline::prune(&config, &progress)?;
            print_out(&if json {
                report.to_json() + "\n"
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
    for e in &report.evaluation {
        s += &format!(
            "perplexity on {}: dense {:.3}, pruned {:.3} ({} windows of {} tokens)\n",
            e.text.display(),
            e.dense.value,
            e.pruned.value,
            e.pruned.windows,
            e.pruned.seqlen
        );
    }
    s += &format!("report: {}\n", report_path(&output.model).display());
    s
}
