//! The evaluation stage: the dense and the pruned model side by side on every held-out text
//! (perplexity of each, and their agreement window by window) and on every zero-shot task file.

use super::PruneConfig;
use crate::calib::TextTokenizer;
use crate::error::{Error, Result};
use crate::eval::zero_shot::{self, EncodedQuestion};
use crate::eval::{checked_logits, eval_windows, AgreementTally, PerplexityTally};
use crate::onnx::OnnxModel;
use crate::progress::Progress;
use crate::report::{TaskEvaluation, TextEvaluation};
use crate::runtime::{CausalLm, Runtime};
use std::path::{Path, PathBuf};

/// Held-out texts and task files, tokenized once before the long work starts.
pub(crate) struct EvalSet {
    texts: Vec<(PathBuf, Vec<u32>)>,
    tasks: Vec<(PathBuf, Vec<EncodedQuestion>)>,
    seqlen: usize,
    max_windows: Option<usize>,
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
        }))
    }

    /// Runs the dense and the pruned model on every text and task. Both sessions are open at
    /// once so that their logits can be compared window by window without storing them.
    pub(crate) fn compare(
        &self,
        runtime: &Runtime,
        dense: &OnnxModel,
        pruned: &OnnxModel,
        progress: &Progress,
    ) -> Result<(Vec<TextEvaluation>, Vec<TaskEvaluation>)> {
        let mut dense_lm = CausalLm::open(runtime, dense)?;
        let mut pruned_lm = CausalLm::open(runtime, pruned)?;
        let mut texts = Vec::new();
        for (path, tokens) in &self.texts {
            let seqlen = self.seqlen.min(tokens.len());
            let windows = eval_windows(tokens, seqlen, self.max_windows)?;
            let (mut d, mut p) = (PerplexityTally::new(seqlen), PerplexityTally::new(seqlen));
            let mut agreement = AgreementTally::default();
            let label = file_label(path);
            for (i, ids) in windows.iter().enumerate() {
                progress.item(&label, i, windows.len());
                let dense_logits = checked_logits(&mut dense_lm, ids)?;
                let pruned_logits = checked_logits(&mut pruned_lm, ids)?;
                d.add(dense_logits.view(), ids);
                p.add(pruned_logits.view(), ids);
                agreement.add(dense_logits.view(), pruned_logits.view());
            }
            progress.item(&label, windows.len(), windows.len());
            texts.push(TextEvaluation {
                text: path.clone(),
                tokens: tokens.len(),
                dense: d.finish(),
                pruned: p.finish(),
                agreement: agreement.finish(),
            });
        }
        let mut tasks = Vec::new();
        for (path, questions) in &self.tasks {
            let label = file_label(path);
            tasks.push(TaskEvaluation {
                task_file: path.clone(),
                items: questions.len(),
                dense: zero_shot::accuracy(
                    &mut dense_lm,
                    questions,
                    progress,
                    &format!("dense {label}"),
                )?,
                pruned: zero_shot::accuracy(
                    &mut pruned_lm,
                    questions,
                    progress,
                    &format!("pruned {label}"),
                )?,
            });
        }
        Ok((texts, tasks))
    }
}

/// The file name of `path`, for progress labels.
pub(crate) fn file_label(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
