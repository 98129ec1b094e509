//! Zero-shot multiple choice in the way of lm-evaluation-harness: each choice is scored by the
//! log-likelihood the model gives it after the context; `acc` picks the highest, `acc_norm` the
//! highest per character of the choice.
//!
//! A task file holds one JSON object per line: `{"context": "...", "choices": ["...", ...],
//! "gold": 0}`. As in the harness, trailing spaces of the context move to the start of the
//! choices, and a choice's tokens are those of `context + choice` after the context's own.

use super::logits::{contiguous_row, log_sum_exp};
use super::perplexity::checked_logits;
use crate::calib::TextTokenizer;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::runtime::CausalLm;
use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One question: a context, the choices that may follow it, and the index of the right one.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// The text the choices continue.
    pub context: String,
    /// The candidate continuations.
    pub choices: Vec<String>,
    /// Index of the right choice.
    pub gold: usize,
}

/// A question tokenized for scoring.
#[derive(Clone, Debug)]
pub struct EncodedQuestion {
    /// Context tokens (left-truncated when a choice would not fit).
    context: Vec<i64>,
    /// Tokens of each choice.
    choices: Vec<Vec<i64>>,
    /// Characters of each choice, for `acc_norm`.
    chars: Vec<usize>,
    gold: usize,
}

impl EncodedQuestion {
    /// The context tokens the choices are scored after (the tokenizer's prefix first).
    pub fn context(&self) -> &[i64] {
        &self.context
    }

    /// The tokens of each choice.
    pub fn choices(&self) -> &[Vec<i64>] {
        &self.choices
    }
}

/// Accuracy on a task file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct ChoiceAccuracy {
    /// Fraction of questions whose right choice has the highest log-likelihood after the context
    /// (on a tie the first of the tied choices counts as picked).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub acc: f64,
    /// The same with log-likelihoods divided by the choice's length in characters.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub acc_norm: f64,
}

/// Reads a task file (JSON lines); errors name the file and the line.
pub fn read_questions(path: &Path) -> Result<Vec<Question>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, why: String| {
        Error::invalid("--task-file", format!("{}:{line}: {why}", path.display()))
    };
    let mut questions = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let q: Question = serde_json::from_str(line).map_err(|e| {
            bad(
                i + 1,
                format!("{e}; expected {{\"context\": \"...\", \"choices\": [\"...\", ...], \"gold\": N}}"),
            )
        })?;
        if q.choices.len() < 2 {
            return Err(bad(i + 1, "a question needs at least two choices".into()));
        }
        if q.gold >= q.choices.len() {
            return Err(bad(
                i + 1,
                format!(
                    "gold {} is not the index of one of {} choices",
                    q.gold,
                    q.choices.len()
                ),
            ));
        }
        if q.choices.iter().any(|c| c.is_empty()) {
            return Err(bad(i + 1, "a choice is empty".into()));
        }
        questions.push(q);
    }
    if questions.is_empty() {
        return Err(Error::invalid(
            "--task-file",
            format!("{} holds no questions", path.display()),
        ));
    }
    Ok(questions)
}

