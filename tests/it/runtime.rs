//! ONNX Runtime through the library: every convention is fed correctly (logits equal the
//! generator's), and perplexity follows the reference convention.

use crate::harness::{reference, tiny_fixtures};
use neuroal_onnx::eval::perplexity;
use neuroal_onnx::onnx::OnnxModel;
use neuroal_onnx::progress::Progress;
use neuroal_onnx::runtime::{locate_library, CausalLm, Device, Runtime};

fn runtime() -> Runtime {
    let lib = locate_library(None).expect("libonnxruntime: run `make setup`");
    Runtime::new(&lib, Device::Cpu, 1, &Progress::silent()).expect("ONNX Runtime loads")
}

#[test]
fn logits_match_the_generator_in_every_convention() {
    let rt = runtime();
    for fx in tiny_fixtures() {
        if fx.name == "quant" {
            // Its reference logits need a session option that turns off ONNX Runtime's QDQ to
            // MatMulNBits fusion (see fixtures/README.md); its discovery is tested elsewhere.
            continue;
        }
        let (ids, want, vocab) = reference(&fx);
        let model = OnnxModel::load(&fx.model).unwrap();
        let mut lm = CausalLm::open(&rt, &model).unwrap_or_else(|e| panic!("{}: {e}", fx.name));
        let got = lm.logits(&ids).unwrap();
        assert_eq!(got.dim(), (ids.len(), vocab), "{}", fx.name);
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(max_diff < 1e-4, "{}: logits differ by {max_diff}", fx.name);
    }
}

#[test]
fn perplexity_is_exp_of_the_mean_next_token_loss_weighted_as_the_reference() {
    let rt = runtime();
    let fx = tiny_fixtures()
        .into_iter()
        .find(|f| f.name == "llama")
        .unwrap();
    let (ids, logits, vocab) = reference(&fx);
    // Independent computation from the generator's logits: mean CE over seq−1 predictions.
    let seq = ids.len();
    let mut nll = 0.0f64;
    for t in 0..seq - 1 {
        let row = &logits[t * vocab..(t + 1) * vocab];
        let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        nll -= (row[ids[t + 1] as usize] as f64).exp().ln() - z.ln();
    }
    // docs/methods.md §4.1: mean over seq−1 positions × seq, divided by (windows · seq).
    let want = (nll / (seq - 1) as f64 * seq as f64 / seq as f64).exp();
    let model = OnnxModel::load(&fx.model).unwrap();
    let mut lm = CausalLm::open(&rt, &model).unwrap();
    let tokens: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
    let mut ppl = |tokens: &[u32]| {
        perplexity(&mut lm, tokens, seq, None, &[], &Progress::silent(), "test").unwrap()
    };
    let got = ppl(&tokens);
    assert_eq!(got.windows, 1);
    assert!(
        (got.perplexity - want).abs() / want < 1e-4,
        "perplexity {} vs {want}",
        got.perplexity
    );
    // Two copies of the window: two windows, same perplexity.
    let doubled: Vec<u32> = tokens.iter().chain(&tokens).copied().collect();
    let twice = ppl(&doubled);
    assert_eq!(twice.windows, 2);
    assert!((twice.perplexity - want).abs() / want < 1e-4);
}
