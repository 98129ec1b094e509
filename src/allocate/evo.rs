//! The evolutionary allocation search (`--top-up evo`, docs/methods.md §5.2): per-block sparsity
//! levels mutated by moving sparsity between blocks at a constant parameter-weighted total,
//! offspring ranked on a small budget of windows and the survivors of each selection step on a
//! larger one, the parent kept until an offspring beats it. The fitness (KL divergence of the pruned model's next-token
//! distributions from the dense model's) is the caller's.

use super::neuroal::CLIP;
use crate::calib::Rng;
use crate::error::Result;
use serde::Serialize;

/// How the search runs (docs/methods.md §5.2 gives the defaults and why).
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct EvoSettings {
    /// Generations (--evo-generations).
    pub generations: usize,
    /// Offspring drawn from the parent per generation, all ranked by the first selection step.
    pub offspring: usize,
    /// The selection steps in order, on more windows each: a step scores the candidates the one
    /// before passed on and passes on its best `survivors`; the best of the last step replaces
    /// the parent when it scores lower on the last step's windows.
    pub selection: Vec<Selection>,
    /// Tokens of each window the fitness reads (the first ones).
    pub tokens: usize,
    /// Sparsity one move adds to a block (the block it takes it from loses as many weights).
    pub step: f64,
    /// Most moves in one mutation (the count is drawn from 1 to this).
    pub max_moves: usize,
    /// Seed of the mutations.
    pub seed: u64,
}

/// One selection step of a generation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Selection {
    /// Calibration windows each candidate is scored on (the first ones).
    #[schemars(range(min = 1))]
    pub windows: usize,
    /// Candidates passed on to the next step (1 in the last step: the one that meets the parent).
    #[schemars(range(min = 1))]
    pub survivors: usize,
}

/// One generation: the parent's fitness after it, and what its offspring scored.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Generation {
    /// The parent's fitness on the last step's windows once the generation chose it (mean KL divergence
    /// of the next-token distributions, nats per token); never above the previous generation's.
    #[schemars(range(min = 0.0))]
    pub fitness: f64,
    /// The best offspring's fitness on the last step's windows (it became the parent when below the
    /// previous parent's fitness); null when no move fitted inside the bounds.
    #[schemars(range(min = 0.0))]
    pub best_offspring: Option<f64>,
    /// Whether an offspring replaced the parent.
    pub improved: bool,
}

/// What the search found.
#[derive(Clone, Debug)]
pub struct EvoOutcome {
    /// The chosen level of every unit.
    pub levels: Vec<f64>,
    /// The start's fitness on the last step's windows.
    pub start_fitness: f64,
    /// One entry per generation.
    pub generations: Vec<Generation>,
    /// Fitness evaluations, by windows: (windows, count).
    pub evaluations: Vec<(usize, usize)>,
}

/// Searches unit levels from `start` (each unit has `params` weights; their weighted mean of
/// levels stays that of `start`). `fitness(candidates, windows)` scores a batch of candidates
/// (lower is better; one score per candidate, in their order) and must be a function of each
/// candidate and the window count; a step's candidates come in one batch, so that it may score
/// them side by side. `on_generation` sees each generation as it ends, with the parent it chose.
pub fn search(
    start: &[f64],
    params: &[f64],
    settings: &EvoSettings,
    mut fitness: impl FnMut(&[Vec<f64>], usize) -> Result<Vec<f64>>,
    mut on_generation: impl FnMut(usize, &Generation, &[f64]) -> Result<()>,
) -> Result<EvoOutcome> {
    assert_eq!(start.len(), params.len(), "one parameter count per unit");
    let steps = &settings.selection;
    let last = steps.last().expect("at least one selection step");
    assert!(
        steps.iter().all(|s| s.windows > 0 && s.survivors > 0)
            && steps.windows(2).all(|w| w[0].windows < w[1].windows),
        "selection steps on more windows each, each passing some on: {steps:?}"
    );
    let mut rng = Rng::new(settings.seed);
    // Evaluations per step; the parent's count under the last step.
    let mut counts = vec![0usize; steps.len()];
    let mut parent = start.to_vec();
    let mut parent_fitness = scores(&mut fitness, std::slice::from_ref(&parent), last.windows)?[0];
    counts[steps.len() - 1] += 1;
    let start_fitness = parent_fitness;
    let mut generations = Vec::with_capacity(settings.generations);
    for g in 0..settings.generations {
        let mut candidates: Vec<Vec<f64>> = Vec::with_capacity(settings.offspring);
        // Bounded: a model with few blocks may have fewer distinct children than asked for.
        for _ in 0..settings.offspring * 64 {
            if candidates.len() == settings.offspring {
                break;
            }
            let Some(child) = mutate(&parent, params, settings, &mut rng) else {
                break; // no move fits inside the bounds: nothing to search
            };
            if !candidates.contains(&child) {
                candidates.push(child);
            }
        }
        let mut best: Option<(f64, Vec<f64>)> = None;
        for (i, step) in steps.iter().enumerate() {
            let scored = scores(&mut fitness, &candidates, step.windows)?;
            counts[i] += candidates.len();
            let mut ranked: Vec<(f64, Vec<f64>)> = scored.into_iter().zip(candidates).collect();
            // Stable: equal fitness keeps the order of drawing.
            ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
            ranked.truncate(step.survivors);
            if i + 1 == steps.len() {
                best = ranked.into_iter().next();
                break;
            }
            candidates = ranked.into_iter().map(|(_, child)| child).collect();
        }
        let (best_offspring, improved) = match best {
            Some((f, child)) if f < parent_fitness => {
                parent = child;
                parent_fitness = f;
                (Some(f), true)
            }
            Some((f, _)) => (Some(f), false),
            None => (None, false),
        };
        let generation = Generation {
            fitness: parent_fitness,
            best_offspring,
            improved,
        };
        on_generation(g, &generation, &parent)?;
        generations.push(generation);
    }
    Ok(EvoOutcome {
        levels: parent,
        start_fitness,
        generations,
        evaluations: steps.iter().map(|s| s.windows).zip(counts).collect(),
    })
}

