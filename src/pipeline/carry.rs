//! What a [`StagedRun`](super::StagedRun) carries between stages for every window: in memory
//! while the carried float tensors fit a byte limit, in an unlinked file beyond it
//! (docs/big-models.md, "Hidden states on disk").

use super::PruneConfig;
use crate::error::{Error, Result};
use crate::onnx::proto::TypeProto;
use crate::onnx::WeightDtype;
use crate::runtime::{symbolic_type, Activation};
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How much of what a run carries may stay in memory, and where the rest goes.
#[derive(Clone, Debug)]
pub(crate) struct SpillPolicy {
    /// Bytes of carried float tensors held in memory at most; later ones go to the file.
    limit: u64,
    /// The folder spill files are created in (each is unlinked at once, so nothing is left
    /// behind, whatever ends the job).
    dir: PathBuf,
    /// The most bytes any one spill file under this policy has spanned.
    peak: Arc<AtomicU64>,
}

impl SpillPolicy {
    /// A job's policy: the hidden states that a pass carries may take a quarter of the memory
    /// budget (the rest is for a block's weights, ONNX Runtime's sessions and the masks), and
    /// spill files go in the output's folder, which the output needs room in anyway. `None`
    /// when no budget is known.
    pub fn for_job(config: &PruneConfig) -> Option<Self> {
        let budget = config.memory_budget?;
        let dir = config
            .output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(Self::new(budget.bytes() / 4, dir))
    }

    /// Keeps `limit` bytes in memory and spills the rest to files in `dir`.
    pub fn new(limit: u64, dir: &Path) -> Self {
        Self {
            limit,
            dir: dir.to_path_buf(),
            peak: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The policy of one of `passes` passes that run at once: an equal share of the limit.
    pub fn shared_by(&self, passes: usize) -> Self {
        Self {
            limit: self.limit / passes.max(1) as u64,
            ..self.clone()
        }
    }

    /// The most bytes any one spill file under this policy (and the policies shared from it)
    /// has spanned: 0 when nothing was spilled.
    pub fn spilled_peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// One carried tensor.
pub(super) enum Carried {
    /// Held in memory.
    Resident(Activation),
    /// Written to the run's spill file; read back for each stage run that takes it.
    Spilled(Spilled),
}

impl Carried {
    /// Its ONNX type as the stage input `name` ([`Activation::onnx_type`]).
    pub fn onnx_type(&self, name: &str) -> Result<TypeProto> {
        match self {
            Carried::Resident(value) => value.onnx_type(name),
            Carried::Spilled(s) => Ok(symbolic_type(s.dtype.onnx(), s.dims.len(), name)),
        }
    }

    /// The tensor itself: the resident one, or the spilled one read back.
    pub fn load(&self) -> Result<Loaded<'_>> {
        match self {
            Carried::Resident(value) => Ok(Loaded::Borrowed(value)),
            Carried::Spilled(s) => Ok(Loaded::Owned(s.read()?)),
        }
    }
}

/// A carried tensor ready to feed a session.
pub(super) enum Loaded<'a> {
    /// A resident tensor, not copied.
    Borrowed(&'a Activation),
    /// A spilled tensor, read back for this run.
    Owned(Activation),
}

impl Loaded<'_> {
    /// The tensor, wherever it came from.
    pub fn get(&self) -> &Activation {
        match self {
            Loaded::Borrowed(a) => a,
            Loaded::Owned(a) => a,
        }
    }
}

/// A tensor in a [`SpillFile`]; its slot is freed for reuse when the last holder drops it.
pub(super) struct Spilled {
    file: Arc<SpillFile>,
    offset: u64,
    len: u64,
    dtype: WeightDtype,
    dims: Vec<usize>,
}

impl Spilled {
    fn read(&self) -> Result<Activation> {
        let mut bytes = vec![0u8; self.len as usize];
        self.file
            .file
            .read_exact_at(&mut bytes, self.offset)
            .map_err(|e| self.file.error(e))?;
        Activation::from_le_bytes(self.dtype, &self.dims, &bytes)
    }
}

impl Drop for Spilled {
    fn drop(&mut self) {
        self.file.release(self.offset, self.len);
    }
}

/// An unlinked file of spilled tensors. A window's hidden state has the same size at every
/// block, so a freed slot is reused by the next tensor of its size and the file stays at about
/// one copy of what was spilled.
struct SpillFile {
    file: File,
    /// The folder it was made in, for messages (the file itself has no name).
    dir: PathBuf,
    /// Where its tensors lie. Runs resumed from a checkpoint on other threads may drop tensors
    /// (freeing their slots) while the run that spilled them writes new ones.
    slots: Mutex<Slots>,
    /// The policy's meter of the largest file.
    peak: Arc<AtomicU64>,
}

impl SpillFile {
    fn create(policy: &SpillPolicy) -> Result<Self> {
        let dir = &policy.dir;
        let file = tempfile::tempfile_in(dir).map_err(|e| {
            Error::io(
                dir,
                std::io::Error::new(
                    e.kind(),
                    format!("cannot create a file for hidden states that do not fit the memory budget ({e}); give more --memory-budget or free space in this folder"),
                ),
            )
        })?;
        Ok(Self {
            file,
            dir: dir.to_path_buf(),
            slots: Mutex::new(Slots::default()),
            peak: policy.peak.clone(),
        })
    }

