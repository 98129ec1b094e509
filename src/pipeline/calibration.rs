//! The calibration windows of a job: drawn from `--calib` documents, or written by the model
//! itself when none are given.

use super::{PruneConfig, MIN_CALIBRATION_TOKENS};
use crate::calib::{read_token_ids, sample_token, sample_windows, Rng, TextTokenizer};
use crate::error::{Error, Result};
use crate::onnx::OnnxModel;
use crate::progress::Progress;
use crate::report::CalibrationInfo;
use crate::runtime::{CausalLm, Runtime};
use std::path::Path;

/// Calibration windows drawn from `--calib` text when `--nsamples` is not given (the reference's).
pub const TEXT_WINDOWS: usize = 128;
/// Tokens per window with `--calib` text when `--seqlen` is not given (the reference's).
pub const TEXT_SEQLEN: usize = 2048;
/// Sequences generated side by side: a batch bounds the KV cache's memory.
const GENERATION_BATCH: usize = 8;
/// Windows the model writes itself when neither calibration data nor `--nsamples` is given.
pub const GENERATED_WINDOWS: usize = 32;
/// Tokens per self-written window when `--seqlen` is not given.
pub const GENERATED_SEQLEN: usize = 256;

/// The calibration windows of a run and what the report says of them.
pub(super) struct Calibration {
    pub windows: Vec<Vec<i64>>,
    pub info: CalibrationInfo,
}