/// Tokenizes `questions`; every context plus choice is cut to at most `max_tokens` by dropping
/// context tokens from the left, after the tokenizer's
/// [`window_prefix`](TextTokenizer::window_prefix), which every context starts with. `bos` stands
/// in for an empty context when there is no prefix.
pub fn encode_questions(
    questions: &[Question],
    tokenizer: &TextTokenizer,
    max_tokens: usize,
    bos: Option<u32>,
    path: &Path,
) -> Result<Vec<EncodedQuestion>> {
    let ids = |v: Vec<u32>| -> Vec<i64> { v.into_iter().map(i64::from).collect() };
    let prefix = ids(tokenizer.window_prefix().to_vec());
    // Longest a choice may be: at least one position before it, the prefix or a context token.
    let room = max_tokens.saturating_sub(prefix.len().max(1));
    questions
        .iter()
        .enumerate()
        .map(|(n, q)| {
            let trimmed = q.context.trim_end_matches(' ');
            let moved = &q.context[trimmed.len()..];
            let mut context = ids(tokenizer.encode(trimmed)?);
            if context.is_empty() && prefix.is_empty() {
                let bos = bos.ok_or_else(|| {
                    Error::invalid(
                        "--task-file",
                        format!(
                            "{} question {}: the context is empty and the tokenizer has no BOS token to stand in for it",
                            path.display(),
                            n + 1
                        ),
                    )
                })?;
                context.push(i64::from(bos));
            }
            let mut choices = Vec::new();
            for choice in &q.choices {
                let whole = ids(tokenizer.encode(&format!("{trimmed}{moved}{choice}"))?);
                let split = common_prefix(&whole, &context).min(whole.len().saturating_sub(1));
                let tokens = if trimmed.is_empty() {
                    whole
                } else {
                    whole[split..].to_vec()
                };
                if tokens.is_empty() || tokens.len() > room {
                    return Err(Error::invalid(
                        "--task-file",
                        format!(
                            "{} question {}: choice '{choice}' takes {} tokens; it must take between 1 and {}",
                            path.display(),
                            n + 1,
                            tokens.len(),
                            room
                        ),
                    ));
                }
                choices.push(tokens);
            }
            let longest = choices.iter().map(Vec::len).max().unwrap_or(0);
            let keep = context.len().min(max_tokens.saturating_sub(longest + prefix.len()));
            let context: Vec<i64> = prefix
                .iter()
                .chain(&context[context.len() - keep..])
                .copied()
                .collect();
            Ok(EncodedQuestion {
                context,
                choices,
                chars: q.choices.iter().map(|c| c.chars().count()).collect(),
                gold: q.gold,
            })
        })
        .collect()
}

