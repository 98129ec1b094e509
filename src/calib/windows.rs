//! Calibration windows: random windows of random documents, as the reference draws them from
//! C4 (docs/methods.md §4.1): pick a document longer than the window, then a window inside it.

use super::rng::Rng;
use crate::error::{Error, Result};

/// `nsamples` windows of `seqlen` tokens drawn from `documents` with a generator seeded by `seed`:
/// each draw picks a random document with more than `seqlen` tokens, then a random start.
pub fn sample_windows(
    documents: &[Vec<u32>],
    nsamples: usize,
    seqlen: usize,
    seed: u64,
) -> Result<Vec<Vec<u32>>> {
    let longest = documents.iter().map(Vec::len).max().unwrap_or(0);
    if longest <= seqlen {
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
        if doc.len() <= seqlen {
            continue;
        }
        let start = rng.below((doc.len() - seqlen) as u64) as usize;
        windows.push(doc[start..start + seqlen].to_vec());
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
        let w = sample_windows(&docs, 50, 10, 3).unwrap();
        assert_eq!(w.len(), 50);
        for window in &w {
            assert_eq!(window.len(), 10);
            // Consecutive tokens of one document, never of the 5-token one.
            assert!(window.windows(2).all(|p| p[1] == p[0] + 1), "{window:?}");
            assert!(window[0] >= 100);
        }
        assert!(w.iter().any(|x| x[0] >= 1000) && w.iter().any(|x| x[0] < 200));
        assert_eq!(w, sample_windows(&docs, 50, 10, 3).unwrap());
        assert_ne!(w, sample_windows(&docs, 50, 10, 4).unwrap());
        assert!(sample_windows(&docs, 1, 100, 0).is_err());
    }
}
