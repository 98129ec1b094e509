//! The evaluation stage: the dense and the pruned model side by side on every held-out text
//! (perplexity of each, and their agreement window by window) and on every zero-shot task file.

use super::sequential::weight_value;
use super::staged::StagedRun;
use super::PruneConfig;
use crate::calib::TextTokenizer;
use crate::error::{Error, Result};
use crate::eval::zero_shot::{self, EncodedQuestion};
use crate::eval::{check_token_ids, compare_window, eval_windows, AgreementTally, PerplexityTally};
use crate::graph::{discover, Discovery, Linear, Partition, StageKind};
use crate::onnx::OnnxModel;
use crate::progress::Progress;
use crate::report::{TaskEvaluation, TextEvaluation};
use crate::runtime::{logits_output, Activation, CausalLm, ModelSession, Runtime};
use ndarray::ArrayView2;
use std::path::{Path, PathBuf};

/// Held-out texts and task files, tokenized once before the long work starts.
pub(crate) struct EvalSet {
    texts: Vec<(PathBuf, Vec<u32>)>,
    tasks: Vec<(PathBuf, Vec<EncodedQuestion>)>,
    seqlen: usize,
    max_windows: Option<usize>,
    /// The tokenizer's leading special tokens, put before every window.
    prefix: Vec<u32>,
}

impl EvalSet {
    /// Tokenizes every `--eval-text` and `--task-file`; `None` when there is nothing to evaluate.
    pub(crate) fn prepare(
        config: &PruneConfig,
        seqlen: usize,
        tokenizer: &TextTokenizer,
    ) -> Result<Option<Self>> {
        if config.eval_texts.is_empty() && config.task_files.is_empty() {
            return Ok(None);
        }
        let mut texts = Vec::new();
        for path in &config.eval_texts {
            let tokens = tokenizer.encode_file(path)?;
            if tokens.len() < 2 {
                return Err(Error::invalid(
                    "--eval-text",
                    format!("{} holds no text to evaluate on", path.display()),
                ));
            }
            texts.push((path.clone(), tokens));
        }
        let mut tasks = Vec::new();
        for path in &config.task_files {
            let questions = zero_shot::read_questions(path)?;
            let encoded = zero_shot::encode_questions(
                &questions,
                tokenizer,
                seqlen,
                tokenizer.bos_id(),
                path,
            )?;
            tasks.push((path.clone(), encoded));
        }
        Ok(Some(Self {
            texts,
            tasks,
            seqlen,
            max_windows: config.eval_windows,
            prefix: tokenizer.window_prefix().to_vec(),
        }))
    }

