//! Text in, token ids out: the tokenizer beside the model (or `--tokenizer`), and the windows
//! that calibration and evaluation cut from tokenized text.

mod rng;
mod windows;

pub use rng::{Rng, SplitMix64};
pub use windows::sample_windows;

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// A loaded tokenizer and where it came from.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    /// The `tokenizer.json` file.
    pub path: PathBuf,
    prefix: Vec<u32>,
}

impl TextTokenizer {
    /// Loads `explicit`, or `tokenizer.json` in the model's folder.
    pub fn load(model_dir: &Path, explicit: Option<&Path>) -> Result<Self> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => model_dir.join("tokenizer.json"),
        };
        if !path.is_file() {
            return Err(Error::Tokenizer {
                path,
                message: if explicit.is_some() {
                    "does not exist".into()
                } else {
                    "not found next to the model; pass --tokenizer path/to/tokenizer.json".into()
                },
            });
        }
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: format!("cannot be loaded as a Hugging Face tokenizer.json: {e}"),
        })?;
        // The special tokens the post-processor puts before a text: those flagged special ahead
        // of the first token of "a".
        let encoding = tokenizer.encode("a", true).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: format!("cannot encode a test text: {e}"),
        })?;
        let leading = encoding
            .get_special_tokens_mask()
            .iter()
            .take_while(|&&special| special == 1)
            .count();
        let prefix = encoding.get_ids()[..leading].to_vec();
        Ok(Self {
            tokenizer,
            path,
            prefix,
        })
    }

    /// Token ids of the whole text of `file`, without special tokens: windows cut from it get
    /// [`Self::window_prefix`] before them (calibration and evaluation).
    pub fn encode_file(&self, file: &Path) -> Result<Vec<u32>> {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        self.encode_labelled(&text, || file.display().to_string())
    }

    /// The special tokens the tokenizer's post-processor puts before every text (Gemma's and
    /// LLaMA-2's BOS); empty for tokenizers that add none (SmolLM2, GPT-2). Calibration and
    /// evaluation windows and zero-shot contexts start with them, as the model saw text in
    /// training (docs/methods.md §4.1).
    pub fn window_prefix(&self) -> &[u32] {
        &self.prefix
    }

    /// Token ids of `text` without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_labelled(text, || format!("{text:?}"))
    }

    /// Token ids of `text` without special tokens; a failure names `label()` (the file or the text).
    fn encode_labelled(&self, text: &str, label: impl FnOnce() -> String) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                message: format!("failed on {}: {e}", label()),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id of the beginning-of-sequence token, when the tokenizer has one of the usual names.
    pub fn bos_id(&self) -> Option<u32> {
        ["<|begin_of_text|>", "<s>", "<bos>", "<|endoftext|>"]
            .iter()
            .find_map(|t| self.tokenizer.token_to_id(t))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// How the model's own calibration text is sampled.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Sampling {
    /// Softmax temperature (> 0).
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub temperature: f64,
    /// Nucleus: sample among the most likely tokens whose probabilities add up to `top_p`
    /// (in (0, 1]; 1 keeps every token).
    #[schemars(range(max = 1.0), extend("exclusiveMinimum" = 0))]
    pub top_p: f64,
}

impl Default for Sampling {
    /// Temperature 1 within the 0.95 nucleus: the best of the settings measured for Wanda at 70%
    /// on SmolLM2 (docs/results.md, "The headline command"); the tail of the whole distribution
    /// is mostly noise that calibrates worse.
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 0.95,
        }
    }
}

