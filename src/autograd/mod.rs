//! The tape: ops record a backward closure as they run forward; `backward(loss)` walks the
//! records in reverse and returns the gradient of every watched tensor.
//!
//! A record is only made when one of an op's inputs is *tracked* (a watched parameter or the
//! output of a recorded op), so a tape made with `Tape::inference()`, or work inside `no_grad`,
//! costs one hash lookup per op and stores nothing.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorId};

/// Given the gradient of an op's output, the gradients of its inputs (None: no gradient flows).
pub type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    inputs: Vec<TensorId>,
    output: TensorId,
    output_shape: Vec<usize>,
    backward: BackwardFn,
}

pub struct Tape {
    recording: bool,
    tracked: HashSet<TensorId>,
    watched: HashSet<TensorId>,
    nodes: Vec<Node>,
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

impl Tape {
    /// A tape that records ops whose inputs are watched or derived from watched tensors.
    pub fn new() -> Tape {
        Tape {
            recording: true,
            tracked: HashSet::new(),
            watched: HashSet::new(),
            nodes: Vec::new(),
        }
    }

    /// A tape that never records: the inference path.
    pub fn inference() -> Tape {
        Tape {
            recording: false,
            ..Tape::new()
        }
    }

    /// Marks a leaf (a parameter, or an input whose gradient is wanted).
    pub fn watch(&mut self, t: &Tensor) {
        self.tracked.insert(t.id());
        self.watched.insert(t.id());
    }

    /// True when an op over these inputs must be recorded.
    pub fn needs_grad(&self, inputs: &[&Tensor]) -> bool {
        self.recording && inputs.iter().any(|t| self.tracked.contains(&t.id()))
    }

    /// Records `output = op(inputs)` with its backward, if any input is tracked.
    /// `backward` receives d(loss)/d(output) and returns one entry per input, in order.
    pub fn record(
        &mut self,
        inputs: &[&Tensor],
        output: &Tensor,
        backward: impl FnOnce(&Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) {
        if !self.needs_grad(inputs) {
            return;
        }
        self.tracked.insert(output.id());
        self.nodes.push(Node {
            inputs: inputs.iter().map(|t| t.id()).collect(),
            output: output.id(),
            output_shape: output.shape().to_vec(),
            backward: Box::new(backward),
        });
    }

    /// Runs `f` with recording switched off (the tape's state is restored afterwards).
    pub fn no_grad<R>(&mut self, f: impl FnOnce(&mut Tape) -> R) -> R {
        let was = self.recording;
        self.recording = false;
        let r = f(self);
        self.recording = was;
        r
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// d(loss)/d(t) for every watched t that the loss depends on. `loss` must hold one element.
    /// Consumes the records (the tape can be reused for the next step; watches are kept).
    pub fn backward(&mut self, loss: &Tensor) -> Result<Gradients> {
        if loss.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!("the loss must be a scalar, got shape {:?}", loss.shape()),
            ));
        }
        let seed = Tensor::full(1.0, loss.shape(), loss.device())?;
        self.backward_with(loss, seed)
    }

    /// Backward from any output with an explicit output gradient (e.g. vector–Jacobian products).
    pub fn backward_with(&mut self, output: &Tensor, grad_output: Tensor) -> Result<Gradients> {
        if grad_output.shape() != output.shape() {
            return Err(Error::shape(
                "backward",
                format!(
                    "gradient {:?} for output {:?}",
                    grad_output.shape(),
                    output.shape()
                ),
            ));
        }
        let nodes = std::mem::take(&mut self.nodes);
        self.tracked = self.watched.clone();
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        grads.insert(output.id(), grad_output);
        for node in nodes.into_iter().rev() {
            let Some(dy) = grads.remove(&node.output) else {
                continue;
            };
            if dy.shape() != node.output_shape.as_slice() {
                return Err(Error::shape(
                    "backward",
                    format!(
                        "gradient {:?} for an output of shape {:?}",
                        dy.shape(),
                        node.output_shape
                    ),
                ));
            }
            let dxs = (node.backward)(&dy)?;
            for (id, dx) in node.inputs.iter().zip(dxs) {
                let Some(dx) = dx else { continue };
                let total = match grads.remove(id) {
                    Some(prev) => prev.accumulate(&dx)?,
                    None => dx,
                };
                grads.insert(*id, total);
            }
        }
        grads.retain(|id, _| self.watched.contains(id));
        Ok(Gradients(grads))
    }
}

/// Gradients by tensor identity.
#[derive(Default)]
pub struct Gradients(HashMap<TensorId, Tensor>);

impl Gradients {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.0.get(&t.id())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