    /// Whether there are zero-shot task files (which run on the whole model).
    pub(crate) fn has_tasks(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// Runs the dense and the pruned model on every text and task.
    ///
    /// Texts are evaluated stage by stage ([`StagedLm`]): one stage of each model is open at a
    /// time, so that evaluating costs about a block of weights and the windows' hidden states,
    /// not two whole models (docs/big-models.md, "Evaluation"). The suffix (final norm and LM
    /// head) holds no pruned weight, so one suffix session serves both models and each window's
    /// logits are compared as they come, never stored. Tasks run on one whole model at a time.
    pub(crate) fn compare(
        &self,
        runtime: &Runtime,
        dense: &OnnxModel,
        pruned: &OnnxModel,
        progress: &Progress,
    ) -> Result<(Vec<TextEvaluation>, Vec<TaskEvaluation>)> {
        let mut texts = Vec::new();
        if !self.texts.is_empty() {
            let dense_lm = StagedLm::new(runtime, dense)?;
            let pruned_lm = StagedLm::new(runtime, pruned)?;
            dense_lm.check_same_suffix(&pruned_lm)?;
            for (path, tokens) in &self.texts {
                texts.push(self.text(path, tokens, &dense_lm, &pruned_lm, progress)?);
            }
        }
        let mut tasks = Vec::new();
        for (path, questions) in &self.tasks {
            let label = file_label(path);
            let accuracy = |model: &OnnxModel, side: &str| {
                let mut lm = CausalLm::open(runtime, model)?;
                zero_shot::accuracy(&mut lm, questions, progress, &format!("{side} {label}"))
            };
            tasks.push(TaskEvaluation {
                task_file: path.clone(),
                items: questions.len(),
                dense: accuracy(dense, "dense")?,
                pruned: accuracy(pruned, "pruned")?,
            });
        }
        Ok((texts, tasks))
    }

    /// Perplexity of both models on one text, and their agreement, a chunk of windows at a time.
    fn text(
        &self,
        path: &Path,
        tokens: &[u32],
        dense_lm: &StagedLm,
        pruned_lm: &StagedLm,
        progress: &Progress,
    ) -> Result<TextEvaluation> {
        let seqlen = self.seqlen.min(tokens.len() + self.prefix.len());
        let windows = eval_windows(tokens, seqlen, self.max_windows, &self.prefix)?;
        let (mut d, mut p) = (PerplexityTally::new(seqlen), PerplexityTally::new(seqlen));
        let mut agreement = AgreementTally::default();
        let label = file_label(path);
        let chunk = dense_lm.windows_per_run(seqlen);
        // Progress in stage runs: both models' stages, then one suffix run per window.
        let total = windows.len().div_ceil(chunk) * (dense_lm.stages() + pruned_lm.stages())
            + windows.len();
        let mut done = 0;
        let mut step = |n: usize| {
            done += n;
            progress.item(&label, done, total);
        };
        step(0);
        for chunk in windows.chunks(chunk) {
            let mut dense_run = dense_lm.to_suffix(chunk, &mut step)?;
            let pruned_run = pruned_lm.to_suffix(chunk, &mut step)?;
            // One LM head for both models ([`StagedLm::check_same_suffix`]).
            let mut suffix = dense_run.open(&[], &[], &[])?;
            for (w, ids) in chunk.iter().enumerate() {
                let dense_out = dense_lm.logits(&dense_run, &mut suffix, w, ids)?;
                let pruned_out = pruned_lm.logits(&pruned_run, &mut suffix, w, ids)?;
                // Views of ONNX Runtime's own buffers (fp32 logits are not copied).
                let (dense_values, pruned_values) = (dense_out.to_f32()?, pruned_out.to_f32()?);
                let dense_logits = window_view(&dense_values, ids.len())?;
                let pruned_logits = window_view(&pruned_values, ids.len())?;
                let window = compare_window(dense_logits, pruned_logits, ids);
                d.add_nll(window.dense_nll, ids.len());
                p.add_nll(window.pruned_nll, ids.len());
                agreement.add(&window);
                step(1);
            }
        }
        Ok(TextEvaluation {
            text: path.to_path_buf(),
            tokens: tokens.len(),
            window_prefix: self.prefix.clone(),
            dense: d.finish(),
            pruned: p.finish(),
            agreement: agreement.finish(),
        })
    }
}

/// Bytes of hidden states that one evaluation run holds per model, at most (about): windows are
/// run in chunks that fit, each chunk through every stage.
const HIDDEN_BUDGET: usize = 256 << 20;

/// A causal LM run one stage at a time ([`Partition`]): each stage's session is opened, run on
/// every window of a chunk and dropped before the next one opens, so that only one block's
/// weights are in ONNX Runtime at once.
struct StagedLm<'a> {
    runtime: &'a Runtime,
    model: &'a OnnxModel,
    discovery: Discovery,
    partition: Partition,
    logits: String,
    /// Width of the residual stream (the first linear's inputs).
    hidden: usize,
}

impl<'a> StagedLm<'a> {
    fn new(runtime: &'a Runtime, model: &'a OnnxModel) -> Result<Self> {
        let discovery = discover(model)?;
        let partition = Partition::new(model, &discovery)?;
        let logits = logits_output(model.graph()).ok_or_else(|| {
            Error::graph(&model.path, "the graph has no outputs; expected 'logits'")
        })?;
        let hidden = discovery.linears.first().map_or(1, |l| l.in_features);
        Ok(Self {
            runtime,
            model,
            discovery,
            partition,
            logits,
            hidden,
        })
    }

    /// Stages before the suffix.
    fn stages(&self) -> usize {
        self.partition.stages.len() - 1
    }