/// Draws a token from the softmax of `logits / temperature`, restricted to the nucleus `top_p`,
/// with `rng`; `None` when the logits define no distribution (a NaN, a `+inf`, every logit
/// `-inf`, or none at all), which the caller reports naming where they came from.
pub fn sample_token(logits: &[f32], sampling: Sampling, rng: &mut Rng) -> Option<u32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let weights: Vec<f64> = logits
        .iter()
        .map(|&v| ((v as f64 - max) / sampling.temperature).exp())
        .collect();
    let mut total = weights.iter().sum::<f64>();
    // A NaN logit makes its weight NaN, a `+inf` makes `inf - inf`, all `-inf` leave no mass.
    if !(total.is_finite() && total > 0.0) {
        return None;
    }
    let mut order: Vec<usize> = Vec::new();
    if sampling.top_p < 1.0 {
        // The most likely first, the lower id first on ties; keep the shortest prefix that
        // reaches top_p of the mass. That prefix lies among the tokens above a weight threshold
        // whenever they cut it, so only they are sorted: a 262k vocabulary would otherwise cost
        // more per token than the model. The result is the full sort's, whatever the threshold.
        let wanted = sampling.top_p * total;
        for threshold in [1e-4, 1e-8, 0.0] {
            order = (0..weights.len())
                .filter(|&i| weights[i] >= threshold)
                .collect();
            order.sort_unstable_by(|&a, &b| weights[b].total_cmp(&weights[a]).then(a.cmp(&b)));
            let mut kept = 0.0;
            let cut = order.iter().position(|&i| {
                kept += weights[i];
                kept >= wanted
            });
            if cut.is_some() || order.len() == weights.len() {
                order.truncate(cut.map_or(order.len(), |p| p + 1));
                total = kept;
                break;
            }
        }
    } else {
        order = (0..weights.len()).collect();
    }
    let mut target = rng.unit() * total;
    for &i in &order {
        target -= weights[i];
        if target < 0.0 {
            return Some(i as u32);
        }
    }
    order.last().map(|&i| i as u32)
}

/// Token-id documents from a `.json` file: an array of ids (one document) or an array of arrays
/// (several documents).
pub fn read_token_ids(path: &Path) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |why: &str| {
        Error::invalid(
            "--calib",
            format!(
                "{}: {why}; expected a JSON array of token ids or an array of such arrays",
                path.display()
            ),
        )
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    let ids = |v: &serde_json::Value| -> Result<Vec<u32>> {
        v.as_array()
            .ok_or_else(|| bad("not an array"))?
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| bad("an entry is not a token id"))
            })
            .collect()
    };
    match value.as_array() {
        Some(items) if items.iter().all(|v| v.is_array()) && !items.is_empty() => {
            items.iter().map(ids).collect()
        }
        Some(_) => Ok(vec![ids(&value)?]),
        None => Err(bad("not an array")),
    }
}

