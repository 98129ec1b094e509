//! Fuzzes `eval::zero_shot::read_questions`, the reader of `--task-file` (JSON lines of
//! `{"context": "...", "choices": ["...", ...], "gold": N}`). Input: the file's bytes.
//!
//! Nothing may panic, and what it accepts keeps the promises the scoring relies on: at least one
//! question, each with two or more non-empty choices and a gold index among them.

#![no_main]

mod scratch;

use libfuzzer_sys::fuzz_target;
use neuroal_onnx::eval::zero_shot::read_questions;

fuzz_target!(|data: &[u8]| {
    let path = scratch::write("tasks.jsonl", data);
    if let Ok(questions) = read_questions(&path) {
        assert!(!questions.is_empty());
        for q in &questions {
            assert!(q.choices.len() >= 2 && q.gold < q.choices.len());
            assert!(q.choices.iter().all(|c| !c.is_empty()));
        }
    }
});
