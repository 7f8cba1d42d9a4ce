//! Metrics at END and faithfulness.
