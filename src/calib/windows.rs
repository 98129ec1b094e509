//! Calibration windows: random windows of random documents, as the reference draws them from
//! C4 (docs/methods.md §4.1): pick a document longer than the window, then a window inside it.

use super::rng::Rng;
use crate::error::{Error, Result};

/// `nsamples` windows of `seqlen` tokens drawn from `documents` with a generator seeded by `seed`:
/// each draw picks a random document with more than `seqlen − prefix.len()` tokens, then a random
/// start. Each window is `prefix` (the tokenizer's leading special tokens, [`window_prefix`]) and
/// that many consecutive tokens of the document.
///
/// [`window_prefix`]: super::TextTokenizer::window_prefix
pub fn sample_windows(
    documents: &[Vec<u32>],
    nsamples: usize,
    seqlen: usize,
    prefix: &[u32],
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    let text_len = seqlen.saturating_sub(prefix.len());
    if text_len == 0 {
        return Err(Error::invalid(
            "--seqlen",
            format!(
                "{seqlen} leaves no room for text after the tokenizer's {} leading special token(s)",
                prefix.len()
            ),
        ));
    }
    let longest = documents.iter().map(Vec::len).max().unwrap_or(0);
    if longest <= text_len {
        return Err(Error::invalid(
            "--calib",
            format!(
                "the longest calibration document has {longest} tokens; windows of --seqlen {seqlen} need more. Give more text or lower --seqlen"
            ),
        ));
    }
    let mut rng = Rng::new(seed);
    let mut windows = Vec::with_capacity(nsamples);
    while windows.len() < nsamples {
        let doc = &documents[rng.below(documents.len() as u64) as usize];
        if doc.len() <= text_len {
            continue;
        }
        let start = rng.below((doc.len() - text_len) as u64) as usize;
        windows.push([prefix, &doc[start..start + text_len]].concat());
    }
    Ok(windows)
}

#[cfg(test)]
mod tests {
    use super::sample_windows;

    #[test]
    fn windows_come_from_long_enough_documents_and_repeat_with_the_seed() {
        let docs = vec![
            (0..5).collect::<Vec<u32>>(),
            (100..200).collect(),
            (1000..1030).collect(),
        ];
        let w = sample_windows(&docs, 50, 10, &[], 3).unwrap();
        assert_eq!(w.len(), 50);
        for window in &w {
            assert_eq!(window.len(), 10);
            // Consecutive tokens of one document, never of the 5-token one.
            assert!(window.windows(2).all(|p| p[1] == p[0] + 1), "{window:?}");
            assert!(window[0] >= 100);
        }
        assert!(w.iter().any(|x| x[0] >= 1000) && w.iter().any(|x| x[0] < 200));
        assert_eq!(w, sample_windows(&docs, 50, 10, &[], 3).unwrap());
        assert_ne!(w, sample_windows(&docs, 50, 10, &[], 4).unwrap());
        assert!(sample_windows(&docs, 1, 100, &[], 0).is_err());
    }

    #[test]
    fn every_window_starts_with_the_prefix_and_holds_seqlen_tokens() {
        let docs = vec![(100..112).collect::<Vec<u32>>(), (200..203).collect()];
        let w = sample_windows(&docs, 200, 4, &[7], 1).unwrap();
        for window in &w {
            assert_eq!(window.len(), 4);
            assert_eq!(window[0], 7, "{window:?}");
            // Then consecutive text, from the document with more than 3 tokens; the
            // 3-token document is too short for three tokens of text and a start.
            assert!(window[1] >= 100 && window[1..].windows(2).all(|p| p[1] == p[0] + 1));
        }
        // Starts run from the document's first token to the last that leaves one token after
        // the window (the reference's draw).
        assert!(w.iter().any(|x| x[1] == 100) && w.iter().any(|x| x[3] == 110));
        assert!(w.iter().all(|x| x[3] <= 110));
        // A prefix that fills the window leaves no text.
        assert!(sample_windows(&docs, 1, 1, &[7], 0).is_err());
    }
}