impl Calibration {
    /// Reads every `--calib` document (text through the tokenizer, `.json` as token ids) and
    /// draws `--nsamples` windows of `--seqlen` tokens (capped by the longest document).
    pub fn prepare(
        config: &PruneConfig,
        seqlen: usize,
        vocab: Option<usize>,
        tokenizer: Option<&TextTokenizer>,
        progress: &Progress,
    ) -> Result<Self> {
        let mut documents = Vec::new();
        for path in &config.calib {
            let docs = if is_token_file(path) {
                let docs = read_token_ids(path)?;
                let outside = docs
                    .iter()
                    .flatten()
                    .find(|&&t| vocab.is_some_and(|v| t as usize >= v));
                if let (Some(id), Some(v)) = (outside, vocab) {
                    return Err(Error::invalid(
                        "--calib",
                        format!(
                            "{}: token id {id} is outside the model's vocabulary of {v}",
                            path.display()
                        ),
                    ));
                }
                docs
            } else {
                let t =
                    tokenizer.ok_or_else(|| Error::invalid("--calib", "text needs a tokenizer"))?;
                vec![t.encode_file(path)?]
            };
            documents.extend(docs);
        }
        let longest = documents.iter().map(Vec::len).max().unwrap_or(0);
        if longest < MIN_CALIBRATION_TOKENS {
            return Err(Error::invalid(
                "--calib",
                format!(
                    "{} hold(s) at most {longest} tokens per document; calibration needs at least {MIN_CALIBRATION_TOKENS}",
                    config.calib.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        // Every window starts with the tokenizer's leading special tokens, as the evaluation
        // windows and the model's inputs in use do (docs/methods.md §4.1, "Window prefix").
        let prefix = tokenizer.map_or(&[][..], TextTokenizer::window_prefix);
        let capped = seqlen.min(longest - 1 + prefix.len());
        if capped < seqlen {
            progress.note(&format!(
                "  calibration windows shortened to {capped} tokens: the longest document has {longest}"
            ));
        }
        let seqlen = capped;
        let windows = sample_windows(&documents, config.nsamples, seqlen, prefix, config.seed)?
            .into_iter()
            .map(|w| w.into_iter().map(i64::from).collect())
            .collect();
        Ok(Self {
            windows,
            info: CalibrationInfo {
                source: if config.calib.iter().all(|p| is_token_file(p)) {
                    "token_ids"
                } else {
                    "text"
                }
                .to_string(),
                files: config.calib.clone(),
                documents: documents.len(),
                windows: config.nsamples,
                seqlen,
                window_prefix: prefix.to_vec(),
                activation_sums: None,
                spilled_mib: 0.0,
                sampling: None,
            },
        })
    }
}

impl Calibration {
    /// The windows of `--calib-windows`, used exactly as given and in order: a JSON array of
    /// token-id arrays of one length, each id inside the model's vocabulary and each window
    /// inside its position tables.
    pub fn read_windows(
        path: &Path,
        vocab: Option<usize>,
        max_positions: Option<usize>,
    ) -> Result<Self> {
        let bad =
            |why: String| Error::invalid("--calib-windows", format!("{}: {why}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
        let rows = value
            .as_array()
            .filter(|rows| !rows.is_empty() && rows.iter().all(|r| r.is_array()))
            .ok_or_else(|| bad("expected a non-empty JSON array of token-id arrays".into()))?;
        let mut windows: Vec<Vec<i64>> = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let ids = row.as_array().map(Vec::as_slice).unwrap_or_default();
            let window = ids
                .iter()
                .map(|id| {
                    id.as_u64()
                        .filter(|&t| vocab.is_none_or(|v| (t as usize) < v))
                        .map(|t| t as i64)
                        .ok_or_else(|| {
                            bad(format!(
                                "window {i}: {id} is not a token id of the model's vocabulary{}",
                                vocab.map(|v| format!(" of {v}")).unwrap_or_default()
                            ))
                        })
                })
                .collect::<Result<Vec<i64>>>()?;
            if window.len() < 2 || windows.first().is_some_and(|w| w.len() != window.len()) {
                return Err(bad(format!(
                    "window {i} has {} tokens; every window needs the same length, at least 2",
                    window.len()
                )));
            }
            windows.push(window);
        }
        let seqlen = windows[0].len();
        if let Some(max) = max_positions.filter(|&max| seqlen > max) {
            return Err(bad(format!(
                "windows of {seqlen} tokens run past the model's {max} positions"
            )));
        }
        Ok(Self {
            info: CalibrationInfo {
                source: "windows".to_string(),
                files: vec![path.to_path_buf()],
                documents: windows.len(),
                windows: windows.len(),
                seqlen,
                window_prefix: Vec::new(),
                activation_sums: None,
                spilled_mib: 0.0,
                sampling: None,
            },
            windows,
        })
    }

    /// Windows the model writes itself, prompted with its BOS token and sampled with a seed,
    /// when no calibration data is given (the plain command then needs nothing but the model).
    ///
    /// A tokenizer that puts special tokens before every text (Gemma's `<bos>`) gets windows that
    /// start with them, as the `--calib` windows and the evaluation windows do: they prompt the
    /// writing and stay in the window (docs/methods.md §4.1, "Window prefix"). Otherwise the BOS
    /// token (or token 0) only prompts: each window holds the `seqlen` tokens written after it,
    /// as a window cut from text holds text; SmolLM2, whose tokenizer adds no BOS, calibrates
    /// worse with it kept (docs/results.md, "The headline command"). A dropped prompt still
    /// takes one of the model's `max_positions`.
    pub fn generate(
        config: &PruneConfig,
        seqlen: usize,
        max_positions: Option<usize>,
        runtime: &Runtime,
        model: &OnnxModel,
        tokenizer: Option<&TextTokenizer>,
        progress: &Progress,
    ) -> Result<Self> {
        let prefix = tokenizer.map_or(&[][..], TextTokenizer::window_prefix);
        let (prompt, dropped): (Vec<i64>, usize) = if prefix.is_empty() {
            let bos = tokenizer.and_then(TextTokenizer::bos_id).unwrap_or(0);
            (vec![i64::from(bos)], 1)
        } else {
            (prefix.iter().map(|&t| i64::from(t)).collect(), 0)
        };
        let seqlen = match max_positions {
            Some(max) if max < seqlen + dropped => {
                let why = match dropped {
                    0 => format!("the model has {max} positions"),
                    _ => format!("the BOS prompt takes one of the model's {max} positions"),
                };
                progress.note(&format!(
                    "  self-written windows capped at {} tokens: {why}",
                    max - dropped
                ));
                max - dropped
            }
            _ => seqlen,
        };
        if seqlen + dropped <= prompt.len() {
            return Err(Error::invalid(
                "--seqlen",
                format!(
                    "{seqlen} leaves no room for text after the tokenizer's {} leading special token(s)",
                    prompt.len()
                ),
            ));
        }
        let written_len = seqlen + dropped - prompt.len();
        let mut lm = CausalLm::open(runtime, model)?;
        let (n, len) = (config.nsamples, seqlen);
        progress.note(&format!(
            "  no --calib: the model writes {n} windows of {len} tokens {} {prompt:?}, {}",
            if dropped > 0 {
                "after"
            } else {
                "starting with"
            },
            if lm.has_cache() {
                format!("{} token steps with its KV cache", n * written_len)
            } else {
                format!(
                    "{} token positions (it has no KV cache, so each step runs the whole prefix)",
                    n * (seqlen + dropped) * (seqlen + dropped + 1) / 2
                )
            }
        ));
        let mut rng = Rng::new(config.seed);
        let mut windows = Vec::with_capacity(n);
        let start = std::time::Instant::now();
        // Every written token of every window is sampled once.
        let (mut sampled, to_sample) = (0, n * written_len);
        // A few sequences at a time bound the cache's memory.
        while windows.len() < n {
            let batch = (n - windows.len()).min(GENERATION_BATCH);
            let prompts = vec![prompt.clone(); batch];
            let first = windows.len();
            let written = lm.generate(&prompts, len + dropped, |i, position, row| {
                sampled += 1;
                if sampled % batch == 0 {
                    progress.item("generated tokens", sampled, to_sample);
                }
                let token = sample_token(row, config.sampling, &mut rng).ok_or_else(|| {
                    Error::non_finite_logits(
                        &model.path,
                        &format!("calibration window {} of {n}, token {position}", first + i + 1),
                        "pass calibration text or token ids with --calib instead of self-generated windows",
                    )
                })?;
                Ok(i64::from(token))
            })?;
            windows.extend(written.into_iter().map(|w| w[dropped..].to_vec()));
            if windows.len() == batch && windows.len() < n {
                let seconds = start.elapsed().as_secs_f64();
                progress.note(&format!(
                    "  the first {batch} windows took {seconds:.0} s: about {:.0} s for all {n}",
                    seconds * n as f64 / batch as f64
                ));
            }
        }
        Ok(Self {
            windows,
            info: CalibrationInfo {
                source: "self_generated".to_string(),
                files: Vec::new(),
                documents: 0,
                windows: config.nsamples,
                seqlen,
                window_prefix: prefix.to_vec(),
                activation_sums: None,
                spilled_mib: 0.0,
                sampling: Some(config.sampling),
            },
        })
    }
}

/// Whether a calibration file holds token ids (`.json`) rather than text.
pub(super) fn is_token_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}
