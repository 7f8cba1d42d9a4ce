//! Reference statistics and the forward pass with a plan applied.