/// `fitness` of `candidates` on `windows`, one score per candidate.
fn scores(
    fitness: &mut impl FnMut(&[Vec<f64>], usize) -> Result<Vec<f64>>,
    candidates: &[Vec<f64>],
    windows: usize,
) -> Result<Vec<f64>> {
    let scores = fitness(candidates, windows)?;
    assert_eq!(
        scores.len(),
        candidates.len(),
        "the fitness gives one score per candidate"
    );
    Ok(scores)
}

/// A mutation of `parent`: 1 to `max_moves` moves, each adding `step` to one unit's level and
/// taking as many weights from another's, both staying inside [`CLIP`]. `None` when no move fits.
fn mutate(
    parent: &[f64],
    params: &[f64],
    settings: &EvoSettings,
    rng: &mut Rng,
) -> Option<Vec<f64>> {
    let n = parent.len();
    if n < 2 {
        return None;
    }
    let moves = 1 + rng.below(settings.max_moves.max(1) as u64) as usize;
    let mut child = parent.to_vec();
    let mut made = 0;
    // A bounded number of draws: near the bounds most moves may not fit.
    for _ in 0..moves * 64 {
        if made == moves {
            break;
        }
        let up = rng.below(n as u64) as usize;
        let down = rng.below(n as u64 - 1) as usize;
        let down = if down >= up { down + 1 } else { down };
        let raised = child[up] + settings.step;
        let lowered = child[down] - settings.step * params[up] / params[down];
        if raised <= CLIP.1 && lowered >= CLIP.0 {
            child[up] = raised;
            child[down] = lowered;
            made += 1;
        }
    }
    (made > 0).then_some(child)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn settings(generations: usize) -> EvoSettings {
        EvoSettings {
            generations,
            offspring: 8,
            selection: vec![
                Selection {
                    windows: 1,
                    survivors: 2,
                },
                Selection {
                    windows: 4,
                    survivors: 1,
                },
            ],
            tokens: 64,
            step: 0.02,
            max_moves: 3,
            seed: 7,
        }
    }

    fn weighted_mean(levels: &[f64], params: &[f64]) -> f64 {
        levels.iter().zip(params).map(|(l, p)| l * p).sum::<f64>() / params.iter().sum::<f64>()
    }

    #[test]
    fn mutations_keep_the_weighted_total_and_the_bounds() {
        let params = [100.0, 300.0, 50.0, 200.0];
        let parent = [0.7, 0.7, 0.7, 0.7];
        let mut rng = Rng::new(3);
        let mut level = parent.to_vec();
        for _ in 0..500 {
            level = mutate(&level, &params, &settings(1), &mut rng).expect("a move fits");
            assert!((weighted_mean(&level, &params) - 0.7).abs() < 1e-9);
            assert!(level.iter().all(|&l| (CLIP.0..=CLIP.1).contains(&l)));
        }
        assert!(level.iter().any(|&l| (l - 0.7).abs() > 0.05), "{level:?}");
    }

    #[test]
    fn no_move_fits_a_single_unit() {
        let mut rng = Rng::new(0);
        assert_eq!(mutate(&[0.5], &[1.0], &settings(1), &mut rng), None);
    }

    /// A separable convex fitness whose constrained optimum is known in closed form: Σ wᵢ(xᵢ − cᵢ)²
    /// with Σ xᵢ fixed has xᵢ = cᵢ + μ/wᵢ, μ set by the constraint.
    #[test]
    fn the_search_approaches_a_known_optimum_and_never_worsens() {
        let n = 10;
        let params = vec![1.0; n];
        let centre: Vec<f64> = (0..n).map(|i| 0.5 + 0.04 * i as f64).collect();
        let weight: Vec<f64> = (0..n).map(|i| 1.0 + (i % 3) as f64).collect();
        let target = 0.7;
        let mu = (n as f64 * target - centre.iter().sum::<f64>())
            / weight.iter().map(|w| 1.0 / w).sum::<f64>();
        let optimum: Vec<f64> = centre
            .iter()
            .zip(&weight)
            .map(|(c, w)| c + mu / w)
            .collect();
        let loss = |x: &[f64]| -> f64 {
            x.iter()
                .zip(&centre)
                .zip(&weight)
                .map(|((x, c), w)| w * (x - c) * (x - c))
                .sum()
        };
        let start = vec![target; n];
        let mut seen = Vec::new();
        let outcome = search(
            &start,
            &params,
            &settings(200),
            |batch, _| Ok(batch.iter().map(|x| loss(x)).collect()),
            |g, gen, _| {
                seen.push((g, gen.fitness));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen.len(), 200);
        assert!(outcome
            .generations
            .windows(2)
            .all(|w| w[1].fitness <= w[0].fitness));
        assert!((weighted_mean(&outcome.levels, &params) - target).abs() < 1e-9);
        let (from, to, best) = (loss(&start), loss(&outcome.levels), loss(&optimum));
        assert!(
            to - best < 0.05 * (from - best),
            "start {from}, found {to}, optimum {best}"
        );
        assert_eq!(outcome.start_fitness, from);
        // 1 start + 2 survivors per generation on the final windows, 8 per generation on the first.
        assert_eq!(outcome.evaluations, vec![(1, 1600), (4, 401)]);
    }

    /// Each step scores exactly what the step before passed on, and only the last step's best
    /// meets the parent, on the last step's windows.
    #[test]
    fn each_selection_step_scores_the_best_of_the_step_before() {
        let mut three = settings(6);
        three.selection.push(Selection {
            windows: 16,
            survivors: 1,
        });
        // The window count changes the ranking, so a step that re-used an earlier score shows.
        let score = |x: &[f64], w: usize| -> f64 {
            x.iter()
                .enumerate()
                .map(|(i, v)| (v - 0.6 - 0.01 * i as f64).powi(2) * (1.0 + ((i * w) % 5) as f64))
                .sum()
        };
        let calls = RefCell::new(Vec::new());
        let outcome = search(
            &[0.7; 6],
            &[1.0, 2.0, 1.0, 3.0, 1.0, 2.0],
            &three,
            |batch, w| {
                let mut calls = calls.borrow_mut();
                calls.extend(batch.iter().map(|x| (x.clone(), w, score(x, w))));
                Ok(batch.iter().map(|x| score(x, w)).collect())
            },
            |_, generation, parent| {
                assert_eq!(generation.fitness, score(parent, 16));
                Ok(())
            },
        )
        .unwrap();
        let calls = calls.into_inner();
        assert_eq!(
            calls[0].1, 16,
            "the start is scored on the last step's windows"
        );
        let best = |scored: &[(Vec<f64>, usize, f64)], n: usize| -> Vec<Vec<f64>> {
            let mut s = scored.to_vec();
            s.sort_by(|a, b| a.2.total_cmp(&b.2));
            s.into_iter().take(n).map(|c| c.0).collect()
        };
        for generation in calls[1..].chunks(8 + 2 + 1) {
            let windows: Vec<usize> = generation.iter().map(|c| c.1).collect();
            assert_eq!(windows, [[1; 8].as_slice(), &[4, 4], &[16]].concat());
            let second: Vec<Vec<f64>> = generation[8..10].iter().map(|c| c.0.clone()).collect();
            assert_eq!(second, best(&generation[..8], 2));
            assert_eq!(vec![generation[10].0.clone()], best(&generation[8..10], 1));
        }
        assert_eq!(outcome.evaluations, vec![(1, 48), (4, 12), (16, 7)]);
        assert!(outcome.generations.last().unwrap().fitness < outcome.start_fitness);
    }

    #[test]
    fn two_units_with_few_distinct_children_end_the_search() {
        let outcome = search(
            &[0.7, 0.7],
            &[1.0, 1.0],
            &settings(3),
            |batch, _| Ok(batch.iter().map(|x| (x[0] - 0.75).abs()).collect()),
            |_, _, _| Ok(()),
        )
        .unwrap();
        assert_eq!(outcome.generations.len(), 3);
    }

    #[test]
    fn the_same_seed_gives_the_same_search() {
        let params = [1.0, 2.0, 1.0, 2.0, 1.0];
        let run = || {
            search(
                &[0.7; 5],
                &params,
                &settings(20),
                |batch, w| {
                    Ok(batch
                        .iter()
                        .map(|x| x.iter().enumerate().map(|(i, v)| v * (i + w) as f64).sum())
                        .collect())
                },
                |_, _, _| Ok(()),
            )
            .unwrap()
            .levels
        };
        assert_eq!(run(), run());
    }
}
