//! Reference statistics and the forward pass with a plan applied.
//!
//! [`reference`] turns one forward pass over the reference prompts into the values ablated
//! activations are replaced by (mean, zero, resample); [`hooks`] implements the engine's
//! [`crate::model::Interventions`] for a [`crate::plan::Plan`].

pub mod hooks;
pub mod reference;

pub use hooks::PlanInterventions;
pub use reference::{
    check_lengths, LayerActivations, ReferenceBuilder, ReferenceError, ReferenceNeeds,
    ReferenceValues,
};

#[cfg(test)]
mod tests;
