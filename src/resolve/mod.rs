//! Binding names in a parsed circuit file to a model's config and a dataset's labels.

pub mod bound;
