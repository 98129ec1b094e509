//! Token windows flowing through a partitioned decoder one stage at a time: the prefix, then each
//! block on every window, its outputs kept for the stages that read them.

use super::carry::{Carried, CarryStore, Loaded, SpillPolicy};
use crate::error::{Error, Result};
use crate::graph::{Linear, Partition, Stage, StageModel, StageProbe};
use crate::onnx::proto::TypeProto;
use crate::onnx::{OnnxModel, TensorKey, WeightDtype};
use crate::prune::ChannelSums;
use crate::runtime::{Activation, GraphFeeds, ModelSession, Runtime};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

/// Windows in flight through a [`Partition`].
pub struct StagedRun<'a> {
    model: &'a OnnxModel,
    partition: &'a Partition,
    runtime: &'a Runtime,
    /// Per window: every tensor a later stage still reads (shared with [`Checkpoint`]s; stages
    /// only ever add new tensors).
    carry: Vec<HashMap<String, Arc<Carried>>>,
    /// Where new carried tensors go: memory, or the spill file beyond its policy's limit.
    store: CarryStore,
    /// ONNX types of carried tensors, for declaring stage inputs.
    types: HashMap<String, TypeProto>,
    /// Index of the next stage to run.
    next: usize,
}

/// A [`StagedRun`] frozen before a stage, to resume from there ([`StagedRun::resume`]).
#[derive(Clone)]
pub struct Checkpoint {
    next: usize,
    carry: Vec<HashMap<String, Arc<Carried>>>,
}

impl Checkpoint {
    /// Number of windows it holds.
    pub fn windows(&self) -> usize {
        self.carry.len()
    }

    /// The windows `windows` of it (positions in it), shared, not copied.
    pub fn windows_in(&self, windows: Range<usize>) -> Checkpoint {
        Checkpoint {
            next: self.next,
            carry: self.carry[windows].to_vec(),
        }
    }

    /// Takes in `later`'s windows after its own: the two must stand before the same stage.
    pub fn append(&mut self, later: &Checkpoint) -> Result<()> {
        if later.next != self.next {
            return Err(Error::internal(format!(
                "joining a run before stage {} to one before stage {}",
                later.next, self.next
            )));
        }
        self.carry.extend(later.carry.iter().cloned());
        Ok(())
    }
}

impl<'a> StagedRun<'a> {
    /// Feeds the graph inputs of every window; the prefix runs next.
    pub fn new(
        model: &'a OnnxModel,
        partition: &'a Partition,
        runtime: &'a Runtime,
        windows: &[Vec<i64>],
    ) -> Result<Self> {
        let feeds = GraphFeeds::new(model, &partition.graph_inputs)?;
        let carry = windows
            .iter()
            .map(|w| {
                Ok(feeds
                    .values(w)?
                    .into_iter()
                    .map(|(name, value)| (name, Arc::new(Carried::Resident(value))))
                    .collect())
            })
            .collect::<Result<Vec<HashMap<String, Arc<Carried>>>>>()?;
        Ok(Self {
            model,
            partition,
            runtime,
            carry,
            store: CarryStore::new(None),
            types: HashMap::new(),
            next: 0,
        })
    }

    /// Writes the tensors that stages produce from now on to a spill file once those held in
    /// memory reach the policy's limit (`None`: everything stays in memory).
    pub(crate) fn spill_beyond(mut self, policy: Option<SpillPolicy>) -> Self {
        self.store = CarryStore::new(policy);
        self
    }

