//! The ablation plan a resolved circuit compiles to: per prompt, which head outputs, edge terms
//! and MLP outputs keep their clean values.
