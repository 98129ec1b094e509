//! Measuring a model: perplexity on held-out text, agreement of the pruned model's next-token
//! distributions with the dense model's, and zero-shot multiple-choice accuracy.

mod agreement;
mod logits;
mod perplexity;
pub mod zero_shot;

pub use agreement::{Agreement, AgreementTally};
pub use logits::{compare_window, kl_divergence, log_sum_exp, WindowComparison};
pub use perplexity::{
    check_token_ids, checked_logits, eval_windows, perplexity, window_nll, Perplexity,
    PerplexityTally,
};
pub use zero_shot::ChoiceAccuracy;