    /// The stage that runs next.
    pub fn stage(&self) -> &'a Stage {
        &self.partition.stages[self.next]
    }

    /// Position of the next stage in [`Partition::stages`].
    pub fn stage_index(&self) -> usize {
        self.next
    }

    /// Number of windows.
    pub fn windows(&self) -> usize {
        self.carry.len()
    }

    /// Whether every stage but the suffix has run.
    pub fn at_suffix(&self) -> bool {
        self.next + 1 == self.partition.stages.len()
    }

    /// Where the run stands: the stage that runs next and every window's carried tensors,
    /// shared, not copied.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            next: self.next,
            carry: self.carry.clone(),
        }
    }

    /// A run of `checkpoint`'s windows from the stage it had reached.
    pub fn resume(
        model: &'a OnnxModel,
        partition: &'a Partition,
        runtime: &'a Runtime,
        checkpoint: &Checkpoint,
    ) -> Self {
        Self {
            model,
            partition,
            runtime,
            carry: checkpoint.carry.clone(),
            store: CarryStore::new(None),
            types: HashMap::new(),
            next: checkpoint.next,
        }
    }

    /// Opens a session on the next stage, with the weights of `weights` as inputs (fed on every
    /// run), and as extra outputs the activations `captures` and the [`ChannelSums::outputs`] of
    /// `sums`. The stage's large initializers ([`StageModel::fed`]) are read once and fed by the
    /// session itself. Stage models do not depend on the windows, so a session can serve every
    /// later run of the same stage.
    pub fn open(
        &mut self,
        weights: &[&Linear],
        captures: &[String],
        sums: &[ChannelSums],
    ) -> Result<ModelSession> {
        let stage = self.stage();
        for name in &stage.inputs {
            if !self.types.contains_key(name) {
                if let Some(value) = self.carry.first().and_then(|c| c.get(name)) {
                    self.types.insert(name.clone(), value.onnx_type(name)?);
                }
            }
        }
        let opset = self.partition.opset();
        let probes: Vec<StageProbe> = sums
            .iter()
            .map(|s| {
                let (nodes, initializers) = s.nodes(opset);
                StageProbe {
                    nodes,
                    initializers,
                    outputs: s.outputs().to_vec(),
                }
            })
            .collect();
        let StageModel { proto, fed } = self.partition.stage_model(
            self.model,
            stage,
            &self.types,
            weights,
            captures,
            &probes,
        )?;
        let session = ModelSession::open(self.runtime, &proto, &format!("{:?}", stage.kind))?;
        let values = fed
            .iter()
            .map(|key| Ok((key.name.clone(), initializer_value(self.model, key)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(session.feeding(values))
    }

    /// Runs the next stage on window `window` with `weights` fed as inputs, returning `outputs`.
    pub fn run(
        &self,
        session: &mut ModelSession,
        window: usize,
        weights: &[(&str, &Activation)],
        outputs: &[String],
    ) -> Result<Vec<Activation>> {
        let carry = &self.carry[window];
        let names = &self.stage().inputs;
        let loaded = names
            .iter()
            .map(|name| {
                carry
                    .get(name)
                    .ok_or_else(|| {
                        Error::internal(format!(
                            "stage input '{name}' was not produced by an earlier stage"
                        ))
                    })?
                    .load()
            })
            .collect::<Result<Vec<Loaded>>>()?;
        let mut inputs: Vec<(&str, &Activation)> = Vec::with_capacity(names.len() + weights.len());
        for (name, value) in names.iter().zip(&loaded) {
            inputs.push((name.as_str(), value.get()));
        }
        inputs.extend_from_slice(weights);
        session.run(&inputs, outputs)
    }

    /// Runs the next stage on every window, keeps its outputs for later stages (handing the
    /// `captures` of each window to `on_capture`), drops what no later stage reads as soon as
    /// the window has run, and moves on.
    pub fn advance(
        &mut self,
        session: &mut ModelSession,
        weights: &[(&str, &Activation)],
        captures: &[String],
        mut on_capture: impl FnMut(usize, Vec<Activation>) -> Result<()>,
    ) -> Result<()> {
        let mut outputs = self.stage().outputs.clone();
        let own = outputs.len();
        outputs.extend_from_slice(captures);
        let partition = self.partition;
        let still_read: HashSet<&str> = partition.stages[self.next + 1..]
            .iter()
            .flat_map(|s| s.inputs.iter().map(String::as_str))
            .collect();
        for w in 0..self.carry.len() {
            let mut produced = self.run(session, w, weights, &outputs)?;
            let captured = produced.split_off(own);
            // What no later stage reads goes now, before this window's new tensors are kept,
            // so that a spilled hidden state's slot is free for its successor.
            let store = &mut self.store;
            self.carry[w].retain(|name, value| {
                let keep = still_read.contains(name.as_str());
                if !keep {
                    store.forget(value);
                }
                keep
            });
            for (name, value) in outputs.iter().zip(produced) {
                if still_read.contains(name.as_str()) {
                    let kept = self.store.keep(value)?;
                    self.carry[w].insert(name.clone(), Arc::new(kept));
                }
            }
            on_capture(w, captured)?;
        }
        self.next += 1;
        Ok(())
    }
}

/// The float initializer `key` of `model` as a tensor in its stored type and shape, for feeding a
/// stage session: a linear's weight, or a large initializer ([`StageModel::fed`]).
pub(super) fn initializer_value(model: &OnnxModel, key: &TensorKey) -> Result<Activation> {
    let tensor = model
        .initializer(key)
        .ok_or_else(|| Error::tensor(&key.name, "is no longer in the model"))?;
    let dtype = WeightDtype::from_onnx(tensor.data_type())
        .ok_or_else(|| Error::tensor(&key.name, "is not a float tensor"))?;
    let dims: Vec<usize> = tensor.dims.iter().map(|&d| d.max(0) as usize).collect();
    let bytes = model.tensor_bytes(&key.graph, tensor)?;
    Activation::from_le_bytes(dtype, &dims, &bytes)
}
