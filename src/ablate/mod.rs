//! Reference statistics and the forward pass with a plan applied.
//!
//! [`reference`] turns one forward pass over the reference prompts into the values ablated
//! activations are replaced by (mean, zero, resample); [`hooks`] implements the engine's
//! [`crate::model::Interventions`] for a [`crate::plan::Plan`]; [`align`] builds the same
//! values matched by label (`align by label`) instead of by token index.

pub mod align;
pub mod hooks;
pub mod reference;

pub use align::{LabelAlignment, LabelReferenceBuilder};
pub use hooks::PlanInterventions;
pub use reference::{
    pairing, LayerActivations, ReferenceBuilder, ReferenceError, ReferenceNeeds, ReferenceShape,
    ReferenceValues,
};

#[cfg(test)]
mod align_tests;
#[cfg(test)]
mod tests;