/// Non-overlapping windows of `seqlen` tokens from the start of `tokens`, the remainder dropped
/// (the evaluation convention of the reference, docs/methods.md §4.1), at most `max_windows` of them.
pub fn consecutive_windows(
    tokens: &[u32],
    seqlen: usize,
    max_windows: Option<usize>,
) -> Vec<&[u32]> {
    if seqlen == 0 {
        return Vec::new();
    }
    let n = tokens.len() / seqlen;
    let n = max_windows.map_or(n, |m| n.min(m));
    tokens.chunks_exact(seqlen).take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::{consecutive_windows, sample_token, Rng, Sampling};

    #[test]
    fn sampling_follows_the_softmax() {
        let mut rng = Rng::new(0);
        // Probabilities 1/7, 2/7, 4/7 (log-weights 0, ln 2, ln 4) and one impossible token.
        let logits = [0.0f32, 2f32.ln(), 4f32.ln(), -1e30];
        let mut counts = [0usize; 4];
        let whole = Sampling {
            temperature: 1.0,
            top_p: 1.0,
        };
        for _ in 0..70_000 {
            counts[sample_token(&logits, whole, &mut rng).unwrap() as usize] += 1;
        }
        assert_eq!(counts[3], 0);
        for (count, want) in counts.iter().zip([10_000.0, 20_000.0, 40_000.0]) {
            assert!((*count as f64 - want).abs() < 0.03 * want, "{counts:?}");
        }
    }

    #[test]
    fn temperature_and_nucleus_reshape_the_distribution() {
        let logits = [0.0f32, 2f32.ln(), 4f32.ln(), -1e30];
        let draw = |sampling: Sampling| {
            let mut rng = Rng::new(1);
            let mut counts = [0usize; 4];
            for _ in 0..70_000 {
                counts[sample_token(&logits, sampling, &mut rng).unwrap() as usize] += 1;
            }
            counts
        };
        // Temperature 0.5 squares the weights: 1/21, 4/21, 16/21.
        let cold = draw(Sampling {
            temperature: 0.5,
            top_p: 1.0,
        });
        for (count, want) in cold.iter().zip([1.0, 4.0, 16.0]) {
            let want = want / 21.0 * 70_000.0;
            assert!((*count as f64 - want).abs() < 0.05 * want, "{cold:?}");
        }
        // top_p 0.8: 4/7 alone is below 0.8, 4/7 + 2/7 reaches it; token 0 is cut, and the
        // rest keep their ratio 1:2.
        let nucleus = draw(Sampling {
            temperature: 1.0,
            top_p: 0.8,
        });
        assert_eq!((nucleus[0], nucleus[3]), (0, 0), "{nucleus:?}");
        let ratio = nucleus[2] as f64 / nucleus[1] as f64;
        assert!((ratio - 2.0).abs() < 0.1, "{nucleus:?}");
    }

    /// The nucleus as the plain definition computes it: every token sorted, the shortest prefix
    /// reaching `top_p` of the mass.
    fn nucleus_draw(logits: &[f32], top_p: f64, rng: &mut Rng) -> u32 {
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let w: Vec<f64> = logits.iter().map(|&v| (v as f64 - max).exp()).collect();
        let mut order: Vec<usize> = (0..w.len()).collect();
        order.sort_unstable_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
        let wanted = top_p * w.iter().sum::<f64>();
        let mut kept = 0.0;
        let cut = order
            .iter()
            .position(|&i| {
                kept += w[i];
                kept >= wanted
            })
            .map_or(order.len(), |p| p + 1);
        order.truncate(cut);
        let mut target = rng.unit() * kept;
        for &i in &order {
            target -= w[i];
            if target < 0.0 {
                return i as u32;
            }
        }
        *order.last().unwrap() as u32
    }

    #[test]
    fn sorting_only_the_likely_tokens_draws_what_sorting_all_of_them_draws() {
        // One likely token and a long tail that holds most of the mass below the first
        // threshold (e^-10 ≈ 4.5e-5 each), a tail below the second, and a plain spread.
        let mut heavy_tail = vec![-10.0f32; 50_000];
        heavy_tail[7] = 0.0;
        let mut far_tail = vec![-20.0f32; 600_000];
        far_tail[1] = 0.0;
        let spread: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        for logits in [heavy_tail, far_tail, spread] {
            for top_p in [0.5, 0.9, 0.95, 0.999] {
                let sampling = Sampling {
                    temperature: 1.0,
                    top_p,
                };
                let (mut a, mut b) = (Rng::new(3), Rng::new(3));
                for _ in 0..20 {
                    assert_eq!(
                        sample_token(&logits, sampling, &mut a),
                        Some(nucleus_draw(&logits, top_p, &mut b))
                    );
                }
            }
        }
    }

    #[test]
    fn logits_that_define_no_distribution_sample_nothing() {
        let mut rng = Rng::new(0);
        for sampling in [
            Sampling {
                temperature: 1.0,
                top_p: 1.0,
            },
            Sampling {
                temperature: 0.7,
                top_p: 0.9,
            },
        ] {
            for logits in [
                vec![0.0f32, f32::NAN, 1.0],
                vec![f32::NAN; 3],
                vec![0.0, f32::INFINITY],
                vec![f32::NEG_INFINITY; 2],
                vec![],
            ] {
                assert_eq!(
                    sample_token(&logits, sampling, &mut rng),
                    None,
                    "{logits:?}"
                );
            }
            // One impossible token among possible ones is a distribution.
            let logits = [f32::NEG_INFINITY, 0.0];
            assert_eq!(sample_token(&logits, sampling, &mut rng), Some(1));
        }
    }

    #[test]
    fn windows_do_not_overlap_and_drop_the_remainder() {
        let tokens: Vec<u32> = (0..10).collect();
        let w = consecutive_windows(&tokens, 4, None);
        assert_eq!(w, vec![&[0, 1, 2, 3][..], &[4, 5, 6, 7][..]]);
        assert_eq!(consecutive_windows(&tokens, 3, Some(2)).len(), 2);
        assert!(consecutive_windows(&tokens, 11, None).is_empty());
    }
}