fn common_prefix(a: &[i64], b: &[i64]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Log-likelihood of `continuation` after `context` under `lm`.
pub fn continuation_loglik(
    lm: &mut CausalLm,
    context: &[i64],
    continuation: &[i64],
) -> Result<f64> {
    let ids: Vec<i64> = context.iter().chain(continuation).copied().collect();
    let logits = checked_logits(lm, &ids)?;
    Ok(loglik_of_tail(logits.view(), &ids, continuation.len()))
}

/// Σ over the last `tail` tokens of `ids` of `log softmax(logits[t − 1])[ids[t]]`.
fn loglik_of_tail(logits: ArrayView2<f32>, ids: &[i64], tail: usize) -> f64 {
    (ids.len() - tail..ids.len())
        .map(|t| {
            let row = contiguous_row(logits, t - 1);
            row[ids[t] as usize] as f64 - log_sum_exp(&row)
        })
        .sum()
}

/// Scores every question with `lm`.
pub fn accuracy(
    lm: &mut CausalLm,
    questions: &[EncodedQuestion],
    progress: &Progress,
    label: &str,
) -> Result<ChoiceAccuracy> {
    let (mut right, mut right_norm) = (0usize, 0usize);
    for (i, q) in questions.iter().enumerate() {
        progress.item(label, i, questions.len());
        let mut lls = Vec::with_capacity(q.choices.len());
        for choice in &q.choices {
            lls.push(continuation_loglik(lm, &q.context, choice)?);
        }
        let (pick, pick_norm) = picks(&lls, &q.chars).map_err(|choice| {
            Error::non_finite_logits(
                lm.path(),
                &format!("{label} question {} choice {}", i + 1, choice + 1),
                "check the model's output on this text with ONNX Runtime (--device cpu rules out the GPU)",
            )
        })?;
        right += usize::from(pick == q.gold);
        right_norm += usize::from(pick_norm == q.gold);
    }
    progress.item(label, questions.len(), questions.len());
    let n = questions.len().max(1) as f64;
    Ok(ChoiceAccuracy {
        acc: right as f64 / n,
        acc_norm: right_norm as f64 / n,
    })
}

/// The choices `acc` and `acc_norm` pick from the choices' log-likelihoods `lls` and lengths in
/// characters `chars`; `Err` with the first choice whose log-likelihood is NaN (NaN or infinite
/// logits), which no comparison could rank.
fn picks(lls: &[f64], chars: &[usize]) -> Result<(usize, usize), usize> {
    if let Some(choice) = lls.iter().position(|ll| ll.is_nan()) {
        return Err(choice);
    }
    let per_char: Vec<f64> = lls
        .iter()
        .zip(chars)
        .map(|(ll, &c)| ll / c.max(1) as f64)
        .collect();
    Ok((first_argmax(lls), first_argmax(&per_char)))
}

/// Index of the largest value; the first on ties.
fn first_argmax(x: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn the_tail_log_likelihood_reads_the_previous_positions_logits() {
        // Position 0 predicts token 1 with p = 1/2 (logits 0, 0); position 1 predicts token 0
        // with p = e/(e+1).
        let logits = array![[0.0f32, 0.0], [1.0, 0.0], [5.0, 5.0]];
        let ll = loglik_of_tail(logits.view(), &[0, 1, 0], 2);
        let want = 0.5f64.ln() + (1f64.exp() / (1f64.exp() + 1.0)).ln();
        // Exponentials are f32 (relative error below 3e-7), sums f64.
        assert!((ll - want).abs() < 1e-7, "{ll} vs {want}");
        assert!((loglik_of_tail(logits.view(), &[0, 1, 0], 1) - (want - 0.5f64.ln())).abs() < 1e-7);
    }

    #[test]
    fn nan_log_likelihoods_are_refused_naming_the_choice() {
        // NaN or +inf logits make the tail log-likelihood NaN.
        for bad in [f32::NAN, f32::INFINITY] {
            let logits = array![[0.0f32, bad], [0.0, 0.0]];
            assert!(loglik_of_tail(logits.view(), &[0, 1], 1).is_nan());
        }
        assert_eq!(picks(&[-1.0, f64::NAN, f64::NAN], &[1, 1, 1]), Err(1));
        assert_eq!(picks(&[f64::NAN, -1.0], &[1, 1]), Err(0));
        // -inf is a log-likelihood (probability 0), ranked last.
        assert_eq!(
            picks(&[f64::NEG_INFINITY, -4.0, -3.0], &[1, 4, 1]),
            Ok((2, 1))
        );
        let e = Error::non_finite_logits("m.onnx", "dense t question 3 choice 2", "hint");
        assert_eq!(
            e.to_string(),
            "m.onnx: dense t question 3 choice 2: the model's logits are NaN or infinite; hint"
        );
    }

    #[test]
    fn ties_go_to_the_first_choice() {
        assert_eq!(first_argmax(&[-1.0, -1.0, -2.0]), 0);
        assert_eq!(first_argmax(&[-3.0, -1.0, -1.0]), 1);
    }

    #[test]
    fn task_files_are_checked_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(
            &path,
            "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 1}\n\n",
        )
        .unwrap();
        assert_eq!(read_questions(&path).unwrap()[0].gold, 1);
        for (body, needle) in [
            (
                "{\"context\": \"a\", \"choices\": [\"b\"], \"gold\": 0}",
                ":1: a question needs at least two",
            ),
            (
                "\n{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"gold\": 2}",
                ":2: gold 2",
            ),
            (
                "{\"context\": \"a\", \"choices\": [\"b\", \"c\"]}",
                ":1: missing field `gold`",
            ),
            (
                "{\"context\": \"a\", \"choices\": [\"b\", \"\"], \"gold\": 0}",
                "a choice is empty",
            ),
            ("", "holds no questions"),
        ] {
            std::fs::write(&path, body).unwrap();
            let e = read_questions(&path).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("t.jsonl"), "{e}");
        }
    }
}