    fn error(&self, e: std::io::Error) -> Error {
        Error::io(
            &self.dir,
            std::io::Error::new(e.kind(), format!("the spill file of hidden states: {e}")),
        )
    }

    /// Writes `bytes` to a free slot of their length, or at the end.
    fn write(&self, bytes: &[u8]) -> Result<u64> {
        let len = bytes.len() as u64;
        let offset = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let reused = slots.free.get_mut(&len).and_then(Vec::pop);
            reused.unwrap_or_else(|| {
                let end = slots.end;
                slots.end += len;
                self.peak.fetch_max(end + len, Ordering::Relaxed);
                end
            })
        };
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| self.error(e))?;
        Ok(offset)
    }

    fn release(&self, offset: u64, len: u64) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.free.entry(len).or_default().push(offset);
    }
}

/// The slots of a [`SpillFile`].
#[derive(Default)]
struct Slots {
    /// Bytes the file spans.
    end: u64,
    /// Freed slots by length.
    free: HashMap<u64, Vec<u64>>,
}

/// The carried tensors' memory account of one run, and its spill file once one is needed.
pub(super) struct CarryStore {
    policy: Option<SpillPolicy>,
    file: Option<Arc<SpillFile>>,
    /// Bytes of float tensors held in memory.
    resident: u64,
}

impl CarryStore {
    /// A store that spills beyond `policy`'s limit, or never (`None`).
    pub fn new(policy: Option<SpillPolicy>) -> Self {
        Self {
            policy,
            file: None,
            resident: 0,
        }
    }

    /// Keeps `value`: in memory while the limit allows (and always when it is not a float
    /// tensor), else in the spill file.
    pub fn keep(&mut self, value: Activation) -> Result<Carried> {
        let size = float_bytes(&value);
        let over = self
            .policy
            .as_ref()
            .is_some_and(|p| size > 0 && self.resident + size > p.limit);
        if !over {
            self.resident += size;
            return Ok(Carried::Resident(value));
        }
        let Some((dtype, bytes)) = value.float_le_bytes()? else {
            return Err(Error::internal("a float tensor gave no bytes to spill"));
        };
        let dims = value.shape();
        drop(value);
        let file = match &self.file {
            Some(f) => f.clone(),
            None => {
                let policy = self.policy.as_ref().expect("checked above");
                let f = Arc::new(SpillFile::create(policy)?);
                self.file = Some(f.clone());
                f
            }
        };
        let offset = file.write(&bytes)?;
        Ok(Carried::Spilled(Spilled {
            file,
            offset,
            len: bytes.len() as u64,
            dtype,
            dims,
        }))
    }

    /// Takes note that `value`, kept earlier, is no longer held by this run.
    pub fn forget(&mut self, value: &Carried) {
        if let Carried::Resident(v) = value {
            self.resident = self.resident.saturating_sub(float_bytes(v));
        }
    }
}

/// Bytes of `value` that count against a [`SpillPolicy`]'s limit: all of a float tensor's, none
/// of any other (token ids, positions and masks are small and never spilled).
fn float_bytes(value: &Activation) -> u64 {
    value.float_size().map_or(0, |(_, n)| n as u64)
}