    /// Windows of `seqlen` tokens per run: as many as [`HIDDEN_BUDGET`] holds, counting the
    /// hidden state and about as much again for what else stages carry (masks, positions).
    fn windows_per_run(&self, seqlen: usize) -> usize {
        (HIDDEN_BUDGET / (2 * seqlen * self.hidden * 4).max(1)).max(1)
    }

    /// Runs `windows` through every stage but the suffix; `step(1)` after each stage. A block's
    /// linear weights are fed as inputs, as in the pruning pass, rather than built into its
    /// session: the session then holds no copy of them, and ONNX Runtime casts a 16-bit weight
    /// to float32 only while the stage runs.
    fn to_suffix(
        &self,
        windows: &[Vec<i64>],
        step: &mut impl FnMut(usize),
    ) -> Result<StagedRun<'_>> {
        let mut run = StagedRun::new(self.model, &self.partition, self.runtime, windows)?;
        while !run.at_suffix() {
            let linears: Vec<&Linear> = match run.stage().kind {
                StageKind::Block(block) => self.discovery.block(block).collect(),
                _ => Vec::new(),
            };
            let mut session = run.open(&linears, &[], &[])?;
            let values = linears
                .iter()
                .map(|l| weight_value(self.model, l, None))
                .collect::<Result<Vec<Activation>>>()?;
            let feeds: Vec<(&str, &Activation)> = linears
                .iter()
                .map(|l| l.weight.name.as_str())
                .zip(&values)
                .collect();
            run.advance(&mut session, &feeds, &[], |_, _| Ok(()))?;
            step(1);
        }
        Ok(run)
    }

    /// Checks that `pruned`'s suffix is this model's, so that one suffix session can serve both:
    /// the same nodes reading and producing the same tensors. Its weights are the same bytes,
    /// since pruning never touches a weight outside the decoder blocks (the final norm, the LM
    /// head and a tied embedding are excluded by discovery).
    fn check_same_suffix(&self, pruned: &StagedLm) -> Result<()> {
        // Its tensors in and out, then every node's operator and inputs.
        let suffix = |lm: &StagedLm| -> Vec<String> {
            let stage = lm
                .partition
                .stages
                .last()
                .expect("a partition has a suffix");
            let nodes = stage.nodes.iter().map(|&n| {
                let node = &lm.partition.nodes[n];
                format!("{}({})", node.op_type(), node.input.join(", "))
            });
            [stage.inputs.join(", "), stage.outputs.join(", ")]
                .into_iter()
                .chain(nodes)
                .collect()
        };
        if suffix(self) != suffix(pruned) {
            return Err(Error::internal(format!(
                "the final stage of {} differs from the input model's",
                pruned.model.path.display()
            )));
        }
        Ok(())
    }

    /// Window `window`'s `[1, seqlen, vocab]` logits from the suffix, checking their shape and
    /// that every id of `ids` is inside the vocabulary.
    fn logits(
        &self,
        run: &StagedRun,
        suffix: &mut ModelSession,
        window: usize,
        ids: &[i64],
    ) -> Result<Activation> {
        let wanted = [self.logits.clone()];
        let logits = run
            .run(suffix, window, &[], &wanted)?
            .pop()
            .ok_or_else(|| Error::internal("the suffix gave no logits"))?;
        let [1, seq, vocab] = logits.shape()[..] else {
            return Err(bad_logits(&self.model.path, &logits.shape(), ids.len()));
        };
        if seq != ids.len() || vocab == 0 {
            return Err(bad_logits(&self.model.path, &logits.shape(), ids.len()));
        }
        check_token_ids(ids, vocab)?;
        Ok(logits)
    }
}

/// `values` (the checked logits of one window of `tokens` tokens) as `[tokens, vocab]`.
fn window_view(values: &[f32], tokens: usize) -> Result<ArrayView2<'_, f32>> {
    ArrayView2::from_shape((tokens, values.len() / tokens.max(1)), values)
        .map_err(|e| Error::internal(e.to_string()))
}

/// The error for logits of an unexpected shape.
fn bad_logits(path: &Path, shape: &[usize], tokens: usize) -> Error {
    Error::graph(
        path,
        format!("logits of shape {shape:?} for one window of {tokens} tokens; expected [1, {tokens}, vocab]"),
    )
}

/// The file name of `path`, for progress labels.
pub(crate) fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
